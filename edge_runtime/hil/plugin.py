"""pytest plugin for hardware-in-the-loop tests: the same tests on the firmware emulator or a board.

By default each test gets a fresh firmware emulator on a pseudo-terminal; ``--hil-port URL``
points the same tests at a board instead (as pyserial's own test suite runs on ``loop://`` or
a port given on the command line).

Options::

    --hil-port URL        the board: a device path (/dev/ttyACM0, /dev/serial/by-id/...) or any
                          pyserial URL (socket://host:port, rfc2217://host:port, spy://...);
                          default: $EDGE_RUNTIME_HIL_PORT, else the emulator
    --hil-baud N          the board's baud rate (default: the runtime's, 115200)
    --hil-golden-update   rewrite golden files from this run instead of comparing with them

Markers (registered here, so ``--strict-markers`` accepts them)::

    hil            talks to a sensor link (emulator or board); ``-m hil`` selects these. Added
                   by the plugin to every test that uses hil_link, hil_emulator or hil_stream,
                   or is marked board_only / emulator_only.
    board_only     needs a real board: skipped, with the reason, when no --hil-port is given.
    emulator_only  needs what only the emulator can do (fault injection, unplugging, holding
                   the port): skipped, with the reason, when --hil-port points at a board.

Fixtures: ``hil_link`` (``HilLink``), ``hil_emulator`` (``HilLink.emulate``), ``hil_stream``
(``HilStreams``: ``with hil_stream(model) as run: run.results.wait_for(n)``), ``hil_results``
(``ResultCollector``), ``hil_report`` (``HilReport``) and ``hil_golden`` (``GoldenCheck``).
Figures recorded by ``hil_report`` become JUnit XML properties of the test (``hil_*``) and are
printed in the terminal summary, with the link the session used.

This module is loaded into every pytest session of anyone who installs edge_runtime (entry
point ``pytest11``). It imports only the standard library, pytest and ``edge_runtime.errors``
at import time (the emulator, the stream, pyserial and the backends are imported by the
fixtures that need them; note that importing any ``edge_runtime`` module first runs the
package's ``__init__``, which imports NumPy), and a
session that uses none of its fixtures or markers runs exactly as without it: nothing is
printed, marked or skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import pytest

from ..errors import EdgeRuntimeError

if TYPE_CHECKING:
    import numpy.typing as npt

    from ..runner import Runner
    from ..stream.codec import DecoderStats, Frame
    from ..stream.command import ClockEstimate
    from ..stream.pipeline import Stream, StreamResult, StreamStats
    from ..stream.preprocess import Preprocess
    from ..stream.sources import OnFrame, SerialSource, SourceStats
    from .emulator import Emulator, EmulatorStats, Faults
    from .golden import GoldenComparison

#: The environment variable read when ``--hil-port`` is not given.
PORT_ENV = "EDGE_RUNTIME_HIL_PORT"
#: Prefix of every JUnit property this plugin records.
PROPERTY_PREFIX = "hil_"
#: The fixtures that talk to the sensor link: a test using one is a ``hil`` test.
LINK_FIXTURES = frozenset({"hil_link", "hil_emulator", "hil_stream"})
MARKERS = {
    "hil": "talks to a sensor link, the firmware emulator or a board (--hil-port); select with -m hil",
    "board_only": "needs a real board: skipped unless --hil-port (or $EDGE_RUNTIME_HIL_PORT) names one",
    "emulator_only": "needs the firmware emulator (fault injection, unplug, a held port): skipped with --hil-port",
}
#: Name of the pty symlink the emulator makes in each test's temporary directory.
EMULATOR_LINK_NAME = "ttyHIL"
#: Most frames a ``HilRun`` keeps in ``frames`` (the oldest go first).
FRAME_LOG = 1 << 16
#: How long teardown waits for an emulator or stream thread to end, in seconds.
THREAD_STOP_TIMEOUT_S = 10.0


class HilError(EdgeRuntimeError):
    """The link did not do what a test needs (the runtime did not open it, the emulator did not
    finish or left something behind), or a fixture was used in a way that cannot work (the
    emulator asked of a board). ``device`` is the link's address."""


# -- settings and session state -----------------------------------------------------------


@dataclass(frozen=True)
class HilSettings:
    """The session's choices: ``port`` None means the emulator."""

    port: str | None
    port_origin: str  # "--hil-port", "$EDGE_RUNTIME_HIL_PORT" or "" (emulator)
    baud: int | None
    golden_update: bool

    @property
    def describe_link(self) -> str:
        if self.port is None:
            return "the firmware emulator"
        baud = f", {self.baud} baud" if self.baud else ""
        return f"the board at {self.port} (from {self.port_origin}{baud})"


