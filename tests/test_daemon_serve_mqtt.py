"""``edge-runtime serve`` publishing to a real mosquitto: a broker that is down at start and comes
up, a broker that goes away mid-run and comes back; results buffered, then delivered; health
and metrics say what is going on; ``offline`` when the service stops.

Skipped with ``test_daemon_mqtt`` when mosquitto is not installed (never in CI: ``.ci/run``
installs it and sets ``EDGE_RUNTIME_REQUIRE_MOSQUITTO=1``)."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from conftest import MODELS
from paho.mqtt.enums import CallbackAPIVersion
from test_daemon_mqtt import Broker, wait_for
from test_daemon_service import Systemd, free_port, get, lines, serving

MODEL = MODELS / "basicmotions_int8.tflite"
LONG = 30.0  # seconds: a wait that spans a reconnect (paho retries 3 s after a failed first try)


def health(port: int) -> dict[str, Any]:
    return dict(json.loads(get(port, "/healthz")[1]))


def metric(port: int, name: str) -> float:
    text = get(port, "/metrics")[1]
    values = [float(x.split()[-1]) for x in text.splitlines() if x.startswith(name + " ")]
    assert values, f"{name} not in /metrics"
    return values[0]


class Durable:
    """A subscriber with a persistent session (QoS 1, clean_session off) on a broker that keeps
    sessions across its restarts: what the broker accepted while this client was away, or before
    it first came back, is queued for it. It reconnects by itself (paho's loop)."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="durable-test", clean_session=False)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *a: c.subscribe([("edge_runtime/#", 1), ("homeassistant/#", 1)])
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.reconnect_delay_set(1, 1)
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the test subscriber got no SUBACK"

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self.lock:
            self.messages.append((message.topic, message.payload))

    def payloads(self, topic: str) -> list[str]:
        with self.lock:
            return [p.decode() for t, p in self.messages if t == topic]

    def records(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(p) for p in self.payloads(topic)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_serve_publishes_through_a_broker_that_comes_and_goes(tmp_path: Path) -> None:
    broker = Broker(tmp_path)
    broker.conf.write_text(
        broker.conf.read_text().replace("persistence false", f"persistence true\npersistence_location {tmp_path}/")
    )
    broker.start()  # once, to register the test's durable session; then down when the service starts
    Durable(broker.port).close()
    broker.stop()  # SIGTERM: mosquitto saves its sessions
    http = free_port()
    out = tmp_path / "imu.jsonl"
    cfg = tmp_path / "edge-runtime.toml"
    cfg.write_text(
        f"""
[daemon]
state_dir = "{tmp_path / "state"}"
[metrics]
listen = "127.0.0.1:{http}"
[mqtt]
port = {broker.port}
client_id = "edge-runtime-test"
home_assistant_discovery = true
[pipelines.imu]
source = "synthetic:sine?channels=6&rate=3000"
model = "{MODEL}"
policy = "block"
sinks = ["mqtt", "jsonl:{out}"]
"""
    )
    systemd = Systemd(tmp_path)
    sub: Durable | None = None
    try:
        with serving(cfg, systemd) as proc:
            systemd.wait_for("READY")  # a broker that is down does not hold the start
            assert wait_for(lambda: len(lines(out)) >= 3, LONG)
            h = health(http)
            assert h["state"] == "degraded" and any(w.startswith("mqtt: not connected") for w in h["why"]), h

            broker.start()
            sub = Durable(broker.port)
            assert wait_for(lambda: health(http)["state"] == "ready", LONG), health(http)
            assert wait_for(lambda: len(sub.payloads("edge_runtime/imu/result")) >= 3, LONG)
            assert sub.payloads("edge_runtime/status")[-1] == "online"
            disc = sub.records("homeassistant/sensor/edge-runtime-test/imu/config")[-1]
            assert disc["state_topic"] == "edge_runtime/imu/result" and disc["unique_id"] == "edge-runtime-test_imu"

            broker.stop()  # the broker goes away mid-run: results wait in the sink's buffer
            waiting = len(lines(out))
            assert wait_for(lambda: len(lines(out)) >= waiting + 20, LONG)
            assert wait_for(lambda: health(http)["state"] == "degraded", LONG)
            broker.start()
            assert wait_for(lambda: health(http)["state"] == "ready", LONG), health(http)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err[-3000:]
        assert wait_for(lambda: "offline" in sub.payloads("edge_runtime/status"), LONG)
        assert sub.payloads("edge_runtime/status")[-1] == "offline"
        written = [r["window_index"] for r in lines(out)]
        assert written == list(range(len(written)))
        assert wait_for(
            lambda: len({r["window_index"] for r in sub.records("edge_runtime/imu/result")}) >= len(written), LONG
        )
        got = {r["window_index"] for r in sub.records("edge_runtime/imu/result")}
        missing = sorted(set(range(len(written))) - got)
        assert not missing, f"results the broker did not get: {missing[:20]}"
        assert "edge-runtime: warning: mqtt: cannot reach" in err and "Traceback" not in err
    finally:
        if sub is not None:
            sub.close()
        broker.stop(kill=True)
