"""The MQTT results sink against a real mosquitto on a loopback port: topics, payloads, QoS and
retain flags, availability and the last will, Home Assistant discovery, buffering across a
broker that is down at start or restarted mid-run, the bounded buffer, credentials.

Skipped when mosquitto is not installed, unless ``EDGE_RUNTIME_REQUIRE_MOSQUITTO=1`` (CI).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_runtime.daemon.config import Mqtt
from edge_runtime.daemon.mqtt import MqttSink
from edge_runtime.errors import EdgeRuntimeError

ROOT = Path(__file__).resolve().parents[1]
MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or shutil.which("mosquitto_passwd", path="/usr/bin:/usr/sbin")
if MOSQUITTO is None:
    if os.environ.get("EDGE_RUNTIME_REQUIRE_MOSQUITTO") == "1":
        pytest.fail("EDGE_RUNTIME_REQUIRE_MOSQUITTO=1 but mosquitto is not installed", pytrace=False)
    pytest.skip("mosquitto (the MQTT broker) is not installed", allow_module_level=True)

TIMEOUT = 5.0  # seconds: the longest any wait here may take (a reconnect takes about 1 s)


def wait_for(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return predicate()
        time.sleep(0.01)
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


class Broker:
    """A mosquitto on 127.0.0.1:``port``, stopped and started again on the same port."""

    def __init__(self, directory: Path, *, password_file: Path | None = None) -> None:
        self.port = free_port()
        self.conf = directory / "mosquitto.conf"
        self.log = directory / "mosquitto.log"
        # user: as root mosquitto would drop to the "mosquitto" user, who cannot read tmp_path.
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\npersistence false\nlog_dest stderr\nuser {getpass.getuser()}\n"
            + (f"allow_anonymous false\npassword_file {password_file}\n" if password_file else "allow_anonymous true\n")
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert MOSQUITTO is not None
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=err, stderr=err)
        proc = self.proc
        assert wait_for(lambda: proc.poll() is not None or accepts(self.port)), "mosquitto did not start"
        assert proc.poll() is None, f"mosquitto exited: {self.log.read_text()}"

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
        self.proc.wait(TIMEOUT)
        self.proc = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker, started."""
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop(kill=True)


@pytest.fixture
def stopped_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker's port, nothing listening on it yet: ``start()`` it."""
    b = Broker(tmp_path)
    yield b
    b.stop(kill=True)


class Subscriber:
    """A separate MQTT 5 client that records every message on ``topics``; the QoS and retain
    flag it sees are the publisher's (QoS 2 subscription, retain-as-published)."""

    def __init__(
        self, port: int, topics: tuple[str, ...] = ("#",), *, username: str | None = None, password: str | None = None
    ) -> None:
        self.messages: list[Any] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.open = True
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}", protocol=MQTTProtocolVersion.MQTTv5
        )
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe([(t, SubscribeOptions(qos=2, retainAsPublished=True)) for t in topics])
        assert self.subscribed.wait(TIMEOUT), "the test subscriber got no SUBACK"

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self.lock:
            self.messages.append(message)

    def on(self, topic: str) -> list[Any]:
        with self.lock:
            return [m for m in self.messages if m.topic == topic]

    def payloads(self, topic: str) -> list[str]:
        return [m.payload.decode() for m in self.on(topic)]

    def records(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(p) for p in self.payloads(topic)]

    def close(self) -> None:
        if self.open:
            self.open = False
            self.client.disconnect()
            self.client.loop_stop()


@pytest.fixture
def subscribers() -> Iterator[list[Subscriber]]:
    made: list[Subscriber] = []
    yield made
    for s in made:
        s.close()


def config(port: int, **kw: Any) -> Mqtt:
    kw.setdefault("client_id", f"sink-{uuid.uuid4().hex[:8]}")
    return Mqtt(host="127.0.0.1", port=port, **kw)


def record(i: int, pipeline: str = "imu", stream_id: int = 0) -> dict[str, Any]:
    return {"pipeline": pipeline, "stream_id": stream_id, "window_index": i, "label": "walk", "confidence": 0.9}


RESULT = "edge_runtime/imu/result"
STATUS = "edge_runtime/status"