class _Session:
    """The session's HIL state, registered as a plugin for the hooks that need it."""

    def __init__(self, settings: HilSettings) -> None:
        self.settings = settings
        self.used = False  # a hil test was collected (or a link fixture used): the summary is printed
        self.ptys: list[str] = []
        self.figures: list[tuple[str, list[tuple[str, object]]]] = []
        self.goldens_written: list[str] = []
        self.link_recorded = False

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if any(item.get_closest_marker("hil") is not None for item in session.items):
            self.used = True

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "teardown":  # the teardown report carries every property of the test
            return
        figures = [(k, v) for k, v in report.user_properties if str(k).startswith(PROPERTY_PREFIX)]
        if figures:
            self.figures.append((report.nodeid, figures))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not (self.used or self.figures or self.goldens_written):
            return
        tr = terminalreporter
        tr.write_sep("-", "edge_runtime hil")
        if self.settings.port is not None:
            tr.line(f"hil link: {self.settings.describe_link}")
        elif self.ptys:
            paths = list(dict.fromkeys(self.ptys))  # a closed pty's number is soon reused
            shown = ", ".join(paths[:4]) + (", ..." if len(paths) > 4 else "")
            tr.line(
                f"hil link: the firmware emulator, {len(self.ptys)} emulator(s) on pseudo-terminals ({shown}); "
                "--hil-port URL tests a board"
            )
        else:
            tr.line("hil link: the firmware emulator (no test opened it); --hil-port URL tests a board")
        for nodeid, figures in self.figures:
            text = ", ".join(f"{k[len(PROPERTY_PREFIX) :]}={_format_value(v)}" for k, v in figures)
            tr.line(f"{nodeid}: {text}")
        for path in self.goldens_written:
            tr.line(f"golden file rewritten (--hil-golden-update): {path}")


_SESSION = pytest.StashKey[_Session]()
_SESSION_PLUGIN = "edge_runtime_hil_session"


