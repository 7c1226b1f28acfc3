"""``edge-runtime serve --config FILE``: the pipelines of one config as a long-running service.

Start: every pipeline's runner is loaded on the first device of its list that works and
warmed (one inference on a zero input), its source opened, its sinks opened; then
``READY=1`` goes to systemd (when started by it) and each pipeline streams on a thread of
its own, writing one record per result to its sinks (``stdout``, ``jsonl:PATH``, ``mqtt``).

Watchdog (``WatchdogSec=`` in the unit): ``WATCHDOG=1`` is sent by the main loop only while
*every* live pipeline's inference loop keeps turning: each loop beats at least every 0.1 s,
with or without data (``Stream.results(heartbeat=...)``), so a sensor that is legitimately
silent keeps the watchdog fed, while an inference that hangs (a stuck driver) or a sink
write that never returns stops the beats. A pipeline whose source ended (a finished
recording) is reported and no longer counted; the service exits when every one has ended.

Device trouble at run time (``on_device_error``): an inference that raises, or has not
returned after ``inference_timeout_s``, moves the pipeline to the next request of its
``device`` list (``fall-back``, the default), reported as ``degraded`` in the log,
``/healthz`` and the metrics; with ``fail``, or when no device is left, the pipeline fails
(an error) or stays hung, and a hung pipeline stops the watchdog so systemd restarts the
service. After an error the same window is run again on the new device (nothing lost);
after a hang the hung call cannot be taken back: the windows queued behind it are lost
(counted as ``discarded`` if the call ever returns) and the source is handed to a new
stream (a recording starts again from its beginning).

Signals: SIGTERM or SIGINT stop the sources; windows already queued are still inferred and
written; sinks are flushed and closed; ``STOPPING=1``; exit 0. SIGHUP reloads: the file is
read and checked again, every pipeline's model is loaded and warmed beside the running one,
then each running stream takes its new runner between two windows (``Stream.swap``): no
window is skipped or inferred twice, and the JSON lines files are reopened (logrotate's
``postrotate``). A pipeline whose source, window, hop, queue or baud changed is restarted
instead, a new pipeline starts, a removed one stops after its queued windows. If anything
fails (a bad file, a model that does not load), nothing changes: the old pipelines keep
serving, and the failure is in the log, ``/healthz`` (degraded) and
``edge_runtime_reloads_total{result="failed"}``. ``[daemon]`` and ``[metrics]`` are read
at start only (a change is logged as needing a restart).

Signed models (``[daemon] trusted_keys``): before any load (at start, on reload), each
pipeline's model is verified here against its signed manifest, and pinned by the manifest's
sha256: every load of it (in a pipeline's process, on a fallback) verifies it again and must
find that same release. A reload to an unsigned, tampered or mixed model, or to a lower
``model_version`` than the pipeline serves now (a downgrade; equal is allowed), is refused as
any failed reload. Updates (``[daemon] model_store`` and ``updates``): on SIGHUP, after the
reload, and at start, before loading, each release waiting in the inbox is installed by
``model_store.apply_update`` (stage, verify, probe in a throwaway child on the device list of
each ``model = "@store"`` pipeline, commit), then those pipelines load and warm it beside the
running one and swap between two windows, as a reload does. A failure after the commit rolls
the store back; a refused update is moved to ``rejected/`` with a ``.reason`` file, an
applied one deleted from the inbox. A power cut at any point leaves the store's last
committed release current, which the next start loads (an update still in the inbox is
installed again: the same release is a no-op).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType, SimpleNamespace
from typing import TYPE_CHECKING, Any

from ..errors import EdgeRuntimeError, ModelFileError
from ..runner import Runner
from .batched import BatchedRunner, Batchers
from .config import STORE_MODEL, Config, ConfigError, Pipeline, load_config
from .metrics import HttpEndpoint, Metrics
from .notify import Notifier
from .process_worker import ProcessWorker, defer_while_spawning
from .sinks import JsonlSink
from .worker import (
    OPENVINO_CONFIG,
    Loader,
    ResultSink,
    Worker,
    choice_text,
    chosen_threads,
    give_back_freed_memory,
    load_on_devices,
    note_fallback,
    preprocess_for,
    share_of_cores,
    why,
)

if TYPE_CHECKING:
    from ..model_store import InboxEntry

log = logging.getLogger("edge_runtime.daemon")

#: A pipeline at run time: on a thread of this process, or in a process of its own.
AnyWorker = Worker | ProcessWorker

#: A pipeline that has not turned for this long stops the systemd watchdog even when its
#: ``inference_timeout_s`` is longer (seconds); with a watchdog, half its interval if shorter.
STUCK_AFTER_S = 10.0

#: Keys of a pipeline whose change restarts it on reload (the stream itself changes).
_RESTART_KEYS = ("source", "window", "hop", "queue_slots", "policy", "baud")


def resolve_store(spec: Pipeline, store: Path | None, *, clean: bool = True) -> Pipeline | None:
    """``spec`` with a ``"@store"`` model resolved to the store's current release (a model file
    or bundle directory); ``spec`` itself for any other model; None when the store holds no
    release. ``clean``: let ``model_store.current`` remove what an interrupted update left.
    ``ConfigError`` without a store, ``StoreError`` for a store it cannot read."""
    if not spec.from_store:
        return spec
    if store is None:
        raise ConfigError(
            f'pipelines.{spec.name}.model: "{STORE_MODEL}" needs daemon.model_store (read at start: restart to set it)'
        )
    from ..model_store import current

    path = current(store, clean=clean)
    return None if path is None else replace(spec, model=path)


def verify_pipeline(spec: Pipeline, serving: str | None = None) -> tuple[Pipeline, str | None]:
    """Verify a pipeline's model against its trusted keys (none: ``(spec, None)``), in this
    process; return the spec pinned to that release (``signed_digest``) and its model_version.
    ``serving``: the model_version the pipeline serves now: a lower one is a downgrade,
    refused (``VersionError``). Errors name the pipeline, the file and the reason."""
    if not spec.trusted_keys:
        return spec, None
    from ..errors import VersionError
    from ..model import verify_signed

    try:
        v = verify_signed(spec.model, spec.trusted_keys)
    except ModelFileError as exc:  # SignatureError, VersionError, a missing file
        raise type(exc)(f"pipelines.{spec.name}: {exc.reason}", path=exc.path) from None
    if serving is not None:
        from ..manifest import compare_versions

        if compare_versions(v.model_version, serving) < 0:
            raise VersionError(
                f"pipelines.{spec.name}: downgrade refused: model_version {v.model_version} is below the "
                f"{serving} this pipeline serves",
                path=str(v.manifest),
            )
    return replace(spec, signed_digest=v.digest), v.model_version


class StoppedDuringStart(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived while ``start()`` was loading: it released what it had loaded.
    ``signal`` is the signal's name."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal = signal_name


@dataclass
class _Pending:
    """A reload's leftovers: closed once every swap of that reload has taken effect."""

    swaps: list[Any]  # Swap, or anything with ``done`` (an Event) and ``old`` (a runner or None)
    sinks: list[Any] = field(default_factory=list)


