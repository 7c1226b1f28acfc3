"""``/metrics`` (Prometheus text, ``prometheus_client``) and ``/healthz`` (JSON) over HTTP.

One registry per service (not the library's global one, so two services in one process, as
in tests, do not collide). Inference latency is a histogram per pipeline and exit index;
results per exit, frames, drops and bad frames are counters or gauges read from the
streams' own counters when scraped; the device each pipeline runs on is an info-style
gauge; process resident memory comes from ``prometheus_client``'s process collector.
``/healthz`` answers ``{"state": "ready" | "degraded" | "failed", "why": [...], "pipelines": {...}}``
with HTTP 200 for ready, 503 otherwise. The server binds loopback by default; a port that is
taken is an ``EdgeRuntimeError`` naming the address.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..errors import EdgeRuntimeError

#: Latency buckets in seconds: 50 us .. 1 s (inference on a board spans that range).
BUCKETS = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0)


class Metrics:
    """The service's metrics. ``observe`` is called per result; ``update`` when scraped."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
        from prometheus_client.process_collector import ProcessCollector

        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: they double the text and nobody graphs them
        self.registry = CollectorRegistry()
        self._devices: dict[str, str] = {}  # pipeline -> the device label now set
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes and friends
        r = self.registry
        self.latency = Histogram(
            "edge_runtime_inference_seconds",
            "Preprocessing + inference time per window",
            ["pipeline", "exit_index"],
            buckets=BUCKETS,
            registry=r,
        )
        self.results = Counter("edge_runtime_results", "Results per exit index", ["pipeline", "exit_index"], registry=r)
        self.frames = Gauge(
            "edge_runtime_frames", "Frames received (this run of the pipeline)", ["pipeline"], registry=r
        )
        self.dropped = Gauge(
            "edge_runtime_windows_dropped", "Windows dropped by a full queue", ["pipeline"], registry=r
        )
        self.bad = Gauge(
            "edge_runtime_frames_bad", "Frames refused (CRC, malformed, oversize)", ["pipeline"], registry=r
        )
        self.device = Gauge(
            "edge_runtime_device_info", "The device a pipeline runs on (value 1)", ["pipeline", "device"], registry=r
        )
        self.fallbacks = Gauge(
            "edge_runtime_device_fallbacks",
            "Devices passed over at load or left at run time",
            ["pipeline"],
            registry=r,
        )
        self.device_errors = Counter(
            "edge_runtime_device_errors",
            "Inferences that raised or hung on a device",
            ["pipeline", "device"],
            registry=r,
        )
        self.model_crashes = Counter(
            "edge_runtime_model_crashes",
            "Times an isolated model's process died or hung (each restarted)",
            ["pipeline"],
            registry=r,
        )
        self.quarantined = Counter(
            "edge_runtime_models_quarantined",
            "Models quarantined after crashing their process too often",
            ["pipeline"],
            registry=r,
        )
        self.deadline_missed = Counter(
            "edge_runtime_deadline_missed", "Results that took longer than deadline_ms", ["pipeline"], registry=r
        )
        self.queue_depth = Gauge("edge_runtime_queue_depth", "Windows waiting for inference", ["pipeline"], registry=r)
        self.reloads = Counter("edge_runtime_reloads", "Config reloads (SIGHUP)", ["result"], registry=r)
        self.updates = Counter(
            "edge_runtime_updates", "Signed releases installed from the updates inbox", ["result"], registry=r
        )
        for result in ("ok", "failed"):
            self.reloads.labels(result)
            self.updates.labels(result)
        self._mqtt: tuple[Any, Any] | None = None  # made at the first MQTT figures: none without [mqtt]
        self._batching: dict[str, Any] | None = None  # made at the first batcher: none without max_batch > 1

    def observe(self, pipeline: str, exit_index: int, invoke_us: float) -> None:
        self.latency.labels(pipeline, str(exit_index)).observe(invoke_us / 1e6)
        self.results.labels(pipeline, str(exit_index)).inc()

    def pipeline(self, name: str, device: str, attempts: int) -> None:
        """A pipeline (re)loaded on ``device``, having passed over ``attempts`` devices."""
        old = self._devices.get(name)
        if old is not None and old != device:
            self.device.remove(name, old)
        self._devices[name] = device
        self.device.labels(name, device).set(1)
        self.fallbacks.labels(name).set(attempts)

    def moved(self, name: str, old: str, new: str, passed_over: int) -> None:
        """A pipeline left device ``old`` for ``new`` at run time."""
        self.pipeline(name, new, passed_over)

    def counters(self, name: str, frames: int, dropped: int, bad: int, queue_depth: int = 0) -> None:
        self.frames.labels(name).set(frames)
        self.dropped.labels(name).set(dropped)
        self.bad.labels(name).set(bad)
        self.queue_depth.labels(name).set(queue_depth)

    def mqtt(self, stats: Any) -> None:
        """Copy an ``MqttSink``'s counters."""
        from prometheus_client import Gauge

        if self._mqtt is None:
            connected = Gauge("edge_runtime_mqtt_connected", "1 while connected to the broker", registry=self.registry)
            messages = Gauge(
                "edge_runtime_mqtt_messages",
                "MQTT results by state: published, acknowledged, buffered (waiting), dropped (buffer full)",
                ["state"],
                registry=self.registry,
            )
            self._mqtt = (connected, messages)
        connected, messages = self._mqtt
        connected.set(1 if stats.connected else 0)
        for state in ("published", "acknowledged", "buffered", "dropped"):
            messages.labels(state).set(getattr(stats, state))

    def batching(self, batchers: list[tuple[str, Any]]) -> None:
        """Copy the shared batchers' ``BatchStats``; each is labelled ``batcher`` by the names of the
        pipelines on it (``a+b``). Series of batchers no longer in use are removed."""
        from prometheus_client import Gauge

        if self._batching is None:
            if not batchers:
                return
            r = self.registry
            self._batching = {
                "samples": Gauge(
                    "edge_runtime_batch_samples", "Windows run by a shared batcher (max_batch)", ["batcher"], registry=r
                ),
                "batches": Gauge(
                    "edge_runtime_batch_batches",
                    "Batches run by a shared batcher (one window alone counts)",
                    ["batcher"],
                    registry=r,
                ),
                "mean_batch": Gauge(
                    "edge_runtime_batch_mean_size", "Windows per batch, on average", ["batcher"], registry=r
                ),
                "padded_rows": Gauge(
                    "edge_runtime_batch_padded_rows",
                    "Rows computed and thrown away (a batch smaller than the size it ran on)",
                    ["batcher"],
                    registry=r,
                ),
                "failed_batches": Gauge(
                    "edge_runtime_batch_failed_batches",
                    "Batches that failed in the backend (their windows then ran one by one)",
                    ["batcher"],
                    registry=r,
                ),
            }
        for gauge in self._batching.values():
            gauge.clear()
        for name, stats in batchers:
            for field, gauge in self._batching.items():
                gauge.labels(name).set(getattr(stats, field))

    def forget(self, name: str) -> None:
        """Remove every series of pipeline ``name`` (a reload removed it)."""
        for metric in (
            self.latency,
            self.results,
            self.frames,
            self.dropped,
            self.bad,
            self.device,
            self.fallbacks,
            self.device_errors,
            self.deadline_missed,
            self.queue_depth,
        ):
            for labels in [k for k in list(metric._metrics) if k and k[0] == name]:  # (pipeline, ...) tuples
                metric.remove(*labels)
        self._devices.pop(name, None)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))


