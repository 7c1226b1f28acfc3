"""Sensor sources, addressed by URL: serial ports (any pyserial URL or device path),
recordings (``file:``) and generators (``synthetic:``).

Every source has ``run(on_frame, stop)``: it calls ``on_frame(frame, arrival_ns)`` on
the calling thread for each frame, until ``stop`` is set or the data ends.
``frame.payload`` is valid only during the call. ``arrival_ns`` is
``time.perf_counter_ns()`` when the bytes completing the frame were read.

I/O errors (an unplugged adapter, a closed pty, a busy port) are the source's to
handle: it reports them, backs off, reconnects and resumes. An exception raised by
``on_frame`` (user code) is not an I/O error: it ends ``run`` and propagates as is.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl

import numpy as np
import numpy.typing as npt

from ..errors import EdgeRuntimeError
from .codec import DecoderStats, Frame, FrameDecoder

log = logging.getLogger("edge_runtime.stream")

OnFrame = Callable[[Frame, int], None]


class SourceError(EdgeRuntimeError):
    """A source that cannot be opened or read for a reason retrying will not fix."""


class Source(Protocol):
    url: str
    stats: SourceStats

    def run(self, on_frame: OnFrame, stop: threading.Event) -> None: ...


@dataclass
class SourceStats:
    """Counters of one source; a serial source's decoder counters are under ``decoder``."""

    frames: int = 0
    connects: int = 0
    disconnects: int = 0
    open_failures: int = 0
    stale_warnings: int = 0
    last_error: str = ""
    decoder: DecoderStats | None = None  # the live counters of the source's decoder, if it has one

    def as_dict(self) -> dict[str, Any]:
        out = dict(vars(self))
        out["decoder"] = self.decoder.as_dict() if self.decoder is not None else {}
        return out


def _query(text: str) -> tuple[str, dict[str, str]]:
    base, _, query = text.partition("?")
    return base, dict(parse_qsl(query, keep_blank_values=True))


def _number(
    q: dict[str, str], key: str, default: Any, url: str, *, integer: bool = False, zero_ok: bool = False
) -> Any:
    """``q[key]`` as a number (> 0, or >= 0 with ``zero_ok``), or ``default``; a SourceError otherwise."""
    if key not in q:
        return default
    try:
        value = int(q[key]) if integer else float(q[key])
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise SourceError(f"{key}={q[key]!r} in {url!r} is not {kind}", device=url) from None
    if value < 0 or (value == 0 and not zero_ok) or value != value:
        raise SourceError(f"{key}={q[key]!r} in {url!r} must be {'>= 0' if zero_ok else '> 0'}", device=url)
    return value


def open_source(url: str, **options: Any) -> Source:
    """The source for ``url``: ``synthetic:KIND?...``, ``file:PATH?...``, or a serial port.

    Serial: any device path (``/dev/ttyUSB0``, ``/dev/serial/by-id/...``) or pyserial
    URL (``loop://``, ``socket://host:port``, ``spy://...``); ``baud=N`` in the query or
    ``baudrate=`` here. Options not named here go to ``serial.serial_for_url``.
    """
    if url.startswith("synthetic:"):
        return SyntheticSource(url, **options)
    if url.startswith("file:"):
        return FileSource(url, **options)
    return SerialSource(url, **options)