@pytest.mark.parametrize(("qos", "retain"), [(1, False), (0, True), (2, False)])
def test_results_arrive_on_their_topic_with_payload_qos_and_retain(
    broker: Broker, subscribers: list[Subscriber], qos: int, retain: bool
) -> None:
    sub = Subscriber(broker.port, ("edge_runtime/#",))
    subscribers.append(sub)
    with MqttSink(config(broker.port, qos=qos, retain=retain), ["imu"]) as sink:
        assert wait_for(lambda: sink.stats.connected)
        sent = [record(i) for i in range(3)]
        for r in sent:
            sink.write(r)
        assert wait_for(lambda: len(sub.on(RESULT)) == 3)
        assert sub.records(RESULT) == sent
        assert {(m.qos, bool(m.retain)) for m in sub.on(RESULT)} == {(qos, retain)}
        assert wait_for(lambda: sink.stats.acknowledged == 3)
        s = sink.stats
        assert (s.published, s.buffered, s.dropped, s.connects, s.disconnects) == (3, 0, 0, 1, 0)


def test_online_on_connect_offline_on_close_and_close_is_idempotent(
    broker: Broker, subscribers: list[Subscriber]
) -> None:
    sub = Subscriber(broker.port, (STATUS,))
    subscribers.append(sub)
    sink = MqttSink(config(broker.port), ["imu"])
    assert wait_for(lambda: sub.payloads(STATUS) == ["online"])
    assert all(m.retain and m.qos == 1 for m in sub.on(STATUS))
    sink.write(record(0))
    sink.close()
    sink.close()
    assert wait_for(lambda: sub.payloads(STATUS) == ["online", "offline"])
    assert sub.on(STATUS)[-1].retain
    assert sink.stats.acknowledged == 1 and not sink.stats.connected, "close waits for the acknowledgement"
    with pytest.raises(EdgeRuntimeError, match="closed"):
        sink.write(record(1))
    late = Subscriber(broker.port, (STATUS,))
    subscribers.append(late)
    assert wait_for(lambda: late.payloads(STATUS) == ["offline"]), "offline is retained"