def _format_value(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _baud(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (bits per second)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be > 0 (bits per second)")
    return value


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("edge_runtime hil", "hardware-in-the-loop tests (edge_runtime.hil)")
    group.addoption(
        "--hil-port",
        metavar="URL",
        default=None,
        help="test the board at URL (a device path or any pyserial URL: socket://host:port, rfc2217://...) "
        f"instead of the firmware emulator; default ${PORT_ENV}",
    )
    group.addoption("--hil-baud", metavar="N", type=_baud, default=None, help="the board's baud rate (default 115200)")
    group.addoption(
        "--hil-golden-update",
        action="store_true",
        default=False,
        help="rewrite golden files from this run instead of comparing with them",
    )


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    port: str | None = config.getoption("--hil-port")
    origin = "--hil-port"
    if port is None:
        port = os.environ.get(PORT_ENV) or None
        origin = f"${PORT_ENV}"
    if port is not None and not port.strip():
        raise pytest.UsageError("--hil-port: empty address (give a device path or a pyserial URL)")
    settings = HilSettings(
        port, origin if port else "", config.getoption("--hil-baud"), config.getoption("--hil-golden-update")
    )
    state = _Session(settings)
    config.stash[_SESSION] = state
    config.pluginmanager.register(state, _SESSION_PLUGIN)


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_SESSION, None)
    if state is not None and config.pluginmanager.is_registered(state):
        config.pluginmanager.unregister(state)


def _session(config: pytest.Config) -> _Session:
    return config.stash[_SESSION]


@pytest.hookimpl(tryfirst=True)  # before the -m deselection, so that -m hil sees the marks added here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    settings = _session(config).settings
    for item in items:
        board = item.get_closest_marker("board_only") is not None
        emulator = item.get_closest_marker("emulator_only") is not None
        uses_link = bool(LINK_FIXTURES.intersection(getattr(item, "fixturenames", ())))
        if not (board or emulator or uses_link):
            continue
        if board and emulator:
            raise pytest.UsageError(f"{item.nodeid} is marked both board_only and emulator_only: it could never run")
        if item.get_closest_marker("hil") is None:
            item.add_marker(pytest.mark.hil)
        if board and settings.port is None:
            item.add_marker(
                pytest.mark.skip(
                    reason="board_only: needs a real board; this session runs on the firmware emulator "
                    f"(pass --hil-port URL, or set ${PORT_ENV})"
                )
            )
        elif emulator and settings.port is not None:
            item.add_marker(
                pytest.mark.skip(
                    reason="emulator_only: needs the firmware emulator (fault injection, unplug, a held port); "
                    f"--hil-port points at the board {settings.port}"
                )
            )


# -- the link ---------------------------------------------------------------------------------


class HilLink:
    """The sensor link of one test: the firmware emulator's pty, or the board at ``--hil-port``.

    ``url``: what the runtime opens (``open_source(url)``). With the emulator it is a symlink
    in the test's temporary directory (as udev makes under ``/dev/serial/by-id``), which
    exists from ``emulate()`` on and follows a simulated unplug/replug; with a board, the
    ``--hil-port`` address. ``baud``: ``--hil-baud`` (None: the runtime's default).
    ``is_emulator``; ``emulator``: the ``Emulator`` made by ``emulate``/``play``, or None.

    The emulator sends nothing until ``send()`` (or ``start()``, which first waits until
    every source opened through ``open_source`` has the port open and flushed, so that no
    frame is flushed away). ``close()`` stops it and checks that its thread ended and its
    pty and link are gone (``HilError`` otherwise); the ``hil_link`` fixture calls it.
    """

    def __init__(self, settings: HilSettings, directory: Path, on_pty: Callable[[str], None] | None = None) -> None:
        self.is_emulator = settings.port is None
        self.url: str = settings.port if settings.port is not None else str(directory / EMULATOR_LINK_NAME)
        self.baud = settings.baud
        self.emulator: Emulator | None = None
        self._thread: threading.Thread | None = None
        self._sources: list[SerialSource] = []
        self._on_pty = on_pty
        self._closed = False

    def __repr__(self) -> str:
        return f"<HilLink {'emulator' if self.is_emulator else 'board'} {self.url}>"

    def describe(self) -> str:
        """``emulator at PATH -> /dev/pts/N`` or ``board at URL``, for messages."""
        if not self.is_emulator:
            return f"board at {self.url}"
        pty = self.emulator.pty if self.emulator is not None else None
        return f"emulator at {self.url}" + (f" -> {pty.path}" if pty is not None else "")

    # emulator
    def emulate(
        self,
        values: npt.ArrayLike,
        *,
        rate: float,
        speed: float | None = 1.0,
        frame_samples: int = 10,
        faults: Faults | None = None,
        loop: bool = False,
        stream_id: int = 0,
        dtype: str = "float32",
        **options: Any,
    ) -> Emulator:
        """Make the emulator that will send ``values`` (samples, channels) recorded at ``rate`` Hz.

        ``speed``: a multiple of real time, or None for as fast as the port takes them;
        ``faults``: what to inject (``edge_runtime.hil.emulator.Faults``); ``options``: other
        ``Emulator`` arguments (``answer_commands``, ``board_clock_offset_us``...). The pty and its
        link at ``url`` exist when this returns; sending starts at ``send()``/``start()``.
        One emulator per link at a time. ``HilError`` on a board (mark the test
        ``emulator_only``).
        """
        if not self.is_emulator:
            raise HilError(
                "the emulator was asked for, but --hil-port points at a board: "
                "mark the test @pytest.mark.emulator_only",
                device=self.url,
            )
        if self._closed:
            raise HilError("this link is closed", device=self.url)
        if self.emulator is not None:
            raise HilError("this link already has an emulator: one per test (make the test two tests)", device=self.url)
        import numpy as np

        from .emulator import Emulator

        emu = Emulator(
            np.asarray(values),
            rate=rate,
            speed=speed,
            frame_samples=frame_samples,
            faults=faults,
            loop=loop,
            link=self.url,
            stream_id=stream_id,
            dtype=dtype,
            **options,
        )
        self.emulator = emu
        if emu.pty is not None and self._on_pty is not None:
            self._on_pty(emu.pty.path)
        return emu

    def play(
        self,
        recording: str | Path | npt.ArrayLike,
        *,
        rate: float | None = None,
        speed: float | None = 1.0,
        frame_samples: int = 10,
        faults: Faults | None = None,
        loop: bool = False,
    ) -> Emulator | None:
        """What a test that runs on both links calls: with the emulator, ``emulate`` the recording
        (a ``.csv``/``.npy`` path, whose rate comes from the file unless ``rate`` is given, or an
        array with ``rate``) and return it; with a board, nothing (the board sends its own data)
        and return None."""
        if not self.is_emulator:
            return None
        if isinstance(recording, (str, Path)):
            from .emulator import load_recording

            values, file_rate = load_recording(recording)
            return self.emulate(
                values, rate=rate or file_rate, speed=speed, frame_samples=frame_samples, faults=faults, loop=loop
            )
        if rate is None:
            raise HilError("rate= (Hz) is needed to play an array", device=self.url)
        return self.emulate(recording, rate=rate, speed=speed, frame_samples=frame_samples, faults=faults, loop=loop)

    def send(self) -> None:
        """Start the emulator sending now (on its own thread; it still waits for a reader to
        have the port open). Does nothing on a board, with no emulator, or if already sending."""
        if self.emulator is not None and self._thread is None and not self._closed:
            self._thread = self.emulator.start()

    def start(self, timeout_s: float = 30.0) -> None:
        """Wait until every source opened through ``open_source`` has connected (opened and
        flushed the port), then ``send()``. ``HilError`` if one has not within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not all(src.stats.connects >= 1 for src in self._sources):
            if time.monotonic() > deadline:
                waiting = [s for s in self._sources if s.stats.connects < 1]
                why = "; ".join(f"{s.url}: {s.stats.last_error or 'not opened yet'}" for s in waiting)
                raise HilError(f"the runtime did not open the port within {timeout_s:g} s ({why})", device=self.url)
            time.sleep(0.005)
        self.send()

    def wait_sent(self, timeout_s: float = 30.0) -> EmulatorStats:
        """Wait until the emulator has sent everything (it was started, and not looping); its counters."""
        emu = self.emulator
        if emu is None or self._thread is None:
            raise HilError("no emulator is sending on this link (emulate() then start())", device=self.url)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise HilError(
                f"the emulator did not finish within {timeout_s:g} s (sent {emu.stats.frames} frames)", device=self.url
            )
        return emu.stats

    # the runtime's side
    def open_source(self, *, url: str | None = None, **options: Any) -> SerialSource:
        """The runtime's ``SerialSource`` for this link (``open_source(url, baud=...)``), to be read
        by the test; ``url``: another address of the same port (``spy://<url>?file=...``).
        ``options`` go to ``SerialSource`` (``wait``, ``backoff_s``, ``reconnect``, ...).
        ``start()`` waits for every source made here to connect."""
        from ..stream.sources import SerialSource, open_source

        src = open_source(url or self.url, baud=self.baud, **options)
        if not isinstance(src, SerialSource):
            raise HilError("not a serial port or pyserial URL", device=url or self.url)
        self._sources.append(src)
        return src

    def close(self) -> None:
        """Stop the emulator and check it left nothing: ``HilError`` if its thread is still running
        after ``THREAD_STOP_TIMEOUT_S``, or its pty or link is still there. Idempotent."""
        if self._closed:
            return
        self._closed = True
        emu = self.emulator
        if emu is None:
            return
        emu.close()
        left: list[str] = []
        if self._thread is not None:
            self._thread.join(THREAD_STOP_TIMEOUT_S)
            if self._thread.is_alive():
                left.append(f"its thread still runs after {THREAD_STOP_TIMEOUT_S:g} s")
        if emu.pty is not None and not emu.pty.closed:
            left.append(f"its pty {emu.pty.path} is open")
        if os.path.lexists(self.url):
            left.append(f"its link {self.url} is still there")
        if left:
            raise HilError("the emulator did not clean up: " + "; ".join(left), device=self.url)


class EmulatorFactory(Protocol):
    """The ``hil_emulator`` fixture's type: ``HilLink.emulate``."""

    def __call__(
        self,
        values: npt.ArrayLike,
        *,
        rate: float,
        speed: float | None = 1.0,
        frame_samples: int = 10,
        faults: Faults | None = None,
        loop: bool = False,
        stream_id: int = 0,
        dtype: str = "float32",
        **options: Any,
    ) -> Emulator: ...


# -- results ----------------------------------------------------------------------------------


class HilWaitError(AssertionError):
    """``wait_for`` did not get its results: the stream ended or failed, or the time ran out."""


class ResultCollector:
    """Gathers ``StreamResult``s as they come (``collector(result)``, from any thread).

    ``wait_for(n, timeout_s)`` blocks on a condition (no sleeps) until ``n`` results are in,
    and returns the first ``n``; it raises ``HilWaitError`` at once when the stream has ended
    (``close()``) or failed (``fail(exc)``) with fewer, or when ``timeout_s`` passes.
    ``arrivals_ns``: ``time.perf_counter_ns()`` at each result's arrival. Keeps every result.
    """

    def __init__(self, describe: Callable[[], str] | None = None) -> None:
        self._cond = threading.Condition()
        self._results: list[StreamResult] = []
        self._arrivals: list[int] = []
        self._error: BaseException | None = None
        self._closed = False
        self.describe = describe
        #: A ``wait_for`` has raised for the stream's error (so the ``with`` block's exit need not).
        self.error_reported = False

    def __call__(self, result: StreamResult) -> None:
        now = time.perf_counter_ns()
        with self._cond:
            self._results.append(result)
            self._arrivals.append(now)
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._results)

    @property
    def results(self) -> list[StreamResult]:
        """Every result so far (a copy)."""
        with self._cond:
            return list(self._results)

    @property
    def arrivals_ns(self) -> list[int]:
        with self._cond:
            return list(self._arrivals)

    def fail(self, exc: BaseException) -> None:
        """The stream failed with ``exc``: waiters wake and raise."""
        with self._cond:
            self._error = exc
            self._cond.notify_all()

    def close(self) -> None:
        """No more results will come: waiters wanting more wake and raise."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wait_for(self, n: int, timeout_s: float = 30.0) -> list[StreamResult]:
        """The first ``n`` results, once they are in (see the class for when it raises)."""
        __tracebackhide__ = True
        with self._cond:
            self._cond.wait_for(lambda: len(self._results) >= n or self._error is not None or self._closed, timeout_s)
            have = len(self._results)
            if have >= n:
                return self._results[:n]
            error = self._error
            closed = self._closed
        context = f" ({self.describe()})" if self.describe is not None else ""
        if error is not None:
            self.error_reported = True
            raise HilWaitError(
                f"the stream failed after {have} of {n} results: {type(error).__name__}: {error}{context}"
            ) from error
        if closed:
            raise HilWaitError(f"the stream ended after {have} of {n} results{context}")
        raise HilWaitError(f"{have} of {n} results within {timeout_s:g} s{context}")


class FrameRecord(NamedTuple):
    """A frame as the runtime received it (its header, and when its last byte was read)."""

    seq: int
    timestamp_us: int
    interval_us: int
    samples: int
    channels: int
    flags: int
    arrival_ns: int


class _TappedSource:
    """A source that logs each frame's header into ``log`` and hands the frame on unchanged."""

    def __init__(self, source: SerialSource, log: deque[FrameRecord]) -> None:
        self.source = source
        self.url = source.url
        self.stats: SourceStats = source.stats
        self.log = log

    def run(self, on_frame: OnFrame, stop: threading.Event) -> None:
        log = self.log

        def tap(frame: Frame, arrival_ns: int) -> None:
            log.append(
                FrameRecord(
                    frame.seq,
                    frame.timestamp_us,
                    frame.interval_us,
                    frame.samples,
                    frame.channels,
                    frame.flags,
                    arrival_ns,
                )
            )
            on_frame(frame, arrival_ns)

        self.source.run(tap, stop)


class HilRun:
    """A stream running on the link, for the duration of a ``with hil_stream(...)`` block.

    ``results``: the ``ResultCollector`` its results go to (``run.results.wait_for(n)``);
    ``frames``: a ``FrameRecord`` per frame the runtime received (the last ``FRAME_LOG``);
    ``stream``, ``source`` (the ``SerialSource``), ``emulator`` (or None on a board);
    ``stats`` (the ``StreamStats``), ``decoder`` (the ``DecoderStats``); ``error``: what ended
    the stream, if anything did. Results are computed on a thread of the run's own.
    """

    def __init__(
        self,
        link: HilLink,
        stream: Stream,
        source: SerialSource,
        frames: deque[FrameRecord],
        results: ResultCollector,
        on_result: Callable[[StreamResult], object] | None,
    ) -> None:
        self.link = link
        self.stream = stream
        self.source = source
        self.frames = frames
        self.results = results
        self.emulator = link.emulator
        self.error: BaseException | None = None
        #: The board clock's offset from the host's, after ``sync_clock()`` (else None).
        self.clock: ClockEstimate | None = None
        self._on_result = on_result
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._consume, name="edge_runtime-hil-results", daemon=True)
        if results.describe is None:
            results.describe = self.describe

    @property
    def stats(self) -> StreamStats:
        return self.stream.stats

    @property
    def decoder(self) -> DecoderStats:
        return self.source.decoder.stats

    def describe(self) -> str:
        """The counters, for a failure message."""
        st, dec, src = self.stats, self.decoder, self.source.stats
        sent = f", emulator sent {self.emulator.stats.frames}" if self.emulator is not None else ""
        return (
            f"{self.link.describe()}: {dec.frames} frames decoded{sent}, {dec.crc_errors} CRC errors, "
            f"{dec.malformed} malformed, {dec.gaps} missing; {st.windows} windows, {st.dropped} dropped; "
            f"{src.connects} connects, last error {src.last_error or 'none'}"
        )

    def _consume(self) -> None:
        try:
            for result in self.stream.results(stop=self._stop):
                if self._on_result is not None:
                    self._on_result(result)
                self.results(result)
        except BaseException as exc:  # noqa: BLE001 - handed to wait_for and to the with block's exit
            self.error = exc
            self.results.fail(exc)
        finally:
            self.results.close()

    def _start(self, connect_timeout_s: float) -> None:
        """Start computing; return once the source has connected (``HilError`` if it did not)."""
        self._thread.start()
        deadline = time.monotonic() + connect_timeout_s
        while self.source.stats.connects < 1:
            if not self._thread.is_alive():
                # one line, no chained traceback: a port that does not open is the user's setup
                error = self.error
                reason = error.reason if isinstance(error, EdgeRuntimeError) else f"{type(error).__name__}: {error}"
                pytest.fail(f"hil: the runtime could not open the link {self.link.url}: {reason}", pytrace=False)
            if time.monotonic() > deadline:
                raise HilError(
                    f"the runtime did not open the port within {connect_timeout_s:g} s", device=self.link.url
                )
            time.sleep(0.005)

    def sync_clock(self, n: int = 8, timeout_s: float = 0.5) -> ClockEstimate:
        """PING the board ``n`` times over the command channel: the link's round-trip time and the
        board clock's offset from the host's, from the ping with the smallest rtt (kept in
        ``clock``). Raises the channel's ``CommandTimeoutError`` when the board does not answer
        (firmware without the command channel: see ``serial_protocol.md``)."""
        self.clock = self.source.ping(n, timeout_s=timeout_s)
        return self.clock

    def host_time_us(self, result: StreamResult) -> float:
        """When the board took the last sample of ``result``'s window, on the host clock
        (``time.perf_counter_ns() // 1000``, as ``ResultCollector.arrivals_ns / 1000``), within
        ``clock.error_us``. Needs ``sync_clock()`` first."""
        if self.clock is None:
            raise HilError("no clock offset yet: call run.sync_clock() first", device=self.link.url)
        return self.clock.board_to_host_us(result.timestamp_us)

    def stop(self) -> None:
        """Stop the stream (windows already queued are still computed) and wait for its thread.
        ``HilError`` if it does not end, or if the stream's reader was left behind."""
        self._stop.set()
        if self._thread.ident is None:
            return
        self._thread.join(THREAD_STOP_TIMEOUT_S)
        if self._thread.is_alive():
            raise HilError(f"the stream did not stop within {THREAD_STOP_TIMEOUT_S:g} s", device=self.link.url)
        if self.stats.reader_stuck:
            raise HilError("the stream's reader did not stop: a thread is left behind", device=self.link.url)