class SerialSource:
    """A UART (or any pyserial URL) carrying the edge_runtime wire protocol.

    Reads on the calling thread into one preallocated buffer (``os.readv`` on the file
    descriptor where the port has one, else ``readinto``), feeds the sans-IO decoder,
    and on disconnect (``SerialException``/``OSError``, or a readable port returning no
    bytes, as a closed pty does) reconnects with exponential backoff, flushes the
    input, forgets the partial frame and resumes. A busy port (``exclusive`` lock held
    by another process) is reported clearly and retried the same way.
    """

    def __init__(
        self,
        url: str,
        *,
        baudrate: int | None = None,
        read_size: int = 65536,
        reconnect: bool = True,
        backoff_s: tuple[float, float] = (0.05, 2.0),
        stale_after_s: float = 2.0,
        exclusive: bool = True,
        **serial_options: Any,
    ) -> None:
        base, query = _query(url) if "://" not in url or "?baud=" in url or "&baud=" in url else (url, {})
        baud = _number(query, "baud", baudrate or 115200, url, integer=True)
        query.pop("baud", None)
        if query:  # other query parameters belong to pyserial's URL handlers
            base = base + "?" + "&".join(f"{k}={v}" for k, v in query.items())
        if not base:
            raise SourceError("empty source address", device=url)
        self.url = url
        self.port_url = base
        self.baudrate = baud
        self.reconnect = reconnect
        self.backoff_s = backoff_s
        self.stale_after_s = stale_after_s
        self.exclusive = exclusive
        self.serial_options = serial_options
        self.stats = SourceStats()
        self.decoder = FrameDecoder()
        self.stats.decoder = self.decoder.stats  # read when asked, not copied on every read
        self._buf = bytearray(read_size)

    def _open(self, stop: threading.Event) -> Any | None:
        import serial

        delay = self.backoff_s[0]
        while not stop.is_set():
            try:
                port = serial.serial_for_url(
                    self.port_url,
                    do_not_open=True,
                    baudrate=self.baudrate,
                    timeout=0.05,
                    exclusive=self.exclusive,
                    **self.serial_options,
                )
                port.open()
                port.reset_input_buffer()  # flush what piled up while nobody read
            except ValueError as exc:  # not a port pyserial knows (unknown scheme, bad option): final
                raise SourceError(f"not a usable serial address: {exc}", device=self.port_url) from exc
            except (serial.SerialException, OSError) as exc:
                self.stats.open_failures += 1
                msg = str(exc)
                busy = "exclusively lock" in msg or "Resource temporarily unavailable" in msg or "busy" in msg.lower()
                reason = f"port busy (another process holds {self.port_url})" if busy else f"cannot open: {msg}"
                self.stats.last_error = reason
                if self.stats.open_failures == 1 or self.stats.open_failures % 20 == 0:
                    log.warning("edge_runtime: %s: %s; retrying", self.port_url, reason)
                if not self.reconnect:
                    raise SourceError(reason, device=self.port_url) from exc
                stop.wait(delay)
                delay = min(delay * 2, self.backoff_s[1])
                continue
            self.stats.connects += 1
            if self.stats.connects > 1:
                log.warning("edge_runtime: %s reconnected", self.port_url)
            return port
        return None

    def run(self, on_frame: OnFrame, stop: threading.Event) -> None:
        while not stop.is_set():
            port = self._open(stop)
            if port is None:
                return
            try:
                reason = self._read_until_lost(port, on_frame, stop)
            finally:
                try:
                    port.close()
                except Exception:  # noqa: BLE001 - closing a dead port may fail any way; it is gone
                    pass
            if reason is None:
                return
            self.stats.disconnects += 1
            self.stats.last_error = reason
            log.warning("edge_runtime: %s disconnected (%s); reconnecting", self.port_url, reason)
            self.decoder.reset()
            if not self.reconnect:
                raise SourceError(f"disconnected: {reason}", device=self.port_url)

    def _read_until_lost(self, port: Any, on_frame: OnFrame, stop: threading.Event) -> str | None:
        """Read until ``stop`` (returns None) or the port is lost (returns why)."""
        import serial

        buf = self._buf
        view = memoryview(buf)
        decoder = self.decoder
        stats = self.stats
        # The fd fast path only for a plain port: subclasses (spy://, rfc2217://) do their work in read().
        fd = port.fileno() if type(port) is serial.Serial else None
        poller = select.poll() if fd is not None else None
        if poller is not None and fd is not None:
            poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
        clock = time.perf_counter_ns
        last_frame = time.monotonic()
        warned = False
        while not stop.is_set():
            try:
                if poller is not None and fd is not None:
                    events = poller.poll(50)
                    if not events:
                        n = -1
                    else:
                        n = os.readv(fd, [buf])
                        if n == 0:
                            return "the port reports data but returns none (unplugged or closed)"
                else:
                    # Handlers without a file descriptor (socket://, loop://, spy://, rfc2217://):
                    # take what is waiting (at least one byte, else wait up to the 50 ms timeout)
                    # so a frame is handed on when it arrives, not when 64 KiB have.
                    want = min(len(buf), max(1, port.in_waiting))
                    n = port.readinto(view[:want])
            except (serial.SerialException, OSError) as exc:
                return f"{type(exc).__name__}: {exc}"
            now = time.monotonic()
            if n > 0:
                arrival = clock()
                for frame in decoder.feed(buf, 0, n):
                    stats.frames += 1
                    last_frame = now
                    warned = False
                    on_frame(frame, arrival)  # user code: its exceptions are not I/O errors
            if not warned and now - last_frame > self.stale_after_s:
                warned = True
                stats.stale_warnings += 1
                log.warning("edge_runtime: %s: no frame for %.1f s (sensor silent?)", self.port_url, now - last_frame)
        return None


