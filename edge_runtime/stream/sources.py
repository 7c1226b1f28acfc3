"""Sensor sources, addressed by URL: serial ports (any pyserial URL or device path),
recordings (``file:``) and generators (``synthetic:``).

Every source has ``run(on_frame, stop)``: it calls ``on_frame(frame, arrival_ns)`` on
the calling thread for each frame, until ``stop`` is set or the data ends.
``frame.payload`` is valid only during the call. ``arrival_ns`` is
``time.perf_counter_ns()`` when the bytes completing the frame were read.

Names, the same in Python, URL queries, the CLI and JSON: ``baud`` (serial speed, bits
per second), ``rate`` (the signal's sample rate in Hz: what the frame timestamps say),
``speed`` (playback as a multiple of real time, or ``max``), ``frame_samples`` (samples
per frame), ``stream_id``.

URL queries are strict: an unknown key or a bad value is an ``ArgumentError`` (a usage
error) naming the key and the URL.

I/O errors of a serial port that has been open (an unplugged adapter, a closed pty) are
the source's to handle: it reports them, backs off, reconnects and resumes. A port that
has never opened is a ``SourceError`` at once, unless ``wait=True`` (then the source
waits for the device to appear). An exception raised by ``on_frame`` (user code) is not
an I/O error: it ends ``run`` and propagates as is.

A serial source also carries commands to the device while ``run`` reads
(``SerialSource.command``, ``start_stream``, ``stop_stream``, ``set_rate``, ``ping``;
firmware_notes/serial_protocol.md, "Commands and replies"): they are written from the
caller's thread, and ``run``'s reader hands the replies back.
"""

from __future__ import annotations

import csv
import difflib
import errno
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

from ..errors import ArgumentError, SourceError, StreamError
from .codec import DecoderStats, Frame, FrameDecoder
from .command import DEFAULT_RETRIES, DEFAULT_TIMEOUT_S, ClockEstimate, Command, CommandChannel, Reply

log = logging.getLogger("edge_runtime.stream")

OnFrame = Callable[[Frame, int], None]

#: ``file:`` query keys, and the older spellings still accepted for some.
FILE_KEYS = ("rate", "speed", "frame_samples", "loop", "stream_id")
#: ``synthetic:`` query keys.
SYNTHETIC_KEYS = (
    "channels",
    "rate",
    "speed",
    "frame_samples",
    "count",
    "freq",
    "noise",
    "seed",
    "dtype",
    "stream_id",
)
#: Older spellings of query keys (``file:`` and ``synthetic:``): old name -> name.
KEY_ALIASES = {"frame": "frame_samples", "stream": "stream_id"}
#: The only query key of a plain device path (``/dev/ttyUSB0?baud=115200``).
SERIAL_PATH_KEYS = ("baud",)
DEFAULT_BAUD = 115200

_WAIT_HINT = "pass wait=True / --wait to wait for it to appear"
_DIALOUT_HINT = "on Linux, add your user to the 'dialout' group (sudo usermod -aG dialout $USER, then log in again)"


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

    def to_dict(self) -> dict[str, Any]:
        out = dict(vars(self))
        out["decoder"] = self.decoder.to_dict() if self.decoder is not None else {}
        return out


def _key_list(keys: tuple[str, ...], aliases: dict[str, str]) -> str:
    """``keys`` for a message, each with its older spelling: ``frame_samples (or frame), ...``."""
    old = {new: name for name, new in aliases.items()}
    return ", ".join(f"{k} (or {old[k]})" if k in old else k for k in keys)


def _query(url: str, text: str, keys: tuple[str, ...], aliases: dict[str, str]) -> tuple[str, dict[str, str]]:
    """``text`` split at ``?`` into (base, {key: value}), keys under their current names.

    An unknown key, or one key given twice with different values (under either
    spelling), is an ArgumentError naming the key and ``url``.
    """
    base, _, query = text.partition("?")
    out: dict[str, str] = {}
    spelled: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        name = aliases.get(key, key)
        if name not in keys:
            close = difflib.get_close_matches(key, keys, n=1)
            guess = f" (did you mean {close[0]}?)" if close else ""
            raise ArgumentError(
                f"unknown key {key!r} in {url!r}{guess}; known keys: {_key_list(keys, aliases)}",
                device=url,
            )
        if name in out and out[name] != value:
            raise ArgumentError(
                f"{name} given twice in {url!r}: {spelled[name]}={out[name]!r} and {key}={value!r}",
                device=url,
            )
        out[name] = value
        spelled[name] = key
    return base, out


