"""The daemon's TOML configuration, validated into typed objects before anything starts.

Every key is known: an unknown key, a value of the wrong type or out of range is a
``ConfigError`` that names the key's full path (``pipelines.imu.window``) and the reason,
and lists the known keys where a key was misspelt. Reading a config touches only the
files it names (model files are checked and, when pinned, hashed); it opens no port and
loads no model. Every key is documented in the commented example shipped with the
package, ``edge_runtime/data/edge-runtime.example.toml`` (``edge-runtime serve --check`` it).
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import ArgumentError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

POLICIES = ("drop-oldest", "block")
ON_DEVICE_ERROR = ("fall-back", "fail")
LOG_LEVELS = ("debug", "info", "warning", "error")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ConfigError(ArgumentError):
    """A config file that cannot be used: the message names the key's full path and the reason."""


@dataclass(frozen=True)
class Sink:
    """Where a pipeline's results go: ``stdout``, ``mqtt``, or ``jsonl`` to ``path``."""

    kind: str
    path: Path | None = None


@dataclass(frozen=True)
class Pipeline:
    """One source -> runner -> sinks chain. Sizes in samples, times in milliseconds."""

    name: str
    source: str
    model: Path
    sha256: str | None = None
    device: tuple[str, ...] = ("auto",)
    #: Inference threads: a whole number, ``"auto"`` (measured, cached in the state directory),
    #: or None (this process's cores shared between the pipelines).
    threads: int | str | None = None
    window: int | None = None
    hop: int | None = None
    preprocess: str = "auto"
    labels: tuple[str, ...] | None = None
    thresholds: tuple[float | None, ...] | None = None
    policy: str = "drop-oldest"
    queue_slots: int = 8
    baud: int | None = None
    deadline_ms: float | None = None
    inference_timeout_s: float = 10.0
    on_device_error: str = "fall-back"
    sinks: tuple[Sink, ...] = (Sink("stdout"),)
    #: Run the model in a child process for good (``load(..., isolate=True)``): a native crash
    #: or hang kills only that child, which is restarted; 3 crashes quarantine the model.
    isolate: bool = False
    #: Before a model file is first loaded in the daemon's own process, load it and run it once
    #: in a throwaway child (ignored with ``isolate``, where every load is in a child).
    probe: bool = True
    #: ``[daemon] trusted_keys``, copied here so that a pipeline's process has them: when set,
    #: every load of this pipeline's model verifies its signed manifest against these keys.
    trusted_keys: tuple[Path, ...] = ()
    #: ``model = "@store"``: the model is the current release of ``[daemon] model_store``;
    #: ``model`` is the store directory until the service resolves it to the release's path.
    from_store: bool = False
    #: Set by the service, not the file: the sha256 of the signed manifest it verified for this
    #: pipeline; a load (a fallback, a pipeline's process) of any other release is refused.
    signed_digest: str | None = None
    #: Dynamic batching: up to ``max_batch`` windows of the pipelines that share this pipeline's
    #: model, devices, threads, max_batch and max_wait_us run as one batch (1: no batching).
    max_batch: int = 1
    #: How long the oldest waiting window may wait for others to fill a batch, microseconds.
    max_wait_us: float = 1000.0


@dataclass(frozen=True)
class Mqtt:
    """The MQTT broker results are published to (``paho-mqtt``)."""

    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str | None = None
    username: str | None = None
    password_file: Path | None = None
    topic_prefix: str = "edge_runtime"
    qos: int = 1
    retain: bool = False
    keepalive_s: int = 30
    buffer: int = 1000
    home_assistant_discovery: bool = False


@dataclass(frozen=True)
class Metrics:
    """The HTTP endpoint for ``/metrics`` (Prometheus) and ``/healthz``."""

    enabled: bool = True
    listen: str = "127.0.0.1:9464"


@dataclass(frozen=True)
class Config:
    """A whole config file, checked."""

    path: Path
    state_dir: Path
    log_level: str
    metrics: Metrics
    mqtt: Mqtt | None
    pipelines: tuple[Pipeline, ...] = field(default=())
    #: auto (processes for 2+ pipelines on 2+ cores), threads, or processes
    pipelines_in: str = "auto"
    #: Public key files (PEM, Ed25519): when given, every model must be a release signed by one.
    trusted_keys: tuple[Path, ...] = ()
    #: The model store's directory (``edge_runtime.model_store``); pipelines use it with ``model = "@store"``.
    model_store: Path | None = None
    #: The updates inbox: a signed release dropped here is installed into the store on SIGHUP and at start.
    updates: Path | None = None


