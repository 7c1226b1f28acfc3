"""A firmware emulator: plays a recording through the exact wire protocol over a pty.

The runtime opens the pty's path as it would open ``/dev/ttyUSB0``. Faults can be
injected on the way: garbage bursts, bit flips, dropped bytes, a pause, a
disconnect/reconnect (the pty is closed and a new one made; with ``link`` the same
path, a symlink like the ones udev makes under ``/dev/serial/by-id``, points at it),
a board reset, and lost replies.

Like a firmware, it also reads command frames from the host on the same pty (between
frames and while it waits, never blocking on them) and answers them
(firmware_notes/serial_protocol.md, "Commands and replies"): START, STOP, SET_RATE,
PING, with NACKs for bad arguments, unknown streams and unknown opcodes, and the last
command remembered so a retry is answered without executing it again. What it does
with a command is ``CommandHandler``, sans-IO (reference_sender.c does the same in C).

Every ``close()`` here may be called more than once, from any thread: the second call
does nothing (it never closes a file descriptor that has since been reused).
"""

from __future__ import annotations

import errno
import logging
import math
import os
import random
import select
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import ArgumentError
from ..stream.codec import FLAG_START, encode_frame, make_frame
from ..stream.command import (
    Command,
    CommandReceiver,
    Opcode,
    Reason,
    Reply,
    Status,
    encode_reply,
    host_clock_us,
)

log = logging.getLogger("edge_runtime.hil")


class _Stopped(Exception):
    pass


@dataclass
class Faults:
    """Faults to inject, each every N frames (0: never); ``pause``/``disconnect``/``reset`` once, at frame N.

    Frames are counted from 0 since ``run()`` started (the ``seq`` they carry, as long as
    no reset restarted it). ``reset_at``: the board resets before that frame: its
    sequence and its clock (so the frames' ``timestamp_us``) start again at 0, that frame
    carries ``FLAG_START``, the stream runs at its first interval again and the last
    command is forgotten (a 0x00 goes first, as after a boot). ``drop_reply_every``: every
    Nth reply (counting from the first, retries' answers included) is lost on the way
    (the command was executed; the host's retry gets the stored reply).
    """

    garbage_every: int = 0
    garbage_bytes: int = 64
    flip_every: int = 0
    drop_every: int = 0
    drop_bytes: int = 3
    pause_at: int = 0
    pause_s: float = 0.0
    disconnect_at: int = 0
    disconnect_s: float = 0.5
    seed: int = 0
    reset_at: int = 0
    drop_reply_every: int = 0


@dataclass
class EmulatorStats:
    frames: int = 0
    bytes: int = 0
    garbage_bursts: int = 0
    flipped: int = 0
    dropped: int = 0
    disconnects: int = 0
    damaged_frames: list[int] = field(default_factory=list)
    resets: int = 0
    commands: int = 0  # good command frames received (retries included)
    executed: int = 0  # new commands carried out (ACKed)
    duplicates: int = 0  # retries answered from memory, not executed again
    nacks: int = 0  # new commands refused
    command_errors: int = 0  # command frames dropped unanswered (bad COBS or CRC, not a command)
    replies: int = 0  # replies written
    replies_dropped: int = 0  # replies lost on purpose (Faults.drop_reply_every)


#: SET_RATE intervals the emulator (and the reference firmware) accepts, microseconds.
INTERVAL_RANGE_US = (10, 60_000_000)


