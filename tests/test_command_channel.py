"""Host -> device commands (firmware_notes/serial_protocol.md, "Commands and replies").

The codec and the clock math on their own, then the firmware emulator answering a real
``SerialSource`` over a real pseudo-terminal: START, STOP, SET_RATE, PING, NACKs, a lost
reply retried, no reply at all, and a board reset. Nothing sleeps for a fixed time: the
tests wait for replies (the channel waits on a condition) or poll a condition with a
timeout.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_stream_serial import wait_until

from edge_runtime.errors import ArgumentError, StreamError
from edge_runtime.hil.emulator import CommandHandler, Emulator, Faults
from edge_runtime.stream.codec import FLAG_START, Frame, FrameDecoder, cobs_encode, encode_frame, make_frame
from edge_runtime.stream.command import (
    Command,
    CommandChannel,
    CommandReceiver,
    CommandRejectedError,
    CommandTimeoutError,
    Opcode,
    PingSample,
    Reason,
    Reply,
    Status,
    clock_estimate,
    decode_command,
    decode_reply,
    encode_command,
    encode_reply,
    host_clock_us,
    parse_reply,
)
from edge_runtime.stream.sources import SerialSource

CH = 6
U64 = 2**64 - 1

# ---- codec -----------------------------------------------------------------------

commands = st.builds(Command, st.integers(0, 255), st.integers(0, 0xFFFF), st.integers(0, 255), st.integers(0, U64))
acks = st.builds(
    Reply,
    st.integers(0, 255),
    st.integers(0, 0xFFFF),
    st.integers(0, 255),
    st.just(Status.ACK),
    st.just(Reason.NONE),
    st.integers(0, U64),
    st.integers(0, U64),
    st.integers(0, U64),
)
nacks = st.builds(
    Reply,
    st.integers(0, 255),
    st.integers(0, 0xFFFF),
    st.integers(0, 255),
    st.just(Status.NACK),
    st.integers(1, 255),  # codes this host does not know are kept as ints
    st.integers(0, U64),
)


@settings(max_examples=300, deadline=None)
@given(commands)
def test_property_command_round_trip(cmd: Command) -> None:
    wire = encode_command(cmd)
    assert wire.count(0) == 1 and wire.endswith(b"\x00") and len(wire) <= 22
    assert decode_command(wire) == cmd
    assert decode_command(wire[:-1]) == cmd  # the 0x00 is optional
    assert CommandReceiver().feed(wire) == [cmd]


@settings(max_examples=300, deadline=None)
@given(st.one_of(acks, nacks))
def test_property_reply_round_trip(reply: Reply) -> None:
    wire = encode_reply(reply)
    assert wire.count(0) == 1 and wire.endswith(b"\x00") and len(wire) <= 38
    assert decode_reply(wire) == reply
    bodies: list[bytes] = []
    decoder = FrameDecoder(on_reply=bodies.append)
    assert decoder.decode_all(wire) == []
    assert [parse_reply(b) for b in bodies] == [reply] and decoder.stats.malformed == 0


@pytest.mark.parametrize(
    ("make", "field_name"),
    [
        (lambda: encode_command(Command(256)), "opcode"),
        (lambda: encode_command(Command(1, token=0x10000)), "token"),
        (lambda: encode_command(Command(1, token=-1)), "token"),
        (lambda: encode_command(Command(1, stream_id=256)), "stream_id"),
        (lambda: encode_command(Command.set_rate(2**64)), "arg"),
        (lambda: encode_reply(Reply(1, 0, t1_us=-1)), "t1_us"),
        (lambda: encode_reply(Reply(1, 0, reason=Reason.BAD_ARGUMENT)), "ACK with reason BAD_ARGUMENT"),
        (lambda: encode_reply(Reply(1, 0, status=Status.NACK)), "NACK with reason NONE"),
    ],
)
def test_encoding_a_value_out_of_range_is_an_argument_error(make: Callable[[], bytes], field_name: str) -> None:
    with pytest.raises(ArgumentError, match=field_name):
        make()


def _frame_of(body: bytes) -> bytes:
    return cobs_encode(body + zlib.crc32(body).to_bytes(4, "little")) + b"\x00"


@pytest.mark.parametrize(
    ("decode", "wire", "why"),
    [
        (decode_command, b"", "one COBS-encoded frame"),
        (decode_command, encode_command(Command.start())[:-3] + b"\x00\x01\x00", "one COBS-encoded frame"),
        (decode_command, encode_command(Command.start())[:-2] + b"\x77\x00", "CRC-32 mismatch"),
        (decode_command, b"\x09\x81\x01\x00", "invalid COBS"),
        (decode_command, encode_reply(Reply(1, 0)), "36 bytes decoded, a command frame is 20"),
        (decode_command, encode_frame(make_frame(np.zeros(6, np.int16))), "a command frame is 20"),
        (decode_command, _frame_of(b"\x82" + bytes(15)), "not a command: 16 bytes starting with 0x82"),
        (decode_reply, encode_command(Command.start()), "20 bytes decoded, a reply frame is 36"),
        (decode_reply, _frame_of(b"\x81" + bytes(31)), "not a reply: 32 bytes starting with 0x81"),
        (decode_reply, _frame_of(b"\x82\x01\x00\x00\x00\x02" + bytes(26)), "status 2 is neither ACK"),
        (decode_reply, _frame_of(b"\x82\x01\x00\x00\x00\x00\x03" + bytes(25)), "ACK with reason UNKNOWN_STREAM"),
    ],
)
def test_decoding_what_is_not_such_a_frame_is_an_argument_error(
    decode: Callable[[bytes], object], wire: bytes, why: str
) -> None:
    with pytest.raises(ArgumentError, match=why):
        decode(wire)


def seqs_of(out: list[int]) -> Callable[[Frame], None]:
    return lambda frame: out.append(frame.seq)


def test_the_data_decoder_routes_replies_between_frames_one_byte_at_a_time() -> None:
    data = [make_frame(np.full((5, 2), i, np.int16), seq=i, flags=FLAG_START if i == 0 else 0) for i in range(4)]
    replies = [Reply(Opcode.PING, 7, arg=1, t1_us=2, t2_us=3), Reply(Opcode.STOP, 8)]
    wire = (
        encode_frame(data[0])
        + encode_reply(replies[0])
        + encode_frame(data[1])
        + encode_command(Command.start())  # a command on the host's RX (a loopback): not data, not a reply
        + encode_frame(data[2])
        + encode_reply(replies[1])
        + encode_frame(data[3])
    )
    for step in (1, len(wire)):
        bodies: list[bytes] = []
        decoder = FrameDecoder(on_reply=bodies.append)
        seqs: list[int] = []
        on_frame = seqs_of(seqs)
        for i in range(0, len(wire), step):
            decoder.feed(wire[i : i + step], on_frame=on_frame)
        assert seqs == [0, 1, 2, 3]
        assert [parse_reply(b) for b in bodies] == replies
        s = decoder.stats
        assert (s.frames, s.replies, s.malformed, s.crc_errors, s.gaps, s.restarts) == (4, 2, 1, 0, 0, 1)
        assert s.bytes == len(wire)
    # Without a callback the replies are counted and dropped, never taken for data.
    decoder = FrameDecoder()
    assert len(decoder.decode_all(wire)) == 4 and decoder.stats.replies == 2


def test_command_receiver_drops_and_counts_what_it_cannot_trust() -> None:
    good = [Command.set_rate(5000, token=3), Command(0x7E, 6)]
    bad_crc = bytearray(encode_command(Command.stop(token=2)))
    bad_crc[-2] ^= 0x40
    stream = (
        b"\x00"
        + encode_command(good[0])
        + bytes(bad_crc)
        + bytes(range(1, 200))  # no 0x00 for 199 bytes: dropped up to the next one
        + b"\x00"
        + encode_frame(make_frame(np.zeros(2, np.int8)))
        + encode_reply(Reply(1, 1))
        + encode_command(good[1])
    )
    receiver = CommandReceiver()
    got = [cmd for i in range(len(stream)) for cmd in receiver.feed(stream[i : i + 1])]
    assert got == good and got[1].name == "opcode 0x7e" and got[0].name == "SET_RATE"
    assert (receiver.stats.commands, receiver.stats.errors, receiver.stats.bytes) == (2, 4, len(stream))


# ---- clock offset ------------------------------------------------------------------


def test_clock_estimate_keeps_the_ping_with_the_smallest_rtt() -> None:
    # Board = host + 1,000,000 us. Ping A: 100 us each way; B: 20 up, 500 down (a frame in
    # front of its reply); C: 10 and 10, 30 us in the firmware.
    a = PingSample(t0_us=0, t1_us=1_000_100, t2_us=1_000_150, t3_us=250)
    b = PingSample(t0_us=1000, t1_us=1_001_020, t2_us=1_001_030, t3_us=1530)
    c = PingSample(t0_us=2000, t1_us=1_002_010, t2_us=1_002_040, t3_us=2050)
    assert [s.rtt_us for s in (a, b, c)] == [200, 520, 20]
    assert (a.offset_us, c.offset_us) == (1_000_000, 1_000_000)
    assert b.offset_us == 1_000_000 - 240  # the asymmetry shows, within rtt / 2
    est = clock_estimate([a, b, c])
    assert (est.offset_us, est.rtt_us, est.pings, est.sample, est.error_us) == (1_000_000, 20, 3, c, 10)
    assert est.board_to_host_us(1_002_040) == 2040 and est.host_to_board_us(2040) == 1_002_040


@settings(max_examples=300, deadline=None)
@given(
    st.integers(-(2**40), 2**40),  # true offset, board - host
    st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 10**5), st.integers(0, 10**5), st.integers(0, 10**4))),
)
def test_property_the_true_offset_is_within_half_the_rtt(offset: int, pings: list[tuple[int, int, int, int]]) -> None:
    samples = []
    for t0, up, down, busy in pings:
        t1 = t0 + up + offset
        t2 = t1 + busy
        samples.append(PingSample(t0, t1, t2, t2 - offset + down))
    if not samples:
        with pytest.raises(ArgumentError, match="no ping samples"):
            clock_estimate(samples)
        return
    est = clock_estimate(samples)
    assert est.rtt_us == min(up + down for _, up, down, _ in pings)
    assert abs(est.offset_us - offset) <= est.error_us


@pytest.mark.parametrize(
    "sample",
    [
        PingSample(t0_us=100, t1_us=5, t2_us=6, t3_us=99),  # the reply before the request
        PingSample(t0_us=0, t1_us=6, t2_us=5, t3_us=10),  # sent before received
        PingSample(t0_us=0, t1_us=0, t2_us=50, t3_us=10),  # the board busier than the round trip was long
    ],
)
def test_impossible_ping_times_are_an_argument_error(sample: PingSample) -> None:
    with pytest.raises(ArgumentError, match="impossible ping times"):
        clock_estimate([sample])


# ---- the channel on its own: a late duplicate reply --------------------------------


def test_channel_takes_the_first_reply_and_counts_a_late_duplicate() -> None:
    """An in-process device (the emulator's handler): each command answered twice, the second time late."""
    handler = CommandHandler(0, 10_000, clock_us=host_clock_us)
    late: list[bytes] = []
    channel: CommandChannel

    def write(wire: bytes, timeout_s: float) -> None:
        (cmd,) = CommandReceiver().feed(wire)
        body = encode_reply(handler.handle(cmd, host_clock_us())[0])
        channel.deliver(decode_reply_body(body))
        late.append(decode_reply_body(body))

    channel = CommandChannel(write, device="inproc", first_token=0xFFFF)
    first = channel.send(Command.stop())
    channel.deliver(late.pop())  # the duplicate: nobody waits for it now
    second = channel.send(Command.start())
    assert (first.token, second.token) == (0xFFFF, 0), "tokens count up and wrap"
    assert channel.stats.replies == 2 and channel.stats.stray_replies == 1
    channel.deliver(b"\x82" + bytes(5))  # good CRC but no reply: counted, not raised
    assert channel.stats.bad_replies == 1


def decode_reply_body(wire: bytes) -> bytes:
    """The body (without CRC) of an encoded reply, as FrameDecoder hands it to ``on_reply``."""
    bodies: list[bytes] = []
    FrameDecoder(on_reply=bodies.append).decode_all(wire)
    (body,) = bodies
    return body


# ---- over a real pty: the emulator answers a SerialSource --------------------------


def recording(n: int) -> np.ndarray:
    """Sample i, channel c holds i * CH + c."""
    return np.arange(n * CH, dtype=np.float32).reshape(n, CH)


@dataclass
class Got:
    seq: int
    flags: int
    interval_us: int
    timestamp_us: int
    last_timestamp_us: int
    samples: int
    arrival_us: int


@dataclass
class Collector:
    frames: list[Got] = field(default_factory=list)

    def __call__(self, frame: Frame, arrival_ns: int) -> None:
        self.frames.append(
            Got(
                frame.seq,
                frame.flags,
                frame.interval_us,
                frame.timestamp_us,
                frame.last_timestamp_us,
                frame.samples,
                arrival_ns // 1000,
            )
        )


@contextmanager
def linked(emu: Emulator, src: SerialSource) -> Iterator[Collector]:
    """``src`` reads on a thread while ``emu`` sends (once the reader has opened the port)."""
    got = Collector()
    stop = threading.Event()
    reader = threading.Thread(target=src.run, args=(got, stop), daemon=True)
    reader.start()
    try:
        assert wait_until(lambda: src.stats.connects >= 1), "the reader did not open the port"
        emu.start()
        yield got
    finally:
        stop.set()
        reader.join(5)
        emu.close()
    assert not reader.is_alive(), "the reader did not stop"


@pytest.fixture
def link(tmp_path: Path) -> Path:
    return tmp_path / "ttyIMU"


def test_stop_then_start(link: Path) -> None:
    emu = Emulator(recording(100_000), rate=100, speed=5, frame_samples=10, link=link)
    src = SerialSource(str(link))
    with linked(emu, src) as got:
        assert wait_until(lambda: len(got.frames) >= 3)
        reply = src.stop_stream()
        assert reply.ok and reply.name == "STOP" and reply.stream_id == 0
        # Every frame the emulator sent went before its reply, and none after it.
        stopped_at = src.stats.frames
        assert emu.stats.frames == stopped_at and not emu.handler.running
        src.ping(4)  # four more round trips through the stopped device
        assert src.stats.frames == stopped_at and emu.stats.frames == stopped_at
        assert src.stop_stream().ok  # STOP again: nothing changes
        assert src.start_stream().ok
        assert wait_until(lambda: len(got.frames) >= stopped_at + 3)
    seqs = [g.seq for g in got.frames]
    assert seqs == list(range(len(seqs))), "START resumes with the next seq"
    assert [g.flags for g in got.frames] == [FLAG_START] + [0] * (len(seqs) - 1)
    dec = src.decoder.stats
    assert (dec.gaps, dec.restarts, dec.malformed, dec.crc_errors) == (0, 1, 0, 0)
    assert dec.replies == src.channel.stats.replies == 7  # STOP, 4 PINGs, STOP, START
    assert got.frames[stopped_at].timestamp_us >= got.frames[stopped_at - 1].last_timestamp_us


def test_set_rate_changes_the_frames_interval_and_the_pace(link: Path) -> None:
    emu = Emulator(recording(100_000), rate=100, speed=4, frame_samples=10, link=link)
    src = SerialSource(str(link))
    with linked(emu, src) as got:
        assert wait_until(lambda: len(got.frames) >= 2)
        reply = src.set_rate(2500)
        switched = src.stats.frames  # frames read before the reply
        assert reply.ok and reply.arg == 2500, "the ACK says the interval now in effect"
        assert emu.interval_us == 2500 and emu.send_rate == pytest.approx(1e6 / 2500 * 4)
        assert wait_until(lambda: len(got.frames) >= switched + 3)
    before, after = got.frames[:switched], got.frames[switched:]
    assert {g.interval_us for g in before} == {10_000} and {g.interval_us for g in after} == {2500}
    last = before[-1]
    assert after[0].timestamp_us == last.timestamp_us + last.samples * 10_000, "time goes on where it was"
    assert after[1].timestamp_us == after[0].timestamp_us + 10 * 2500
    assert src.decoder.stats.gaps == 0


@pytest.mark.parametrize("offset_us", [0, 86_400_000_000, -1_000_000])
def test_ping_recovers_the_board_clock_offset_within_the_rtt(link: Path, offset_us: int) -> None:
    emu = Emulator(recording(100_000), rate=100, speed=1, frame_samples=5, link=link, board_clock_offset_us=offset_us)
    src = SerialSource(str(link))
    with linked(emu, src) as got:
        assert wait_until(lambda: len(got.frames) >= 1)
        est = src.ping(8)
        pinged = len(got.frames)
        assert wait_until(lambda: len(got.frames) >= pinged + 3)
    assert src.clock is est and est.pings == 8 and est.rtt_us >= 0
    # The host's clocks are microseconds floored from nanoseconds: 1 us more.
    assert abs(est.offset_us - offset_us) <= est.error_us + 1, (est.offset_us - offset_us, est.rtt_us)
    # At speed 1 the frames carry the board clock: a sample is taken before its frame arrives.
    for g in got.frames[pinged:]:
        assert est.board_to_host_us(g.last_timestamp_us) <= g.arrival_us + est.error_us + 1


def test_a_nack_is_a_clear_error_and_changes_nothing(link: Path) -> None:
    emu = Emulator(recording(100_000), rate=100, speed=2, frame_samples=10, link=link)
    src = SerialSource(str(link))
    with linked(emu, src):
        with pytest.raises(CommandRejectedError) as info:
            src.set_rate(0)
        err = info.value
        assert err.nack_reason == Reason.BAD_ARGUMENT and err.reply.status == Status.NACK
        assert isinstance(err, StreamError) and err.device == str(link)
        assert "device refused SET_RATE (stream 0" in str(err) and "NACK BAD_ARGUMENT" in str(err)
        assert str(link) in str(err)
        with pytest.raises(CommandRejectedError, match="NACK BAD_ARGUMENT: argument 4294967296 is out of"):
            src.set_rate(2**32)  # would not fit interval_us
        with pytest.raises(CommandRejectedError, match="NACK UNKNOWN_STREAM: the device has no stream 9"):
            src.start_stream(9)
        with pytest.raises(CommandRejectedError, match=r"refused opcode 0x7e .*NACK UNKNOWN_OPCODE"):
            src.command(Command(0x7E))
        reply = src.channel.send(Command.stop(9), check=False)  # check=False: the NACK is returned
        assert (reply.ok, reply.reason, reply.reason_name) == (False, Reason.UNKNOWN_STREAM, "UNKNOWN_STREAM")
        assert emu.handler.running and emu.interval_us == 10_000
        assert emu.stats.nacks == 5 and emu.stats.executed == 0 and src.channel.stats.nacks == 5


def test_a_lost_reply_is_retried_and_not_executed_twice(link: Path) -> None:
    emu = Emulator(
        recording(100_000), rate=100, speed=2, frame_samples=10, link=link, faults=Faults(drop_reply_every=2)
    )
    src = SerialSource(str(link))
    with linked(emu, src) as got:
        assert src.stop_stream(timeout_s=0.5).ok  # reply 0 goes out
        reply = src.start_stream(timeout_s=0.5, retries=3)  # reply 1 is lost: the retry gets it from memory
        assert reply.ok and reply.name == "START"
        assert wait_until(lambda: emu.stats.commands == 2 + src.channel.stats.retries)
        assert wait_until(lambda: len(got.frames) >= 1)
    ch = src.channel.stats
    assert ch.retries >= 1 and ch.timeouts == 0 and ch.commands == 2
    assert emu.stats.executed == 2, "each command carried out once"
    assert emu.stats.duplicates == ch.retries and emu.stats.replies_dropped >= 1
    assert emu.handler.running


def test_no_reply_at_all_times_out_naming_the_port(link: Path) -> None:
    emu = Emulator(
        recording(100_000), rate=100, speed=2, frame_samples=10, link=link, faults=Faults(drop_reply_every=1)
    )
    src = SerialSource(str(link))
    with linked(emu, src):
        with pytest.raises(CommandTimeoutError) as info:
            src.stop_stream(timeout_s=0.1, retries=1)
        assert wait_until(lambda: emu.stats.commands == 2)
        with pytest.raises(CommandTimeoutError, match="no reply to any of 2 PINGs"):
            src.ping(2, timeout_s=0.05)
    err = info.value
    assert isinstance(err, TimeoutError) and isinstance(err, StreamError)
    assert err.attempts_made == 2 and err.command.opcode == Opcode.STOP
    assert "no reply to STOP" in str(err) and "after 2 attempt(s) of 0.1 s each" in str(err)
    assert str(link) in str(err)
    # STOP carried out once (its retry answered from memory, both replies lost), then two PINGs.
    assert emu.stats.executed == 3 and emu.stats.duplicates == 1 and not emu.handler.running
    assert src.channel.stats.timeouts == 3 and emu.stats.replies_dropped == 4


def test_a_command_without_the_reader_is_an_error_at_once(tmp_path: Path) -> None:
    src = SerialSource(str(tmp_path / "ttyUSB0"))
    t0 = time.monotonic()
    with pytest.raises(StreamError, match=r"link is not open .*SerialSource\.run is not reading") as info:
        src.set_rate(1000, timeout_s=30)
    assert time.monotonic() - t0 < 30, "it did not wait for a link that nobody opens"
    assert info.value.device == str(tmp_path / "ttyUSB0")
    assert src.clock is None


def test_commands_from_several_threads_take_turns(link: Path) -> None:
    emu = Emulator(recording(100_000), rate=100, speed=2, frame_samples=10, link=link)
    src = SerialSource(str(link))
    errors: list[BaseException] = []

    def client(k: int) -> None:
        try:
            for _ in range(5):
                assert src.ping(1).pings == 1
                assert src.set_rate(1000 * (k + 1)).arg == 1000 * (k + 1)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    with linked(emu, src):
        threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors, errors
    assert src.channel.stats.commands == 40 and src.channel.stats.replies == 40
    assert emu.stats.commands == 40 and emu.stats.duplicates == 0 and src.channel.stats.stray_replies == 0


def test_commands_work_again_after_an_unplug(link: Path) -> None:
    emu = Emulator(
        recording(100_000),
        rate=100,
        speed=5,
        frame_samples=10,
        link=link,
        faults=Faults(disconnect_at=3, disconnect_s=0.2),
    )
    src = SerialSource(str(link), backoff_s=(0.02, 0.1))
    with linked(emu, src):
        assert src.ping(2).pings == 2
        assert wait_until(lambda: src.stats.connects == 2), "the emulator was unplugged and plugged in again"
        assert src.ping(2, timeout_s=2).pings == 2  # waits for the port to be open again, if need be
        assert src.stop_stream(timeout_s=2).ok


def test_reset_restarts_the_sequence_and_the_clock(link: Path) -> None:
    emu = Emulator(recording(120), rate=100, speed=None, frame_samples=10, link=link, faults=Faults(reset_at=5))
    src = SerialSource(str(link))
    with linked(emu, src) as got:
        assert wait_until(lambda: emu.finished.is_set())
        assert wait_until(lambda: src.decoder.stats.bytes == emu.stats.bytes), "the reader got every byte"
    assert [g.seq for g in got.frames] == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6]
    assert [i for i, g in enumerate(got.frames) if g.flags & FLAG_START] == [0, 5]
    assert [g.timestamp_us for g in got.frames] == [i * 100_000 for i in [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6]]
    dec = src.decoder.stats
    assert dec.restarts == 2 and dec.gaps == 0 and dec.malformed == 0, "a restart, not a gap"
    assert emu.stats.resets == 1 and emu.stats.frames == 12


def test_a_reset_forgets_set_rate(link: Path) -> None:
    emu = Emulator(recording(100_000), rate=100, speed=2, frame_samples=10, link=link, faults=Faults(reset_at=25))
    src = SerialSource(str(link))
    with linked(emu, src) as got:
        assert src.stop_stream().ok
        assert emu.stats.frames < 25, "stopped before the reset frame"
        assert src.set_rate(5000).ok
        assert src.start_stream().ok
        assert wait_until(lambda: any(g.flags & FLAG_START for g in got.frames[1:]), timeout_s=30)
        assert wait_until(lambda: len(got.frames) >= 27)
    reset = next(i for i, g in enumerate(got.frames) if i and g.flags & FLAG_START)
    assert reset == 25 and got.frames[reset - 1].interval_us == 5000
    assert all(g.interval_us == 10_000 for g in got.frames[reset:]), "the first interval again after a reset"
    assert got.frames[reset].seq == 0 and got.frames[reset].timestamp_us == 0
    assert emu.handler.running and emu.interval_us == 10_000