_TOP = {"daemon", "metrics", "mqtt", "pipelines"}
_DAEMON = {"state_dir", "log_level", "pipelines_in", "trusted_keys", "model_store", "updates"}
#: ``model = STORE_MODEL``: the pipeline runs the current release of ``[daemon] model_store``.
STORE_MODEL = "@store"
PIPELINES_IN = ("auto", "threads", "processes")
_METRICS = {"enabled", "listen"}
_MQTT = {
    "host",
    "port",
    "client_id",
    "username",
    "password_file",
    "topic_prefix",
    "qos",
    "retain",
    "keepalive_s",
    "buffer",
    "home_assistant_discovery",
}
_PIPELINE = {
    "source",
    "model",
    "sha256",
    "device",
    "threads",
    "window",
    "hop",
    "preprocess",
    "labels",
    "thresholds",
    "policy",
    "queue_slots",
    "baud",
    "deadline_ms",
    "inference_timeout_s",
    "on_device_error",
    "sinks",
    "isolate",
    "probe",
    "max_batch",
    "max_wait_us",
}


class _Reader:
    """Typed access to one table, every error naming the key's full path."""

    def __init__(self, table: Mapping[str, Any], where: str, known: set[str], path: Path) -> None:
        self.table, self.where, self.file = table, where, path
        unknown = sorted(set(table) - known)
        if unknown:
            raise self.error(unknown[0], f"unknown key; known keys here: {', '.join(sorted(known))}")

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def error(self, name: str, reason: str) -> ConfigError:
        return ConfigError(f"{self.key(name)}: {reason}", path=str(self.file))

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        if name not in self.table:
            return default
        value = self.table[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise self.error(name, f"must be {_kind_name(kinds)}, got {value!r}")
        if not isinstance(value, kinds):
            raise self.error(name, f"must be {_kind_name(kinds)}, got {value!r}")
        return value

    def number(self, name: str, default: Any = None, *, minimum: float = 0, strict: bool = True) -> Any:
        value = self.get(name, (int, float), default)
        if value is None or name not in self.table:
            return value
        if value != value or (strict and value <= minimum) or (not strict and value < minimum):
            bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
            raise self.error(name, f"must be {bound}, got {value!r}")
        return value

    def whole(self, name: str, default: Any = None, *, minimum: int = 1, maximum: int | None = None) -> Any:
        value = self.get(name, int, default)
        if value is None or name not in self.table:
            return value
        if value < minimum or (maximum is not None and value > maximum):
            span = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
            raise self.error(name, f"must be a whole number {span}, got {value!r}")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(name, str, default)
        if value not in choices:
            raise self.error(name, f"must be one of {', '.join(choices)}, got {value!r}")
        return str(value)


def _kind_name(kinds: tuple[type, ...]) -> str:
    if set(kinds) == {int, float}:
        return "a number"
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string", list: "a list"}
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in kinds))