class HilStreams:
    """The ``hil_stream`` fixture: ``with hil_stream(model, ...) as run:`` runs ``model`` on the link.

    Opens the link through ``HilLink.open_source`` (so ``edge_runtime.stream``'s
    ``SerialSource``, as in production), makes a ``Stream``, computes results on a thread
    into ``run.results``, waits until the port is open, then starts the emulator (if any).
    On leaving the block the stream stops (queued windows are still computed), a model
    loaded from a path is closed, and an error that ended the stream is raised unless the
    block raised or a ``wait_for`` already reported it.
    """

    def __init__(self, link: HilLink) -> None:
        self.link = link
        self.runs: list[HilRun] = []

    @contextlib.contextmanager
    def __call__(
        self,
        model: str | Path | Runner,
        *,
        device: str = "auto",
        preprocess: str | Preprocess = "auto",
        labels: Sequence[str] | None = None,
        window: int | None = None,
        hop: int | None = None,
        policy: str = "block",
        queue_slots: int = 8,
        stream_id: int | None = None,
        collector: ResultCollector | None = None,
        on_result: Callable[[StreamResult], object] | None = None,
        connect_timeout_s: float = 30.0,
        **source_options: Any,
    ) -> Iterator[HilRun]:
        """Run ``model`` (a path, loaded on ``device`` and closed after; or a loaded ``Runner``) on the link.

        ``preprocess``: ``"auto"`` (the model's JSON sidecar), ``"none"``, a sidecar path, or a
        ``Preprocess``. ``policy``: ``"block"`` by default, so every window is computed (the
        reader waits, and with the emulator the pty's buffer holds the sender back);
        ``"drop-oldest"`` to see windows dropped and counted as in production. ``window``,
        ``hop``, ``labels``, ``queue_slots``, ``stream_id``: as ``Stream``. ``collector``: where
        results go (default a new ``ResultCollector``; the ``hil_results`` fixture fits).
        ``on_result(result)``: called on the run's thread before a result is collected (an
        exception there ends the stream). ``source_options``: to ``SerialSource``.
        """
        from ..loader import load
        from ..stream.pipeline import Stream
        from ..stream.preprocess import Preprocess

        owned = isinstance(model, (str, Path))
        runner: Runner = load(model, device) if isinstance(model, (str, Path)) else model
        run: HilRun | None = None
        try:
            source = self.link.open_source(**source_options)
            pre = preprocess if isinstance(preprocess, Preprocess) else Preprocess.choose(preprocess, runner)
            frames: deque[FrameRecord] = deque(maxlen=FRAME_LOG)
            stream = Stream(
                runner,
                _TappedSource(source, frames),
                window=window,
                hop=hop,
                preprocess=pre,
                labels=labels,
                policy=policy,
                queue_slots=queue_slots,
                stream_id=stream_id,
            )
            run = HilRun(self.link, stream, source, frames, collector or ResultCollector(), on_result)
            self.runs.append(run)
            run._start(connect_timeout_s)
            self.link.send()
            try:
                yield run
            finally:
                run.stop()
            if run.error is not None and not run.results.error_reported:
                raise run.error  # the block ended normally, and nothing told it the stream had failed
        finally:
            if run is not None:
                with contextlib.suppress(HilError):
                    run.stop()  # the block or the start failed: still stop (teardown checks again)
            if owned:
                runner.close()

    def close(self) -> None:
        """Stop every run still going (a block left by an exception has stopped already)."""
        for run in self.runs:
            run.stop()