class Service:
    """The pipelines of one config. ``start()`` loads; ``run()`` serves until stopped.

    ``loader``: how models are loaded (default ``edge_runtime.load``; tests pass one that
    wraps it, to play a device that fails). Pipelines in processes get it by pickling: a
    module-level function, or an instance of a module-level class.
    """

    def __init__(self, config: Config, notifier: Notifier | None = None, *, loader: Loader | None = None) -> None:
        if loader is None:
            from ..loader import load

            loader = load
        self.config = config
        self.loader = loader
        self.notifier = notifier or Notifier.from_environ()
        self.stop = threading.Event()
        self.workers: list[AnyWorker] = []
        self._abandoned: list[AnyWorker] = []
        self._sinks: dict[str, Any] = {}
        self._pending: list[_Pending] = []
        self._hup = threading.Event()
        self._wake = threading.Event()  # set with stop or _hup: the main loop acts at once, not at its next tick
        self._lock = threading.Lock()  # workers list and sinks table vs. the HTTP thread
        self.reloads = {"ok": 0, "failed": 0}
        self.reload_error = ""  # why the last reload failed ("" after one that worked)
        self.updates = {"ok": 0, "failed": 0}
        self.update_error = ""  # "NAME: why" the last update failed ("" after one that worked)
        #: pipeline -> model_version of the signed release it serves (a reload below it is refused)
        self.serving: dict[str, str] = {}
        self._failing: Pipeline | None = None  # the pipeline being verified or loaded, while it is
        self.metrics: Metrics | None = Metrics() if config.metrics.enabled else None
        self.http: HttpEndpoint | None = None
        self._stuck_after = STUCK_AFTER_S
        self._previous_signals: dict[int, Any] = {}
        self._starting = False
        self._period = 1.0  # seconds between the main loop's turns
        self._last_turn = time.monotonic()
        self.in_processes = self._in_processes(config)
        #: The batchers shared by pipelines with ``max_batch > 1`` (pipelines on threads only).
        self.batchers = Batchers()
        # Every pipeline process started and not yet closed (weak: a closed one leaves it anyway)
        self._children: weakref.WeakSet[ProcessWorker] = weakref.WeakSet()

    @staticmethod
    def _in_processes(config: Config) -> bool:
        """``pipelines_in``: processes, threads, or auto (processes for 2+ pipelines on 2+ cores,
        unless a pipeline batches: batching shares a model between pipelines of one process)."""
        if config.pipelines_in != "auto":
            return bool(config.pipelines_in == "processes")
        batched = [p.name for p in config.pipelines if p.max_batch > 1]
        if batched:
            log.info("edge_runtime: pipelines on threads: %s batch (max_batch > 1)", ", ".join(batched))
            return False
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return len(config.pipelines) > 1 and cores > 1

    # -- start ---------------------------------------------------------------------
    def start(self) -> None:
        """Load and warm every pipeline and open its sinks; release everything if one fails.

        SIGHUP during the start is held over: once serving, the file is read again. SIGTERM or
        SIGINT during the start raise ``StoppedDuringStart`` (once back in Python code: a native
        compile in progress finishes first), after everything loaded so far is released."""
        self._starting = True
        self._install_signals()
        try:
            self._sinks = self._open_sinks(self.config, {})
            where = "processes" if self.in_processes else "threads"
            log.info("edge_runtime: %d pipeline(s) on %s", len(self.config.pipelines), where)
            installed = self._install_waiting()
            while True:
                try:
                    self._load_all()
                    break
                except EdgeRuntimeError as exc:
                    if not installed or self._failing is None or not self._failing.from_store:
                        raise
                    entry = installed.pop()  # what made the store's current release: back to the one before
                    for w in self.workers:
                        w.close()
                    self.workers = []
                    self._update_failed(entry, f"installed, but it did not load: {why(exc)}", roll_back=True)
            for entry in installed:
                self._update_done(entry)
            if self.metrics is not None:
                for w in self.workers:
                    self.metrics.pipeline(w.name, w.device, w.passed_over())
                self.http = HttpEndpoint(self.config.metrics.listen, self.metrics, self.health, self._refresh)
                log.info("edge_runtime: metrics and health on http://%s/metrics, /healthz", self.http.address)
        except BaseException:
            self.close()
            raise
        finally:
            self._starting = False

    def _load_all(self) -> None:
        """Resolve and verify every pipeline's model (``_signed``), then load and warm each.
        ``_failing``: the pipeline whose model failed, when one did."""
        self.config, self.serving = self._signed(self.config, {})
        for spec in self.config.pipelines:
            self._failing = spec
            if self.in_processes:
                self._add_process(spec)
            else:
                runner, index = self._load(spec)
                self._add_worker(spec, runner, index)
            self._failing = None
            if spec.name in self.serving:
                log.info(
                    "edge_runtime: pipeline %s: signed release %s (%s)", spec.name, self.serving[spec.name], spec.model
                )

    def _signed(
        self, config: Config, serving: Mapping[str, str], only: set[str] | None = None
    ) -> tuple[Config, dict[str, str]]:
        """``config`` with every ``"@store"`` model resolved to the store's current release and
        every model verified (``verify_pipeline``; ``serving``: versions a pipeline may not go
        below); and the model_version per signed pipeline. ``only``: just these pipelines (the
        others as they are, at their ``serving`` version). Raises what those raise."""
        specs, versions = [], {}
        for spec in config.pipelines:
            if only is not None and spec.name not in only:
                specs.append(spec)
                if spec.name in serving:
                    versions[spec.name] = serving[spec.name]
                continue
            self._failing = spec
            resolved = resolve_store(spec, config.model_store)
            if resolved is None:
                raise ConfigError(
                    f"pipelines.{spec.name}.model: the model store {config.model_store} holds no release",
                    path=str(config.path),
                )
            resolved, version = verify_pipeline(resolved, serving.get(spec.name))
            self._failing = None
            if version is not None:
                versions[spec.name] = version
            specs.append(resolved)
        return replace(config, pipelines=tuple(specs)), versions

    def _load(self, spec: Pipeline, start: int = 0, config: Config | None = None) -> tuple[Runner, int]:
        """``load_on_devices`` with this service's cache and the pipeline's share of the cores
        (among the pipelines of ``config``, default the running one)."""
        return load_on_devices(
            self.loader,
            spec,
            start,
            cache_dir=self.config.state_dir / "cache",
            default_threads=share_of_cores(len((config or self.config).pipelines)),
            measure_cache=self.config.state_dir,
            batchers=self.batchers,
        )

    def _process(self, spec: Pipeline, sinks: Mapping[str, Any], config: Config, start: int = 0) -> ProcessWorker:
        """A pipeline's process, its model loaded and warmed (not streaming yet)."""
        w = ProcessWorker(
            spec,
            self._sinks_for(spec, sinks),
            cache_dir=self.config.state_dir / "cache",
            default_threads=share_of_cores(len(config.pipelines)),
            start_index=start,
            on_result=self._observe if self.metrics is not None else None,
            on_event=self._event,
            loader=self.loader,
            registry=self._children,
            measure_cache=self.config.state_dir,
        )
        log.info("edge_runtime: pipeline %s: %s from %s", spec.name, w.describe(), spec.source)
        return w

    def _add_process(self, spec: Pipeline) -> ProcessWorker:
        w = self._process(spec, self._sinks, self.config)
        with self._lock:
            self.workers.append(w)
        return w

    def _event(self, w: AnyWorker, kind: str, args: tuple[Any, ...]) -> None:
        """What a pipeline reports besides results (from its process, or from ``Worker.fall_back``
        on its thread): device errors, fallbacks, and swaps after a reload, into the metrics."""
        if self.metrics is None:
            return
        if kind == "device_error":
            self.metrics.device_errors.labels(w.name, args[0]).inc()
        elif kind == "moved":
            self.metrics.moved(w.name, args[0], args[1], w.passed_over())
        elif kind == "swapped":
            self.metrics.pipeline(w.name, args[0], w.passed_over())
        elif kind == "model_crash":
            self.metrics.model_crashes.labels(w.name).inc()
        elif kind == "quarantined":
            self.metrics.quarantined.labels(w.name).inc()

    def _add_worker(self, spec: Pipeline, runner: Runner, index: int, source: Any = None) -> Worker:
        """A worker for ``spec`` (it owns ``runner`` from here on); not started."""
        from ..stream.sources import is_serial, open_source

        try:
            if source is None:
                serial = is_serial(spec.source)
                options: dict[str, Any] = {"wait": True} if serial else {}  # a device not plugged in yet is normal
                if spec.baud and serial:
                    options["baud"] = spec.baud
                source = open_source(spec.source, **options)
            w = Worker(
                spec,
                runner,
                index,
                source,
                self._sinks_for(spec, self._sinks),
                recover=self._recover,
                on_result=self._observe if self.metrics is not None else None,
            )
        except BaseException:
            runner.close()
            raise
        log.info(
            "edge_runtime: pipeline %s: %s, %s from %s",
            spec.name,
            runner.describe(),
            choice_text(runner, self._threads(spec)),
            spec.source,
        )
        with self._lock:
            self.workers.append(w)
        return w

    def _threads(self, spec: Pipeline, config: Config | None = None) -> int | str | None:
        """The threads a pipeline's load asks for: its own, else its share of the cores."""
        return spec.threads if spec.threads is not None else share_of_cores(len((config or self.config).pipelines))

    def _open_sinks(self, config: Config, current: Mapping[str, Any]) -> dict[str, Any]:
        """The sinks ``config`` needs, reusing those of ``current`` that stay the same."""
        table: dict[str, Any] = {}
        try:
            for spec in config.pipelines:
                for s in spec.sinks:
                    key = "stdout" if s.kind == "stdout" else ("mqtt" if s.kind == "mqtt" else str(s.path))
                    if key in table:
                        continue
                    if key in current and (key != "mqtt" or self._same_mqtt(config)):
                        table[key] = current[key]
                    elif s.kind == "mqtt":
                        table[key] = self._mqtt_sink(config)
                    else:
                        table[key] = JsonlSink(s.path)
        except BaseException:
            for key, sink in table.items():
                if current.get(key) is not sink:
                    sink.close()
            raise
        return table

    def _same_mqtt(self, new: Config) -> bool:
        return self.config.mqtt == new.mqtt

    @staticmethod
    def _mqtt_sink(config: Config) -> Any:
        from .. import __version__
        from .mqtt import MqttSink

        assert config.mqtt is not None  # load_config refuses an mqtt sink without [mqtt]
        names = [p.name for p in config.pipelines if any(s.kind == "mqtt" for s in p.sinks)]
        return MqttSink(config.mqtt, names, version=__version__)

    @staticmethod
    def _sinks_for(spec: Pipeline, table: Mapping[str, Any]) -> list[ResultSink]:
        keys = ["stdout" if s.kind == "stdout" else ("mqtt" if s.kind == "mqtt" else str(s.path)) for s in spec.sinks]
        return [table[k] for k in keys]

    # -- run -----------------------------------------------------------------------
    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (exit status 0) or until every pipeline has ended (0 if
        they ended cleanly, 1 if one failed)."""
        n = self.notifier
        try:
            for w in self.workers:
                w.start()
            n.ready(self._status())
            period = self._period = min(1.0, n.watchdog_s / 2) if n.watchdog_s else 1.0
            self._last_turn = time.monotonic()
            self._stuck_after = min(STUCK_AFTER_S, n.watchdog_s / 2) if n.watchdog_s else STUCK_AFTER_S
            last_status = time.monotonic()
            while True:
                self._wake.wait(period)
                self._wake.clear()
                if self.stop.is_set():
                    break
                if self._hup.is_set():
                    self._hup.clear()
                    self.reload()
                    self.apply_updates()
                    n.status(self._status())
                self._settle()
                if not self._check():
                    break
                now = time.monotonic()
                if now - last_status >= 10:
                    n.status(self._status())
                    last_status = now
            n.stopping("stopping: finishing queued windows")
            self.stop.set()
            for w in self.workers:
                w.halt(30)
        finally:
            self._restore_signals()
            self.close()
        failed = [w for w in self.workers if w.error is not None]
        for w in failed:
            log.error("edge_runtime: pipeline %s failed: %s", w.name, why(w.error))  # type: ignore[arg-type]
        return 1 if failed else 0

    def _check(self) -> bool:
        """One turn of the main loop's watch: hung pipelines, the watchdog. False once all ended."""
        now = time.monotonic()
        live = [w for w in self.workers if not w.done]
        if not live:
            return False
        late = now - self._last_turn - self._period
        self._last_turn = now
        if late > 2.0:
            # This loop itself was not scheduled: the whole process (or machine) was held up, so
            # the pipelines' silence says nothing about their devices. Start their clocks again.
            log.warning("edge_runtime: the service was not scheduled for %.1f s (is the machine overloaded?)", late)
            for w in live:
                w.last_beat = max(w.last_beat, now)
            return True
        healthy = True
        for w in live:
            if w.recovering or self.stop.is_set():
                continue
            age = now - w.last_beat
            if not w.writing and age > w.spec.inference_timeout_s and self._fall_back_from_hang(w, age):
                continue
            if age > min(self._stuck_after, w.spec.inference_timeout_s):
                healthy = False
                if not w.reported_stuck:
                    w.reported_stuck = True
                    log.error("edge_runtime: pipeline %s: %s", w.name, w.state(now, 0)[1])
        if healthy:
            self.notifier.watchdog()
        return True

    def _observe(self, w: AnyWorker, exit_index: int, invoke_us: float) -> None:
        m = self.metrics
        assert m is not None
        m.observe(w.name, exit_index, invoke_us)
        if w.spec.deadline_ms is not None and invoke_us > w.spec.deadline_ms * 1e3:
            m.deadline_missed.labels(w.name).inc()

    # -- device trouble ------------------------------------------------------------
    def _recover(self, w: Worker, exc: BaseException, runner: Runner) -> Runner | None:
        """On the pipeline's thread, when its runner raised: the next device, or None (fail)."""
        return w.fall_back(exc, runner, self._load, lambda kind, *args: self._event(w, kind, args))

    def _moved(self, w: AnyWorker, old: str, new: str, reason: str) -> None:
        """``w`` now runs on ``new`` instead of ``old`` because of ``reason``: recorded and counted."""
        note_fallback(w, old, new, reason)
        if self.metrics is not None:
            self.metrics.moved(w.name, old, new, w.passed_over())

    def _fall_back_from_hang(self, w: AnyWorker, age: float) -> bool:
        """Replace a worker whose inference hangs by one on the next device. True if done."""
        if w.spec.on_device_error == "fail" or w.device_index + 1 >= len(w.spec.device):
            return False
        if isinstance(w, ProcessWorker):
            return self._respawn_after_hang(w, age)
        hung = w.stream.model
        log.error(
            "edge_runtime: pipeline %s: inference on %s has not returned for %.1f s: falling back",
            w.name,
            hung.device,
            age,
        )
        w.abandoned = True
        if not w.stream.abandon():
            w.abandoned = False
            log.error("edge_runtime: pipeline %s: its reader did not stop: the source cannot be handed over", w.name)
            return False
        try:
            new, index = self._load(w.spec, w.device_index + 1)
            with self._lock:
                self.workers.remove(w)
            nw = self._add_worker(w.spec, new, index, source=w.source)
        except EdgeRuntimeError as err:
            w.error = err
            log.error("edge_runtime: pipeline %s: no device to fall back to: %s", w.name, why(err))
            return True
        nw.fallbacks, nw.results, nw.crashes, nw.quarantined = w.fallbacks, w.results, w.crashes, w.quarantined
        self._moved(nw, hung.device, new.device, f"inference on {hung.device} hung for {age:.1f} s")
        self._abandoned.append(w)
        self._event(w, "device_error", (hung.device,))
        nw.start()
        return True

    def _respawn_after_hang(self, w: ProcessWorker, age: float) -> bool:
        """Kill a hung pipeline's process (its source goes with it); start one on the next device."""
        hung = w.device
        log.error(
            "edge_runtime: pipeline %s: inference on %s has not returned for %.1f s: its process is killed, "
            "falling back",
            w.name,
            hung,
            age,
        )
        w.kill()
        self._event(w, "device_error", (hung,))
        try:
            nw = self._process(w.spec, self._sinks, self.config, start=w.device_index + 1)
        except EdgeRuntimeError as err:
            w.error = err
            log.error("edge_runtime: pipeline %s: no device to fall back to: %s", w.name, why(err))
            return True
        with self._lock:
            self.workers[self.workers.index(w)] = nw
        nw.fallbacks, nw.results, nw.crashes, nw.quarantined = w.fallbacks, w.results, w.crashes, w.quarantined
        self._moved(nw, hung, nw.device, f"inference on {hung} hung for {age:.1f} s")
        w.close()
        nw.start()
        return True

    # -- reload --------------------------------------------------------------------
    def request_reload(self) -> None:
        """Ask the main loop to reload (what SIGHUP does)."""
        self._hup.set()
        self._wake.set()

    def reload(self) -> bool:
        """Read the config again and apply it without losing or repeating a result (see the module
        doc). Returns True if the new config serves, False if the old one still does."""
        t0 = time.monotonic()
        log.info("edge_runtime: reload: reading %s", self.config.path)
        for sink in self._sinks.values():
            if isinstance(sink, JsonlSink):
                sink.reopen()  # logrotate's postrotate: the files are reopened whatever else happens
        try:
            new = load_config(self.config.path)
        except ConfigError as exc:
            return self._reload_failed(exc.reason)
        for section in ("state_dir", "log_level", "pipelines_in", "metrics", "trusted_keys", "model_store", "updates"):
            if getattr(new, section) != getattr(self.config, section):
                log.warning("edge_runtime: reload: [daemon]/[metrics] %s changed: it takes effect at restart", section)
        mqtt = new.mqtt
        if self.config.mqtt is not None and new.mqtt is not None and new.mqtt != self.config.mqtt:
            # One client id, one connection: a second client beside the first would make the broker
            # drop one or the other, and the results waiting in the first would be at risk.
            log.warning("edge_runtime: reload: [mqtt] changed: it takes effect at restart")
            mqtt = self.config.mqtt
        new = replace(
            new,
            state_dir=self.config.state_dir,
            log_level=self.config.log_level,
            pipelines_in=self.config.pipelines_in,
            metrics=self.config.metrics,
            mqtt=mqtt,
            trusted_keys=self.config.trusted_keys,
            model_store=self.config.model_store,
            updates=self.config.updates,
            pipelines=tuple(replace(p, trusted_keys=self.config.trusted_keys) for p in new.pipelines),
        )
        try:
            new, versions = self._signed(new, self.serving)
        except EdgeRuntimeError as exc:
            return self._reload_failed(why(exc))
        failed = self._switch(new)
        if failed:
            return self._reload_failed(failed)
        self.serving = versions
        self.reloads["ok"] += 1
        self.reload_error = ""
        if self.metrics is not None:
            self.metrics.reloads.labels("ok").inc()
        log.info("edge_runtime: reload: done in %.0f ms (%s)", (time.monotonic() - t0) * 1e3, self._status())
        return True

    def _same_stream(self, w: AnyWorker | None, spec: Pipeline) -> bool:
        """``w`` can take ``spec`` by a swap (its stream stays); else the pipeline restarts."""
        return (
            w is not None
            and all(getattr(w.spec, k) == getattr(spec, k) for k in _RESTART_KEYS)
            and not w.done
            and not w.abandoned
        )

    def _drop_new_sinks(self, sinks: Mapping[str, Any]) -> None:
        for key, sink in sinks.items():
            if self._sinks.get(key) is not sink:
                sink.close()

    def _switch(self, new: Config, only: set[str] | None = None) -> str:
        """Make ``new`` the running config: its pipelines' models (only those named in ``only``,
        when given: the others keep their runners) loaded and warmed beside the running ones,
        then swapped. "" when ``new`` serves; else why not (nothing changed)."""
        by_name = {w.name: w for w in self.workers}
        if self.in_processes:
            batched = [p.name for p in new.pipelines if p.max_batch > 1 and (only is None or p.name in only)]
            if batched:
                return (
                    f"pipelines.{batched[0]}.max_batch: batching needs the pipelines on threads, and this daemon "
                    "started them in processes (pipelines_in is read at start): restart it to batch"
                )
            return self._reload_processes(new, by_name, only)
        return self._reload_threads(new, by_name, only)

    def _reload_processes(self, new: Config, by_name: dict[str, Any], only: set[str] | None = None) -> str:
        """Reload with pipelines in processes: every child prepares (loads beside), then all commit."""
        swaps: list[tuple[ProcessWorker, Pipeline]] = []
        fresh: list[tuple[Pipeline, ProcessWorker, AnyWorker | None]] = []
        sinks: dict[str, Any] = {}
        try:
            sinks = self._open_sinks(new, self._sinks)
            for spec in new.pipelines:
                if only is not None and spec.name not in only:
                    continue
                w = by_name.get(spec.name)
                if isinstance(w, ProcessWorker) and self._same_stream(w, spec):
                    w.prepare(spec)
                    swaps.append((w, spec))
                else:
                    fresh.append((spec, self._process(spec, sinks, new), w))
        except BaseException as exc:
            for w, _ in swaps:
                w.abort()
            for _, pw, _ in fresh:
                pw.close()
            self._drop_new_sinks(sinks)
            if not isinstance(exc, Exception):
                raise
            return why(exc)
        old_sinks, self._sinks = self._sinks, sinks
        self.config = new
        done: list[Any] = []
        for w, spec in swaps:
            log.info("edge_runtime: reload: pipeline %s: %s -> %s", spec.name, w.device, w.prepared_device)
            done.append(SimpleNamespace(done=w.commit(spec, self._sinks_for(spec, sinks)), old=None))
        for spec, pw, old in fresh:
            if old is not None:
                log.info("edge_runtime: reload: pipeline %s restarts (its stream changed)", spec.name)
                self._retire(old)
            with self._lock:
                self.workers.append(pw)
            if self.metrics is not None:
                self.metrics.pipeline(pw.name, pw.device, pw.passed_over())
            pw.start()
        self._finish_reload(new, by_name, sinks, old_sinks, done)
        return ""

    def _finish_reload(
        self, new: Config, by_name: dict[str, Any], sinks: dict[str, Any], old_sinks: dict[str, Any], done: list[Any]
    ) -> None:
        keep = {spec.name for spec in new.pipelines}
        for name, w in by_name.items():
            if name not in keep:
                log.info("edge_runtime: reload: pipeline %s removed", name)
                self._retire(w)
                if self.metrics is not None:
                    self.metrics.forget(name)
        if "mqtt" in sinks:
            sinks["mqtt"].set_pipelines([p.name for p in new.pipelines if any(s.kind == "mqtt" for s in p.sinks)])
        unused = [s for key, s in old_sinks.items() if sinks.get(key) is not s]
        self._pending.append(_Pending(done, unused))
        self._settle()

    def _reload_threads(self, new: Config, by_name: dict[str, Any], only: set[str] | None = None) -> str:
        """Reload with pipelines on threads: every model loaded here beside the running ones, then swapped."""
        prepared: list[tuple[Pipeline, Runner, int]] = []
        sinks: dict[str, Any] = {}
        try:
            sinks = self._open_sinks(new, self._sinks)
            for spec in new.pipelines:
                if only is not None and spec.name not in only:
                    continue
                runner, index = self._load(spec, config=new)
                prepared.append((spec, runner, index))
                w = by_name.get(spec.name)
                if isinstance(w, Worker) and self._same_stream(w, spec):
                    # as a pipeline's process checks before it says "prepared": a model that cannot
                    # take this stream's windows refuses the reload (an update rolls back), rather
                    # than restarting the pipeline into a stream that fails at its first window
                    try:
                        w.stream._check_fits(runner, None)
                    except EdgeRuntimeError as exc:
                        raise ConfigError(f"pipelines.{spec.name}: {runner.path.name}: {exc.reason}") from None
        except BaseException as exc:
            for _, runner, _ in prepared:
                runner.close()
            self._drop_new_sinks(sinks)
            if not isinstance(exc, Exception):
                raise
            return why(exc)
        self._commit(new, prepared, sinks, by_name)
        return ""

    def _commit(
        self,
        new: Config,
        prepared: list[tuple[Pipeline, Runner, int]],
        sinks: dict[str, Any],
        by_name: dict[str, Any],
    ) -> None:
        old_sinks, self._sinks = self._sinks, sinks
        self.config = new
        swaps: list[Any] = []
        for spec, runner, index in prepared:
            w = by_name.get(spec.name)
            if isinstance(w, Worker) and self._same_stream(w, spec):
                try:
                    sw = w.stream.swap(
                        runner, preprocess=preprocess_for(spec.preprocess, runner), deadline_ms=spec.deadline_ms
                    )
                except EdgeRuntimeError as exc:
                    log.info("edge_runtime: reload: pipeline %s restarts: %s", spec.name, why(exc))
                else:
                    log.info("edge_runtime: reload: pipeline %s: %s -> %s", spec.name, w.device, runner.describe())
                    w.sinks = self._sinks_for(spec, sinks)  # before the swap takes effect: no result is missed
                    w.last_good = w.spec if w.spec.model != spec.model else w.last_good
                    w.spec, w.runner, w.device_index, w.degraded, w.fallbacks = spec, runner, index, "", 0
                    swaps.append(sw)
                    if self.metrics is not None:
                        self.metrics.pipeline(w.name, runner.device, len(runner.attempts))
                    continue
            if w is not None:  # restarted: the old one finishes its queue and lets its source go
                log.info("edge_runtime: reload: pipeline %s restarts (its stream changed)", spec.name)
                self._retire(w)
            try:
                nw = self._add_worker(spec, runner, index)
            except EdgeRuntimeError as exc:
                log.error("edge_runtime: reload: pipeline %s could not start: %s", spec.name, why(exc))
                continue
            if self.metrics is not None:
                self.metrics.pipeline(nw.name, nw.device, len(runner.attempts))
            nw.start()
        self._finish_reload(new, by_name, sinks, old_sinks, swaps)

    def _retire(self, w: AnyWorker) -> None:
        """Stop a worker for good (its queued windows are still written), release its runner."""
        w.halt(30)
        with self._lock:
            if w in self.workers:
                self.workers.remove(w)
        w.close()

    def _settle(self) -> None:
        """Close the runners and sinks a reload replaced, once their swaps have taken effect."""
        left = []
        for p in self._pending:
            if all(sw.done.is_set() for sw in p.swaps):
                for sw in p.swaps:
                    if sw.old is not None:
                        sw.old.close()
                for sink in p.sinks:
                    sink.close()
                give_back_freed_memory()
            else:
                left.append(p)
        self._pending = left

    def _reload_failed(self, reason: str) -> bool:
        self.reloads["failed"] += 1
        self.reload_error = reason
        if self.metrics is not None:
            self.metrics.reloads.labels("failed").inc()
        log.error("edge_runtime: reload failed, the running config keeps serving: %s", reason)
        return False

    # -- updates -------------------------------------------------------------------
    def _install(self, entry: InboxEntry) -> Path:
        """Stage, verify, probe and commit one inbox entry into the store (each step logged);
        return the store's new current release. The probe loads the staged release and runs it
        once in a throwaway child on the device list of each ``"@store"`` pipeline. Raises
        what ``model_store.apply_update`` raises; the store's current release is then unchanged."""
        from ..backends.isolated import trial_load
        from ..model_store import apply_update

        store, keys = self.config.model_store, self.config.trusted_keys
        assert store is not None  # load_config: updates needs model_store
        specs = list({p.device: p for p in self.config.pipelines if p.from_store}.values())

        def probe(path: Path) -> None:
            for spec in specs:
                t0 = time.monotonic()
                device = trial_load(
                    path,
                    list(spec.device),
                    timeout_s=spec.inference_timeout_s,
                    labels=spec.labels,
                    openvino_config=dict(OPENVINO_CONFIG),
                    cache_dir=self.config.state_dir / "cache",
                    trusted_keys=keys,
                )
                log.info(
                    "edge_runtime: update %s: ran once in a child process on %s (%.0f ms)",
                    entry.name,
                    device,
                    (time.monotonic() - t0) * 1e3,
                )

        def step(name: str) -> None:
            log.info("edge_runtime: update %s: %s", entry.name, name)

        log.info("edge_runtime: update %s: installing %s into %s", entry.name, entry.source, store)
        return apply_update(entry.source, store, keys, probe, on_step=step)

    def _install_waiting(self) -> list[InboxEntry]:
        """At start: install every update waiting in the inbox (nothing runs yet, so nothing is
        swapped); return those committed, in order. A refused one goes to ``rejected/``."""
        if self.config.updates is None:
            return []
        installed = []
        for entry in self._waiting():
            try:
                self._install(entry)
            except Exception as exc:  # noqa: BLE001 - every failure refuses this update, not the start
                self._update_failed(entry, why(exc))
            else:
                installed.append(entry)
        return installed

    def _waiting(self) -> list[InboxEntry]:
        from ..model_store import pending

        assert self.config.updates is not None
        try:
            self.config.updates.mkdir(parents=True, exist_ok=True)
            return pending(self.config.updates)
        except (OSError, EdgeRuntimeError) as exc:
            log.error("edge_runtime: updates: cannot read the inbox %s: %s", self.config.updates, why(exc))
            return []

    def apply_updates(self) -> int:
        """Install each release waiting in ``[daemon] updates`` and serve it (see the module doc);
        return how many now serve. Called on SIGHUP, after the reload."""
        if self.config.updates is None:
            return 0
        if not any(p.from_store for p in self.config.pipelines):
            log.warning(
                'edge_runtime: updates: no pipeline runs the store\'s release (model = "%s") since the last '
                "reload: updates wait in %s until one does",
                STORE_MODEL,
                self.config.updates,
            )
            return 0
        return sum(self._apply(entry) for entry in self._waiting())

    def _apply(self, entry: InboxEntry) -> bool:
        """One update: install, then swap the ``"@store"`` pipelines to it; True if it serves."""
        t0 = time.monotonic()
        try:
            self._install(entry)
        except Exception as exc:  # noqa: BLE001 - every failure refuses this update; the daemon serves on
            return self._update_failed(entry, why(exc))
        names = {p.name for p in self.config.pipelines if p.from_store}
        try:
            new, versions = self._signed(self.config, self.serving, names)
        except EdgeRuntimeError as exc:
            return self._update_failed(entry, why(exc), roll_back=True)
        running = {p.name: p.signed_digest for p in self.config.pipelines}
        changed = {p.name for p in new.pipelines if p.name in names and p.signed_digest != running.get(p.name)}
        if changed:
            failed = self._switch(new, changed)
            if failed:
                return self._update_failed(entry, f"installed, but it did not load: {failed}", roll_back=True)
        else:
            log.info("edge_runtime: update %s: the pipelines serve this release already", entry.name)
        self.serving = versions
        self._update_done(entry)
        log.info(
            "edge_runtime: update %s: done in %.0f ms: %s",
            entry.name,
            (time.monotonic() - t0) * 1e3,
            ", ".join(f"{n} serves {versions.get(n)}" for n in sorted(names)),
        )
        return True

    def _update_done(self, entry: InboxEntry) -> None:
        from ..model_store import remove_entry

        try:
            remove_entry(entry)
        except EdgeRuntimeError as exc:  # installed all the same: applied again next time, as a no-op
            log.warning("edge_runtime: update %s: %s", entry.name, why(exc))
        log.info("edge_runtime: update %s: applied; removed from the inbox", entry.name)
        self.updates["ok"] += 1
        self.update_error = ""
        if self.metrics is not None:
            self.metrics.updates.labels("ok").inc()

    def _update_failed(self, entry: InboxEntry, reason: str, *, roll_back: bool = False) -> bool:
        """An update refused: the store rolled back (``roll_back``: it was committed), the entry
        moved to ``rejected/`` with its reason, counted, and shown in ``/healthz``."""
        from ..model_store import reject_entry, rollback

        if roll_back and self.config.model_store is not None:
            try:
                rollback(self.config.model_store)
            except EdgeRuntimeError as exc:
                log.error("edge_runtime: update %s: rollback failed: %s", entry.name, why(exc))
        # Moved first, counted after: a watcher that sees the count in /healthz finds the entry
        # and its reason in rejected/ already.
        try:
            where = str(reject_entry(entry, reason))
        except EdgeRuntimeError as exc:
            where = f"not moved: {why(exc)}"
        self.updates["failed"] += 1
        self.update_error = f"{entry.name}: {reason}"
        if self.metrics is not None:
            self.metrics.updates.labels("failed").inc()
        log.error("edge_runtime: update %s refused, the current release serves: %s (%s)", entry.name, reason, where)
        return False

    # -- health --------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """ready (every pipeline running, nothing wrong), failed (none running), else degraded; and why."""
        now = time.monotonic()
        with self._lock:
            workers = list(self.workers)
        states = {w.name: w.state(now, min(self._stuck_after, w.spec.inference_timeout_s)) for w in workers}
        serving = [n for n, (s, _) in states.items() if s in ("running", "degraded")]
        why_list = [f"{n}: {s}: {reason}" for n, (s, reason) in states.items() if s != "running"]
        if self.reload_error:
            why_list.append(f"reload failed (the previous config serves): {self.reload_error}")
        if self.update_error:
            why_list.append(f"update failed (the current release serves): {self.update_error}")
        mqtt = self._sinks.get("mqtt")
        if mqtt is not None and not mqtt.stats.connected:
            st = mqtt.stats
            why_list.append(f"mqtt: not connected to the broker ({st.buffered} results waiting, {st.dropped} dropped)")
        state = "failed" if not serving else ("ready" if not why_list else "degraded")
        return {
            "state": state,
            "why": why_list,
            "reloads": dict(self.reloads),
            "updates": dict(self.updates),
            "pipelines": {
                w.name: {
                    "state": states[w.name][0],
                    "device": w.device,
                    "model": str(w.spec.model),
                    "model_version": self.serving.get(w.name),
                    "results": w.results,
                    "queue_depth": w.counters()[3],
                    "model_crashes": w.crashes,
                    "quarantined": list(w.quarantined),
                    **({"pid": w.process.pid} if isinstance(w, ProcessWorker) else {}),
                    **self._choice(w),
                }
                for w in workers
            },
        }

    def _choice(self, w: AnyWorker) -> dict[str, Any]:
        """``/healthz`` on how a pipeline runs: its threads and how they and its device were chosen
        (``loaded``: the load's one line, with a measurement's summary), and its batcher's figures."""
        if isinstance(w, ProcessWorker):
            return {"loaded": w.describe()}
        runner = w.stream.model
        asked = self._threads(w.spec)
        out: dict[str, Any] = {
            "threads": chosen_threads(runner, asked),
            "loaded": f"{runner.describe()}, {choice_text(runner, asked)}",
        }
        if isinstance(runner, BatchedRunner):
            b = runner.batcher
            out["batching"] = {
                "max_batch": b.max_batch,
                "max_wait_us": b.max_wait_us,
                "shared_with": self._sharing(runner),
                **b.stats.to_dict(),
            }
        return out

    def _sharing(self, runner: BatchedRunner) -> list[str]:
        """The pipelines whose runner now is on ``runner``'s batcher, by name."""
        with self._lock:
            workers = list(self.workers)
        return sorted(
            w.name
            for w in workers
            if isinstance(w, Worker)
            and isinstance(w.stream.model, BatchedRunner)
            and w.stream.model.shared is runner.shared
        )

    def _refresh(self) -> None:
        """Copy the streams' live counters into the metrics (at scrape time)."""
        if self.metrics is None:
            return
        with self._lock:
            workers = list(self.workers)
        for w in workers:
            self.metrics.counters(w.name, *w.counters())
        batchers: dict[int, tuple[list[str], Any]] = {}
        for w in workers:
            runner = w.stream.model if isinstance(w, Worker) else None
            if isinstance(runner, BatchedRunner):
                batchers.setdefault(id(runner.shared), ([], runner.batcher))[0].append(w.name)
        self.metrics.batching([("+".join(sorted(names)), b.stats) for names, b in batchers.values()])
        mqtt = self._sinks.get("mqtt")
        if mqtt is not None:
            self.metrics.mqtt(mqtt.stats)

    def _status(self) -> str:
        parts = [f"{w.name}: {w.results} results{' (ended)' if w.done else ''} on {w.device}" for w in self.workers]
        if self.reload_error:
            parts.append("last reload failed")
        return "; ".join(parts)

    # -- signals -------------------------------------------------------------------
    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread() or self._previous_signals:
            return

        def on_stop(signum: int, frame: FrameType | None) -> None:
            name = signal.Signals(signum).name
            log.info("edge_runtime: %s: stopping", name)
            self.stop.set()
            self._wake.set()
            if self._starting:
                self._starting = False  # raised once: the clean-up in start() is not interrupted again
                stopped = StoppedDuringStart(name)
                if not defer_while_spawning(stopped):
                    raise stopped

        def on_hup(signum: int, frame: FrameType | None) -> None:
            self._hup.set()
            self._wake.set()

        for sig, handler in ((signal.SIGTERM, on_stop), (signal.SIGINT, on_stop), (signal.SIGHUP, on_hup)):
            self._previous_signals[sig] = signal.signal(sig, handler)

    def _restore_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, handler in self._previous_signals.items():
            signal.signal(sig, handler)
        self._previous_signals = {}

    @property
    def stopping(self) -> bool:
        """SIGTERM/SIGINT arrived (during ``start()`` too: the caller then skips ``run()``)."""
        return self.stop.is_set()

    def close(self) -> None:
        """Release the HTTP endpoint, runners, sinks and the notify socket. Safe to call twice."""
        if self.http is not None:
            self.http.close()
            self.http = None
        for w in self.workers:
            w.close()
        for child in list(self._children):  # started, but stopped before it was in self.workers
            child.close()
        self._settle()
        for p in self._pending:
            for sw in p.swaps:
                (sw.old or sw.model).close()
        self._pending = []
        for sink in self._sinks.values():
            if hasattr(sink, "close"):
                sink.close()
        self.notifier.close()
        self._restore_signals()