def _number(
    q: dict[str, str], key: str, default: Any, url: str, *, integer: bool = False, zero_ok: bool = False
) -> Any:
    """``q[key]`` as a finite number (> 0, or >= 0 with ``zero_ok``), or ``default``; an ArgumentError otherwise."""
    if key not in q:
        return default
    try:
        value = int(q[key]) if integer else float(q[key])
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise ArgumentError(f"{key}={q[key]!r} in {url!r} is not {kind}", device=url) from None
    if not math.isfinite(value):
        raise ArgumentError(f"{key}={q[key]!r} in {url!r} is not a finite number", device=url)
    if value < 0 or (value == 0 and not zero_ok):
        raise ArgumentError(f"{key}={q[key]!r} in {url!r} must be {'>= 0' if zero_ok else '> 0'}", device=url)
    return value


def _speed(q: dict[str, str], url: str) -> float | None:
    """``speed``: a multiple of real time (> 0; default 1), or None for ``max`` (as fast as possible)."""
    text = q.get("speed", "1")
    if text == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ArgumentError(f"speed={text!r} in {url!r} must be max or a number > 0", device=url)
    return value


def _flag(q: dict[str, str], key: str, url: str) -> bool:
    text = q.get(key, "0").lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ArgumentError(f"{key}={q[key]!r} in {url!r} must be 1 or 0 (true/false, yes/no, on/off)", device=url)


def _not_a_port(path: str) -> str | None:
    """Why ``path`` cannot be a serial port (it is a regular file or a directory), or None."""
    try:
        p = Path(path)
        if p.is_file():
            return f"{path} is a regular file, not a serial port: did you mean file:{path}?"
        if p.is_dir():
            return f"{path} is a directory, not a serial port"
    except (OSError, ValueError):  # a name the filesystem cannot take: let the open say so
        return None
    return None


#: URL schemes of the sources that are not serial links: recordings and generators.
REPLAY_SCHEMES = ("file:", "synthetic:")


def is_serial(url: str) -> bool:
    """True for a serial port or pyserial URL; False for ``file:`` and ``synthetic:`` sources
    (finite or generated: they can wait for inference, and take no serial options)."""
    return not url.startswith(REPLAY_SCHEMES)


def open_source(url: str, *, baud: int | None = None, wait: bool = False, **serial_options: Any) -> Source:
    """The source for ``url``: ``synthetic:KIND?...``, ``file:PATH?...``, or a serial port.

    Serial: a device path (``/dev/ttyUSB0``, ``/dev/serial/by-id/...``; its query takes
    only ``baud``) or a pyserial URL (``loop://``, ``socket://host:port``,
    ``spy://...``, ``rfc2217://...``; its query goes to pyserial, ``baud`` taken out).
    ``baud`` (bits per second; default 115200) here or as ``?baud=N``; ``baudrate=`` is
    its older spelling. ``wait``: if the port cannot be opened the first time, wait for
    it to appear instead of raising ``SourceError`` (see ``SerialSource``). Other options
    go to ``SerialSource`` and from there to ``serial.serial_for_url``.

    ``baud`` and ``wait`` do not apply to ``file:`` and ``synthetic:`` and are ignored
    there; any other option for them is an ``ArgumentError``.

    A bare path naming an existing regular file (a recording given without ``file:``) is
    a ``SourceError`` at once: "... is a regular file, not a serial port: did you mean
    file:PATH?".
    """
    if not is_serial(url):
        serial_options.pop("baudrate", None)
        if serial_options:
            raise ArgumentError(
                f"option(s) {', '.join(sorted(serial_options))} apply to serial ports, not {url!r}", device=url
            )
        return SyntheticSource(url) if url.startswith("synthetic:") else FileSource(url)
    if "://" not in url:
        path = url.partition("?")[0]
        reason = _not_a_port(path) if path else None
        if reason is not None:
            raise SourceError(reason, device=path)
    return SerialSource(url, baud=baud, wait=wait, **serial_options)