def _bytes_view(arr: npt.NDArray[Any]) -> memoryview:
    """The bytes of a C-contiguous array, as a memoryview (no copy)."""
    return memoryview(arr.data).cast("B")  # type: ignore[arg-type]


class _Paced:
    """Sleeps so that sample ``i`` is emitted at ``i / rate`` seconds after the start (no drift)."""

    def __init__(self, rate_hz: float | None) -> None:
        self.rate = rate_hz
        self.t0 = time.perf_counter()

    def wait(self, sample_index: int, stop: threading.Event) -> None:
        if not self.rate:
            return
        delay = self.t0 + sample_index / self.rate - time.perf_counter()
        if delay > 0:
            stop.wait(delay)


class FileSource:
    """Replays a recording: ``file:PATH.csv`` or ``file:PATH.npy``, with query options.

    ``rate=HZ`` (samples per second; default: the CSV's ``timestamp_us`` column, else
    100), ``speed=max`` (as fast as it can: use the ``block`` queue policy to keep every
    window) or ``speed=K`` (K times the recorded rate), ``frame=N`` samples per frame
    (default 10), ``loop=1`` to repeat, ``stream=ID``. CSV columns named ``timestamp_us``
    and ``label`` are not channels; the labels are kept in ``labels`` (one per row).
    """

    def __init__(self, url: str, **_: Any) -> None:
        path_text, q = _query(url[len("file:") :])
        self.url = url
        self.path = Path(path_text)
        self.stats = SourceStats()
        self.labels: list[str] | None = None
        self.values, stamps = self._load()
        self.frame_samples = _number(q, "frame", 10, url, integer=True)
        self.loop = q.get("loop", "0") not in ("0", "", "false")
        self.stream_id = _number(q, "stream", 0, url, integer=True, zero_ok=True)
        recorded = None
        if stamps is not None and len(stamps) > 1:
            recorded = 1e6 / float(np.median(np.diff(stamps)))
        self.recorded_rate = _number(q, "rate", recorded or 100.0, url)
        speed = q.get("speed", "1")
        self.play_rate: float | None = None if speed == "max" else self.recorded_rate * _number(q, "speed", 1.0, url)
        if not self.values.size:
            raise SourceError("recording is empty", path=str(self.path))

    def _load(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64] | None]:
        if not self.path.is_file():
            raise SourceError("recording not found", path=str(self.path))
        if self.path.suffix == ".npy":
            arr = np.load(self.path)
            arr = arr.reshape(-1, 1) if arr.ndim == 1 else arr
            return np.ascontiguousarray(arr, dtype=np.float32), None
        with self.path.open(newline="") as fh:
            rows = list(csv.reader(fh))
        if len(rows) < 2:
            raise SourceError("CSV recording has no data rows", path=str(self.path))
        header = rows[0]
        skip = {"timestamp_us", "label"}
        cols = [i for i, name in enumerate(header) if name not in skip]
        try:
            values = np.array([[float(r[i]) for i in cols] for r in rows[1:]], dtype=np.float32)
        except (ValueError, IndexError) as exc:
            raise SourceError(f"CSV recording has a bad row: {exc}", path=str(self.path)) from exc
        stamps = None
        if "timestamp_us" in header:
            t = header.index("timestamp_us")
            stamps = np.array([float(r[t]) for r in rows[1:]])
        if "label" in header:
            li = header.index("label")
            self.labels = [r[li] for r in rows[1:]]
        self.channel_names = [header[i] for i in cols]
        return values, stamps

    def run(self, on_frame: OnFrame, stop: threading.Event) -> None:
        values = self.values
        n, channels = values.shape
        interval = round(1e6 / self.recorded_rate)
        pace = _Paced(self.play_rate)
        seq = 0
        emitted = 0
        while not stop.is_set():
            for start in range(0, n, self.frame_samples):
                if stop.is_set():
                    return
                chunk = values[start : start + self.frame_samples]
                pace.wait(emitted + len(chunk), stop)
                frame = Frame(
                    self.stream_id,
                    seq,
                    (emitted) * interval,
                    interval,
                    values.dtype,
                    channels,
                    len(chunk),
                    _bytes_view(chunk),
                )
                seq += 1
                emitted += len(chunk)
                self.stats.frames += 1
                on_frame(frame, time.perf_counter_ns())
            if not self.loop:
                return