class HttpEndpoint:
    """A small HTTP server on its own thread: ``/metrics`` and ``/healthz``. ``close()`` stops it."""

    def __init__(
        self, listen: str, metrics: Metrics, health: Callable[[], dict[str, Any]], refresh: Callable[[], None]
    ):
        host, _, port = listen.rpartition(":")
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    refresh()
                    self._send(200, outer.metrics.text(), "text/plain; version=0.0.4; charset=utf-8")
                elif self.path == "/healthz":
                    state = health()
                    code = 200 if state["state"] == "ready" else 503
                    self._send(code, json.dumps(state).encode(), "application/json")
                else:
                    self._send(404, b"not found: try /metrics or /healthz\n", "text/plain")

            def _send(self, code: int, body: bytes, kind: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.metrics = metrics
        try:
            self.server = ThreadingHTTPServer((host.strip("[]"), int(port)), Handler)
        except OSError as exc:
            raise EdgeRuntimeError(
                f"cannot serve metrics on {listen}: {exc.strerror or exc} (metrics.listen in the config)"
            ) from exc
        self.server.daemon_threads = True
        bound_host, bound_port = self.server.server_address[:2]
        self.address = f"{bound_host!s}:{bound_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="edge_runtime-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and release the port. Safe to call twice."""
        if self._thread.is_alive():
            self.server.shutdown()
            self._thread.join(10)
        self.server.server_close()