def _serial_address(url: str) -> tuple[str, list[str]]:
    """(the address without ``baud``, the ``baud`` values in the query).

    A plain device path takes only ``baud``; a pyserial URL keeps the rest of its query,
    byte for byte, for pyserial's own handlers (``spy://...?file=x&color``).
    """
    base, sep, query = url.partition("?")
    if not sep:
        return url, []
    bauds: list[str] = []
    rest: list[str] = []
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key == "baud":
            bauds.append(value)
        elif part:
            rest.append(part)
    if "://" not in url and rest:
        bad = rest[0].partition("=")[0]
        raise ArgumentError(
            f"unknown key {bad!r} in {url!r}; a device path takes only: {', '.join(SERIAL_PATH_KEYS)}", device=base
        )
    return (base + "?" + "&".join(rest) if rest else base), bauds


def _baud(url: str, from_url: list[str], baud: int | None, baudrate: int | None) -> int:
    """The one baud rate of ``baud=``, ``baudrate=`` (its older spelling) and ``?baud=``."""
    given: list[tuple[str, int]] = []
    for text in from_url:
        given.append((f"?baud={text}", _number({"baud": text}, "baud", None, url, integer=True)))
    for name, value in (("baud", baud), ("baudrate", baudrate)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ArgumentError(f"{name}={value!r} must be a whole number > 0 (bits per second)", device=url)
        given.append((f"{name}={value}", value))
    if len({v for _, v in given}) > 1:
        raise ArgumentError(f"conflicting baud rates for {url!r}: {', '.join(n for n, _ in given)}", device=url)
    return given[0][1] if given else DEFAULT_BAUD


class SerialSource:
    """A UART (or any pyserial URL) carrying the edge_runtime wire protocol.

    ``url``: a device path (``/dev/ttyUSB0``, ``/dev/serial/by-id/...``), whose query
    takes only ``baud``, or a pyserial URL (``socket://``, ``loop://``, ``spy://``,
    ``rfc2217://``...), whose query options other than ``baud`` go to pyserial.
    ``baud``: bits per second (default 115200; ``baudrate=`` is the older spelling; it
    may also be given as ``?baud=N``; two different values are an ``ArgumentError``).

    The first open: if it fails and ``wait`` is False (the default), ``run`` raises
    ``SourceError`` at once, saying why ("no such device: PATH", "... is a regular file,
    not a serial port: did you mean file:PATH?", "port busy (another process holds it)",
    "permission denied ... 'dialout' group"). With ``wait=True`` it retries with
    exponential backoff (``backoff_s`` = (first, longest) delay in seconds) until the
    device appears, logging the first failure and every 20th; a regular file or a
    directory at the path still fails at once.

    Once open, it reads on the calling thread into one preallocated buffer
    (``os.readv`` on the file descriptor where the port has one, else ``readinto``),
    feeds the sans-IO decoder, and on disconnect (``SerialException``/``OSError``, or a
    readable port returning no bytes, as a closed pty does) reconnects with the same
    backoff (unless ``reconnect`` is False: then ``SourceError``), flushes the input,
    forgets the partial frame and resumes, whatever ``wait`` says: ``wait`` is about the
    first open, ``reconnect`` about a port that has been open. ``stale_after_s``: seconds
    without a frame before a "sensor silent?" warning. ``exclusive``: lock the port
    against other processes. Other keyword options go to ``serial.serial_for_url``
    (``write_timeout``, seconds, defaults to 1.0 here: a write of a command never blocks
    for longer).

    Commands (thread-safe, from any thread while ``run`` reads on another):
    ``command(cmd)`` sends one and returns the device's ``Reply``; ``start_stream``,
    ``stop_stream``, ``set_rate`` are its short forms; ``ping(n)`` measures the board
    clock's offset (``ClockEstimate``, also kept in ``clock``). One command is on the wire
    at a time; each waits ``timeout_s`` per attempt and resends ``retries`` times. No
    reply: ``CommandTimeoutError`` (a ``StreamError`` and a ``TimeoutError``); a NACK:
    ``CommandRejectedError``; the link not open (``run`` not reading, or the port not
    reopened within ``timeout_s`` after an unplug): ``StreamError``. Each names the port.
    Counters: ``channel.stats``; the decoder counts replies in ``stats.decoder.replies``.
    """

    def __init__(
        self,
        url: str,
        *,
        baud: int | None = None,
        wait: bool = False,
        baudrate: int | None = None,
        read_size: int = 65536,
        reconnect: bool = True,
        backoff_s: tuple[float, float] = (0.05, 2.0),
        stale_after_s: float = 2.0,
        exclusive: bool = True,
        **serial_options: Any,
    ) -> None:
        base, bauds = _serial_address(url)
        if not base:
            raise ArgumentError("empty source address", device=url)
        self.url = url
        self.port_url = base
        self.baud = _baud(url, bauds, baud, baudrate)
        self.wait = wait
        self.reconnect = reconnect
        self.backoff_s = backoff_s
        self.stale_after_s = stale_after_s
        self.exclusive = exclusive
        self.serial_options = serial_options
        self.stats = SourceStats()
        self.decoder = FrameDecoder()
        self.stats.decoder = self.decoder.stats  # read when asked, not copied on every read
        self._buf = bytearray(read_size)
        # Commands: the port run() has open (None between connects), writers serialised by _write_lock.
        self._port: Any | None = None
        self._running = 0  # run() calls in progress
        self._link = threading.Condition()  # guards _port and _running; notified when they change
        self._write_lock = threading.Lock()
        self.channel = CommandChannel(self._write_command, device=base)

    # ---- commands to the device ----------------------------------------------------

    @property
    def clock(self) -> ClockEstimate | None:
        """The board clock's offset from the last ``ping`` burst (board - host, microseconds), or None."""
        return self.channel.clock

    def command(self, cmd: Command, *, timeout_s: float = DEFAULT_TIMEOUT_S, retries: int = DEFAULT_RETRIES) -> Reply:
        """Send ``cmd`` (under a fresh token: ``cmd.token`` is replaced) and return the device's ACK.

        ``timeout_s``: seconds to wait for the reply per attempt; ``retries``: resends of
        the same frame after a timeout. Raises ``CommandTimeoutError``,
        ``CommandRejectedError`` (NACK; the reply is its ``reply``) or ``StreamError``
        (link not open), each with the port and the reason.
        """
        return self.channel.send(cmd, timeout_s=timeout_s, retries=retries)

    def start_stream(
        self, stream_id: int = 0, *, timeout_s: float = DEFAULT_TIMEOUT_S, retries: int = DEFAULT_RETRIES
    ) -> Reply:
        """START: the device resumes sending frames of ``stream_id`` (the next ``seq``). See ``command``."""
        return self.command(Command.start(stream_id), timeout_s=timeout_s, retries=retries)

    def stop_stream(
        self, stream_id: int = 0, *, timeout_s: float = DEFAULT_TIMEOUT_S, retries: int = DEFAULT_RETRIES
    ) -> Reply:
        """STOP: no frame of ``stream_id`` is read after the ACK returns. See ``command``."""
        return self.command(Command.stop(stream_id), timeout_s=timeout_s, retries=retries)

    def set_rate(
        self,
        interval_us: int,
        stream_id: int = 0,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
    ) -> Reply:
        """SET_RATE: ``interval_us`` microseconds between samples (100 Hz: 10000) in the frames that follow.

        A value the device does not accept (0, above its range) is a ``CommandRejectedError``
        (NACK BAD_ARGUMENT). See ``command``.
        """
        return self.command(Command.set_rate(interval_us, stream_id), timeout_s=timeout_s, retries=retries)

    def ping(self, n: int = 8, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> ClockEstimate:
        """A burst of ``n`` PINGs: the board clock's offset from the host clock, from the one with the smallest rtt.

        ``offset_us`` is board - host in microseconds, exact within ``error_us`` (rtt / 2);
        ``board_to_host_us(frame.timestamp_us)`` puts a frame's time on the host clock
        (``time.perf_counter_ns() // 1000``, the clock of ``arrival_ns``). Kept in ``clock``.
        """
        return self.channel.ping(n, timeout_s=timeout_s)

    def _write_command(self, wire: bytes, timeout_s: float) -> None:
        """Write one command frame on the open port, waiting up to ``timeout_s`` for it to be open."""
        import serial

        deadline = time.monotonic() + timeout_s
        with self._link:
            while self._port is None:
                left = deadline - time.monotonic()
                if not self._running:
                    raise StreamError(
                        "cannot send a command: the link is not open (SerialSource.run is not reading the port; "
                        "replies arrive through it)",
                        device=self.port_url,
                    )
                if left <= 0:
                    why = self.stats.last_error or "not opened yet"
                    raise StreamError(
                        f"cannot send a command: the link is not open after {timeout_s:g} s ({why})",
                        device=self.port_url,
                    )
                self._link.wait(left)
            port = self._port
        with self._write_lock:
            if self._port is not port:  # closed after we looked: the reader's close waits for this lock
                raise StreamError("cannot send a command: the link closed while sending", device=self.port_url)
            try:
                port.write(wire)  # pyserial writes through (no buffer of its own): no flush (tcdrain) needed
            except (serial.SerialException, OSError) as exc:
                raise StreamError(f"cannot send a command: {type(exc).__name__}: {exc}", device=self.port_url) from exc

    def _set_port(self, port: Any | None) -> None:
        with self._link:
            self._port = port
            self._link.notify_all()

    def _why_not_open(self, exc: BaseException) -> tuple[str, bool]:
        """(why the port did not open, whether waiting cannot fix it)."""
        path = self.port_url if "://" not in self.port_url else None
        if path is not None:
            reason = _not_a_port(path)
            if reason is not None:
                return reason, True
        code = getattr(exc, "errno", None)
        text = str(exc)
        if (
            code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY)
            or "exclusively lock" in text
            or "Resource temporarily unavailable" in text
            or "busy" in text.lower()
        ):
            return "port busy (another process holds it)", False
        if code in (errno.EACCES, errno.EPERM):
            return f"permission denied: {self.port_url} ({_DIALOUT_HINT})", False
        if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO) or (path is not None and not os.path.exists(path)):
            return f"no such device: {self.port_url}", False
        return f"cannot open {self.port_url}: {text}", False

    def _open(self, stop: threading.Event) -> Any | None:
        import serial

        delay = self.backoff_s[0]
        while not stop.is_set():
            try:
                options = {"write_timeout": 1.0, **self.serial_options}
                port = serial.serial_for_url(
                    self.port_url,
                    do_not_open=True,
                    baudrate=self.baud,
                    timeout=0.05,
                    exclusive=self.exclusive,
                    **options,
                )
                port.open()
                port.reset_input_buffer()  # flush what piled up while nobody read
            except (ValueError, KeyError, TypeError) as exc:  # unknown scheme or option (a pyserial handler
                # can raise KeyError or TypeError on a bad query key): final
                raise SourceError(f"not a usable serial address: {exc}", device=self.port_url) from exc
            except (serial.SerialException, OSError) as exc:
                self.stats.open_failures += 1
                reason, final = self._why_not_open(exc)
                self.stats.last_error = reason
                if self.stats.connects == 0:  # never opened: the address may well be wrong
                    if final or not self.wait:
                        hint = f" ({_WAIT_HINT})" if reason.startswith("no such device") else ""
                        raise SourceError(reason + hint, device=self.port_url) from exc
                elif not self.reconnect:
                    raise SourceError(reason, device=self.port_url) from exc
                if self.stats.open_failures == 1 or self.stats.open_failures % 20 == 0:
                    log.warning("edge_runtime: %s: %s; retrying", self.port_url, reason)
                stop.wait(delay)
                delay = min(delay * 2, self.backoff_s[1])
                continue
            self.stats.connects += 1
            if self.stats.connects > 1:
                log.warning("edge_runtime: %s reconnected", self.port_url)
            elif self.stats.open_failures:
                log.warning("edge_runtime: %s opened", self.port_url)
            return port
        return None

    def run(self, on_frame: OnFrame, stop: threading.Event) -> None:
        """Read frames into ``on_frame`` until ``stop`` is set (see the class for failures).

        While it runs, commands can be sent from other threads (``command``, ``ping``...).
        """
        with self._link:
            self._running += 1
        try:
            self._run(on_frame, stop)
        finally:
            with self._link:
                self._running -= 1
                self._link.notify_all()

    def _run(self, on_frame: OnFrame, stop: threading.Event) -> None:
        while not stop.is_set():
            port = self._open(stop)
            if port is None:
                return
            self._set_port(port)
            try:
                reason = self._read_until_lost(port, on_frame, stop)
            finally:
                self._set_port(None)
                with self._write_lock:  # a command being written finishes first
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
        arrival = 0

        def deliver(frame: Frame) -> None:  # called by feed for each frame of a read
            stats.frames += 1
            on_frame(frame, arrival)  # user code: its exceptions are not I/O errors

        channel = self.channel

        def reply(body: bytes) -> None:  # called by feed for each reply to a command (never raises)
            channel.deliver(body, arrival)

        decoder.on_reply = reply

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
                if decoder.feed(buf, 0, n, on_frame=deliver):
                    last_frame = now
                    warned = False
            if not warned and now - last_frame > self.stale_after_s:
                warned = True
                stats.stale_warnings += 1
                log.warning("edge_runtime: %s: no frame for %.1f s (sensor silent?)", self.port_url, now - last_frame)
        return None


