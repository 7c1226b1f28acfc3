"""A firmware emulator: plays a recording through the exact wire protocol over a pty.

The runtime opens the pty's path as it would open ``/dev/ttyUSB0``. Faults can be
injected on the way: garbage bursts, bit flips, dropped bytes, a pause, and a
disconnect/reconnect (the pty is closed and a new one made; with ``link`` the same
path, a symlink like the ones udev makes under ``/dev/serial/by-id``, points at it).

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

log = logging.getLogger("edge_runtime.hil")


class _Stopped(Exception):
    pass


@dataclass
class Faults:
    """Faults to inject, each every N frames (0: never); ``pause``/``disconnect`` once, at frame N."""

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


@dataclass
class EmulatorStats:
    frames: int = 0
    bytes: int = 0
    garbage_bursts: int = 0
    flipped: int = 0
    dropped: int = 0
    disconnects: int = 0
    damaged_frames: list[int] = field(default_factory=list)


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
    """Sends ``values`` (samples, channels), recorded at ``rate`` Hz, as wire frames.

    - ``rate``: the recording's sample rate in Hz; stamped into the frames
      (``interval_us = 1e6 / rate``, ``timestamp_us = first sample * interval_us``).
    - ``speed``: a multiple of real time (the send rate is ``rate * speed`` samples/s),
      or None to send as fast as the port takes them.
    - ``frame_samples``: samples per frame; ``stream_id``, ``dtype``: of the frames.
    - ``faults``, ``loop`` (start again at the end), ``link`` (a symlink to the pty, as
      udev makes under ``/dev/serial/by-id``: gone while a simulated unplug lasts, then
      pointing at the new pty), ``write`` (send through this instead of a pty),
      ``wait_for_reader`` (send only while a reader has the pty open, as a USB CDC
      device waits for DTR).

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
    ) -> None:
        if not isinstance(frame_samples, int) or frame_samples < 1:
            raise ArgumentError(f"frame_samples={frame_samples!r} must be a whole number >= 1")
        self.values = np.ascontiguousarray(values, dtype=dtype)
        self.rate = _positive("rate", rate, "the recording's sample rate, in Hz")
        self.speed = None if speed is None else _positive("speed", speed, "a multiple of real time, or None for max")
        #: Samples per second actually sent (None: as fast as possible).
        self.send_rate = None if self.speed is None else self.rate * self.speed
        self.interval_us = round(1e6 / self.rate)
        self.frame_samples = frame_samples
        self.stream_id = stream_id
        self.faults = faults or Faults()
        self.loop = loop
        self.link = link
        self.stats = EmulatorStats()
        self._rng = random.Random(self.faults.seed)
        self._external_write = write
        self.wait_for_reader = wait_for_reader
        self.stop = threading.Event()
        self.finished = threading.Event()
        self._lock = threading.Lock()  # between close() and a simulated replug making a new pty
        self._closed = False
        self.pty: Pty | None = None if write is not None else Pty(link)

    @property
    def address(self) -> str:
        return self.pty.address if self.pty is not None else "(external)"

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

    def frames(self) -> Any:
        n = len(self.values)
        seq = 0
        sample = 0
        while True:
            for start in range(0, n, self.frame_samples):
                chunk = self.values[start : start + self.frame_samples]
                flags = FLAG_START if seq == 0 else 0
                yield (
                    seq,
                    sample,
                    make_frame(
                        chunk,
                        stream_id=self.stream_id,
                        seq=seq,
                        timestamp_us=sample * self.interval_us,
                        interval_us=self.interval_us,
                        flags=flags,
                    ),
                )
                seq += 1
                sample += len(chunk)
            if not self.loop:
                return

    def run(self) -> EmulatorStats:
        """Send everything (or until ``stop``); returns the counters. Blocks: run it on a thread."""
        f = self.faults
        try:
            if not self._await_reader():
                return self.stats
            t0 = time.perf_counter()
            self._write(b"\x00")  # a delimiter first: the receiver starts clean
            for seq, sample, frame in self.frames():
                if self.stop.is_set():
                    break
                if self.pty is not None and self.wait_for_reader and not self.pty.reader_attached():
                    paused = time.perf_counter()
                    if not self._await_reader():
                        break
                    t0 += time.perf_counter() - paused  # the pause does not make us catch up
                if self.send_rate:
                    delay = t0 + (sample + frame.samples) / self.send_rate - time.perf_counter()
                    if delay > 0:
                        self.stop.wait(delay)
                wire = bytearray(encode_frame(frame))
                if f.garbage_every and seq % f.garbage_every == f.garbage_every - 1:
                    junk = bytes(self._rng.randrange(1, 256) for _ in range(f.garbage_bytes))
                    self._write(junk + b"\x00")
                    self.stats.garbage_bursts += 1
                if f.flip_every and seq % f.flip_every == f.flip_every - 1:
                    pos = self._rng.randrange(0, len(wire) - 1)
                    bit = 1 << self._rng.randrange(8)
                    if wire[pos] ^ bit:  # never forge a delimiter
                        wire[pos] ^= bit
                        self.stats.flipped += 1
                        self.stats.damaged_frames.append(seq)
                if f.drop_every and seq % f.drop_every == f.drop_every - 1:
                    pos = self._rng.randrange(0, max(1, len(wire) - 1 - f.drop_bytes))
                    del wire[pos : pos + f.drop_bytes]
                    self.stats.dropped += 1
                    self.stats.damaged_frames.append(seq)
                if f.pause_at and seq == f.pause_at:
                    paused = time.perf_counter()
                    self.stop.wait(f.pause_s)
                    t0 += time.perf_counter() - paused  # silence, then the old pace: no catch-up burst
                if f.disconnect_at and seq == f.disconnect_at and self.pty is not None:
                    self._reconnect(f.disconnect_s, half=bytes(wire[: len(wire) // 2]))
                    self.stats.damaged_frames.append(seq)
                    if self.send_rate:
                        t0 = time.perf_counter() - (sample + frame.samples) / self.send_rate
                    continue
                self._write(bytes(wire))
                self.stats.frames += 1
        except _Stopped:
            pass
        finally:
            self.finished.set()
        return self.stats

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