# -- figures ----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, interpolated linearly (NumPy's default)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


class HilReport:
    """Records figures of a test as JUnit XML properties (``hil_<name>``) and in the terminal summary.

    Figures are measurements, never pass/fail criteria: nothing here asserts on timing.
    Properties go on the test's ``user_properties``, the list ``record_property`` appends to
    (without its warning under the default ``junit_family=xunit2``: pytest writes test-case
    properties in every family; consumers that validate against the strict xunit2 schema
    should set ``junit_family=xunit1``). ``figures``: what this test recorded.
    """

    def __init__(self, node: pytest.Item) -> None:
        self._properties = node.user_properties
        self.figures: dict[str, object] = {}

    def record(self, name: str, value: float | int | str) -> None:
        """Record one figure (floats rounded to 6 significant digits)."""
        if isinstance(value, float):
            value = float(f"{value:.6g}")
        self._properties.append((PROPERTY_PREFIX + name, value))
        self.figures[name] = value

    def latency(self, results: Sequence[StreamResult], arrivals_ns: Sequence[int] = ()) -> dict[str, float]:
        """Record ``latency_p50_us``/``p90``/``p99``/``max`` of ``results`` and, given their arrival
        times (``ResultCollector.arrivals_ns``), ``results_per_s``; returns what it recorded."""
        out: dict[str, float] = {}
        latencies = [r.latency_us for r in results]
        if latencies:
            for q in (50, 90, 99):
                out[f"latency_p{q}_us"] = percentile(latencies, q)
            out["latency_max_us"] = max(latencies)
            out["invoke_p50_us"] = statistics.median(r.invoke_us for r in results)
        if len(arrivals_ns) >= 2 and arrivals_ns[-1] > arrivals_ns[0]:
            out["results_per_s"] = (len(arrivals_ns) - 1) / ((arrivals_ns[-1] - arrivals_ns[0]) / 1e9)
        for name, value in out.items():
            self.record(name, value)
        return out

    def clock(self, estimate: ClockEstimate) -> dict[str, float]:
        """Record a ``HilRun.sync_clock()`` result: ``link_rtt_us`` (the best ping's round trip),
        ``clock_offset_us`` (board - host) and ``clock_error_us`` (the bound on it, rtt / 2)."""
        out = {
            "link_rtt_us": float(estimate.rtt_us),
            "clock_offset_us": float(estimate.offset_us),
            "clock_error_us": float(estimate.error_us),
        }
        for name, value in out.items():
            self.record(name, value)
        return out

    def stream(self, run: HilRun) -> dict[str, float]:
        """Record a run's figures: latency (as ``latency``), results, windows dropped, frames
        decoded, frames lost (sequence numbers missing), CRC errors, malformed frames, reconnects."""
        out = self.latency(run.results.results, run.results.arrivals_ns)
        st, dec = run.stats, run.decoder
        counts = {
            "results": len(run.results),
            "windows_dropped": st.dropped,
            "frames": dec.frames,
            "frames_lost": dec.gaps,
            "crc_errors": dec.crc_errors,
            "malformed": dec.malformed,
            "reconnects": max(run.source.stats.connects - 1, 0),
        }
        for name, value in counts.items():
            self.record(name, value)
        out.update({k: float(v) for k, v in counts.items()})
        return out