def _bytes_view(arr: npt.NDArray[Any]) -> memoryview:
    """The bytes of a C-contiguous array, as a memoryview (no copy)."""
    return memoryview(arr.data).cast("B")  # type: ignore[arg-type]


class _Paced:
    """Sleeps so that sample ``i`` is emitted ``i / samples_per_s`` seconds after the start (no drift)."""

    def __init__(self, samples_per_s: float | None) -> None:
        self.samples_per_s = samples_per_s
        self.t0 = time.perf_counter()

    def wait(self, sample_index: int, stop: threading.Event) -> None:
        if not self.samples_per_s:
            return
        delay = self.t0 + sample_index / self.samples_per_s - time.perf_counter()
        if delay > 0:
            stop.wait(delay)


class FileSource:
    """Replays a recording: ``file:PATH.csv`` or ``file:PATH.npy``, with query keys:

    - ``rate=HZ``: the recording's sample rate in Hz, stamped into the frames (default:
      from the CSV's ``timestamp_us`` column, else 100);
    - ``speed=K``: play at K times real time (default 1), or ``speed=max``: as fast as
      it can (use the ``block`` queue policy to keep every window);
    - ``frame_samples=N``: samples per frame (default 10; older spelling ``frame``);
    - ``loop=1``: start again at the end (1/0, true/false, yes/no, on/off; default 0);
    - ``stream_id=ID``: the frames' stream id (default 0; older spelling ``stream``).

    Any other key, or a bad value, is an ``ArgumentError``. CSV columns named
    ``timestamp_us`` and ``label`` are not channels.

    Attributes: ``values`` ((samples, channels) float32), ``rate`` (Hz), ``speed`` (a
    multiple of real time, None for max), ``frame_samples``, ``loop``, ``stream_id``,
    ``labels`` (the CSV's ``label`` column, one per row, or None) and ``channel_names``
    (the CSV's channel column names; ``ch0``, ``ch1``... for .npy).
    """

    def __init__(self, url: str) -> None:
        path_text, q = _query(url, url[len("file:") :], FILE_KEYS, KEY_ALIASES)
        self.url = url
        self.path = Path(path_text)
        self.frame_samples: int = _number(q, "frame_samples", 10, url, integer=True)
        self.loop = _flag(q, "loop", url)
        self.stream_id: int = _number(q, "stream_id", 0, url, integer=True, zero_ok=True)
        self.speed: float | None = _speed(q, url)
        given_rate: float | None = _number(q, "rate", None, url)
        self.stats = SourceStats()
        self.labels: list[str] | None = None
        self.channel_names: list[str] = []
        self.values, stamps = self._load()
        recorded = None
        if stamps is not None and len(stamps) > 1:
            step = float(np.median(np.diff(stamps)))
            recorded = 1e6 / step if step > 0 else None
        self.rate: float = given_rate or recorded or 100.0
        if not self.values.size:
            raise SourceError("recording is empty", path=str(self.path))

    def _load(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64] | None]:
        if self.path.is_dir():
            raise SourceError("is a directory, not a recording (a .csv or .npy file)", path=str(self.path))
        if not self.path.is_file():
            raise SourceError("recording not found", path=str(self.path))
        if self.path.suffix == ".npy":
            try:
                arr = np.load(self.path, allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:
                raise SourceError(
                    "not a .npy array of numbers (shape (samples, channels))", path=str(self.path)
                ) from exc
            if not isinstance(arr, np.ndarray) or arr.ndim not in (1, 2) or not np.issubdtype(arr.dtype, np.number):
                raise SourceError("a .npy recording holds numbers of shape (samples, channels)", path=str(self.path))
            arr = arr.reshape(-1, 1) if arr.ndim == 1 else arr
            self.channel_names = [f"ch{i}" for i in range(arr.shape[1])] if arr.ndim == 2 else []
            return np.ascontiguousarray(arr, dtype=np.float32), None
        try:
            with self.path.open(newline="") as fh:
                rows = list(csv.reader(fh))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise SourceError(f"not a CSV text recording: {exc}", path=str(self.path)) from exc
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
        interval = round(1e6 / self.rate)
        pace = _Paced(None if self.speed is None else self.rate * self.speed)
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
    """Generated signals: ``synthetic:sine`` or ``synthetic:ramp``, with query keys:

    - ``channels=N`` (default 3);
    - ``rate=HZ``: the sample rate in Hz, stamped into the frames (default 100);
    - ``speed=K``: generate at K times real time (default 1), or ``speed=max``: as fast
      as it can;
    - ``frame_samples=N``: samples per frame (default 10; older spelling ``frame``);
    - ``count=N``: stop after N frames (default: never);
    - ``freq=HZ``: the sine's frequency in Hz (default 1.0); ``noise=SIGMA``: Gaussian
      noise added (default 0); ``seed=N`` for the noise (default 0);
    - ``dtype``: ``float32`` (default) or ``int16`` (the sine scaled by 1000);
    - ``stream_id=ID`` (default 0; older spelling ``stream``).

    Any other key, or a bad value, is an ``ArgumentError``. ``ramp`` gives sample ``i``
    of channel ``c`` the value ``i * channels + c`` (exact, for tests).
    """

    def __init__(self, url: str) -> None:
        kind, q = _query(url, url[len("synthetic:") :], SYNTHETIC_KEYS, KEY_ALIASES)
        if kind not in ("sine", "ramp"):
            raise ArgumentError(f"unknown synthetic signal {kind!r} in {url!r}: expected sine or ramp", device=url)
        self.url = url
        self.kind = kind
        self.channels: int = _number(q, "channels", 3, url, integer=True)
        self.rate: float = _number(q, "rate", 100.0, url)
        self.speed: float | None = _speed(q, url)
        self.frame_samples: int = _number(q, "frame_samples", 10, url, integer=True)
        self.count: int | None = _number(q, "count", None, url, integer=True)
        self.freq: float = _number(q, "freq", 1.0, url)
        self.noise: float = _number(q, "noise", 0.0, url, zero_ok=True)
        self.stream_id: int = _number(q, "stream_id", 0, url, integer=True, zero_ok=True)
        dtype = q.get("dtype", "float32")
        if dtype not in ("float32", "int16"):
            raise ArgumentError(f"dtype={dtype!r} in {url!r}: expected float32 or int16", device=url)
        self.dtype = np.dtype(dtype)
        self.rng = np.random.default_rng(_number(q, "seed", 0, url, integer=True, zero_ok=True))
        self.stats = SourceStats()
        self._buf = np.zeros((self.frame_samples, self.channels), dtype=self.dtype)
        self._t = np.arange(self.frame_samples, dtype=np.float64)
        self._phase = np.arange(self.channels, dtype=np.float64) * (math.pi / 4)

    def run(self, on_frame: OnFrame, stop: threading.Event) -> None:
        interval = round(1e6 / self.rate)
        pace = _Paced(None if self.speed is None else self.rate * self.speed)
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
