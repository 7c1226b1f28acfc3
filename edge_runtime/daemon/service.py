"""``edge-runtime serve --config FILE``: pipelines as a long-running service (first version).

Start: the config is checked, every pipeline's runner is loaded and warmed (one inference
on a zero input), its sinks are opened; then ``READY=1`` goes to systemd (when started by
it) and each pipeline streams on a thread of its own, writing one JSON line per result to
its sinks (``stdout``, ``jsonl:PATH``; ``mqtt`` is not in this version).

Watchdog (``WatchdogSec=`` in the unit): ``WATCHDOG=1`` is sent by the main loop only while
*every* pipeline's inference loop keeps turning: each loop beats at least every 0.1 s, with
or without data (``Stream.results(heartbeat=...)``), so a sensor that is legitimately silent
keeps the watchdog fed, while an inference that hangs (a stuck driver) stops its beats and
systemd restarts the service. A pipeline whose source ended (a finished recording) stops
beating too and is reported in ``STATUS=`` and the log; the service then exits when every
pipeline has ended.

Signals: SIGTERM or SIGINT stop the sources; windows already queued are still inferred and
written; sinks are closed; ``STOPPING=1``; exit 0. SIGHUP reopens the JSON lines files (for
logrotate); reloading the config on SIGHUP is not in this version.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from ..errors import EdgeRuntimeError
from .config import Config, ConfigError, Pipeline
from .metrics import HttpEndpoint, Metrics
from .notify import Notifier
from .sinks import JsonlSink

log = logging.getLogger("edge_runtime.daemon")

#: A pipeline whose loop has not beaten for this long is stuck (seconds); with a systemd
#: watchdog the limit is half its interval, whichever is shorter.
STUCK_AFTER_S = 10.0


@dataclass
class _Worker:
    """One pipeline at run time: its runner, stream, sinks and thread."""

    spec: Pipeline
    runner: Any
    stream: Any
    sinks: list[JsonlSink]
    thread: threading.Thread | None = None
    last_beat: float = field(default_factory=time.monotonic)
    results: int = 0
    error: BaseException | None = None
    done: bool = False


class Service:
    """The pipelines of one config. ``start()`` loads; ``run()`` serves until stopped."""

    def __init__(self, config: Config, notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier or Notifier.from_environ()
        self.stop = threading.Event()
        self.workers: list[_Worker] = []
        self._sinks: dict[str, JsonlSink] = {}
        self.metrics: Metrics | None = Metrics() if config.metrics.enabled else None
        self.http: HttpEndpoint | None = None
        self._stuck_after = STUCK_AFTER_S

    # -- start ---------------------------------------------------------------------
    def start(self) -> None:
        """Load and warm every pipeline and open its sinks; release everything if one fails."""
        try:
            for spec in self.config.pipelines:
                self.workers.append(self._worker(spec))
            if self.metrics is not None:
                for w in self.workers:
                    self.metrics.pipeline(w.spec.name, w.runner.device, len(w.runner.attempts))
                self.http = HttpEndpoint(self.config.metrics.listen, self.metrics, self.health, self._refresh)
                log.info("edge_runtime: metrics and health on http://%s/metrics, /healthz", self.http.address)
        except BaseException:
            self.close()
            raise

    def _sink(self, key: str, path: Any) -> JsonlSink:
        sink = self._sinks.get(key)
        if sink is None:
            sink = self._sinks[key] = JsonlSink(path)
        return sink

    def _worker(self, spec: Pipeline) -> _Worker:
        import numpy as np

        from ..early_exit import EarlyExitModel
        from ..loader import load
        from ..stream.pipeline import Stream
        from ..stream.preprocess import Preprocess
        from ..stream.sources import is_serial, open_source

        where = f"pipelines.{spec.name}"
        if any(s.kind == "mqtt" for s in spec.sinks):
            raise ConfigError(f"{where}.sinks: the mqtt sink is not in this version yet", path=str(self.config.path))
        runner = load(
            spec.model,
            list(spec.device),
            threads=spec.threads,
            cache_dir=self.config.state_dir / "cache",
            labels=spec.labels,
        )
        try:
            if spec.thresholds is not None:
                if not isinstance(runner, EarlyExitModel):
                    raise ConfigError(f"{where}.thresholds: {spec.model} is not an early-exit bundle")
                runner.set_thresholds(list(spec.thresholds))
            runner.classify(np.zeros(runner.inputs[0].shape, runner.inputs[0].dtype))  # warm
            pre = Preprocess.choose(spec.preprocess, runner)
            serial = is_serial(spec.source)
            options: dict[str, Any] = {"wait": True} if serial else {}  # a device not plugged in yet is normal
            if spec.baud and serial:
                options["baud"] = spec.baud
            source = open_source(spec.source, **options)
            stream = Stream(
                runner,
                source,
                window=spec.window,
                hop=spec.hop,
                preprocess=pre,
                queue_slots=spec.queue_slots,
                policy=spec.policy,
                deadline_ms=spec.deadline_ms,
            )
            sinks = [
                self._sink("stdout", None) if s.kind == "stdout" else self._sink(str(s.path), s.path)
                for s in spec.sinks
            ]
        except BaseException:
            runner.close()
            raise
        log.info("edge_runtime: pipeline %s: %s from %s", spec.name, runner.describe(), spec.source)
        return _Worker(spec, runner, stream, sinks)

    # -- run -----------------------------------------------------------------------
    def _serve(self, w: _Worker) -> None:
        def beat() -> None:
            w.last_beat = time.monotonic()

        try:
            for r in w.stream.results(stop=self.stop, heartbeat=beat):
                record = {"pipeline": w.spec.name, **r.to_dict()}
                for sink in w.sinks:
                    sink.write(record)
                if self.metrics is not None:
                    self.metrics.observe(w.spec.name, r.exit_index, r.invoke_us)
                w.results += 1
                w.last_beat = time.monotonic()
        except BaseException as exc:  # noqa: BLE001 - reported by the main loop, which decides
            w.error = exc
        finally:
            w.done = True

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (exit status 0) or until every pipeline has ended (0 if
        they ended cleanly, 1 if one failed). Installs signal handlers when on the main thread."""
        previous = self._install_signals()
        n = self.notifier
        try:
            for w in self.workers:
                w.thread = threading.Thread(target=self._serve, args=(w,), name=f"edge_runtime-{w.spec.name}")
                w.last_beat = time.monotonic()
                w.thread.start()
            n.ready(self._status())
            period = min(1.0, n.watchdog_s / 2) if n.watchdog_s else 1.0
            stuck_after = self._stuck_after = min(STUCK_AFTER_S, n.watchdog_s / 2) if n.watchdog_s else STUCK_AFTER_S
            last_status = time.monotonic()
            while not self.stop.wait(period):
                now = time.monotonic()
                live = [w for w in self.workers if not w.done]
                if not live:
                    break
                stuck = [w.spec.name for w in live if now - w.last_beat > stuck_after]
                if stuck:
                    log.error("edge_runtime: pipeline(s) %s made no progress for %.1f s", ", ".join(stuck), stuck_after)
                else:
                    n.watchdog()
                if now - last_status >= 10:
                    n.status(self._status())
                    last_status = now
            n.stopping("stopping: finishing queued windows")
            self.stop.set()
            for w in self.workers:
                if w.thread is not None:
                    w.thread.join(30)
        finally:
            self._restore_signals(previous)
            self.close()
        failed = [w for w in self.workers if w.error is not None]
        for w in failed:
            err = w.error
            reason = err.reason if isinstance(err, EdgeRuntimeError) else f"{type(err).__name__}: {err}"
            log.error("edge_runtime: pipeline %s failed: %s", w.spec.name, reason)
        return 1 if failed else 0

    def _pipeline_state(self, w: _Worker, now: float) -> tuple[str, str]:
        if w.error is not None:
            err = w.error
            return "failed", err.reason if isinstance(err, EdgeRuntimeError) else f"{type(err).__name__}: {err}"
        if w.done:
            return "ended", "its source ended"
        if now - w.last_beat > self._stuck_after:
            return "stuck", f"no progress for {now - w.last_beat:.1f} s"
        return "running", ""

    def health(self) -> dict[str, Any]:
        """ready (every pipeline running), failed (none running), else degraded; and why."""
        now = time.monotonic()
        states = {w.spec.name: self._pipeline_state(w, now) for w in self.workers}
        running = [n for n, (s, _) in states.items() if s == "running"]
        state = "ready" if len(running) == len(states) else ("failed" if not running else "degraded")
        return {
            "state": state,
            "why": [f"{n}: {s}: {why}" for n, (s, why) in states.items() if s != "running"],
            "pipelines": {
                w.spec.name: {"state": states[w.spec.name][0], "device": w.runner.device, "results": w.results}
                for w in self.workers
            },
        }

    def _refresh(self) -> None:
        """Copy the streams' live counters into the metrics (at scrape time)."""
        if self.metrics is None:
            return
        for w in self.workers:
            st = w.stream.source.stats
            dec = st.decoder
            bad = dec.crc_errors + dec.malformed + dec.oversize if dec is not None else 0
            self.metrics.counters(w.spec.name, st.frames, w.stream.stats.dropped, bad)

    def _status(self) -> str:
        parts = [
            f"{w.spec.name}: {w.results} results{' (ended)' if w.done else ''} on {w.runner.device}"
            for w in self.workers
        ]
        return "; ".join(parts)

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def on_stop(signum: int, frame: FrameType | None) -> None:
            log.info("edge_runtime: %s: stopping", signal.Signals(signum).name)
            self.stop.set()

        def on_hup(signum: int, frame: FrameType | None) -> None:
            for sink in self._sinks.values():
                sink.reopen()
            log.info("edge_runtime: SIGHUP: JSON lines files reopened")

        previous: dict[int, Any] = {}
        for sig, handler in ((signal.SIGTERM, on_stop), (signal.SIGINT, on_stop), (signal.SIGHUP, on_hup)):
            previous[sig] = signal.signal(sig, handler)
        return previous

    @staticmethod
    def _restore_signals(previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def close(self) -> None:
        """Release the HTTP endpoint, runners, sinks and the notify socket. Safe to call twice."""
        if self.http is not None:
            self.http.close()
        for w in self.workers:
            w.runner.close()
        for sink in self._sinks.values():
            sink.close()
        self.notifier.close()
