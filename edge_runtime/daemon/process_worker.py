"""A pipeline in a process of its own (``[daemon] pipelines_in = "processes"``).

Why: the per-window Python work of a stream (reading, windowing, preprocessing, making the
record) holds CPython's GIL, so pipelines on threads of one process share one core for that
work however many cores the board has (measured by ``scripts/soak.py``: two pipelines on
threads gave 0.8-1.1x the results/s of one). In processes they run on separate cores, and a
native crash in one interpreter takes down only its pipeline's process.

Who does what: the child loads the model on the pipeline's device list (``load_on_devices``),
warms it, opens the source and runs the stream; a runner error is recovered in the child
(next device, same window again). The parent (``ProcessWorker``) writes every result the
child sends to the pipeline's sinks, feeds the metrics, and watches the child's beats: a
child that stops beating for ``inference_timeout_s`` is hung and is killed, and a new child
starts on the next device of the list (the source is released by the kill). A reload is two
steps: ``prepare`` (the child loads and warms the new runner beside the running one) and
``commit`` (the child swaps it in between two windows, as ``Stream.swap``), so a reload that
fails in any pipeline changes nothing in any.

Messages are tuples over a ``multiprocessing`` pipe (one per pipeline). Results cost one
pickled dict each (a few microseconds, in both processes). Children are started with
``spawn`` (no fork of a process that holds threads), ignore SIGINT, SIGTERM and SIGHUP (the
parent decides: a terminal's Ctrl-C or systemd's SIGTERM to the whole group must not cut the
queue short), and stop when the parent says so or when its end of the pipe closes.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import sys
import threading
import time
from collections.abc import Callable, MutableSet, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ..errors import EdgeRuntimeError, ModelLoadError
from .config import Pipeline
from .worker import ResultSink, pipeline_state, why

log = logging.getLogger("edge_runtime.daemon")

#: How long a child may take to load and warm a model (seconds): a cold Pi with OpenVINO is slow.
LOAD_TIMEOUT_S = 300.0
#: How often a child reports its counters while its loop turns (seconds).
BEAT_EVERY_S = 0.1


# -- the child ---------------------------------------------------------------------------
def _child(
    conn: Connection,
    spec: Pipeline,
    cache_dir: Path,
    default_threads: int | None,
    start: int,
    log_level: int,
    loader: Any = None,
    measure_cache: Path | None = None,
) -> None:
    """The child process's main: load, wait for ``go``, stream, obey the parent's commands.
    ``loader``: the service's (pickled by reference; None: ``edge_runtime.load``).
    ``measure_cache``: the measurement cache's directory (the daemon's state directory)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    from ..cli import _LogFormat  # the parent's line format: one journal, one look

    handler = logging.StreamHandler()
    handler.setFormatter(_LogFormat())
    logging.basicConfig(level=log_level, handlers=[handler])
    logging.getLogger("edge_runtime").setLevel(log_level)
    from .worker import choice_text, load_on_devices

    if loader is None:
        from ..loader import load as loader
    send_lock = threading.Lock()

    def send(*msg: Any) -> None:
        with send_lock:
            conn.send(msg)

    try:
        runner, index = load_on_devices(
            loader, spec, start, cache_dir=cache_dir, default_threads=default_threads, measure_cache=measure_cache
        )
    except BaseException as exc:  # noqa: BLE001 - every failure goes to the parent, which decides
        send("failed", why(exc))
        return
    threads = spec.threads if spec.threads is not None else default_threads
    send("ready", runner.device, index, len(runner.attempts), f"{runner.describe()}, {choice_text(runner, threads)}")
    command = conn.recv()
    if command[0] != "go":
        runner.close()
        return
    _ChildRun(conn, send, spec, runner, index, cache_dir, default_threads, loader, measure_cache).serve()


