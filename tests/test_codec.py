"""The sans-IO codec under every fault on the list, and property tests."""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.errors import ArgumentError, StreamError
from edge_runtime.stream import codec
from edge_runtime.stream.codec import (
    DTYPES,
    MAX_ENCODED,
    MAX_PAYLOAD,
    Frame,
    FrameDecoder,
    cobs_decode_into,
    cobs_encode,
    encode_frame,
    make_frame,
)


def frames(n: int, samples: int = 16, channels: int = 6, dtype: str = "<i2", stream: int = 0) -> list[Frame]:
    rng = np.random.default_rng(n * 7919 + samples)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    out = []
    for seq in range(n):
        if info is not None:
            vals = rng.integers(info.min, info.max, (samples, channels), endpoint=True).astype(dtype)
        else:
            vals = rng.standard_normal((samples, channels)).astype(dtype)
        out.append(make_frame(vals, stream_id=stream, seq=seq, interval_us=10_000, timestamp_us=seq * samples * 10_000))
    return out


def key(f: Frame) -> tuple[int, int, int, bytes]:
    return (f.stream_id, f.seq, f.timestamp_us, bytes(f.payload))


def decode_all(decoder: FrameDecoder, chunks: Iterable[bytes]) -> list[tuple[int, int, int, bytes]]:
    return [key(f) for chunk in chunks for f in decoder.decode_all(chunk)]


def test_round_trip_and_counters() -> None:
    sent = frames(50)
    d = FrameDecoder()
    got = decode_all(d, [b"".join(encode_frame(f) for f in sent)])
    assert got == [key(f) for f in sent]
    assert d.stats.frames == 50 and d.stats.crc_errors == d.stats.malformed == d.stats.gaps == 0


def test_one_byte_at_a_time_equals_one_big_read() -> None:
    wire = b"".join(encode_frame(f) for f in frames(20, samples=40))
    big = decode_all(FrameDecoder(), [wire])
    small = decode_all(FrameDecoder(), [wire[i : i + 1] for i in range(len(wire))])
    rng = random.Random(3)
    cuts = sorted(rng.sample(range(1, len(wire)), 60))
    ragged = decode_all(FrameDecoder(), [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)])])
    assert big == small == ragged and len(big) == 20


def test_garbage_between_frames_loses_no_good_frame() -> None:
    sent = frames(30)
    rng = random.Random(1)
    parts = []
    for f in sent:
        parts.append(bytes(rng.randrange(1, 256) for _ in range(rng.randrange(0, 80))) + b"\x00")
        parts.append(encode_frame(f))
    d = FrameDecoder()
    assert decode_all(d, [b"".join(parts)]) == [key(f) for f in sent]
    assert d.stats.malformed + d.stats.crc_errors > 0


def test_100kB_without_delimiter_does_not_grow_memory() -> None:
    d = FrameDecoder()
    before = len(d._pending), len(d._out)
    garbage = bytes(random.Random(2).randrange(1, 256) for _ in range(100_000))
    good = frames(2)
    got = decode_all(d, [garbage[:50_000], garbage[50_000:], b"\x00", *(encode_frame(f) for f in good)])
    assert got == [key(f) for f in good]
    assert (len(d._pending), len(d._out)) == before
    assert d.stats.oversize == 1


