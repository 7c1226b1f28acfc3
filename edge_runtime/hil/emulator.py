"""A firmware emulator: plays a recording through the exact wire protocol over a pty.

The runtime opens the pty's path as it would open ``/dev/ttyUSB0``. Faults can be
injected on the way: garbage bursts, bit flips, dropped bytes, a pause, and a
disconnect/reconnect (the pty is closed and a new one made; with ``link`` the same
path, a symlink like the ones udev makes under ``/dev/serial/by-id``, points at it).
"""

from __future__ import annotations

import logging
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
    """

    def __init__(self, link: str | Path | None = None) -> None:
        self.master, slave = os.openpty()
        tty.setraw(slave)
        self.path = os.ttyname(slave)
        os.close(slave)
        self._poll = select.poll()
        self._poll.register(self.master, select.POLLOUT)
        self.link = Path(link) if link else None
        if self.link is not None:
            tmp = self.link.with_name(self.link.name + ".tmp")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(self.path)
            tmp.replace(self.link)  # atomic: a reader never sees the link missing

    @property
    def address(self) -> str:
        return str(self.link) if self.link is not None else self.path

    def reader_attached(self) -> bool:
        """True while some process has the port open."""
        return not any(ev & select.POLLHUP for _, ev in self._poll.poll(0))

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
        view = memoryview(data)
        while view:
            n = os.write(self.master, view)
            view = view[n:]

    def close(self) -> None:
        try:
            os.close(self.master)
        except OSError:
            pass


def load_recording(path: str | Path) -> tuple[npt.NDArray[np.float32], float]:
    """(values (n, channels) float32, sample rate Hz) of a CSV or .npy recording."""
    from ..stream.sources import FileSource

    src = FileSource(f"file:{path}")
    return src.values, src.recorded_rate


class Emulator:
    """Send ``values`` (n, channels) as frames of ``frame_samples`` at ``rate`` samples/s (None: max)."""

    def __init__(
        self,
        values: npt.NDArray[Any],
        *,
        rate_hz: float | None,
        sample_rate_hz: float,
        frame_samples: int = 10,
        stream_id: int = 0,
        dtype: str = "float32",
        faults: Faults | None = None,
        loop: bool = False,
        link: str | Path | None = None,
        write: Callable[[bytes], None] | None = None,
        wait_for_reader: bool = True,
    ) -> None:
        self.values = np.ascontiguousarray(values, dtype=dtype)
        self.rate = rate_hz
        self.interval_us = round(1e6 / sample_rate_hz)
        self.frame_samples = frame_samples
        self.stream_id = stream_id
        self.faults = faults or Faults()
        self.loop = loop
        self.link = link
        self.stats = EmulatorStats()
        self._rng = random.Random(self.faults.seed)
        self._external_write = write
        self.wait_for_reader = wait_for_reader
        self.pty: Pty | None = None if write is not None else Pty(link)
        self.stop = threading.Event()
        self.finished = threading.Event()

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
                if self.rate:
                    delay = t0 + (sample + frame.samples) / self.rate - time.perf_counter()
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
                    t0 = time.perf_counter() - (sample + frame.samples) / self.rate if self.rate else t0
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
        time.sleep(0.05)
        self.pty.close()
        self.stats.disconnects += 1
        log.info("emulator: unplugged for %.2f s", seconds)
        self.stop.wait(seconds)
        self.pty = Pty(self.link)
        log.info("emulator: plugged in again at %s", self.pty.address)
        self._await_reader()
        self._write(b"\x00")

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="edge_runtime-emulator", daemon=True)
        thread.start()
        return thread

    def close(self, linger_s: float = 0.0) -> None:
        """Stop sending and close the port, after ``linger_s`` seconds if a reader is attached.

        Closing a pty master drops what its reader has not read yet: linger so the last
        frames get through, as a real device does not vanish the moment it has sent.
        """
        if linger_s > 0 and self.pty is not None and self.pty.reader_attached():
            time.sleep(linger_s)
        self.stop.set()
        if self.pty is not None:
            self.pty.close()