class _ChildRun:
    """The stream of one child, with its command thread."""

    def __init__(
        self,
        conn: Connection,
        send: Callable[..., None],
        spec: Pipeline,
        runner: Any,
        index: int,
        cache_dir: Path,
        default_threads: int | None,
        loader: Any,
        measure_cache: Path | None = None,
    ) -> None:
        from .worker import Worker

        self.conn, self.send, self.spec = conn, send, spec
        self.cache_dir, self.default_threads, self.loader = cache_dir, default_threads, loader
        self.measure_cache = measure_cache
        self.prepared: tuple[Pipeline, Any, int] | None = None
        self.last_beat_sent = 0.0
        from ..stream.sources import is_serial, open_source

        serial = is_serial(spec.source)
        options: dict[str, Any] = {"wait": True} if serial else {}
        if spec.baud and serial:
            options["baud"] = spec.baud
        source = open_source(spec.source, **options)
        # A Worker without sinks: its stream and its device recovery; the records go to the parent.
        self.worker = Worker(spec, runner, index, source, [], recover=self._recover)

    def _load(self, spec: Pipeline, start: int) -> tuple[Any, int]:
        from .worker import load_on_devices

        return load_on_devices(
            self.loader,
            spec,
            start,
            cache_dir=self.cache_dir,
            default_threads=self.default_threads,
            measure_cache=self.measure_cache,
        )

    def _recover(self, w: Any, exc: BaseException, runner: Any) -> Any:
        return w.fall_back(exc, runner, self._load, self.send)

    def _beat(self) -> None:
        now = time.monotonic()
        if now - self.last_beat_sent < BEAT_EVERY_S:
            return
        self.last_beat_sent = now
        self.send("beat", *self.worker.counters())

    def _commands(self) -> None:
        from ..stream.preprocess import Preprocess

        w = self.worker
        while True:
            try:
                command = self.conn.recv()
            except (EOFError, OSError):  # the parent is gone: stop, as if told to
                w.stop.set()
                return
            kind = command[0]
            if kind == "stop":
                w.stop.set()
                return
            if kind == "prepare":
                spec = command[1]
                # The stream's thread holds the GIL most of the time when its source is fast: hand
                # it over 25x more often while this thread loads (measured: a reload under a
                # full-rate source took 3-7 s at the default 5 ms switch interval).
                switch = sys.getswitchinterval()
                sys.setswitchinterval(0.0002)
                try:
                    runner, index = self._load(spec, 0)
                    w.stream._check_fits(runner, None)
                except BaseException as exc:  # noqa: BLE001 - the parent decides
                    self.send("prepared", False, why(exc))
                    continue
                finally:
                    sys.setswitchinterval(switch)
                self.prepared = (spec, runner, index)
                self.send("prepared", True, runner.device)
            elif kind == "abort" and self.prepared is not None:
                self.prepared[1].close()
                self.prepared = None
            elif kind == "commit" and self.prepared is not None:
                spec, runner, index = self.prepared
                self.prepared = None
                sw = w.stream.swap(
                    runner, preprocess=Preprocess.choose(spec.preprocess, runner), deadline_ms=spec.deadline_ms
                )
                w.last_good = w.spec if w.spec.model != spec.model else w.last_good
                w.spec, w.runner, w.device_index, w.degraded, w.fallbacks = spec, runner, index, "", 0
                threading.Thread(target=self._settle, args=(sw, runner), daemon=True).start()

    def _settle(self, sw: Any, runner: Any) -> None:
        from .worker import give_back_freed_memory

        sw.done.wait()
        if sw.old is not None:
            sw.old.close()
        give_back_freed_memory()
        self.send("swapped", runner.device, len(runner.attempts))

    def serve(self) -> None:
        w = self.worker
        threading.Thread(target=self._commands, name="edge_runtime-commands", daemon=True).start()
        error: str | None = None
        try:
            for r in w.stream.results(stop=w.stop, heartbeat=self._beat):
                record = {"pipeline": w.name, "device": w.stream.model.device, **r.to_dict()}
                self.send("result", record, r.exit_index, r.invoke_us)
                self._beat()
        except BaseException as exc:  # noqa: BLE001 - to the parent
            error = why(exc)
        finally:
            self.last_beat_sent = 0.0
            try:
                self._beat()
            except Exception:  # noqa: BLE001 - the last counters are a courtesy
                pass
            w.close()
            if self.prepared is not None:
                self.prepared[1].close()
            self.send("end", error)


class _Spawning:
    """While a child is being started, the service's SIGTERM/SIGINT handler must not raise into
    ``Process.start()``: the child would read half its start-up data and print a traceback.
    ``held`` is set by the handler instead, and raised when the start is done."""

    active = False
    held: BaseException | None = None


_SPAWNING = _Spawning()


class spawning:
    """Context: defer a stop raised by a signal handler until the child is started."""

    def __enter__(self) -> None:
        _SPAWNING.active, _SPAWNING.held = True, None

    def __exit__(self, *exc: object) -> None:
        _SPAWNING.active = False
        held, _SPAWNING.held = _SPAWNING.held, None
        if held is not None and exc[0] is None:
            raise held