# -- golden files -----------------------------------------------------------------------------


class GoldenCheck:
    """The ``hil_golden`` fixture: ``hil_golden(name, results)`` compares with, or rewrites, a golden file.

    ``name`` is relative to the test file's directory. Compares within
    ``score_abs``/``max_differing``/``timestamps`` (see ``edge_runtime.hil.golden.Tolerance``)
    and fails with the first differing window; with ``--hil-golden-update`` writes the file
    from ``results`` instead (and the summary lists it). Records ``hil_golden_windows`` and
    ``hil_golden_differing``.
    """

    def __init__(self, node: pytest.Item, directory: Path, update: bool, on_write: Callable[[str], None]) -> None:
        self._node = node
        self.directory = directory
        self.update = update
        self._on_write = on_write

    def path(self, name: str | Path) -> Path:
        return self.directory / name

    def __call__(
        self,
        name: str | Path,
        results: Sequence[StreamResult],
        *,
        score_abs: float | None = None,
        max_differing: int = 0,
        timestamps: bool = True,
    ) -> GoldenComparison | None:
        """Compare (returns the comparison) or, with ``--hil-golden-update``, rewrite (returns None)."""
        __tracebackhide__ = True  # pytest shows the test's line and the message, not this frame
        from . import golden

        path = self.path(name)
        if self.update:
            count = golden.write_golden(path, results)
            self._node.user_properties.append((PROPERTY_PREFIX + "golden_windows", count))
            self._on_write(str(path))
            return None
        if not path.is_file():
            pytest.fail(f"golden file {path} not found: run once with --hil-golden-update to write it", pytrace=False)
        tolerance = golden.Tolerance(
            score_abs=golden.DEFAULT_SCORE_ABS if score_abs is None else score_abs,
            max_differing=max_differing,
            timestamps=timestamps,
        )
        comparison = golden.compare_golden(golden.read_golden(path), results, tolerance)
        self._node.user_properties.append((PROPERTY_PREFIX + "golden_windows", comparison.expected))
        self._node.user_properties.append((PROPERTY_PREFIX + "golden_differing", len(comparison.differing)))
        if not comparison.ok:
            raise golden.GoldenMismatch(comparison, f"golden file {path}")
        return comparison


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def hil_link(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HilLink]:
    """The test's sensor link (``HilLink``): a fresh emulator pty, or the board at ``--hil-port``.

    Closed after the test; teardown fails if the emulator left its thread, pty or link behind.
    """
    state = _session(request.config)
    state.used = True
    if not state.link_recorded:
        state.link_recorded = True
        record = request.getfixturevalue("record_testsuite_property")
        record("hil_link", state.settings.port or "emulator")
    link = HilLink(state.settings, tmp_path, on_pty=state.ptys.append)
    try:
        yield link
    finally:
        link.close()