@pytest.mark.parametrize("where", ["header_length", "payload", "crc"])
def test_bit_flips_drop_only_the_hit_frame(where: str) -> None:
    sent = frames(10, samples=32)
    wires = [bytearray(encode_frame(f)) for f in sent]
    # Flip a bit inside the encoded bytes of frame 4 (offsets chosen in the region named).
    victim = wires[4]
    offset = {"header_length": 5, "payload": len(victim) // 2, "crc": len(victim) - 3}[where]
    victim[offset] ^= 0x10 if victim[offset] ^ 0x10 else 0x20  # never turn a byte into a delimiter
    d = FrameDecoder()
    got = decode_all(d, [bytes(w) for w in wires])
    assert got == [key(f) for i, f in enumerate(sent) if i != 4]
    assert d.stats.crc_errors + d.stats.malformed == 1
    assert d.stats.gaps == 1


def test_dropped_bytes() -> None:
    sent = frames(10)
    wires = [encode_frame(f) for f in sent]
    wires[3] = wires[3][:10] + wires[3][14:]  # four bytes lost on the wire
    d = FrameDecoder()
    assert decode_all(d, wires) == [key(f) for i, f in enumerate(sent) if i != 3]
    assert d.stats.gaps == 1


def test_zero_length_maximum_and_oversize_frames() -> None:
    empty = make_frame(np.zeros((0, 3), np.int16), seq=0)
    biggest = make_frame(np.arange(MAX_PAYLOAD, dtype=np.uint32).astype(np.uint8).reshape(-1, 2), seq=1)
    assert len(biggest.payload) == MAX_PAYLOAD
    d = FrameDecoder()
    got = decode_all(d, [encode_frame(empty), encode_frame(biggest)])
    assert got == [key(empty), key(biggest)]
    with pytest.raises(ArgumentError, match="exceeds the protocol maximum"):
        encode_frame(make_frame(np.zeros((MAX_PAYLOAD // 2 + 1, 2), np.uint8)))
    with pytest.raises(ArgumentError, match="samples 70000 out of range"):
        encode_frame(make_frame(np.zeros((70_000, 1), np.uint8)))
    # An oversize frame on the wire (a sender ignoring the limit) is dropped and counted.
    huge = cobs_encode(bytes(range(1, 256)) * 300)
    assert len(huge) > MAX_ENCODED
    after = make_frame(np.ones((1, 1), np.int8), seq=2)
    assert decode_all(d, [huge + b"\x00", encode_frame(after)]) == [key(after)]
    assert d.stats.oversize == 1


def test_payload_full_of_zero_bytes() -> None:
    f = make_frame(np.zeros((1000, 8), np.int32), seq=0)
    wire = encode_frame(f)
    assert wire.count(0) == 1
    assert decode_all(FrameDecoder(), [wire]) == [key(f)]


def test_sequence_gaps_wrap_and_restart() -> None:
    d = FrameDecoder()
    seqs = [0xFFFFFFFE, 0xFFFFFFFF, 0, 3, 3]
    for s in seqs:
        d.decode_all(encode_frame(make_frame(np.ones((1, 1), np.int8), seq=s)))
    assert d.stats.gaps == 2  # 1 and 2 missing; the wrap and the duplicate are not gaps
    d.decode_all(encode_frame(make_frame(np.ones((1, 1), np.int8), seq=0, flags=1)))
    assert d.stats.gaps == 2  # a restart flag resets the sequence without a gap


def test_two_streams_keep_separate_sequences() -> None:
    a, b = frames(5, stream=1), frames(5, stream=2)
    d = FrameDecoder()
    mixed = [encode_frame(f) for pair in zip(a, b) for f in pair]
    assert len(decode_all(d, mixed)) == 10 and d.stats.gaps == 0


def test_reset_forgets_a_partial_frame() -> None:
    f1, f2 = frames(2)
    d = FrameDecoder()
    assert decode_all(d, [encode_frame(f1)[:20]]) == []
    d.reset()
    assert decode_all(d, [encode_frame(f2)]) == [key(f2)]


frame_strategy = st.builds(
    lambda code, channels, samples, seq, ts, interval, stream, seed: make_frame(
        np.frombuffer(
            np.random.default_rng(seed).bytes(samples * channels * DTYPES[code].itemsize), dtype=DTYPES[code]
        ).reshape(samples, channels),
        stream_id=stream,
        seq=seq,
        timestamp_us=ts,
        interval_us=interval,
    ),
    st.sampled_from(sorted(DTYPES)),
    st.integers(1, 12),
    st.integers(0, 300),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 255),
    st.integers(0, 2**32 - 1),
)


@settings(max_examples=200, deadline=None)
@given(frame_strategy)
def test_property_round_trip(frame: Frame) -> None:
    (got,) = FrameDecoder().decode_all(encode_frame(frame))
    assert key(got) == key(frame) and got.interval_us == frame.interval_us and got.dtype == frame.dtype


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_property_cobs_round_trip(data: bytes) -> None:
    enc = cobs_encode(data)
    assert 0 not in enc and len(enc) <= len(data) + len(data) // 254 + 1
    out = bytearray(len(data) + 1)
    n = cobs_decode_into(enc, len(enc), out)
    assert bytes(out[:n]) == data


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=5000), st.integers(1, 64))
def test_property_decoder_survives_arbitrary_bytes(junk: bytes, chunk: int) -> None:
    d = FrameDecoder()

    def check(f: Frame) -> None:
        assert f.values().shape == (f.samples, f.channels)  # anything it accepts is well formed

    for i in range(0, len(junk), chunk):
        d.feed(junk[i : i + chunk], on_frame=check)
    good = frames(1)[0]
    assert decode_all(d, [b"\x00" + encode_frame(good)]) == [key(good)]
    assert len(d._pending) == MAX_ENCODED


# -- feed: every byte is consumed whether or not the caller keeps anything ------------------


def test_feed_consumes_the_whole_chunk_and_counts_frames() -> None:
    sent = frames(5)
    wire = b"".join(encode_frame(f) for f in sent)
    d = FrameDecoder()
    seqs: list[int] = []
    assert d.feed(wire, on_frame=lambda f: seqs.append(f.seq)) == 5
    assert seqs == [0, 1, 2, 3, 4] and d.stats.frames == 5 and d.stats.bytes == len(wire)
    # A caller that ignores every frame still advances the decoder: nothing is left over.
    assert d.feed(wire + wire[:7], on_frame=lambda f: None) == 5
    assert d.stats.bytes == 2 * len(wire) + 7 and d._n == 7


def test_feed_reads_a_range_of_the_buffer_in_place() -> None:
    wire = encode_frame(frames(1)[0])
    buf = bytearray(b"\x07\x07" + wire + b"\x09")
    got = FrameDecoder().decode_all(buf, 2, 2 + len(wire))
    assert [key(f) for f in got] == [key(frames(1)[0])]
    for start, end in ((3, 2), (-1, 4), (0, len(buf) + 1)):
        with pytest.raises(ArgumentError, match="out of range"):
            FrameDecoder().feed(buf, start, end, on_frame=lambda f: None)


def test_payload_is_a_read_only_view_during_the_callback_and_decode_all_copies() -> None:
    sent = frames(2)
    wire = b"".join(encode_frame(f) for f in sent)
    seen: list[bytes] = []

    def check(f: Frame) -> None:
        assert isinstance(f.payload, memoryview) and f.payload.readonly
        seen.append(bytes(f.payload))

    d = FrameDecoder()
    d.feed(wire, on_frame=check)
    assert seen == [bytes(f.payload) for f in sent]
    kept = d.decode_all(wire)
    d.decode_all(encode_frame(frames(3)[2]))  # overwrites the decoder's buffer
    assert [type(f.payload) for f in kept] == [bytes, bytes]
    assert [key(f) for f in kept] == [key(f) for f in sent]


def test_an_exception_in_on_frame_stops_at_that_frame_and_leaves_the_decoder_usable() -> None:
    sent = frames(4)
    wires = [encode_frame(f) for f in sent]
    wire = b"".join(wires)
    d = FrameDecoder()
    seqs: list[int] = []

    def boom(f: Frame) -> None:
        seqs.append(f.seq)
        if f.seq == 1:
            raise KeyError("user code")

    with pytest.raises(KeyError):
        d.feed(wire, on_frame=boom)
    consumed = len(wires[0]) + len(wires[1])
    assert seqs == [0, 1] and d.stats.bytes == consumed  # the rest is not counted as consumed
    assert [key(f) for f in d.decode_all(wire, consumed)] == [key(f) for f in sent[2:]]


def test_feed_from_inside_on_frame_is_refused() -> None:
    d = FrameDecoder()
    wire = encode_frame(frames(1)[0])
    with pytest.raises(StreamError, match="inside its own on_frame"):
        d.feed(wire, on_frame=lambda f: d.feed(wire, on_frame=lambda g: None))
    assert d.decode_all(wire) != []  # and the decoder works afterwards


@pytest.mark.parametrize("kind", ["zeros", "int16", "mixed"])
def test_zero_dense_frames_round_trip(kind: str) -> None:
    rng = np.random.default_rng(5)
    table: dict[str, np.ndarray[Any, Any]] = {
        "zeros": np.zeros((MAX_PAYLOAD // 2, 1), np.int16),
        "int16": rng.integers(-50, 51, (4000, 8)).astype(np.int16),
        "mixed": np.concatenate([rng.standard_normal((500, 4)), np.zeros((500, 4))]).astype(np.float32),
    }
    values = table[kind]
    sent = [make_frame(values, seq=i) for i in range(3)]
    d = FrameDecoder()
    assert decode_all(d, [b"".join(encode_frame(f) for f in sent)]) == [key(f) for f in sent]
    assert d.stats.crc_errors == d.stats.malformed == 0


# -- cobs_decode_into: the vectorised path against a plain reference decoder -----------------


def reference_decode(src: bytes, n: int, dst: bytearray) -> int:
    """The block-by-block decoder the fast one replaced: the definition of valid."""
    cap = len(dst)
    i = o = 0
    while i < n:
        code = src[i]
        if code == 0:
            return -1
        i += 1
        block = code - 1
        if i + block > n or o + block > cap:
            return -1
        dst[o : o + block] = src[i : i + block]
        o += block
        i += block
        if code != 0xFF and i < n:
            if o >= cap:
                return -1
            dst[o] = 0
            o += 1
    return o


def assert_like_reference(
    enc: bytes, n: int | None = None, cap: int | None = None, scratch: codec.DecodeScratch | None = None
) -> int:
    n = len(enc) if n is None else n
    cap = n + 1 if cap is None else cap
    want, got = bytearray(b"\xaa" * cap), bytearray(b"\xaa" * cap)
    expected = reference_decode(enc, n, want)
    length = cobs_decode_into(enc, n, got, scratch)
    assert length == expected
    if length >= 0:
        assert got[:length] == want[:length]
    return length


def dense_bytes(size: int, zero_share: float, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    data = rng.integers(1, 256, size, dtype=np.uint8)
    data[rng.random(size) < zero_share] = 0
    return data.tobytes()


#: The fewest zeros that make the decoder switch to the vectorised path: they encode as
#: ``SWITCH + 1`` blocks of one byte, ``_ROUND`` walked in Python and ``_MIN_REST`` left.
SWITCH = codec._ROUND + codec._MIN_REST - 1


@pytest.fixture
def dense_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls of the vectorised path."""
    calls: list[int] = []
    original = codec._decode_dense

    def spy(*args: Any) -> int:
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(codec, "_decode_dense", spy)
    return calls


@pytest.mark.parametrize("zeros", [0, 1, 200, SWITCH - 2, SWITCH - 1, SWITCH, SWITCH + 1, 5000, MAX_PAYLOAD])
def test_all_zero_data_on_both_sides_of_the_switch(zeros: int, dense_calls: list[int]) -> None:
    data = bytes(zeros)
    enc = cobs_encode(data)
    assert assert_like_reference(enc) == zeros
    assert assert_like_reference(enc, scratch=codec.DecodeScratch(MAX_ENCODED)) == zeros
    assert len(dense_calls) == (2 if zeros >= SWITCH else 0)


def test_float_noise_stays_on_the_python_path(dense_calls: list[int]) -> None:
    noise = np.random.default_rng(0).standard_normal(16384).astype(np.float32).tobytes()
    assert assert_like_reference(cobs_encode(noise)) == len(noise)
    assert dense_calls == []


@pytest.mark.parametrize("run", [253, 254, 255, 508, 600])
@pytest.mark.parametrize("last", [b"", b"\x00", b"\x00" * 300, b"\x05" * 254])
def test_0xff_blocks_inside_dense_data(run: int, last: bytes, dense_calls: list[int]) -> None:
    data = bytes(400) + b"\xff" * run + bytes(3) + b"\x11" * run + last
    enc = cobs_encode(data)
    assert assert_like_reference(enc) == len(data)
    assert dense_calls == [1]
    # The same data one byte short of room, and with exactly enough.
    assert assert_like_reference(enc, cap=len(data) - 1) == -1
    assert assert_like_reference(enc, cap=len(data)) == len(data)


def test_malformed_dense_input_is_invalid_like_the_reference(dense_calls: list[int]) -> None:
    enc = bytearray(cobs_encode(bytes(1000) + b"\x07" * 10))
    assert enc[-11] == 11 and len(enc) == 1011  # 1000 one-byte blocks, then one of 10 data bytes
    cases = {
        "0x00 where a code is due": enc[:700] + b"\x00" + enc[701:],
        "the last block runs past the end": enc[:-1],
        "a code jumps past the end": enc[:-11] + b"\x0c" + enc[-10:],
        "a code lands short of the end, the next jumps past it": enc[:-11] + b"\x05" + enc[-10:],
        "a block after the last one runs past the end": enc + b"\x03\x09",
    }
    for bad in cases.values():
        assert assert_like_reference(bytes(bad)) == -1
    assert assert_like_reference(bytes(enc + b"\x02\x09")) == 1012  # ..., 0x00 (no longer last), 0x09
    assert len(dense_calls) == len(cases) + 1
    assert assert_like_reference(bytes(enc), cap=1009) == -1
    assert assert_like_reference(bytes(enc), cap=1010) == 1010


def test_decoding_a_prefix_and_a_small_scratch() -> None:
    enc = cobs_encode(bytes(2000)) + b"\x03\x01\x01"
    small = codec.DecodeScratch(100)  # too small for this input: the decoder allocates its own
    assert assert_like_reference(enc, len(enc) - 3, scratch=small) == 2000
    assert assert_like_reference(enc, len(enc) - 2) == -1
    with pytest.raises(ArgumentError, match="out of range"):
        cobs_decode_into(enc, len(enc) + 1, bytearray(4000))


dense_data = st.builds(
    dense_bytes, st.integers(0, 4000), st.sampled_from([0.2, 0.5, 0.9, 0.99, 1.0]), st.integers(0, 2**32 - 1)
)
ff_runs = st.lists(
    st.tuples(st.integers(0, 600), st.sampled_from([b"\xff", b"\x01", b"\x80"]), st.integers(0, 400)), max_size=8
).map(lambda runs: b"".join(fill * length + bytes(zeros) for length, fill, zeros in runs))
any_data = st.one_of(dense_data, ff_runs, st.binary(max_size=4000), st.integers(0, 3000).map(bytes))


def vectorised_from_the_second_block(mp: pytest.MonkeyPatch) -> None:
    """Make every input of more than one block switch to the vectorised path, whatever its density."""
    mp.setattr(codec, "_ROUND", 1)
    mp.setattr(codec, "_DENSE", 1 << 20)
    mp.setattr(codec, "_MIN_REST", 1)


@settings(max_examples=300, deadline=None)
@given(any_data, st.booleans(), st.booleans())
def test_property_fast_decoder_equals_the_reference(data: bytes, scratch: bool, forced: bool) -> None:
    enc = cobs_encode(data)
    with pytest.MonkeyPatch.context() as mp:
        if forced:
            vectorised_from_the_second_block(mp)
        assert assert_like_reference(enc, scratch=codec.DecodeScratch(len(enc)) if scratch else None) == len(data)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(dense_data, ff_runs, st.binary(max_size=2000)),
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=3),
    st.integers(-3, 3),
    st.integers(-2, 2),
)
def test_property_malformed_input_is_judged_like_the_reference(
    data: bytes, edits: list[tuple[float, int]], resize: int, room: int
) -> None:
    enc = bytearray(cobs_encode(data))
    for where, value in edits:
        if enc:
            enc[int(where * len(enc))] = value
    enc = enc[: len(enc) + resize] if resize < 0 else enc + b"\x01" * resize
    assert_like_reference(bytes(enc), cap=max(0, len(data) + room))
    with pytest.MonkeyPatch.context() as mp:
        vectorised_from_the_second_block(mp)
        assert_like_reference(bytes(enc), cap=max(0, len(data) + room))