def test_last_will_says_offline_when_the_process_is_killed(broker: Broker, subscribers: list[Subscriber]) -> None:
    sub = Subscriber(broker.port, (STATUS,))
    subscribers.append(sub)
    script = (
        "import sys\n"
        "from edge_runtime.daemon.config import Mqtt\n"
        "from edge_runtime.daemon.mqtt import MqttSink\n"
        f"sink = MqttSink(Mqtt(host='127.0.0.1', port={broker.port}, client_id='doomed'), ['imu'])\n"
        "sys.stdin.read()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert wait_for(lambda: sub.payloads(STATUS) == ["online"] or proc.poll() is not None, 10)
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert sub.payloads(STATUS) == ["online"]
        proc.send_signal(signal.SIGKILL)
        proc.wait(TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert wait_for(lambda: sub.payloads(STATUS) == ["online", "offline"])
    will = sub.on(STATUS)[-1]
    assert will.retain and will.qos == 1


def test_home_assistant_discovery(broker: Broker, subscribers: list[Subscriber]) -> None:
    sub = Subscriber(broker.port, ("homeassistant/#", STATUS))
    subscribers.append(sub)
    cfg = config(broker.port, client_id="kitchen node/1.a", home_assistant_discovery=True)
    with MqttSink(cfg, ["imu", "audio"], labels={"imu": ["idle", "walk"]}, version="1.2.3") as sink:
        assert sink.node_id == "kitchen_node_1_a"
        assert wait_for(lambda: sub.payloads(STATUS) == ["online"])
        topics = {p: f"homeassistant/sensor/kitchen_node_1_a/{p}/config" for p in ("imu", "audio")}
        assert wait_for(lambda: all(sub.on(t) for t in topics.values()))
        for pipeline, topic in topics.items():
            (message,) = sub.on(topic)
            assert message.retain and message.qos == 1
            body = json.loads(message.payload)
            result = f"edge_runtime/{pipeline}/result"
            expected = {
                "name": pipeline,
                "unique_id": f"kitchen_node_1_a_{pipeline}",
                "state_topic": result,
                "value_template": "{{ value_json.label }}",
                "json_attributes_topic": result,
                "availability_topic": STATUS,
                "payload_available": "online",
                "payload_not_available": "offline",
                "qos": 1,
                "device": {
                    "identifiers": ["kitchen_node_1_a"],
                    "name": "kitchen node/1.a",
                    "model": "edge-runtime",
                    "sw_version": "1.2.3",
                },
            }
            if pipeline == "imu":
                expected.update(device_class="enum", options=["idle", "walk"])
            assert body == expected
        assert "Home Assistant discovery as kitchen_node_1_a" in sink.describe()


def test_broker_down_at_start_then_started_delivers_the_buffered_results_in_order(
    stopped_broker: Broker, subscribers: list[Subscriber], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_runtime.daemon")
    t0 = time.monotonic()
    sink = MqttSink(config(stopped_broker.port), ["imu"])
    try:
        assert time.monotonic() - t0 < 1.0, "the constructor must not wait for the broker"
        for i in range(20):
            sink.write(record(i))
        s = sink.stats
        assert (s.connected, s.published, s.buffered) == (False, 0, 20)
        stopped_broker.start()  # paho 2.2 tries again 3 s after a failed first attempt
        sub = Subscriber(stopped_broker.port, ("edge_runtime/#",))
        subscribers.append(sub)
        assert sink.stats.connects == 0, "the sink connected before the test subscribed: raise RECONNECT_MIN_S?"
        assert wait_for(lambda: len(sub.on(RESULT)) == 20)
        assert [r["window_index"] for r in sub.records(RESULT)] == list(range(20))
        assert wait_for(lambda: sink.stats.buffered == 0)
        assert sink.stats.acknowledged == 20
    finally:
        sink.close()
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("edge_runtime: mqtt: cannot reach 127.0.0.1:") for line in lines), lines
    assert any(line.startswith("edge_runtime: mqtt: connected to ") for line in lines), lines


@pytest.mark.parametrize("paho_forgets", [False, True], ids=["paho-resends-too", "sink-buffer-alone"])
def test_broker_restarted_mid_run_loses_no_result(
    broker: Broker, subscribers: list[Subscriber], caplog: pytest.LogCaptureFixture, paho_forgets: bool
) -> None:
    """QoS 1 results sent but not acknowledged when the connection drops are sent again. paho 2
    resends its own copies as well; ``sink-buffer-alone`` empties paho's store (private state)
    to show that the sink's buffer alone is enough."""
    caplog.set_level(logging.INFO, logger="edge_runtime.daemon")
    first = Subscriber(broker.port, ("edge_runtime/#",))
    subscribers.append(first)
    with MqttSink(config(broker.port, qos=1), ["imu"]) as sink:
        assert wait_for(lambda: sink.stats.connected)
        for i in range(10):
            sink.write(record(i))
        assert wait_for(lambda: sink.stats.acknowledged == 10 and len(first.on(RESULT)) == 10)
        first.close()
        # Sent but never acknowledged: the broker is frozen, then killed with them unread.
        broker.signal(signal.SIGSTOP)
        for i in range(10, 20):
            sink.write(record(i))
        assert wait_for(lambda: sink.stats.published == 20)
        assert (sink.stats.acknowledged, sink.stats.buffered) == (10, 10)
        broker.stop(kill=True)
        assert wait_for(lambda: sink.stats.disconnects == 1 and not sink.stats.connected)
        for i in range(20, 30):  # written while the broker is down
            sink.write(record(i))
        assert sink.stats.buffered == 20
        if paho_forgets:
            client: Any = sink._client
            with client._out_message_mutex:
                assert len(client._out_messages) == 10, "paho 2 keeps unacknowledged messages"
                client._out_messages.clear()
        broker.start()  # same port; the sink retries about 1 s after the loss
        second = Subscriber(broker.port, ("edge_runtime/#",))
        subscribers.append(second)
        assert sink.stats.connects == 1, "the sink reconnected before the test subscribed"
        assert wait_for(lambda: {r["window_index"] for r in second.records(RESULT)} >= set(range(10, 30)))
        got = [r["window_index"] for r in first.records(RESULT) + second.records(RESULT)]
        assert set(got) == set(range(30)), "no result lost"
        assert wait_for(lambda: sink.stats.buffered == 0)
        s = sink.stats
        assert (s.acknowledged, s.dropped, s.connects, s.disconnects) == (30, 0, 2, 1)
        assert "online" in second.payloads(STATUS), "online again after the reconnect"
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("edge_runtime: mqtt:")]
    assert sum(" connected to " in line for line in lines) == 2, lines
    assert sum(" disconnected from " in line and "(closed)" not in line for line in lines) == 1, lines
    assert len(lines) < 10, "never a line per message"


def test_full_buffer_drops_the_oldest_and_delivers_the_newest(
    stopped_broker: Broker, subscribers: list[Subscriber]
) -> None:
    with MqttSink(config(stopped_broker.port, buffer=5), ["imu"]) as sink:
        for i in range(12):
            sink.write(record(i))
        assert (sink.stats.buffered, sink.stats.dropped) == (5, 7)
        stopped_broker.start()
        sub = Subscriber(stopped_broker.port, ("edge_runtime/#",))
        subscribers.append(sub)
        assert sink.stats.connects == 0, "the sink connected before the test subscribed"
        assert wait_for(lambda: len(sub.on(RESULT)) == 5)
        assert [r["window_index"] for r in sub.records(RESULT)] == list(range(7, 12))
        assert wait_for(lambda: sink.stats.acknowledged == 5)
        assert sink.stats.dropped == 7


def test_drops_are_logged_the_first_time_then_every_1000th(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="edge_runtime.daemon")
    sink = MqttSink(config(free_port(), buffer=1), ["imu"])  # nothing listens there
    try:
        for i in range(2001):
            sink.write(record(i))
        assert sink.stats.dropped == 2000
    finally:
        sink.close()
    drops = [r.getMessage() for r in caplog.records if "dropped the oldest" in r.getMessage()]
    assert len(drops) == 3 and all(d.startswith("edge_runtime: mqtt: buffer of 1 results full") for d in drops)
    assert [d.rsplit(", ", 1)[1] for d in drops] == ["1 so far", "1000 so far", "2000 so far"]


def test_concurrent_writers_each_keep_their_order(broker: Broker, subscribers: list[Subscriber]) -> None:
    sub = Subscriber(broker.port, ("edge_runtime/#",))
    subscribers.append(sub)
    with MqttSink(config(broker.port), ["imu"]) as sink:
        assert wait_for(lambda: sink.stats.connected)

        def writer(stream_id: int) -> None:
            for i in range(50):
                sink.write(record(i, stream_id=stream_id))

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert wait_for(lambda: len(sub.on(RESULT)) == 200)
        got = sub.records(RESULT)
        for k in range(4):
            assert [r["window_index"] for r in got if r["stream_id"] == k] == list(range(50))
        assert wait_for(lambda: sink.stats.acknowledged == 200)


def test_missing_password_file_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "mqtt.password"
    with pytest.raises(EdgeRuntimeError, match="password file") as err:
        MqttSink(config(free_port(), username="edge", password_file=missing), ["imu"])
    assert str(missing) in str(err.value)


@pytest.mark.skipif(MOSQUITTO_PASSWD is None, reason="mosquitto_passwd is not installed")
def test_credentials_come_from_the_password_file(
    tmp_path: Path, subscribers: list[Subscriber], caplog: pytest.LogCaptureFixture
) -> None:
    assert MOSQUITTO_PASSWD is not None
    users = tmp_path / "users"
    subprocess.run([MOSQUITTO_PASSWD, "-b", "-c", str(users), "edge", "secret"], check=True, capture_output=True)
    b = Broker(tmp_path, password_file=users)
    b.start()
    try:
        good, bad = tmp_path / "good", tmp_path / "bad"
        good.write_text("secret\n")
        bad.write_text("wrong")
        sub = Subscriber(b.port, ("edge_runtime/#",), username="edge", password="secret")
        subscribers.append(sub)
        caplog.set_level(logging.INFO, logger="edge_runtime.daemon")
        with MqttSink(config(b.port, username="edge", password_file=bad), ["imu"]) as refused:
            assert wait_for(lambda: any("refused the connection" in r.getMessage() for r in caplog.records))
            assert not refused.stats.connected
        with MqttSink(config(b.port, username="edge", password_file=good), ["imu"]) as sink:
            assert "user edge" in sink.describe()
            sink.write(record(0))
            assert wait_for(lambda: len(sub.on(RESULT)) == 1)
        sub.close()  # while the broker runs: paho's reconnect wait would hold it up to 1 s
    finally:
        b.stop(kill=True)


def test_defaults_and_bad_records() -> None:
    with MqttSink(Mqtt(port=free_port()), ["imu"]) as sink:
        assert sink.client_id == f"edge-runtime-{socket.gethostname()}"
        assert sink.topic("imu") == "edge_runtime/imu/result" and sink.status_topic == STATUS
        assert sink.describe().startswith(f"mqtt://127.0.0.1:{sink.config.port} as edge-runtime-")
        with pytest.raises(EdgeRuntimeError, match="'pipeline'"):
            sink.write({"window_index": 0})
        with pytest.raises(EdgeRuntimeError, match="'pipeline'"):
            sink.write({"pipeline": "a/#"})