def load_config(path: str | Path, *, check_files: bool = True) -> Config:
    """Read and check a config file; raise ``ConfigError`` naming the key and the reason.

    ``check_files``: the model files must exist (and match their ``sha256`` when pinned).
    Relative paths in the file are relative to the config file's directory.
    """
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("config file not found", path=str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the config file: {exc}", path=str(p)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=str(p)) from exc
    base = p.resolve().parent
    top = _Reader(raw, "", _TOP, p)
    daemon = _Reader(top.get("daemon", dict, {}), "daemon", _DAEMON, p)
    state_dir = _path(base, daemon.get("state_dir", str, "/var/lib/edge-runtime"))
    log_level = daemon.choice("log_level", LOG_LEVELS, "info")
    pipelines_in = daemon.choice("pipelines_in", PIPELINES_IN, "auto")
    keys = _trusted_keys(daemon, base, check_files)
    store, updates = _store(daemon, base, keys)
    m = _Reader(top.get("metrics", dict, {}), "metrics", _METRICS, p)
    metrics = Metrics(m.get("enabled", bool, True), m.get("listen", str, "127.0.0.1:9464"))
    if metrics.enabled:
        _listen_address(m, metrics.listen)
    mqtt = _mqtt(top, base, p)
    tables = top.get("pipelines", dict, {})
    if not tables:
        raise top.error("pipelines", "declare at least one pipeline: [pipelines.NAME] with source and model")
    pipelines = []
    for name, table in tables.items():
        if not _NAME.match(name):
            raise top.error(f"pipelines.{name}", "a pipeline name is 1-64 letters, digits, '_' or '-'")
        if not isinstance(table, dict):
            raise top.error(f"pipelines.{name}", "must be a table: [pipelines.NAME]")
        r = _Reader(table, f"pipelines.{name}", _PIPELINE, p)
        pipelines.append(replace(_pipeline(name, r, base, check_files, store, updates), trusted_keys=keys))
    if updates is not None and not any(pl.from_store for pl in pipelines):
        raise daemon.error(
            "updates", f'no pipeline runs the store\'s release (model = "{STORE_MODEL}"): nothing would load an update'
        )
    if mqtt is None and any(s.kind == "mqtt" for pl in pipelines for s in pl.sinks):
        user = next(pl.name for pl in pipelines if any(s.kind == "mqtt" for s in pl.sinks))
        raise ConfigError(f"pipelines.{user}.sinks: 'mqtt' needs an [mqtt] table (host, port)", path=str(p))
    if pipelines_in == "processes":
        batched = next((pl.name for pl in pipelines if pl.max_batch > 1), None)
        if batched is not None:
            raise ConfigError(
                f"pipelines.{batched}.max_batch: batching shares one model between pipelines, which needs them in "
                'one process: daemon.pipelines_in = "processes" cannot batch '
                '(use "threads" or "auto", or max_batch = 1)',
                path=str(p),
            )
    return Config(p, state_dir, log_level, metrics, mqtt, tuple(pipelines), pipelines_in, keys, store, updates)


def _trusted_keys(daemon: _Reader, base: Path, check_files: bool) -> tuple[Path, ...]:
    """``[daemon] trusted_keys``: paths of Ed25519 public key files; with ``check_files`` each is
    read and parsed now (a missing or malformed one names the key)."""
    value = daemon.get("trusted_keys", list, [])
    if "trusted_keys" in daemon.table and not value:
        raise daemon.error("trusted_keys", "must name at least one public key file (or leave the key out)")
    if not all(isinstance(k, str) and k for k in value):
        raise daemon.error("trusted_keys", "must be a list of public key file paths (strings)")
    keys = tuple(_path(base, k) for k in value)
    if keys and check_files:
        from ..model import need_cryptography

        try:
            need_cryptography()
        except ArgumentError as exc:
            raise daemon.error("trusted_keys", exc.reason) from None
        from ..manifest import load_public_key

        for key in keys:
            try:
                load_public_key(key)
            except ArgumentError as exc:
                raise daemon.error("trusted_keys", f"{key}: {exc.reason}") from None
    return keys


def _store(daemon: _Reader, base: Path, keys: tuple[Path, ...]) -> tuple[Path | None, Path | None]:
    """``[daemon] model_store`` and ``updates``: directories (created by the service when missing)."""
    found: list[Path | None] = []
    for key in ("model_store", "updates"):
        text = daemon.get(key, str)
        if text is not None and not text:
            raise daemon.error(key, "must be a directory path")
        path = _path(base, text) if text else None
        if path is not None and path.exists() and not path.is_dir():
            raise daemon.error(key, f"{path} is not a directory")
        found.append(path)
    store, updates = found
    if store is not None and not keys:
        raise daemon.error(
            "model_store", "the store installs only signed releases: set daemon.trusted_keys (public key files)"
        )
    if updates is not None:
        if store is None:
            raise daemon.error("updates", "needs daemon.model_store: the store is where updates are installed")
        if updates.resolve() == store.resolve() or store.resolve() in updates.resolve().parents:
            raise daemon.error("updates", f"must be a directory outside the model store {store}")
    return store, updates


def _path(base: Path, text: str) -> Path:
    q = Path(text).expanduser()
    return q if q.is_absolute() else base / q


def _listen_address(r: _Reader, text: str) -> None:
    import socket

    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise r.error("listen", f"must be HOST:PORT (e.g. 127.0.0.1:9464), got {text!r}")
    try:
        socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        raise r.error("listen", f"cannot use host {host!r}: {getattr(exc, 'strerror', None) or exc}") from exc


def _mqtt(top: _Reader, base: Path, p: Path) -> Mqtt | None:
    if "mqtt" not in top.table:
        return None
    r = _Reader(top.get("mqtt", dict, {}), "mqtt", _MQTT, p)
    password = r.get("password_file", str)
    prefix = r.get("topic_prefix", str, "edge_runtime")
    if not prefix or any(c in prefix for c in "#+") or prefix.startswith("/") or prefix.endswith("/"):
        raise r.error("topic_prefix", f"must be a topic without wildcards or a leading/trailing '/', got {prefix!r}")
    return Mqtt(
        host=r.get("host", str, "127.0.0.1"),
        port=r.whole("port", 1883, minimum=1, maximum=65535),
        client_id=r.get("client_id", str),
        username=r.get("username", str),
        password_file=_path(base, password) if password else None,
        topic_prefix=prefix,
        qos=r.whole("qos", 1, minimum=0, maximum=2),
        retain=r.get("retain", bool, False),
        keepalive_s=r.whole("keepalive_s", 30, minimum=1),
        buffer=r.whole("buffer", 1000, minimum=1),
        home_assistant_discovery=r.get("home_assistant_discovery", bool, False),
    )


def _pipeline(
    name: str, r: _Reader, base: Path, check_files: bool, store: Path | None, updates: Path | None
) -> Pipeline:
    for required in ("source", "model"):
        if required not in r.table:
            raise r.error(required, "missing: every pipeline needs a source and a model")
    source = r.get("source", str)
    if not source:
        raise r.error("source", "must not be empty")
    if source.startswith("file:") and not Path(source[len("file:") :].split("?", 1)[0]).is_absolute():
        source = "file:" + str(base / source[len("file:") :])  # relative to the config file, as model paths
    _check_source(r, source)
    model_text = r.get("model", str)
    from_store = model_text == STORE_MODEL
    sha = r.get("sha256", str)
    if sha is not None and not _SHA256.match(sha):
        raise r.error("sha256", f"must be 64 lowercase hex digits, got {sha!r}")
    if from_store:
        if store is None:
            raise r.error("model", f'"{STORE_MODEL}" runs the model store\'s current release: set daemon.model_store')
        if sha is not None:
            raise r.error("sha256", "a store release is pinned by its signed manifest, not by sha256")
        model = store
        if check_files:
            _check_store(r, store, updates)
    else:
        model = _path(base, model_text)
        if check_files:
            _check_model(r, model, sha)
    device = r.get("device", (str, list), "auto")
    devices = (device,) if isinstance(device, str) else tuple(device)
    if not devices or not all(isinstance(d, str) and d for d in devices):
        raise r.error("device", "must be a request string or a non-empty list of them")
    _check_devices(r, devices)
    window = r.whole("window")
    hop = r.whole("hop")
    if window is not None and hop is not None and hop > window:
        raise r.error("hop", f"must be <= window ({window}), got {hop}: samples between windows would be skipped")
    labels = r.get("labels", list)
    if labels is not None and (not labels or not all(isinstance(x, str) for x in labels)):
        raise r.error("labels", "must be a non-empty list of strings")
    thresholds = r.get("thresholds", list)
    if thresholds is not None and not all(
        isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t for t in thresholds
    ):
        raise r.error("thresholds", "must be a list of numbers >= 0 (the early-exit thresholds, one per exit)")
    isolate = r.get("isolate", bool, False)
    inference_timeout_s = float(r.number("inference_timeout_s", 10.0))
    max_batch, max_wait_us = _batching(r, model, isolate, thresholds is not None, inference_timeout_s)
    return Pipeline(
        name=name,
        source=source,
        model=model,
        sha256=sha,
        device=devices,
        threads=_threads(r),
        window=window,
        hop=hop,
        preprocess=_preprocess(r, base),
        labels=tuple(labels) if labels else None,
        thresholds=tuple(float(t) for t in thresholds) if thresholds is not None else None,
        policy=r.choice("policy", POLICIES, "drop-oldest"),
        queue_slots=r.whole("queue_slots", 8),
        baud=r.whole("baud"),
        deadline_ms=r.number("deadline_ms"),
        inference_timeout_s=inference_timeout_s,
        on_device_error=r.choice("on_device_error", ON_DEVICE_ERROR, "fall-back"),
        sinks=_sinks(r, base),
        isolate=isolate,
        probe=r.get("probe", bool, True),
        from_store=from_store,
        max_batch=max_batch,
        max_wait_us=max_wait_us,
    )


def _threads(r: _Reader) -> int | str | None:
    """``threads``: a whole number >= 1, or ``"auto"`` (thread counts measured, the fastest kept)."""
    value = r.table.get("threads")
    if isinstance(value, str):
        if value != "auto":
            raise r.error("threads", f'must be a whole number, got {value!r} (or "auto": measured)')
        return value
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise r.error("threads", f'must be a whole number, got {value!r} (or "auto": measured)')
    return r.whole("threads")  # type: ignore[no-any-return]


def _batching(
    r: _Reader, model: Path, isolate: bool, thresholds: bool, inference_timeout_s: float
) -> tuple[int, float]:
    """``max_batch`` (>= 1) and ``max_wait_us`` (>= 0), and what batching cannot go with."""
    max_batch = int(r.whole("max_batch", 1))
    max_wait_us = float(r.number("max_wait_us", 1000.0, minimum=0, strict=False))
    if max_batch > 1:
        if isolate:
            raise r.error(
                "max_batch",
                "an isolated model (isolate = true) runs in a child process of its own, one window at a time: "
                "it is not batched (set max_batch = 1, or isolate = false)",
            )
        if thresholds or model.is_dir():
            raise r.error(
                "max_batch", "an early-exit bundle runs one window at a time and cannot be batched: set max_batch = 1"
            )
        if max_wait_us / 1e6 >= inference_timeout_s:
            raise r.error(
                "max_wait_us",
                f"{max_wait_us:g} us is not below inference_timeout_s ({inference_timeout_s:g} s): a window waiting "
                "for its batch would count as a hung inference",
            )
    return max_batch, max_wait_us


def _check_source(r: _Reader, source: str) -> None:
    """The source URL's form and keys (opens nothing; a recording must exist)."""
    from ..errors import EdgeRuntimeError
    from ..stream.sources import is_serial, open_source

    if is_serial(source) and "://" not in source and not source.startswith("/"):
        raise r.error(
            "source", f"must be a device path (/dev/...), a pyserial URL, file:... or synthetic:..., got {source!r}"
        )
    if not is_serial(source):
        try:
            open_source(source)
        except EdgeRuntimeError as exc:
            where = f" ({exc.path})" if exc.path and exc.path not in exc.reason else ""
            raise r.error("source", exc.reason + where) from exc


def _check_model(r: _Reader, model: Path, sha: str | None) -> None:
    if model.is_dir():
        if not (model / "bundle.json").is_file():
            raise r.error("model", f"{model} is a directory without bundle.json")
        if sha is not None:
            raise r.error("sha256", "pins one file: a bundle is pinned by its manifest, not by sha256")
        return
    if not model.is_file():
        raise r.error("model", f"no such file: {model}")
    if sha is not None:
        digest = hashlib.sha256()
        with model.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != sha:
            raise r.error("sha256", f"{model} has sha256 {digest.hexdigest()}, the config pins {sha}: refused")


def _check_store(r: _Reader, store: Path, updates: Path | None) -> None:
    """A ``"@store"`` model: the store has a committed release, or an update waits in the inbox
    (``serve`` installs it before loading). Reads the store's links only; changes nothing."""
    from ..errors import EdgeRuntimeError
    from ..model_store import current, pending

    try:
        release = current(store, clean=False)
    except EdgeRuntimeError as exc:
        raise r.error("model", f"the model store {store}: {exc.reason}") from None
    if release is None and not (updates is not None and pending(updates)):
        raise r.error(
            "model",
            f"the model store {store} holds no release yet, and no update waits in daemon.updates: "
            "drop a release signed with edge-runtime sign there; serve installs it at start",
        )


def _check_devices(r: _Reader, devices: tuple[str, ...]) -> None:
    from ..devices import parse_request
    from ..errors import DeviceRequestError

    for d in devices:
        try:
            parse_request(d)
        except DeviceRequestError as exc:
            raise r.error("device", exc.reason) from exc


def _preprocess(r: _Reader, base: Path) -> str:
    value = r.get("preprocess", str, "auto")
    if value in ("auto", "none"):
        return str(value)
    sidecar = _path(base, value)
    from ..sidecar import read_sidecar

    try:
        read_sidecar(sidecar)
    except ArgumentError as exc:
        raise r.error("preprocess", exc.reason + f" ({sidecar})") from exc
    return str(sidecar)


def _sinks(r: _Reader, base: Path) -> tuple[Sink, ...]:
    value = r.get("sinks", list, ["stdout"])
    if not value:
        raise r.error("sinks", "must name at least one sink: stdout, mqtt or jsonl:PATH")
    sinks = []
    for item in value:
        if item in ("stdout", "mqtt"):
            sinks.append(Sink(item))
        elif isinstance(item, str) and item.startswith("jsonl:") and len(item) > len("jsonl:"):
            sinks.append(Sink("jsonl", _path(base, item[len("jsonl:") :])))
        else:
            raise r.error("sinks", f"unknown sink {item!r}: expected stdout, mqtt or jsonl:PATH")
    return tuple(sinks)
