"""The sans-IO codec under every fault on the list, and property tests."""

from __future__ import annotations

import random
from collections.abc import Iterable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    return [key(f) for chunk in chunks for f in decoder.feed(chunk)]


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
    with pytest.raises(ValueError, match="exceeds the protocol maximum"):
        encode_frame(make_frame(np.zeros((MAX_PAYLOAD // 2 + 1, 2), np.uint8)))
    with pytest.raises(ValueError, match="samples 70000 out of range"):
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
        list(d.feed(encode_frame(make_frame(np.ones((1, 1), np.int8), seq=s))))
    assert d.stats.gaps == 2  # 1 and 2 missing; the wrap and the duplicate are not gaps
    list(d.feed(encode_frame(make_frame(np.ones((1, 1), np.int8), seq=0, flags=1))))
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
    (got,) = list(FrameDecoder().feed(encode_frame(frame)))
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
    for i in range(0, len(junk), chunk):
        for f in d.feed(junk[i : i + chunk]):
            assert f.values().shape == (f.samples, f.channels)  # anything it accepts is well formed
    good = frames(1)[0]
    assert decode_all(d, [b"\x00" + encode_frame(good)]) == [key(good)]
    assert len(d._pending) == MAX_ENCODED