class CommandHandler:
    """What a firmware does with one command, sans-IO: one stream, ``stream_id``.

    ``handle(cmd, t1_us)`` returns ``(reply, new)``: the same command as the last one (a
    retry) gets the stored reply again with ``new`` False and nothing executed; any
    other command is executed (START/STOP set ``running``, SET_RATE sets ``interval_us``
    if within ``interval_range_us``, microseconds) or NACKed, and remembered.
    ``t1_us``: the board clock when the command arrived; ``clock_us()`` gives the
    board clock for PING's t2 (read as late as possible, just before the reply is made).
    The reference firmware (reference_sender.c, ``edge_device_rx_byte``) answers the
    same commands with the same bytes.
    """

    def __init__(
        self,
        stream_id: int,
        interval_us: int,
        *,
        clock_us: Callable[[], int],
        interval_range_us: tuple[int, int] = INTERVAL_RANGE_US,
    ) -> None:
        self.stream_id = stream_id
        self.interval_us = interval_us
        self.running = True
        self.interval_range_us = interval_range_us
        self.clock_us = clock_us
        self._last: tuple[Command, Reply] | None = None

    def reset(self, interval_us: int) -> None:
        """A board reset: running, at ``interval_us``, no command remembered."""
        self.interval_us = interval_us
        self.running = True
        self._last = None

    def handle(self, cmd: Command, t1_us: int) -> tuple[Reply, bool]:
        last = self._last
        if last is not None and last[0] == cmd:
            return last[1], False
        reply = self._execute(cmd, t1_us)
        self._last = (cmd, reply)
        return reply, True

    def _execute(self, cmd: Command, t1_us: int) -> Reply:
        def nack(reason: Reason) -> Reply:
            return Reply(cmd.opcode, cmd.token, cmd.stream_id, Status.NACK, reason, cmd.arg)

        if cmd.opcode not in Opcode._value2member_map_:
            return nack(Reason.UNKNOWN_OPCODE)
        if cmd.opcode == Opcode.PING:
            return Reply(cmd.opcode, cmd.token, cmd.stream_id, arg=cmd.arg, t1_us=t1_us, t2_us=self.clock_us())
        if cmd.stream_id != self.stream_id:
            return nack(Reason.UNKNOWN_STREAM)
        if cmd.opcode == Opcode.SET_RATE:
            low, high = self.interval_range_us
            if not low <= cmd.arg <= min(high, 0xFFFFFFFF):
                return nack(Reason.BAD_ARGUMENT)
            self.interval_us = cmd.arg
        else:
            self.running = cmd.opcode == Opcode.START
        return Reply(cmd.opcode, cmd.token, cmd.stream_id, arg=cmd.arg)