def defer_while_spawning(error: BaseException) -> bool:
    """For the signal handler: True if ``error`` was held (raised after the start), else False."""
    if _SPAWNING.active:
        _SPAWNING.held = error
        return True
    return False


def _level() -> int:
    """The parent's log level, for the child's own logging."""
    return logging.getLogger("edge_runtime").getEffectiveLevel()


# -- the parent --------------------------------------------------------------------------
class ProcessWorker:
    """The parent's side of a pipeline in a child process; the same face to the service as ``Worker``.

    Construction starts the child and waits until it has loaded and warmed the model (or
    raises ``ModelLoadError`` with the child's reason); ``start()`` lets it stream. ``loader``:
    how the child loads models, sent to it by pickling (a module-level function, or an
    instance of a module-level class; default ``edge_runtime.load``). ``registry``: the
    owner's set of live workers, which this one joins as soon as its child is started and
    leaves on ``close()``, so that a stop raised anywhere (a SIGTERM handler raises between
    any two lines of Python) cannot leave a child behind. ``measure_cache``: the directory of
    the measurement cache every load in the child uses (the daemon's state directory).
    """

    def __init__(
        self,
        spec: Pipeline,
        sinks: Sequence[ResultSink],
        *,
        cache_dir: Path,
        default_threads: int | None,
        start_index: int = 0,
        on_result: Callable[[Any, int, float], None] | None = None,
        on_event: Callable[[ProcessWorker, str, tuple[Any, ...]], None] | None = None,
        loader: Any = None,
        registry: MutableSet[ProcessWorker] | None = None,
        measure_cache: Path | None = None,
    ) -> None:
        self.spec = spec
        self._registry = registry
        self.sinks: Sequence[ResultSink] = list(sinks)
        self.results = 0
        self.discarded = 0
        self.error: BaseException | None = None
        self.done = False
        self.abandoned = False
        self.recovering = False
        self.crashes = 0  # the isolated model's process died or hung (each restarted, in the child)
        self.quarantined: list[str] = []  # models quarantined in the child
        self.writing = False
        self.reported_stuck = False
        self.degraded = ""
        self.fallbacks = 0
        self.last_beat = time.monotonic()
        self.counts = (0, 0, 0, 0)  # frames, dropped, bad, queue depth: the child's last report
        self._on_result = on_result
        self._on_event = on_event
        self._stopping = False
        self._prepared = threading.Event()
        self._prepare_reply: tuple[bool, str] = (False, "")
        self.swapped = threading.Event()
        self.prepared_device = ""  # where the runner a reload prepared runs
        self.thread: threading.Thread | None = None
        ctx = multiprocessing.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(
            target=_child,
            args=(child_conn, spec, cache_dir, default_threads, start_index, _level(), loader, measure_cache),
            name=f"edge-runtime-{spec.name}",
            daemon=True,
        )
        try:
            with spawning():  # a SIGTERM now waits until the child has its whole start-up data
                self.process.start()
                if registry is not None:  # from here the owner can end the child, whatever is raised
                    registry.add(self)
        except BaseException:  # that SIGTERM, raised once the child is started: the child goes too
            child_conn.close()  # (left running, it waited for "go" forever, and at exit
            self.close()  # multiprocessing joined it forever: it ignores SIGTERM)
            raise
        child_conn.close()
        try:
            if not self._conn.poll(LOAD_TIMEOUT_S):
                raise ModelLoadError(f"pipelines.{spec.name}: its process did not load in {LOAD_TIMEOUT_S:.0f} s")
            msg = self._conn.recv()
        except (EOFError, OSError):
            self.close()
            raise ModelLoadError(f"pipelines.{spec.name}: its process died while loading ({self._exit()})") from None
        except BaseException:
            self.close()
            raise
        if msg[0] == "failed":
            self.close()
            raise ModelLoadError(msg[1])
        self._device: str = msg[1]
        self.device_index: int = msg[2]
        self.attempts: int = msg[3]
        self.description: str = msg[4]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def device(self) -> str:
        return self._device

    def passed_over(self) -> int:
        return self.attempts + self.fallbacks

    def counters(self) -> tuple[int, int, int, int]:
        return self.counts

    def describe(self) -> str:
        return f"{self.description} (process {self.process.pid})"

    def _exit(self) -> str:
        self.process.join(1)
        code = self.process.exitcode
        if code is None:
            return "still running"
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exit status {code}"

    # -- life ----------------------------------------------------------------------
    def start(self) -> None:
        self.last_beat = time.monotonic()
        self._conn.send(("go",))
        self.thread = threading.Thread(target=self._receive, name=f"edge_runtime-{self.name}", daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        conn = self._conn
        try:
            while True:
                msg = conn.recv()
                kind = msg[0]
                if kind == "result":
                    _, record, exit_index, invoke_us = msg
                    self.writing = True
                    for sink in self.sinks:
                        sink.write(record)
                    self.writing = False
                    self.results += 1
                    self.last_beat = time.monotonic()
                    if self._on_result is not None:
                        self._on_result(self, exit_index, invoke_us)
                elif kind == "beat":
                    self.counts = msg[1:]
                    self.last_beat = time.monotonic()
                    self.reported_stuck = False
                elif kind == "recovering":
                    self.recovering = msg[1]
                    self.last_beat = time.monotonic()
                elif kind == "moved":
                    _, old, new, index, reason = msg
                    self._device, self.device_index, self.degraded = new, index, reason
                    self.fallbacks += 1
                    if self._on_event is not None:
                        self._on_event(self, "moved", (old, new))
                elif kind == "device_error":
                    if self._on_event is not None:
                        self._on_event(self, "device_error", (msg[1],))
                elif kind == "model_crash":
                    self.crashes += 1
                    if self._on_event is not None:
                        self._on_event(self, "model_crash", (msg[1],))
                elif kind == "quarantined":
                    self.quarantined.append(msg[1])
                    if self._on_event is not None:
                        self._on_event(self, "quarantined", (msg[1],))
                elif kind == "prepared":
                    self._prepare_reply = (msg[1], msg[2])
                    self._prepared.set()
                elif kind == "swapped":
                    self._device, self.attempts = msg[1], msg[2]
                    self.swapped.set()
                    if self._on_event is not None:
                        self._on_event(self, "swapped", (msg[1],))
                elif kind == "end":
                    if msg[1] is not None and not self.abandoned:
                        self.error = EdgeRuntimeError(msg[1])
                    return
        except (EOFError, OSError):
            if not self._stopping and not self.abandoned:
                self.error = EdgeRuntimeError(f"the pipeline's process ended unexpectedly ({self._exit()})")
        except BaseException as exc:  # noqa: BLE001 - a sink that fails ends the pipeline, as on a thread
            self.error = exc
        finally:
            self._prepared.set()
            self.swapped.set()
            self.done = True

    # -- reload --------------------------------------------------------------------
    def prepare(self, spec: Pipeline) -> None:
        """Have the child load and warm ``spec``'s model beside the running one; raise on failure."""
        self._prepared.clear()
        self._conn.send(("prepare", spec))
        if not self._prepared.wait(LOAD_TIMEOUT_S) or self.done:
            raise ModelLoadError(f"pipelines.{spec.name}: its process did not prepare the new model")
        ok, text = self._prepare_reply
        if not ok:
            raise ModelLoadError(text)
        self.prepared_device = text

    def abort(self) -> None:
        self._conn.send(("abort",))

    def commit(self, spec: Pipeline, sinks: Sequence[ResultSink]) -> threading.Event:
        """Swap the prepared runner in (between two windows); the returned event is set when done."""
        self.sinks = list(sinks)  # before the swap takes effect: no result is missed
        self.spec, self.degraded, self.fallbacks = spec, "", 0
        self.swapped.clear()
        self._conn.send(("commit",))
        return self.swapped

    # -- end -----------------------------------------------------------------------
    def halt(self, timeout: float = 30.0) -> bool:
        """Stop taking frames, let queued windows finish and be written; True if it ended."""
        self._stopping = True
        try:
            self._conn.send(("stop",))
        except OSError:
            pass
        if self.thread is not None:
            self.thread.join(timeout)
        self.process.join(timeout)
        return not self.process.is_alive()

    def kill(self) -> None:
        """End a hung child at once (its source is released with it)."""
        self.abandoned = True
        self.process.kill()
        self.process.join(10)

    def close(self) -> None:
        """Release the child (killed if still running) and the pipe. Safe to call twice."""
        self._stopping = True
        if self._registry is not None:
            self._registry.discard(self)
        if self.process.pid is not None:  # started
            if self.process.is_alive():
                self.process.kill()
            self.process.join(10)
        self._conn.close()

    def state(self, now: float, stuck_after: float) -> tuple[str, str]:
        """(state, why): see ``pipeline_state``."""
        return pipeline_state(self, now, stuck_after)
