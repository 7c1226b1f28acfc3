"""Host -> device commands and device -> host replies (firmware_notes/serial_protocol.md,
"Commands and replies"), the clock-offset math, and ``CommandChannel``.

The framing is the data frames' (COBS, CRC-32, 0x00); the first byte of a frame tells
the kinds apart: 1 (``VERSION``) a data frame, 0x81 a command, 0x82 a reply.

- ``Command``/``Reply`` are values: ``encode_command``/``decode_command`` and
  ``encode_reply``/``decode_reply`` turn them into exact wire bytes and back, raising
  ``ArgumentError`` for a value out of range or bytes that are not such a frame.
  ``parse_command``/``parse_reply`` take a frame body already checked by CRC (what
  ``FrameDecoder`` hands its ``on_reply`` callback, what ``CommandReceiver`` decodes).
- ``CommandReceiver`` is the device side, sans-IO: fed bytes from the host, it returns
  the commands they complete and counts what it drops (a device cannot answer a frame
  whose token it cannot trust).
- ``clock_estimate(pings)`` is the NTP-style offset between the board clock and the
  host clock, a pure function.
- ``CommandChannel`` sends one command at a time through a ``write`` function and waits
  (on a condition, with a timeout per attempt and retries of the same token) for the
  reply that whoever reads the link hands to ``deliver``. ``SerialSource`` owns one.

Clocks: the host clock is ``time.perf_counter_ns() // 1000`` microseconds
(``host_clock_us``), the clock of ``arrival_ns`` in the sources; the board clock is the
device's, in microseconds, the clock of the data frames' ``timestamp_us``.
"""

from __future__ import annotations

import enum
import random
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..errors import ArgumentError, StreamError
from .codec import COMMAND_SIZE, COMMAND_TYPE, CRC_SIZE, REPLY_SIZE, REPLY_TYPE, cobs_decode_into, cobs_encode

__all__ = [
    "COMMAND",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT_S",
    "REPLY",
    "ChannelStats",
    "ClockEstimate",
    "Command",
    "CommandChannel",
    "CommandReceiver",
    "CommandRejectedError",
    "CommandTimeoutError",
    "Opcode",
    "PingSample",
    "Reason",
    "ReceiverStats",
    "Reply",
    "Status",
    "WriteFn",
    "clock_estimate",
    "decode_command",
    "decode_reply",
    "encode_command",
    "encode_reply",
    "host_clock_us",
    "parse_command",
    "parse_reply",
]

#: Command body: type 0x81, opcode, token, stream_id, 3 reserved bytes (0), arg. 16 bytes.
COMMAND = struct.Struct("<BBHB3xQ")
#: Reply body: type 0x82, opcode, token, stream_id, status, reason, 1 reserved byte (0), arg, t1, t2. 32 bytes.
REPLY = struct.Struct("<BBHBBBxQQQ")
assert COMMAND.size == COMMAND_SIZE and REPLY.size == REPLY_SIZE

_CRC = struct.Struct("<I")
_U64 = 2**64 - 1
#: Longest COBS encoding of a command or reply frame (body + CRC), without the 0x00.
_MAX_CONTROL_ENCODED = REPLY_SIZE + CRC_SIZE + 2

#: Defaults of ``CommandChannel`` and ``SerialSource.command``: seconds per attempt, and
#: attempts after the first. Size the timeout for the link (see the spec's "Timing").
DEFAULT_TIMEOUT_S = 0.5
DEFAULT_RETRIES = 2


class Opcode(enum.IntEnum):
    """What a command asks. Any other u8 is still a well-formed command: the device NACKs it."""

    START = 1
    STOP = 2
    SET_RATE = 3
    PING = 4


class Status(enum.IntEnum):
    ACK = 0
    NACK = 1


class Reason(enum.IntEnum):
    """Why a device NACKed a command (``NONE`` with an ACK)."""

    NONE = 0
    UNKNOWN_OPCODE = 1
    BAD_ARGUMENT = 2
    UNKNOWN_STREAM = 3


def host_clock_us() -> int:
    """The host clock of the command channel, microseconds: ``time.perf_counter_ns() // 1000``.

    The same clock as the sources' ``arrival_ns`` (divided by 1000), so a frame's arrival
    and a ping's t0/t3 can be compared directly.
    """
    return time.perf_counter_ns() // 1000