class Pty:
    """A pseudo-terminal in raw mode; ``path`` is what a serial reader opens.

    The emulator keeps only the master side open, so it can tell whether a reader has
    the port open (no POLLHUP on the master), as a USB CDC device sees the host's DTR.

    With ``link``, a symlink at that path points at the pty (made atomically: a reader
    never sees it half made) until ``close()``, which removes it if it still points here
    (an unplugged USB adapter's ``/dev/serial/by-id`` link goes away too). ``close()``
    may be called any number of times; ``master`` is -1 once closed.
    """

    def __init__(self, link: str | Path | None = None) -> None:
        self.master, slave = os.openpty()
        try:
            tty.setraw(slave)
            self.path = os.ttyname(slave)
        except BaseException:
            os.close(self.master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(self.master, False)  # write() waits in poll, where close() can end the wait
        self._poll = select.poll()  # reader_attached()
        self._poll.register(self.master, select.POLLOUT)
        self._wpoll = select.poll()  # write(), which may run on another thread
        self._wpoll.register(self.master, select.POLLOUT)
        self._rpoll = select.poll()  # wait_input(): commands from the reader
        self._rpoll.register(self.master, select.POLLIN)
        self._lock = threading.Lock()  # master is used and closed under it: never a reused number
        self.link = Path(link) if link else None
        if self.link is not None:
            tmp = self.link.with_name(self.link.name + ".tmp")
            try:
                tmp.unlink(missing_ok=True)
                tmp.symlink_to(self.path)
                tmp.replace(self.link)  # atomic: a reader never sees the link missing
            except BaseException:
                self.close()
                raise

    @property
    def closed(self) -> bool:
        return self.master < 0

    @property
    def address(self) -> str:
        return str(self.link) if self.link is not None else self.path

    def reader_attached(self) -> bool:
        """True while some process has the port open (False once this pty is closed)."""
        with self._lock:  # poll(0) does not block; under the lock the fd is this pty's
            if self.master < 0:
                return False
            events = self._poll.poll(0)
        return not any(ev & (select.POLLHUP | select.POLLNVAL) for _, ev in events)

    def wait_for_reader(self, stop: threading.Event, timeout_s: float | None = None, settle_s: float = 0.05) -> bool:
        """Block until a reader opens the port, then ``settle_s`` more (or ``stop``/timeout: False).

        The settle time covers the reader's own set-up after open (pyserial configures the
        port, the source flushes its input), as a device waits a moment after DTR.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not stop.is_set():
            if self.reader_attached():
                stop.wait(settle_s)
                return not stop.is_set()
            if deadline is not None and time.monotonic() > deadline:
                return False
            stop.wait(0.005)
        return False

    def write(self, data: bytes) -> None:
        """Write all of ``data``, waiting while the pty's buffer is full; ``OSError`` once closed."""
        view = memoryview(data)
        while view:
            with self._lock:
                if self.master < 0:
                    raise OSError(errno.EBADF, "pty closed")
                try:
                    n = os.write(self.master, view)
                except BlockingIOError:
                    n = 0
            if n:
                view = view[n:]
            elif not any(ev & select.POLLOUT for _, ev in self._wpoll.poll(50)):
                time.sleep(0.005)  # full, and no reader to take it (POLLHUP): no busy loop

    def read_available(self, size: int = 4096) -> bytes:
        """What the reader wrote to the port so far (at most ``size`` bytes), without waiting.

        ``b""`` if nothing is waiting or no reader has the port open; ``OSError`` once closed.
        """
        with self._lock:
            if self.master < 0:
                raise OSError(errno.EBADF, "pty closed")
            try:
                return os.read(self.master, size)
            except BlockingIOError:
                return b""
            except OSError as exc:
                if exc.errno == errno.EIO:  # no reader has the slave open
                    return b""
                raise

    def wait_input(self, timeout_s: float) -> bool:
        """Wait at most ``timeout_s`` seconds (whole milliseconds) for bytes from the reader: True if some wait.

        Returns False at once when no reader has the port open (or it is closed): call
        ``reader_attached`` and wait elsewhere then, or this returns at once again.
        """
        if self.master < 0:
            return False
        events = self._rpoll.poll(max(0, math.ceil(timeout_s * 1000)))
        return any(ev & select.POLLIN for _, ev in events)

    def close(self) -> None:
        """Close the master and remove the link (if it still points here). Idempotent."""
        with self._lock:
            fd, self.master = self.master, -1
        if fd < 0:
            return
        try:
            os.close(fd)
        except OSError:
            pass
        if self.link is not None:
            try:
                if os.readlink(self.link) == self.path:
                    self.link.unlink()
            except OSError:  # gone already, or replaced by something that is not our link
                pass

    def __enter__(self) -> Pty:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _positive(name: str, value: Any, meaning: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise ArgumentError(f"{name}={value!r} must be a number > 0 ({meaning})")
    return number


def load_recording(path: str | Path) -> tuple[npt.NDArray[np.float32], float]:
    """(values (samples, channels) float32, sample rate in Hz) of a CSV or .npy recording."""
    from ..stream.sources import FileSource

    src = FileSource(f"file:{path}")
    return src.values, src.rate


class Emulator:
    """Sends ``values`` (samples, channels), recorded at ``rate`` Hz, as wire frames, and answers commands.

    - ``rate``: the recording's sample rate in Hz; stamped into the frames
      (``interval_us = 1e6 / rate``, ``timestamp_us = first sample * interval_us``).
    - ``speed``: a multiple of real time (the send rate is ``rate * speed`` samples/s),
      or None to send as fast as the port takes them.
    - ``frame_samples``: samples per frame; ``stream_id``, ``dtype``: of the frames.
    - ``faults``, ``loop`` (start again at the end), ``link`` (a symlink to the pty, as
      udev makes under ``/dev/serial/by-id``: gone while a simulated unplug lasts, then
      pointing at the new pty), ``write`` (send through this instead of a pty; then no
      commands are read), ``wait_for_reader`` (send only while a reader has the pty
      open, as a USB CDC device waits for DTR).
    - ``board_clock_offset_us``: the board clock (``board_clock_us()``: PING's t1/t2, and
      the frames' ``timestamp_us``) reads the host clock (``host_clock_us``, microseconds)
      plus this. None (the default): the board clock starts at 0 when ``run()`` starts
      sending, as a board booting. A reset (``Faults.reset_at``) starts it at 0 again.
      It must stay >= 0 (the protocol's times are u64): a negative offset larger than
      the host clock's reading is a mistake.
      The frames' timestamps follow the board clock at ``speed`` 1 (sample ``i`` is
      stamped when it is due); at another speed the recording's time runs ``speed`` times
      as fast as the board clock, as before; START stamps the next frame with the board
      clock (or the next timestamp, if later).
    - ``answer_commands``: read and answer command frames from the pty (default True).
    - ``interval_range_us``: the SET_RATE intervals it accepts (others: NACK BAD_ARGUMENT).

    Commands: STOP stops the frames (the recording waits where it is), START resumes
    them (the next ``seq``, no ``FLAG_START``), SET_RATE changes ``interval_us`` in the
    frames that follow and the send pace (``send_rate``), PING answers with the board
    clock. ``handler`` holds the stream's state (``running``, ``interval_us``).

    ``run()`` sends (blocking; ``start()`` runs it on a thread); ``close()`` stops and
    closes the pty, and may be called more than once. Usable as a context manager.
    """

    def __init__(
        self,
        values: npt.NDArray[Any],
        *,
        rate: float,
        speed: float | None = 1.0,
        frame_samples: int = 10,
        stream_id: int = 0,
        dtype: str = "float32",
        faults: Faults | None = None,
        loop: bool = False,
        link: str | Path | None = None,
        write: Callable[[bytes], None] | None = None,
        wait_for_reader: bool = True,
        board_clock_offset_us: int | None = None,
        answer_commands: bool = True,
        interval_range_us: tuple[int, int] = INTERVAL_RANGE_US,
    ) -> None:
        if not isinstance(frame_samples, int) or frame_samples < 1:
            raise ArgumentError(f"frame_samples={frame_samples!r} must be a whole number >= 1")
        if board_clock_offset_us is not None and (
            isinstance(board_clock_offset_us, bool) or not isinstance(board_clock_offset_us, int)
        ):
            raise ArgumentError(f"board_clock_offset_us={board_clock_offset_us!r} must be a whole number or None")
        self.values = np.ascontiguousarray(values, dtype=dtype)
        self.rate = _positive("rate", rate, "the recording's sample rate, in Hz")
        self.speed = None if speed is None else _positive("speed", speed, "a multiple of real time, or None for max")
        #: Samples per second actually sent (None: as fast as possible); SET_RATE changes it.
        self.send_rate = None if self.speed is None else self.rate * self.speed
        #: Microseconds between two samples in the frames; SET_RATE changes it.
        self.interval_us = round(1e6 / self.rate)
        self._boot_interval_us = self.interval_us
        self.frame_samples = frame_samples
        self.stream_id = stream_id
        self.faults = faults or Faults()
        self.loop = loop
        self.link = link
        self.stats = EmulatorStats()
        self._rng = random.Random(self.faults.seed)
        self._external_write = write
        self.wait_for_reader = wait_for_reader
        self.board_clock_offset_us = board_clock_offset_us
        self.answer_commands = answer_commands
        self.stop = threading.Event()
        self.finished = threading.Event()
        self._lock = threading.Lock()  # between close() and a simulated replug making a new pty
        self._closed = False
        # The board: its clock reads host_clock_us() - _board_base_us.
        self._board_base_us = host_clock_us() if board_clock_offset_us is None else -board_clock_offset_us
        self.handler = CommandHandler(
            stream_id, self.interval_us, clock_us=self.board_clock_us, interval_range_us=interval_range_us
        )
        self._receiver = CommandReceiver()
        self._replies_made = 0
        self._seq = 0
        self._restarted = True  # the next frame carries FLAG_START
        self._ts_anchor_us = 0  # timestamp of the sample _ts_samples before the next one
        self._ts_samples = 0
        self._pace_t0 = time.perf_counter()  # the next frame is due at _pace_t0 + (_pace_samples + n) / send_rate
        self._pace_samples = 0
        self.pty: Pty | None = None if write is not None else Pty(link)

    @property
    def address(self) -> str:
        return self.pty.address if self.pty is not None else "(external)"

    def board_clock_us(self) -> int:
        """The emulated board's clock now, microseconds (see ``board_clock_offset_us``)."""
        return host_clock_us() - self._board_base_us

    def _write(self, data: bytes) -> None:
        try:
            if self._external_write is not None:
                self._external_write(data)
            elif self.pty is not None:
                self.pty.write(data)
        except OSError:
            if self.stop.is_set():  # closed under us by close(): the run is over
                raise _Stopped() from None
            raise
        self.stats.bytes += len(data)

    def _chunks(self) -> Any:
        """(frame index, the recording's samples for it), from the start (again, with ``loop``)."""
        n = len(self.values)
        index = 0
        while True:
            for start in range(0, n, self.frame_samples):
                yield index, self.values[start : start + self.frame_samples]
                index += 1
            if not self.loop:
                return

    def frames(self) -> Any:
        """(seq, first sample, frame) of the frames a run sends when no command or fault changes them."""
        sample = 0
        for seq, chunk in self._chunks():
            frame = make_frame(
                chunk,
                stream_id=self.stream_id,
                seq=seq,
                timestamp_us=sample * self._boot_interval_us,
                interval_us=self._boot_interval_us,
                flags=FLAG_START if seq == 0 else 0,
            )
            yield seq, sample, frame
            sample += len(chunk)

    def run(self) -> EmulatorStats:
        """Send everything (or until ``stop``), answering commands; returns the counters. Blocks: run it on a thread."""
        f = self.faults
        try:
            if not self._await_reader():
                return self.stats
            self._boot()
            self._write(b"\x00")  # a delimiter first: the receiver starts clean
            for index, chunk in self._chunks():
                if f.pause_at and index == f.pause_at:
                    paused = time.perf_counter()
                    self._serve_until(paused + f.pause_s)
                    self._pace_t0 += time.perf_counter() - paused  # silence, then the old pace: no catch-up burst
                if not self._ready(len(chunk)):
                    break
                if f.reset_at and index == f.reset_at:
                    self._reset()
                frame = self._next_frame(chunk)
                wire = bytearray(encode_frame(frame))
                if f.garbage_every and index % f.garbage_every == f.garbage_every - 1:
                    junk = bytes(self._rng.randrange(1, 256) for _ in range(f.garbage_bytes))
                    self._write(junk + b"\x00")
                    self.stats.garbage_bursts += 1
                if f.flip_every and index % f.flip_every == f.flip_every - 1:
                    pos = self._rng.randrange(0, len(wire) - 1)
                    bit = 1 << self._rng.randrange(8)
                    if wire[pos] ^ bit:  # never forge a delimiter
                        wire[pos] ^= bit
                        self.stats.flipped += 1
                        self.stats.damaged_frames.append(index)
                if f.drop_every and index % f.drop_every == f.drop_every - 1:
                    pos = self._rng.randrange(0, max(1, len(wire) - 1 - f.drop_bytes))
                    del wire[pos : pos + f.drop_bytes]
                    self.stats.dropped += 1
                    self.stats.damaged_frames.append(index)
                if f.disconnect_at and index == f.disconnect_at and self.pty is not None:
                    self._reconnect(f.disconnect_s, half=bytes(wire[: len(wire) // 2]))
                    self.stats.damaged_frames.append(index)
                    if self.send_rate:
                        self._pace_t0 = time.perf_counter() - self._pace_samples / self.send_rate
                    continue
                self._write(bytes(wire))
                self.stats.frames += 1
        except _Stopped:
            pass
        finally:
            self.finished.set()
        return self.stats

    # ---- the board's state: clock, sequence, timestamps, pace ------------------------

    def _boot(self) -> None:
        now_ns = time.perf_counter_ns()
        host_us = now_ns // 1000
        if self.board_clock_offset_us is None:
            self._board_base_us = host_us  # the board clock reads 0 now
        self._seq = 0
        self._restarted = True
        self._ts_anchor_us = host_us - self._board_base_us
        self._ts_samples = 0
        self._pace_t0 = now_ns / 1e9
        self._pace_samples = 0

    def _reset(self) -> None:
        """A board reset (Faults.reset_at): clock and sequence from 0, first interval, nothing remembered."""
        now_ns = time.perf_counter_ns()
        self._board_base_us = now_ns // 1000
        self._seq = 0
        self._restarted = True
        self._ts_anchor_us = 0
        self._ts_samples = 0
        self._pace_t0 = now_ns / 1e9
        self._pace_samples = 0
        self.handler.reset(self._boot_interval_us)
        self._set_interval(self._boot_interval_us)
        self._receiver = CommandReceiver()
        self.stats.resets += 1
        log.info("emulator: board reset")
        self._write(b"\x00")  # as after a boot

    def _next_frame(self, chunk: npt.NDArray[Any]) -> Any:
        frame = make_frame(
            chunk,
            stream_id=self.stream_id,
            seq=self._seq,
            timestamp_us=self._ts_anchor_us + self._ts_samples * self.interval_us,
            interval_us=self.interval_us,
            flags=FLAG_START if self._restarted else 0,
        )
        self._restarted = False
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        self._ts_samples += len(chunk)
        self._pace_samples += len(chunk)
        return frame

    def _set_interval(self, interval_us: int) -> None:
        """SET_RATE: timestamps continue from the last sample at the old interval; the pace restarts now."""
        self._ts_anchor_us += self._ts_samples * self.interval_us
        self._ts_samples = 0
        self.interval_us = interval_us
        if self.speed is not None:
            self.send_rate = 1e6 / interval_us * self.speed
        self._pace_t0 = time.perf_counter()
        self._pace_samples = 0

    def _resume(self) -> None:
        """START after STOP: the next frame is stamped now on the board clock (or later), and due one frame from now."""
        now_ns = time.perf_counter_ns()
        board = now_ns // 1000 - self._board_base_us
        self._ts_anchor_us = max(board, self._ts_anchor_us + self._ts_samples * self.interval_us)
        self._ts_samples = 0
        self._pace_t0 = now_ns / 1e9
        self._pace_samples = 0

    # ---- waiting, and answering commands meanwhile -----------------------------------

    def _ready(self, samples: int) -> bool:
        """Wait until a frame of ``samples`` is due and the stream runs, answering commands; False on stop."""
        while not self.stop.is_set():
            self._serve()
            if self.pty is not None and self.wait_for_reader and not self.pty.reader_attached():
                paused = time.perf_counter()
                if not self._await_reader():
                    return False
                self._pace_t0 += time.perf_counter() - paused  # the pause does not make us catch up
                continue
            if not self.handler.running:
                self._serve_until(time.perf_counter() + 0.05)  # stopped: wait for START, answering the rest
                continue
            if self.send_rate:
                due = self._pace_t0 + (self._pace_samples + samples) / self.send_rate
                if due > time.perf_counter():
                    self._serve_until(due)  # back early after a command: it may have changed the pace
                    continue
            return True
        return False

    def _serve_until(self, deadline: float) -> bool:
        """Wait until ``deadline`` (``time.perf_counter()``) or stop, answering commands; True (early) once it did."""
        while not self.stop.is_set():
            left = deadline - time.perf_counter()
            if left <= 0:
                return False
            pty = self.pty
            if pty is None or pty.closed or not self.answer_commands:
                self.stop.wait(left)
                return False
            if left < 0.001 or not pty.reader_attached():  # nothing to read from (or not worth a poll)
                self.stop.wait(min(left, 0.02))
                continue
            if pty.wait_input(min(left, 0.05)) and self._serve():
                return True
        return False

    def _serve(self) -> bool:
        """Read what the host sent and answer the commands it completes; True if there were any bytes."""
        pty = self.pty
        if pty is None or not self.answer_commands:
            return False
        try:
            data = pty.read_available()
        except OSError:
            return False  # closed under us: the run is ending
        if not data:
            return False
        t1 = self.board_clock_us()  # receipt: when the bytes were read
        commands = self._receiver.feed(data)
        self.stats.command_errors = self._receiver.stats.errors
        for cmd in commands:
            self._answer(cmd, t1)
        return True

    def _answer(self, cmd: Command, t1_us: int) -> None:
        h = self.handler
        was_running, interval = h.running, h.interval_us
        reply, new = h.handle(cmd, t1_us)
        self.stats.commands += 1
        if not new:
            self.stats.duplicates += 1
        elif not reply.ok:
            self.stats.nacks += 1
        else:
            self.stats.executed += 1
            if h.interval_us != interval:
                self._set_interval(h.interval_us)
            if h.running and not was_running:
                self._resume()
        k = self._replies_made
        self._replies_made += 1
        every = self.faults.drop_reply_every
        if every and k % every == every - 1:
            self.stats.replies_dropped += 1
            return
        self._write(encode_reply(reply))
        self.stats.replies += 1

    def _await_reader(self) -> bool:
        """Like a USB CDC device waiting for DTR: send only while a reader has the port open."""
        if self.pty is None or not self.wait_for_reader:
            return True
        return self.pty.wait_for_reader(self.stop)

    def _reconnect(self, seconds: float, half: bytes) -> None:
        """Unplug mid-frame: send half a frame, close the pty, wait, open a new one."""
        assert self.pty is not None
        self._write(half)
        self.stop.wait(0.05)  # let the reader take the half frame before the line drops
        self.pty.close()
        self.stats.disconnects += 1
        log.info("emulator: unplugged for %.2f s", seconds)
        self.stop.wait(seconds)
        with self._lock:  # close() either sees the new pty or this sees stop: none is left open
            if self.stop.is_set():
                raise _Stopped()
            self.pty = Pty(self.link)
        self._receiver = CommandReceiver()  # a command cut by the unplug is gone
        log.info("emulator: plugged in again at %s", self.pty.address)
        if not self._await_reader():
            raise _Stopped()
        self._write(b"\x00")

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="edge_runtime-emulator", daemon=True)
        thread.start()
        return thread

    def close(self, linger_s: float = 0.0) -> None:
        """Stop sending and close the port, after ``linger_s`` seconds if a reader is attached.

        Closing a pty master drops what its reader has not read yet: linger so the last
        frames get through, as a real device does not vanish the moment it has sent.
        Only the first call lingers and closes; later calls return at once.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pty = self.pty
        if linger_s > 0 and pty is not None and pty.reader_attached():
            time.sleep(linger_s)
        self.stop.set()
        with self._lock:
            pty = self.pty  # a replug may have made a new one meanwhile
        if pty is not None:
            pty.close()

    def __enter__(self) -> Emulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