@pytest.fixture
def hil_emulator(hil_link: HilLink) -> EmulatorFactory:
    """``hil_emulator(values, *, rate, speed=1.0, frame_samples=10, faults=None, loop=False)``:
    ``HilLink.emulate`` of the test's link. A test using it needs the emulator: it errors at
    set-up under ``--hil-port`` unless marked ``emulator_only`` (then it is skipped)."""
    if not hil_link.is_emulator:
        pytest.fail(
            f"this test uses hil_emulator, but --hil-port points at the board {hil_link.url}: "
            "mark it @pytest.mark.emulator_only",
            pytrace=False,
        )
    return hil_link.emulate


@pytest.fixture
def hil_stream(hil_link: HilLink) -> Iterator[HilStreams]:
    """``with hil_stream(model, **options) as run:`` a ``Stream`` of ``model`` on the link (``HilStreams``)."""
    streams = HilStreams(hil_link)
    try:
        yield streams
    finally:
        streams.close()


@pytest.fixture
def hil_results() -> ResultCollector:
    """A ``ResultCollector``: pass it as ``collector=`` or call it with each result; ``wait_for(n, timeout_s)``."""
    return ResultCollector()


@pytest.fixture
def hil_report(request: pytest.FixtureRequest) -> HilReport:
    """Figures as JUnit properties and summary lines: ``hil_report.stream(run)``, ``hil_report.record(name, value)``."""
    return HilReport(request.node)


@pytest.fixture
def hil_golden(request: pytest.FixtureRequest) -> GoldenCheck:
    """``hil_golden(name, results, score_abs=0.01, max_differing=0)``: compare with (or, with
    ``--hil-golden-update``, rewrite) the golden file ``name`` beside the test file."""
    state = _session(request.config)
    return GoldenCheck(request.node, request.path.parent, state.settings.golden_update, state.goldens_written.append)