def _opname(opcode: int) -> str:
    return Opcode(opcode).name if opcode in Opcode._value2member_map_ else f"opcode 0x{opcode:02x}"


def _reasonname(reason: int) -> str:
    return Reason(reason).name if reason in Reason._value2member_map_ else f"reason {reason}"


def _check(name: str, value: int, top: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
        raise ArgumentError(f"{name} {value!r} out of range 0..{top}")


@dataclass(frozen=True, slots=True)
class Command:
    """One host -> device command.

    ``opcode``: an ``Opcode`` (any other u8 is encoded as is; the device NACKs it with
    ``UNKNOWN_OPCODE``). ``token``: u16 chosen by the host, echoed in the reply
    (``CommandChannel`` assigns its own). ``stream_id``: the stream START, STOP and
    SET_RATE act on (0 for PING). ``arg``: u64; SET_RATE: the new ``interval_us``
    (microseconds between two samples of one channel); PING: t0, the host clock in
    microseconds when it was sent; START, STOP: 0.
    """

    opcode: int
    token: int = 0
    stream_id: int = 0
    arg: int = 0

    @classmethod
    def start(cls, stream_id: int = 0, token: int = 0) -> Command:
        return cls(Opcode.START, token, stream_id)

    @classmethod
    def stop(cls, stream_id: int = 0, token: int = 0) -> Command:
        return cls(Opcode.STOP, token, stream_id)

    @classmethod
    def set_rate(cls, interval_us: int, stream_id: int = 0, token: int = 0) -> Command:
        """SET_RATE: ``interval_us`` microseconds between two samples of one channel (100 Hz: 10000)."""
        return cls(Opcode.SET_RATE, token, stream_id, interval_us)

    @classmethod
    def ping(cls, t0_us: int, token: int = 0) -> Command:
        """PING sent at host time ``t0_us`` (microseconds, ``host_clock_us``)."""
        return cls(Opcode.PING, token, 0, t0_us)

    @property
    def name(self) -> str:
        """The opcode's name (``SET_RATE``), or ``opcode 0x7e`` for an unknown one."""
        return _opname(self.opcode)


@dataclass(frozen=True, slots=True)
class Reply:
    """One device -> host reply, echoing the command's ``opcode``, ``token`` and ``stream_id``.

    ``status``: ACK or NACK; ``reason``: ``Reason.NONE`` with an ACK, else why (a
    ``Reason``; a code this host does not know is kept as its int). ``arg``: the
    command's arg, echoed (SET_RATE's ACK: the interval_us now in effect; PING: t0).
    ``t1_us``/``t2_us``: PING's ACK (PONG) only, else 0: the board clock, microseconds,
    when the PING arrived and when the reply was sent.
    """

    opcode: int
    token: int
    stream_id: int = 0
    status: Status = Status.ACK
    reason: int = Reason.NONE
    arg: int = 0
    t1_us: int = 0
    t2_us: int = 0

    @property
    def ok(self) -> bool:
        return self.status == Status.ACK

    @property
    def name(self) -> str:
        return _opname(self.opcode)

    @property
    def reason_name(self) -> str:
        """``BAD_ARGUMENT``, or ``reason 9`` for a code this host does not know."""
        return _reasonname(self.reason)

    @property
    def t0_us(self) -> int:
        """PING's t0 echoed (the host clock when it was sent, microseconds)."""
        return self.arg


def _frame(body: bytes) -> bytes:
    return cobs_encode(body + _CRC.pack(zlib.crc32(body))) + b"\x00"


def encode_command(cmd: Command) -> bytes:
    """The wire bytes of ``cmd``: COBS(16-byte body + CRC-32) then 0x00 (at most 23 bytes).

    ``ArgumentError`` if a field does not fit (opcode and stream_id u8, token u16, arg u64).
    """
    _check("opcode", cmd.opcode, 0xFF)
    _check("token", cmd.token, 0xFFFF)
    _check("stream_id", cmd.stream_id, 0xFF)
    _check("arg", cmd.arg, _U64)
    return _frame(COMMAND.pack(COMMAND_TYPE, cmd.opcode, cmd.token, cmd.stream_id, cmd.arg))


def encode_reply(reply: Reply) -> bytes:
    """The wire bytes of ``reply``: COBS(32-byte body + CRC-32) then 0x00 (at most 38 bytes).

    ``ArgumentError`` if a field does not fit, or status and reason disagree (an ACK has
    reason NONE, a NACK another).
    """
    _check("opcode", reply.opcode, 0xFF)
    _check("token", reply.token, 0xFFFF)
    _check("stream_id", reply.stream_id, 0xFF)
    _check("reason", reply.reason, 0xFF)
    for name, value in (("arg", reply.arg), ("t1_us", reply.t1_us), ("t2_us", reply.t2_us)):
        _check(name, value, _U64)
    if reply.status not in (Status.ACK, Status.NACK):
        raise ArgumentError(f"status {reply.status!r} is neither ACK (0) nor NACK (1)")
    if (reply.status == Status.ACK) != (reply.reason == Reason.NONE):
        raise ArgumentError(f"{Status(reply.status).name} with reason {_reasonname(reply.reason)}")
    body = REPLY.pack(
        REPLY_TYPE,
        reply.opcode,
        reply.token,
        reply.stream_id,
        reply.status,
        reply.reason,
        reply.arg,
        reply.t1_us,
        reply.t2_us,
    )
    return _frame(body)


def parse_command(body: bytes | bytearray | memoryview) -> Command:
    """The command in a frame body (decoded, CRC checked and removed); ``ArgumentError`` if it is not one."""
    if len(body) != COMMAND_SIZE or body[0] != COMMAND_TYPE:
        raise ArgumentError(_not_a("command", body, COMMAND_TYPE, COMMAND_SIZE))
    _, opcode, token, stream_id, arg = COMMAND.unpack(body)
    return Command(Opcode(opcode) if opcode in Opcode._value2member_map_ else opcode, token, stream_id, arg)


def parse_reply(body: bytes | bytearray | memoryview) -> Reply:
    """The reply in a frame body (decoded, CRC checked and removed); ``ArgumentError`` if it is not one."""
    if len(body) != REPLY_SIZE or body[0] != REPLY_TYPE:
        raise ArgumentError(_not_a("reply", body, REPLY_TYPE, REPLY_SIZE))
    _, opcode, token, stream_id, status, reason, arg, t1, t2 = REPLY.unpack(body)
    if status not in (Status.ACK, Status.NACK):
        raise ArgumentError(f"not a reply: status {status} is neither ACK (0) nor NACK (1)")
    if (status == Status.ACK) != (reason == Reason.NONE):
        raise ArgumentError(f"not a reply: {Status(status).name} with reason {_reasonname(reason)}")
    return Reply(
        Opcode(opcode) if opcode in Opcode._value2member_map_ else opcode,
        token,
        stream_id,
        Status(status),
        Reason(reason) if reason in Reason._value2member_map_ else reason,
        arg,
        t1,
        t2,
    )


def _not_a(kind: str, body: bytes | bytearray | memoryview, type_byte: int, size: int) -> str:
    first = f"0x{body[0]:02x}" if len(body) else "nothing"
    return (
        f"not a {kind}: {len(body)} bytes starting with {first}; "
        f"a {kind} is {size} bytes starting with 0x{type_byte:02x}"
    )


def _unframe(wire: bytes | bytearray, kind: str, size: int) -> bytes:
    """The body of one encoded frame (optionally ended by its 0x00), CRC checked; ``ArgumentError`` otherwise."""
    data = bytes(wire)
    if data.endswith(b"\x00"):
        data = data[:-1]
    if not data or 0 in data:
        raise ArgumentError(f"not a {kind} frame: expected one COBS-encoded frame ended by a single 0x00")
    out = bytearray(len(data))
    n = cobs_decode_into(data, len(data), out)
    if n < 0:
        raise ArgumentError(f"not a {kind} frame: invalid COBS encoding")
    if n != size + CRC_SIZE:
        raise ArgumentError(f"not a {kind} frame: {n} bytes decoded, a {kind} frame is {size + CRC_SIZE}")
    body = bytes(out[:size])
    if zlib.crc32(body) != _CRC.unpack_from(out, size)[0]:
        raise ArgumentError(f"not a {kind} frame: CRC-32 mismatch")
    return body


def decode_command(wire: bytes | bytearray) -> Command:
    """The command in ``wire``: one encoded frame, with or without its 0x00. ``ArgumentError`` if it is not one."""
    return parse_command(_unframe(wire, "command", COMMAND_SIZE))


def decode_reply(wire: bytes | bytearray) -> Reply:
    """The reply in ``wire``: one encoded frame, with or without its 0x00. ``ArgumentError`` if it is not one."""
    return parse_reply(_unframe(wire, "reply", REPLY_SIZE))


@dataclass
class ReceiverStats:
    """What a ``CommandReceiver`` saw. ``errors``: frames dropped (bad COBS, CRC mismatch, not
    a command, wrong length, too long); no reply can be sent for them."""

    commands: int = 0
    errors: int = 0
    bytes: int = 0


class CommandReceiver:
    """Device side, sans-IO: ``feed(data)`` returns the commands ``data`` completes.

    Keeps at most one command frame's worth of bytes (plus a little) while waiting for a
    0x00; a longer run is dropped up to the next 0x00 and counted in ``stats.errors``.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._cap = _MAX_CONTROL_ENCODED
        self._discarding = False
        self._out = bytearray(self._cap)
        self.stats = ReceiverStats()

    def feed(self, data: bytes | bytearray) -> list[Command]:
        out: list[Command] = []
        self.stats.bytes += len(data)
        for chunk_end, part in _split_at_zero(data):
            if not self._discarding:
                if len(self._buf) + len(part) > self._cap:
                    self._discarding = True
                    self._buf.clear()
                    self.stats.errors += 1
                else:
                    self._buf += part
            if not chunk_end:
                break
            if self._discarding:
                self._discarding = False
                continue
            if self._buf:
                cmd = self._take()
                if cmd is not None:
                    out.append(cmd)
        return out

    def _take(self) -> Command | None:
        n = cobs_decode_into(self._buf, len(self._buf), self._out)
        self._buf.clear()
        if (
            n != COMMAND_SIZE + CRC_SIZE
            or zlib.crc32(self._out[:COMMAND_SIZE]) != _CRC.unpack_from(self._out, COMMAND_SIZE)[0]
        ):
            self.stats.errors += 1
            return None
        try:
            cmd = parse_command(self._out[:COMMAND_SIZE])
        except ArgumentError:
            self.stats.errors += 1
            return None
        self.stats.commands += 1
        return cmd


def _split_at_zero(data: bytes | bytearray) -> Iterable[tuple[bool, bytes | bytearray]]:
    """(ended by a 0x00, the bytes before it) for each piece of ``data``; the last may be unended."""
    pos = 0
    while pos < len(data):
        zero = data.find(0, pos)
        if zero < 0:
            yield False, data[pos:]
            return
        yield True, data[pos:zero]
        pos = zero + 1


# ---- clock offset -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PingSample:
    """One PING exchange, all in microseconds: ``t0`` host clock at send, ``t1`` board clock at
    receipt, ``t2`` board clock at reply, ``t3`` host clock when the reply arrived."""

    t0_us: int
    t1_us: int
    t2_us: int
    t3_us: int

    @property
    def rtt_us(self) -> int:
        """Time on the wire, there and back, microseconds: ``(t3 - t0) - (t2 - t1)``."""
        return (self.t3_us - self.t0_us) - (self.t2_us - self.t1_us)

    @property
    def offset_us(self) -> float:
        """Board clock minus host clock, microseconds: ``((t1 - t0) + (t2 - t3)) / 2``."""
        return ((self.t1_us - self.t0_us) + (self.t2_us - self.t3_us)) / 2


@dataclass(frozen=True, slots=True)
class ClockEstimate:
    """Board clock minus host clock (``offset_us``), from the ping of a burst with the smallest rtt.

    The true offset lies within ``offset_us +- error_us`` (``rtt_us / 2``), whatever the
    split of the rtt between the two directions. ``pings``: samples the burst had.
    ``sample``: the ping it comes from.
    """

    offset_us: float
    rtt_us: int
    pings: int
    sample: PingSample

    @property
    def error_us(self) -> float:
        """Bound on ``|offset_us - true offset|``, microseconds: half the rtt."""
        return self.rtt_us / 2

    def board_to_host_us(self, board_us: float) -> float:
        """A board time (a frame's ``timestamp_us``) on the host clock (``host_clock_us``), microseconds."""
        return board_us - self.offset_us

    def host_to_board_us(self, host_us: float) -> float:
        """A host time (``host_clock_us``) on the board clock, microseconds."""
        return host_us + self.offset_us


def clock_estimate(pings: Iterable[PingSample]) -> ClockEstimate:
    """The offset board - host from a burst of pings: the one with the smallest rtt wins.

    Pure. ``ArgumentError`` for no pings, or one whose times cannot be (a reply before
    its request, t2 before t1, or a negative rtt: the board answered faster than the
    link allows, so the clocks are not what they claim).
    """
    samples = list(pings)
    if not samples:
        raise ArgumentError("no ping samples to estimate the clock offset from")
    for s in samples:
        if s.t3_us < s.t0_us or s.t2_us < s.t1_us or s.rtt_us < 0:
            raise ArgumentError(
                f"impossible ping times (t0 {s.t0_us}, t1 {s.t1_us}, t2 {s.t2_us}, t3 {s.t3_us} us): "
                "need t0 <= t3, t1 <= t2 and (t3 - t0) >= (t2 - t1)"
            )
    best = min(samples, key=lambda s: s.rtt_us)
    return ClockEstimate(best.offset_us, best.rtt_us, len(samples), best)


# ---- host side: one command at a time, matched by token ---------------------------------


class CommandRejectedError(StreamError):
    """The device answered NACK. ``reply`` is its reply; ``nack_reason`` its reason code."""

    def __init__(self, reason: str, *, reply: Reply, device: str | None = None) -> None:
        self.reply = reply
        self.nack_reason = reply.reason
        super().__init__(reason, device=device)


class CommandTimeoutError(StreamError, TimeoutError):
    """No reply came (every attempt timed out). ``command`` is what was sent, ``attempts`` how often."""

    def __init__(self, reason: str, *, command: Command, attempts_made: int, device: str | None = None) -> None:
        self.command = command
        self.attempts_made = attempts_made
        super().__init__(reason, device=device)


@dataclass
class ChannelStats:
    """Counters of a ``CommandChannel``; each only grows.

    ``commands``: requests made; ``sent``: frames written (retries included);
    ``retries``; ``timeouts``: requests that got no reply at all; ``nacks``; ``replies``:
    replies matched to a request; ``stray_replies``: replies nobody waited for (a late
    duplicate after a retry, or another host's); ``bad_replies``: reply frames with a
    good CRC but not a valid reply.
    """

    commands: int = 0
    sent: int = 0
    retries: int = 0
    timeouts: int = 0
    nacks: int = 0
    replies: int = 0
    stray_replies: int = 0
    bad_replies: int = 0


#: ``write(wire, timeout_s)``: send the bytes of one command on the link, waiting at
#: most ``timeout_s`` for it to be open; raises ``StreamError`` if it is not.
WriteFn = Callable[[bytes, float], None]


class CommandChannel:
    """Sends commands through ``write`` and matches the replies handed to ``deliver``.

    One command is outstanding at a time (callers from several threads are served in
    turn), so a device needs to remember only its last command to recognise a retry.
    Each request gets a fresh token (u16, counting up from a random start, so a host that
    restarts does not repeat its predecessor's last token); a retry resends the same
    bytes, which the device answers again without executing them twice.

    ``deliver(body, arrival_ns)`` is called by the link's reader (``FrameDecoder``'s
    ``on_reply``) with each reply frame's body; ``arrival_ns`` is
    ``time.perf_counter_ns()`` when its bytes were read (for a PING's t3). It never
    raises: a bad reply is counted, an unexpected one too.
    """

    def __init__(self, write: WriteFn, *, device: str | None = None, first_token: int | None = None) -> None:
        self._write = write
        self.device = device
        self._token = random.randrange(0x10000) if first_token is None else first_token & 0xFFFF
        self._turn = threading.Lock()  # one request at a time
        self._cond = threading.Condition()
        self._waiting: Command | None = None
        self._got: tuple[Reply, int] | None = None
        self.stats = ChannelStats()
        #: The estimate of the last ``ping`` burst, or None.
        self.clock: ClockEstimate | None = None

    def deliver(self, body: bytes | bytearray | memoryview, arrival_ns: int | None = None) -> None:
        """Hand over one reply frame body (CRC checked and removed) read from the link."""
        try:
            reply = parse_reply(body)
        except ArgumentError:
            with self._cond:
                self.stats.bad_replies += 1
            return
        when = time.perf_counter_ns() if arrival_ns is None else arrival_ns
        with self._cond:
            want = self._waiting
            if want is None or self._got is not None or reply.token != want.token or reply.opcode != want.opcode:
                self.stats.stray_replies += 1
                return
            self._got = (reply, when)
            self._cond.notify_all()

    def send(
        self,
        cmd: Command,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        check: bool = True,
    ) -> Reply:
        """Send ``cmd`` under a fresh token (``cmd.token`` is replaced) and return the device's reply.

        Waits ``timeout_s`` seconds per attempt; after a timeout resends the same frame,
        ``retries`` times. Raises ``CommandTimeoutError`` (a ``StreamError`` and a
        ``TimeoutError``) if no reply came, ``CommandRejectedError`` on a NACK (unless
        ``check`` is False: then the NACK is returned), ``StreamError`` if the link is not
        open (from ``write``), ``ArgumentError`` if ``cmd`` does not encode.
        """
        reply, _ = self._request(lambda token: Command(cmd.opcode, token, cmd.stream_id, cmd.arg), timeout_s, retries)
        if check and not reply.ok:
            self._raise_nack(reply)
        return reply

    def ping(self, n: int = 8, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> ClockEstimate:
        """A burst of ``n`` PINGs, one after the other; the estimate of the one with the smallest rtt.

        A ping that gets no reply within ``timeout_s`` is not retried (its rtt would be
        useless) but skipped; ``CommandTimeoutError`` only if none got one. The estimate is
        also kept in ``clock``.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ArgumentError(f"n={n!r} must be a whole number >= 1 (pings in the burst)")
        samples: list[PingSample] = []
        last: CommandTimeoutError | None = None
        t0 = 0
        for _ in range(n):

            def make(token: int) -> Command:
                nonlocal t0
                t0 = host_clock_us()  # as late as possible before the write
                return Command.ping(t0, token)

            try:
                reply, arrival_ns = self._request(make, timeout_s, 0)
            except CommandTimeoutError as exc:
                last = exc
                continue
            if not reply.ok:
                self._raise_nack(reply)
            samples.append(PingSample(t0, reply.t1_us, reply.t2_us, arrival_ns // 1000))
        if not samples:
            assert last is not None
            raise CommandTimeoutError(
                f"no reply to any of {n} PINGs within {timeout_s:g} s each",
                command=last.command,
                attempts_made=n,
                device=self.device,
            ) from last
        self.clock = clock_estimate(samples)
        return self.clock

    def _request(self, make: Callable[[int], Command], timeout_s: float, retries: int) -> tuple[Reply, int]:
        if not timeout_s > 0:
            raise ArgumentError(f"timeout_s={timeout_s!r} must be > 0 (seconds per attempt)")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ArgumentError(f"retries={retries!r} must be a whole number >= 0")
        with self._turn:
            token = self._token
            self._token = (token + 1) & 0xFFFF
            cmd = make(token)
            wire = encode_command(cmd)
            with self._cond:
                self.stats.commands += 1
                self._waiting = cmd
                self._got = None
            try:
                for attempt in range(retries + 1):
                    with self._cond:
                        got = self._got  # a reply may have come in just after the last timeout
                        if got is None and attempt:
                            self.stats.retries += 1
                    if got is None:
                        self._write(wire, timeout_s)
                        deadline = time.monotonic() + timeout_s
                        with self._cond:
                            self.stats.sent += 1
                            while self._got is None:
                                left = deadline - time.monotonic()
                                if left <= 0:
                                    break
                                self._cond.wait(left)
                            got = self._got
                    if got is not None:
                        with self._cond:
                            self.stats.replies += 1
                            if not got[0].ok:
                                self.stats.nacks += 1
                        return got
                with self._cond:
                    self.stats.timeouts += 1
                raise CommandTimeoutError(
                    f"no reply to {cmd.name} (token 0x{token:04x}) after {retries + 1} attempt(s) "
                    f"of {timeout_s:g} s each",
                    command=cmd,
                    attempts_made=retries + 1,
                    device=self.device,
                )
            finally:
                with self._cond:
                    self._waiting = None
                    self._got = None

    def _raise_nack(self, reply: Reply) -> None:
        what = {
            Reason.UNKNOWN_OPCODE: "the device does not know this command",
            Reason.BAD_ARGUMENT: f"argument {reply.arg} is out of the device's range",
            Reason.UNKNOWN_STREAM: f"the device has no stream {reply.stream_id}",
        }.get(Reason(reply.reason) if reply.reason in Reason._value2member_map_ else Reason.NONE, "")
        raise CommandRejectedError(
            f"device refused {reply.name} (stream {reply.stream_id}, token 0x{reply.token:04x}): "
            f"NACK {reply.reason_name}" + (f": {what}" if what else ""),
            reply=reply,
            device=self.device,
        )