class SyntheticSource:
    """Generated signals: ``synthetic:sine`` or ``synthetic:ramp``, with query options.

    ``channels=N`` (3), ``rate=HZ`` (100; ``speed=max`` ignores it), ``frame=N`` (10),
    ``count=N`` frames then stop (default: forever), ``freq=HZ`` (1.0), ``noise=SIGMA``
    (0), ``seed``, ``dtype`` (float32 or int16), ``stream=ID``. ``ramp`` gives sample
    ``i`` of channel ``c`` the value ``i * channels + c`` (exact, for tests).
    """

    def __init__(self, url: str, **_: Any) -> None:
        kind, q = _query(url[len("synthetic:") :])
        if kind not in ("sine", "ramp"):
            raise SourceError(f"unknown synthetic signal {kind!r}: expected sine or ramp", device=url)
        self.url = url
        self.kind = kind
        self.channels = _number(q, "channels", 3, url, integer=True)
        self.rate = _number(q, "rate", 100.0, url)
        self.frame_samples = _number(q, "frame", 10, url, integer=True)
        self.count = _number(q, "count", None, url, integer=True)
        self.freq = _number(q, "freq", 1.0, url)
        self.noise = _number(q, "noise", 0.0, url, zero_ok=True)
        self.stream_id = _number(q, "stream", 0, url, integer=True, zero_ok=True)
        if q.get("dtype", "float32") not in ("float32", "int16"):
            raise SourceError(f"dtype={q['dtype']!r} in {url!r}: expected float32 or int16", device=url)
        self.dtype = np.dtype(q.get("dtype", "float32"))
        self.rng = np.random.default_rng(_number(q, "seed", 0, url, integer=True, zero_ok=True))
        self.play_rate = None if q.get("speed") == "max" else self.rate
        self.stats = SourceStats()
        self._buf = np.zeros((self.frame_samples, self.channels), dtype=self.dtype)
        self._t = np.arange(self.frame_samples, dtype=np.float64)
        self._phase = np.arange(self.channels, dtype=np.float64) * (math.pi / 4)

    def run(self, on_frame: OnFrame, stop: threading.Event) -> None:
        interval = round(1e6 / self.rate)
        pace = _Paced(self.play_rate)
        buf = self._buf
        payload = _bytes_view(buf)
        n = self.frame_samples
        seq = 0
        while not stop.is_set() and (self.count is None or seq < self.count):
            first = seq * n
            pace.wait(first + n, stop)  # before computing: the frame is made when it is "sampled"
            if self.kind == "ramp":
                buf[...] = (
                    np.arange(first * self.channels, (first + n) * self.channels)
                    .reshape(n, self.channels)
                    .astype(self.dtype)
                )
            else:
                t = (self._t + first) / self.rate
                wave = np.sin(2 * math.pi * self.freq * t[:, None] + self._phase)
                if self.noise:
                    wave += self.rng.normal(0.0, self.noise, wave.shape)
                np.copyto(buf, wave * (1000 if self.dtype.kind == "i" else 1), casting="unsafe")
            frame = Frame(self.stream_id, seq, first * interval, interval, self.dtype, self.channels, n, payload)
            seq += 1
            self.stats.frames += 1
            on_frame(frame, time.perf_counter_ns())
