"""The daemon's MQTT results sink (``paho-mqtt`` 2.x, MQTT 3.1.1, clean session).

Topics. Each result goes, as the JSON object given to ``write`` (it carries ``pipeline``,
``stream_id`` and ``window_index``, so a consumer can drop a duplicate), to
``{topic_prefix}/{pipeline}/result`` with the configured QoS and retain flag.
``{topic_prefix}/status`` holds ``online`` or ``offline``, retained, QoS 1: ``offline`` is
the last will, set before connecting, so the broker publishes it when the daemon dies or its
link is lost; ``online`` is published on every (re)connect and ``offline`` again by
``close()``. This is Home Assistant's availability convention. With
``home_assistant_discovery``, every (re)connect also publishes, retained, one sensor per
pipeline to ``homeassistant/sensor/{node_id}/{pipeline}/config`` (``node_id``: the client id
with every character outside ``[A-Za-z0-9_-]`` made ``_``; the default client id is
``edge-runtime-<hostname>``).

Connection. The constructor starts paho's network thread and connects in the background:
it never blocks on, nor fails for, a broker that is down or refuses it; paho retries with a
back-off that starts at ``RECONNECT_MIN_S`` and doubles up to ``RECONNECT_MAX_S`` (seconds),
also after a connection is lost (paho 2.2 makes its second attempt at start 3 s after the
first, not 1 s). Only a password file that cannot be read (or a password without a user
name) fails the constructor (``EdgeRuntimeError`` naming the file): it is read there, once.

Delivery. The sink's own buffer, at most ``buffer`` results, is the authority: a result
stays in it from ``write`` until it is acknowledged (PUBACK for QoS 1, PUBCOMP for QoS 2;
for QoS 0, until paho has written it to the socket). Results written while disconnected
wait there and are published in order after the next connect; results sent but not
acknowledged when a connection drops are sent again after the reconnect (paho resends its
own copy of such a message too, so a consumer may see a result twice: QoS 1 semantics, never
a loss). When the buffer is full, ``write`` evicts the oldest waiting result and counts it
in ``stats.dropped``. At most ``WINDOW`` results are handed to paho and unacknowledged per
connection, and paho's own queue is capped, so memory stays bounded while the broker is
away. ``write`` never blocks on the network: one thread of the sink's own does the
publishing, in order.

Ownership and threads. ``write`` may be called from several threads at once; the record
is serialised before it returns (later changes to the dict are not seen). ``close()`` waits
up to ``timeout`` seconds, only while connected, for the buffered results to be
acknowledged, then publishes ``offline`` (retained), disconnects and stops both threads (up
to 1 s more while the broker is unreachable: paho sleeps in 1 s steps between attempts);
it is idempotent, and ``write`` after it raises ``EdgeRuntimeError``.

Logging (``edge_runtime.daemon``, lines starting ``edge_runtime: mqtt:``): connect,
disconnect with its reason, the first time the broker cannot be reached or refuses, the
first dropped result and then every 1000th. Never one line per message.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ..errors import EdgeRuntimeError
from .config import Mqtt

log = logging.getLogger("edge_runtime.daemon")

#: Reconnect back-off (seconds): the first retry after this, doubling up to the maximum.
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30
#: Results handed to paho and not yet acknowledged, per connection.
WINDOW = 32
#: Home Assistant's discovery prefix (its default).
DISCOVERY_PREFIX = "homeassistant"
ONLINE = "online"
OFFLINE = "offline"
#: A drop is logged the first time, then every this many.
LOG_DROP_EVERY = 1000

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_MAX_PAYLOAD = 268_435_455  # MQTT's limit (bytes)
_RETRY_S = 0.5  # paho refused a message (its queue is full): try again after this long
_MISSING = object()


@dataclass(frozen=True)
class MqttStats:
    """Counts of results (status and discovery messages are not counted) since construction.

    ``published``: handed to the live connection for sending, re-sends after a reconnect
    included. ``acknowledged``: results delivered (QoS 1/2: acknowledged by the broker;
    QoS 0: written to the socket), each counted once. ``buffered``: waiting or sent and not
    yet acknowledged, now. ``dropped``: evicted from the full buffer. ``connects`` and
    ``disconnects``: successful connections and their losses.
    """

    connected: bool
    published: int
    acknowledged: int
    buffered: int
    dropped: int
    connects: int
    disconnects: int


class _Entry:
    """One result in the buffer. ``sent_in``: the connection it was last handed to paho in."""

    __slots__ = ("done", "payload", "sent_in", "seq", "topic")

    def __init__(self, seq: int, topic: str, payload: bytes) -> None:
        self.seq = seq
        self.topic = topic
        self.payload = payload
        self.sent_in = -1
        self.done = False  # acknowledged or evicted: gone from the buffer


class MqttSink:
    """Results to an MQTT broker, buffered and re-sent across disconnects (see the module).

    ``pipelines``: the pipeline names (one discovery sensor each). ``labels``: per pipeline,
    its class names; with discovery that pipeline's sensor is an ``enum`` with these options.
    ``version``: the runtime's version, for the discovery device's ``sw_version``.
    """

    def __init__(
        self,
        config: Mqtt,
        pipelines: Sequence[str],
        *,
        labels: Mapping[str, Sequence[str]] | None = None,
        version: str = "",
    ) -> None:
        self.config = config
        self.pipelines = tuple(pipelines)
        self.labels = {name: tuple(names) for name, names in (labels or {}).items()}
        self.version = version
        self.client_id = config.client_id or f"edge-runtime-{socket.gethostname()}"
        self.node_id = _UNSAFE.sub("_", self.client_id)
        self.status_topic = f"{config.topic_prefix}/status"
        password = _read_password(config.password_file) if config.password_file is not None else None
        if password is not None and not config.username:
            raise EdgeRuntimeError(
                "mqtt.password_file is set but mqtt.username is not: MQTT sends a password only with a user name",
                path=str(config.password_file),
            )

        self._cond = threading.Condition()
        self._buffer: OrderedDict[int, _Entry] = OrderedDict()  # by seq: oldest first
        self._seq = 0
        self._mids: dict[int, _Entry | None] = {}  # paho message id -> result (None: status/discovery)
        self._early: set[int] = set()  # acknowledged before the sender recorded the id
        self._gen = 0  # connection number; 0: never connected
        self._connected = False
        self._announce: list[tuple[str, bytes]] = []  # status/discovery still to publish on this connection
        self._inflight = 0  # results handed to paho on this connection and not acknowledged
        self._paused_until = 0.0
        self._published = self._acknowledged = self._dropped = self._connects = self._disconnects = 0
        self._unreachable_logged = False
        self._refusal_logged: str | None = None
        self._closed = False
        self._stop = False

        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True)
        if config.username:
            client.username_pw_set(config.username, password)
        client.will_set(self.status_topic, OFFLINE, qos=1, retain=True)
        client.reconnect_delay_set(min_delay=RECONNECT_MIN_S, max_delay=RECONNECT_MAX_S)
        cap = 4 * WINDOW + 1 + len(self.pipelines)  # this connection's window, older copies, status, discovery
        client.max_inflight_messages_set(cap)
        client.max_queued_messages_set(cap)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client
        self._thread = threading.Thread(target=self._run, name="edge-runtime-mqtt", daemon=True)
        self._loop_started = False
        try:
            self._thread.start()
            client.connect_async(config.host, config.port, keepalive=config.keepalive_s)
            client.loop_start()
            self._loop_started = True
        except BaseException:
            self.close(timeout=0)
            raise

    # -- the public side ---------------------------------------------------------------
    def topic(self, pipeline: str) -> str:
        """The topic ``pipeline``'s results go to."""
        return f"{self.config.topic_prefix}/{pipeline}/result"

    def write(self, record: dict[str, Any]) -> None:
        """Buffer one result for publishing; never blocks on the network. Thread-safe.

        ``record["pipeline"]`` names the topic. When the buffer is full the oldest waiting
        result is evicted (``stats.dropped``). Raises ``EdgeRuntimeError`` after ``close()``.
        """
        pipeline = record.get("pipeline")
        if not isinstance(pipeline, str) or not _NAME.match(pipeline):
            raise EdgeRuntimeError(
                f"an MQTT result needs a 'pipeline' of 1-64 letters, digits, '_' or '-', got {pipeline!r}"
            )
        payload = json.dumps(record, separators=(",", ":")).encode("utf-8")
        if len(payload) > _MAX_PAYLOAD:
            raise EdgeRuntimeError(f"an MQTT result of {len(payload)} bytes is over MQTT's {_MAX_PAYLOAD}")
        dropped = 0
        with self._cond:
            if self._closed:
                raise EdgeRuntimeError(f"the MQTT sink to {self.config.host}:{self.config.port} is closed")
            if len(self._buffer) >= self.config.buffer:
                _, old = self._buffer.popitem(last=False)
                old.done = True
                if old.sent_in == self._gen:
                    self._inflight -= 1
                self._dropped += 1
                if self._dropped == 1 or self._dropped % LOG_DROP_EVERY == 0:
                    dropped = self._dropped
            self._seq += 1
            self._buffer[self._seq] = _Entry(self._seq, self.topic(pipeline), payload)
            self._cond.notify_all()
        if dropped:
            log.warning(
                "edge_runtime: mqtt: buffer of %d results full (broker %s:%d %s): dropped the oldest, %d so far",
                self.config.buffer,
                self.config.host,
                self.config.port,
                "connected but slow" if self._connected else "not connected",
                dropped,
            )

    def set_pipelines(self, pipelines: Sequence[str]) -> None:
        """The pipelines after a reload: with discovery on, each new one is announced at once
        when connected (and, as every pipeline, on every later connect)."""
        with self._cond:
            new = [p for p in pipelines if p not in self.pipelines]
            self.pipelines = tuple(pipelines)
            if self._connected and self.config.home_assistant_discovery and new:
                for name in new:
                    body = json.dumps(self.discovery(name), separators=(",", ":")).encode("utf-8")
                    self._announce.append((self.discovery_topic(name), body))
                self._cond.notify_all()

    @property
    def stats(self) -> MqttStats:
        """A snapshot of the counts (see ``MqttStats``)."""
        with self._cond:
            return MqttStats(
                connected=self._connected,
                published=self._published,
                acknowledged=self._acknowledged,
                buffered=len(self._buffer),
                dropped=self._dropped,
                connects=self._connects,
                disconnects=self._disconnects,
            )

    def describe(self) -> str:
        """One line for the log: where results go and how."""
        c = self.config
        parts = [
            f"mqtt://{c.host}:{c.port} as {self.client_id}",
            f"{c.topic_prefix}/<pipeline>/result qos {c.qos}" + (" retained" if c.retain else ""),
            f"status {self.status_topic}",
            f"buffer {c.buffer} results",
        ]
        if c.username:
            parts.append(f"user {c.username}")
        if c.home_assistant_discovery:
            parts.append(f"Home Assistant discovery as {self.node_id}")
        return ", ".join(parts)

    def discovery(self, pipeline: str) -> dict[str, Any]:
        """The Home Assistant discovery config of ``pipeline``'s sensor."""
        device: dict[str, Any] = {"identifiers": [self.node_id], "name": self.client_id, "model": "edge-runtime"}
        if self.version:
            device["sw_version"] = self.version
        config: dict[str, Any] = {
            "name": pipeline,
            "unique_id": f"{self.node_id}_{pipeline}",
            "state_topic": self.topic(pipeline),
            "value_template": "{{ value_json.label }}",
            "json_attributes_topic": self.topic(pipeline),
            "availability_topic": self.status_topic,
            "payload_available": ONLINE,
            "payload_not_available": OFFLINE,
            "qos": self.config.qos,
            "device": device,
        }
        names = self.labels.get(pipeline)
        if names:
            config["device_class"] = "enum"
            config["options"] = list(names)
        return config

    def discovery_topic(self, pipeline: str) -> str:
        return f"{DISCOVERY_PREFIX}/sensor/{self.node_id}/{pipeline}/config"

    def close(self, timeout: float = 5.0) -> None:
        """Wait up to ``timeout`` seconds (only while connected) for the buffered results to be
        acknowledged, publish ``offline`` (retained), disconnect, stop the threads. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            deadline = time.monotonic() + max(0.0, timeout)
            while self._connected and self._buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            self._stop = True
            self._cond.notify_all()
            connected = self._connected
            undelivered = len(self._buffer)
        if self._thread.is_alive():
            self._thread.join()  # it waits on the condition or publishes (never blocks on the network)
        try:
            if connected:
                info = self._client.publish(self.status_topic, OFFLINE, qos=1, retain=True)
                if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                    try:
                        info.wait_for_publish(max(0.0, deadline - time.monotonic()))
                    except (RuntimeError, ValueError):  # the connection went: the last will says offline
                        pass
        finally:
            self._client.disconnect()
            if self._loop_started:
                self._client.loop_stop()
        if undelivered:
            log.warning(
                "edge_runtime: mqtt: closed with %d results not acknowledged by %s:%d",
                undelivered,
                self.config.host,
                self.config.port,
            )

    def __enter__(self) -> MqttSink:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- the sender thread -------------------------------------------------------------
    def _run(self) -> None:
        """Hand status, discovery and buffered results to paho, in order, one at a time."""
        while True:
            with self._cond:
                item = self._take()
                while item is None and not self._stop:
                    wait = self._paused_until - time.monotonic()
                    self._cond.wait(wait if wait > 0 else None)
                    item = self._take()
                if self._stop or item is None:
                    return
                gen = self._gen
            entry, topic, payload, qos, retain = item
            try:
                info = self._client.publish(topic, payload, qos=qos, retain=retain)
            except ValueError as exc:  # not expected: topics and sizes are checked before
                log.error("edge_runtime: mqtt: cannot publish to %s: %s; message dropped", topic, exc)
                with self._cond:
                    if entry is not None and not entry.done:
                        self._forget(entry)
                continue
            with self._cond:
                self._record(gen, entry, topic, payload, qos, info)

    def _take(self) -> tuple[_Entry | None, str, bytes, int, bool] | None:
        """The next message to publish on this connection, claimed; ``None``: nothing now."""
        if not self._connected or time.monotonic() < self._paused_until:
            return None
        if self._announce:
            topic, payload = self._announce.pop(0)
            return None, topic, payload, 1, True
        if self._inflight >= WINDOW:
            return None
        for entry in self._buffer.values():  # those sent on this connection come first
            if entry.sent_in != self._gen:
                entry.sent_in = self._gen
                self._inflight += 1
                return entry, entry.topic, entry.payload, self.config.qos, self.config.retain
        return None

    def _record(
        self, gen: int, entry: _Entry | None, topic: str, payload: bytes, qos: int, info: paho.MQTTMessageInfo
    ) -> None:
        """What paho did with a message the sender handed it (under the lock)."""
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0):
            # Sent, or (no socket) kept by paho until it reconnects: either way an acknowledgement may come.
            if entry is not None and info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._published += 1
            if info.mid in self._early:
                self._early.discard(info.mid)
                if entry is not None:
                    self._complete(entry)
                self._cond.notify_all()
            else:
                self._mids[info.mid] = entry
            return
        # Refused: paho's queue is full (older copies wait for their acknowledgement), or QoS 0
        # without a socket. Give it back; it goes again on this connection or the next.
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            self._paused_until = time.monotonic() + _RETRY_S
        if gen != self._gen:
            return
        if entry is None:
            self._announce.insert(0, (topic, payload))
        elif not entry.done and entry.sent_in == gen:
            entry.sent_in = -1
            self._inflight -= 1

    def _complete(self, entry: _Entry) -> None:
        """``entry`` was acknowledged (under the lock)."""
        if entry.done:
            return
        self._forget(entry)
        self._acknowledged += 1

    def _forget(self, entry: _Entry) -> None:
        entry.done = True
        self._buffer.pop(entry.seq, None)
        if entry.sent_in == self._gen:
            self._inflight -= 1

    def _announcements(self) -> list[tuple[str, bytes]]:
        out = []
        if self.config.home_assistant_discovery:
            for p in self.pipelines:
                body = json.dumps(self.discovery(p), separators=(",", ":")).encode("utf-8")
                out.append((self.discovery_topic(p), body))
        out.append((self.status_topic, ONLINE.encode("utf-8")))
        return out

    # -- paho's callbacks (its network thread; they take only the sink's lock) ----------
    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        where = f"{self.config.host}:{self.config.port}"
        if reason.is_failure:
            with self._cond:
                first = self._refusal_logged != str(reason)
                self._refusal_logged = str(reason)
            if first:
                log.warning(
                    "edge_runtime: mqtt: %s refused the connection as %s: %s; retrying every %d-%d s",
                    where,
                    self.client_id,
                    reason,
                    RECONNECT_MIN_S,
                    RECONNECT_MAX_S,
                )
            return
        with self._cond:
            self._connected = True
            self._gen += 1
            self._connects += 1
            self._inflight = 0
            self._paused_until = 0.0
            self._early.clear()
            self._announce = self._announcements()
            self._unreachable_logged = False
            self._refusal_logged = None
            buffered = len(self._buffer)
            self._cond.notify_all()
        log.info("edge_runtime: mqtt: connected to %s as %s; %d results buffered", where, self.client_id, buffered)

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        with self._cond:
            first = not self._unreachable_logged
            self._unreachable_logged = True
        if first:
            log.warning(
                "edge_runtime: mqtt: cannot reach %s:%d; retrying every %d-%d s, up to %d results wait meanwhile",
                self.config.host,
                self.config.port,
                RECONNECT_MIN_S,
                RECONNECT_MAX_S,
                self.config.buffer,
            )

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            was = self._connected
            self._connected = False
            if was:
                self._disconnects += 1
            if self.config.qos == 0:
                self._mids.clear()  # paho reports no QoS 0 packet of a dead connection
            buffered = len(self._buffer)
            closing = self._closed
            self._cond.notify_all()
        if was and closing:
            log.info("edge_runtime: mqtt: disconnected from %s:%d (closed)", self.config.host, self.config.port)
        elif was:
            log.warning(
                "edge_runtime: mqtt: disconnected from %s:%d: %s; %d results buffered, reconnecting",
                self.config.host,
                self.config.port,
                reason,
                buffered,
            )

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Properties
    ) -> None:
        with self._cond:
            entry = self._mids.pop(mid, _MISSING)
            if entry is _MISSING:
                self._early.add(mid)  # the sender has not recorded it yet
                return
            if isinstance(entry, _Entry):
                self._complete(entry)
            self._cond.notify_all()


def _read_password(path: Path) -> str:
    """The password: the file's text, stripped. Raises ``EdgeRuntimeError`` naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise EdgeRuntimeError("the MQTT password file does not exist", path=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise EdgeRuntimeError(f"cannot read the MQTT password file: {reason}", path=str(path)) from exc
    if not text:
        raise EdgeRuntimeError("the MQTT password file is empty", path=str(path))
    return text
