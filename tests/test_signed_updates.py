"""Signed models end to end: ``load(..., trusted_keys=)`` and the daemon's signed reloads and
updates, with real Ed25519 keys, real files and the real ``edge-runtime serve`` (its log read as
it writes it, its /healthz polled, SIGHUP, SIGKILL at a step of an update, a file size limit)."""

from __future__ import annotations

import functools
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MODELS, ROOT, Cli, Running
from test_daemon_reload import wait_for
from test_daemon_service import Systemd, free_port, get, lines

import edge_runtime as er
from edge_runtime.daemon.config import ConfigError, load_config
from edge_runtime.errors import ArgumentError, ModelFileError, SignatureError
from edge_runtime.manifest import create_keypair, sign, verify
from edge_runtime.model import check_signed_bytes, verify_signed
from edge_runtime.model_file import read_model_file
from edge_runtime.model_store import REJECTED, apply_update, current, installed_version

MODEL = MODELS / "basicmotions_int8.tflite"
BUNDLE = MODELS / "digits_early_exit"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A release key pair and another (untrusted) one: {"key", "pub", "other_key", "other_pub"}."""
    d = tmp_path_factory.mktemp("keys")
    key, pub = create_keypair(d, "release")
    other_key, other_pub = create_keypair(d, "other")
    return {"key": key, "pub": pub, "other_key": other_key, "other_pub": other_pub}


def release(folder: Path, version: str, key: Path | None, *, name: str = "", model: Path = MODEL) -> Path:
    """A copy of ``model`` and its sidecar in ``folder`` as ``NAME.tflite`` (+ ``NAME.json``), signed
    by ``key`` at ``version`` (None: unsigned); returns the model file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = name or f"motion-{version}"
    path = folder / f"{stem}.tflite"
    shutil.copy(model, path)
    shutil.copy(model.with_suffix(".json"), path.with_suffix(".json"))
    if key is not None:
        sign(path, key, version)
    return path


# -- load() ------------------------------------------------------------------------------------


def test_load_accepts_a_signed_model_and_refuses_unsigned_wrong_key_tampered_or_mixed(
    tmp_path: Path, keys: dict[str, Path]
) -> None:
    good = release(tmp_path / "good", "1.0.0", keys["key"])
    with er.load(good, "litert:cpu", trusted_keys=[keys["pub"]]) as r:
        assert isinstance(r, er.Model) and r.release is not None and r.release.model_version == "1.0.0" and r.labels
    with er.load_model(good, "litert:cpu", trusted_keys=keys["pub"]) as m:  # one key alone is a list of one
        assert m.release is not None
    with er.load_model(good, "litert:cpu") as m:
        assert m.release is None, "without keys nothing is verified"

    def refused(path: Path, match: str, key: Path = keys["pub"]) -> SignatureError:
        with pytest.raises(SignatureError, match=match) as info:
            er.load(path, ["litert:cpu", "openvino:CPU"], trusted_keys=[key])
        assert isinstance(info.value, ModelFileError) and not info.value.attempts, "no device was tried"
        return info.value

    refused(release(tmp_path / "unsigned", "1.0.0", None), r"^unsigned: no signed manifest")
    refused(good, r"signed by key [0-9a-f]{16}, which is not a trusted key", key=keys["other_pub"])
    tampered = release(tmp_path / "tampered", "1.0.0", keys["key"])
    data = bytearray(tampered.read_bytes())
    data[-100] ^= 0xFF
    tampered.write_bytes(bytes(data))
    err = refused(tampered, r"sha256 differs from the signed manifest")
    assert err.path == str(tampered)
    # mixed: release 2's sidecar (other labels) beside release 1's model
    mixed = release(tmp_path / "mixed", "1.0.0", keys["key"], name="mixed")
    other = release(tmp_path / "other", "2.0.0", None, name="mixed")
    side = json.loads(other.with_suffix(".json").read_text())
    side["labels"] = [x.upper() for x in side["labels"]]
    other.with_suffix(".json").write_text(json.dumps(side))
    sign(other, keys["key"], "2.0.0")
    shutil.copy(other.with_suffix(".json"), mixed.with_suffix(".json"))
    assert refused(mixed, r"(sha256|size) differs from the signed manifest").path == str(mixed.with_suffix(".json"))
    with pytest.raises(ArgumentError, match="no trusted public key given"):
        er.load(good, "litert:cpu", trusted_keys=[])


def test_load_bundle_signed_accepted_and_unsigned_extra_or_mixed_refused(tmp_path: Path, keys: dict[str, Path]) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE, bundle)
    with pytest.raises(SignatureError, match="unsigned"):
        er.load(bundle, "litert:cpu", trusted_keys=[keys["pub"]])
    sign(bundle, keys["key"], "3.1.0")
    with er.load(bundle, "litert:cpu", trusted_keys=[keys["pub"]]) as r:
        assert isinstance(r, er.EarlyExitModel) and r.release is not None
        assert r.release.kind == "bundle" and r.release.model_version == "3.1.0"
    with er.load_bundle(bundle, "litert:cpu", trusted_keys=[keys["pub"]]) as b:
        assert b.release is not None and all(s.release is b.release for s in b.stages)
    with pytest.raises(SignatureError, match="not a trusted key"):
        er.load(bundle, trusted_keys=[keys["other_pub"]])
    # a stage file taken from another release of the bundle (its weights changed)
    other = tmp_path / "other"
    shutil.copytree(BUNDLE, other)
    data = bytearray((other / "stage1.tflite").read_bytes())
    data[-64] ^= 0x01
    (other / "stage1.tflite").write_bytes(bytes(data))
    sign(other, keys["key"], "3.2.0")
    shutil.copy(other / "stage1.tflite", bundle / "stage1.tflite")
    with pytest.raises(SignatureError, match="sha256 differs") as info:
        er.load(bundle, trusted_keys=[keys["pub"]])
    assert info.value.path == str(bundle / "stage1.tflite")
    shutil.copy(BUNDLE / "stage1.tflite", bundle / "stage1.tflite")
    (bundle / "notes.txt").write_text("added after signing")
    with pytest.raises(SignatureError, match=r"notes\.txt is not listed in the signed manifest"):
        er.load(bundle, trusted_keys=[keys["pub"]])


def test_a_file_replaced_between_verify_and_read_is_refused(tmp_path: Path, keys: dict[str, Path]) -> None:
    """The check-then-read gap: the bytes a backend gets are compared with the manifest again."""
    path = release(tmp_path, "1.0.0", keys["key"])
    verified = verify_signed(path, [keys["pub"]])
    check_signed_bytes(verified, read_model_file(path))  # the same bytes: fine
    original = path.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0xFF  # a weight: still a sound TFLite file
    path.write_bytes(bytes(data))  # replaced after the verification, before the read
    with pytest.raises(SignatureError, match="changed between its verification and its read"):
        check_signed_bytes(verified, read_model_file(path))
    with pytest.raises(SignatureError, match="changed between its verification and its read"):
        er.load_model(path, "litert:cpu", release=verified)
    data = bytearray(original)
    data[-50] ^= 0xFF  # the operator table: the structure check refuses it, and the reason is the signature
    path.write_bytes(bytes(data))
    with pytest.raises(SignatureError, match="changed after its verification: the file on disk differs"):
        er.load_model(path, "litert:cpu", release=verified)


def test_without_cryptography_signed_loads_say_what_to_install(
    tmp_path: Path, keys: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "cryptography", None)  # what `import cryptography` sees when it is not installed
    with pytest.raises(ArgumentError, match=r"signed models need the 'cryptography' package: pip install cryptography"):
        er.load(MODEL, "litert:cpu", trusted_keys=[keys["pub"]])


def test_import_edge_runtime_does_not_import_cryptography() -> None:
    code = (
        "import sys, edge_runtime; edge_runtime.load; "
        "print('cryptography' in sys.modules, 'edge_runtime.manifest' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "False"]


# -- the daemon's config -----------------------------------------------------------------------


def write_config(tmp_path: Path, daemon: str, model: str, extra: str = "") -> Path:
    cfg = tmp_path / "edge-runtime.toml"
    cfg.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n{daemon}\n[metrics]\nenabled = false\n'
        f'[pipelines.imu]\nsource = "synthetic:sine?channels=6&rate=6000"\nmodel = "{model}"\n'
        f'device = "litert:cpu"\n{extra}'
    )
    return cfg


def test_config_checks_trusted_keys_and_the_store(tmp_path: Path, keys: dict[str, Path]) -> None:
    pub = keys["pub"]
    cfg = load_config(write_config(tmp_path, f'trusted_keys = ["{pub}"]', str(MODEL)))
    assert cfg.trusted_keys == (pub,) and cfg.pipelines[0].trusted_keys == (pub,)
    (tmp_path / "keys").mkdir()
    shutil.copy(pub, tmp_path / "keys" / "rel.pub")
    cfg = load_config(write_config(tmp_path, 'trusted_keys = ["keys/rel.pub"]', str(MODEL)))
    assert cfg.trusted_keys == (tmp_path / "keys" / "rel.pub",), "relative to the config file"

    def bad(daemon: str, match: str, model: str = str(MODEL), extra: str = "") -> None:
        with pytest.raises(ConfigError, match=match):
            load_config(write_config(tmp_path, daemon, model, extra))

    bad('trusted_keys = ["missing.pub"]', r"daemon\.trusted_keys: .*missing\.pub: no such public key file")
    bad(f'trusted_keys = ["{keys["key"]}"]', r"daemon\.trusted_keys: .*release\.key: this is a private key")
    (tmp_path / "junk.pub").write_text("not a key\n")
    bad('trusted_keys = ["junk.pub"]', r"daemon\.trusted_keys: .*junk\.pub: not a PEM public key")
    bad("trusted_keys = []", r"daemon\.trusted_keys: must name at least one")
    bad('model_store = "store"', r"daemon\.model_store: the store installs only signed releases")
    bad(f'trusted_keys = ["{pub}"]\nupdates = "inbox"', r"daemon\.updates: needs daemon\.model_store")
    bad(f'trusted_keys = ["{pub}"]', r'pipelines\.imu\.model: "@store" runs the model store', model="@store")
    store = f'trusted_keys = ["{pub}"]\nmodel_store = "store"'
    bad(store, r"the model store .*store holds no release yet", model="@store")
    bad(store, r"pipelines\.imu\.sha256: a store release is pinned", model="@store", extra=f'sha256 = "{"0" * 64}"\n')
    bad(store + '\nupdates = "inbox"', r"daemon\.updates: no pipeline runs the store's release")
    (tmp_path / "inbox").mkdir()
    release(tmp_path / "inbox", "1.0.0", keys["key"])
    cfg = load_config(write_config(tmp_path, store + '\nupdates = "inbox"', "@store"))
    assert cfg.pipelines[0].from_store and cfg.model_store == tmp_path / "store" and cfg.updates == tmp_path / "inbox"
    assert not (tmp_path / "store").exists(), "checking a config changes nothing"


def test_serve_check_refuses_an_unsigned_model(cli: Cli, tmp_path: Path, keys: dict[str, Path]) -> None:
    unsigned = release(tmp_path / "m", "1.0.0", None)
    out = cli("serve", "--check", write_config(tmp_path, f'trusted_keys = ["{keys["pub"]}"]', str(unsigned)))
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert "pipelines.imu: unsigned: no signed manifest" in out.stderr
    sign(unsigned, keys["key"], "1.0.0")
    out = cli("serve", "--check", write_config(tmp_path, f'trusted_keys = ["{keys["pub"]}"]', str(unsigned)), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["pipelines"][0]["model_version"] == "1.0.0"
    # the store is empty, an update waits: serve will install it first, so the config is good
    release(tmp_path / "inbox", "1.0.0", keys["key"])
    daemon = f'trusted_keys = ["{keys["pub"]}"]\nmodel_store = "store"\nupdates = "inbox"'
    out = cli("serve", "--check", write_config(tmp_path, daemon, "@store"))
    assert out.returncode == 0 and "not loaded: the store holds no release yet" in out.stdout, out.stderr
    apply_update(tmp_path / "inbox" / "motion-1.0.0.tflite", tmp_path / "store", [keys["pub"]], lambda p: None)
    out = cli("serve", "--check", write_config(tmp_path, daemon, "@store"))
    assert out.returncode == 0 and "signed release 1.0.0 (the store's current release) on litert:cpu" in out.stdout


# -- the daemon --------------------------------------------------------------------------------


class Daemon:
    """``edge-runtime serve --config CFG`` under a fake systemd (``run/N/notify.sock``), its stderr
    (the log) read line by line as it comes; /healthz on a free port. ``limit_bytes``: the process
    runs under RLIMIT_FSIZE (files it writes cannot grow beyond it) with SIGXFSZ ignored, so a
    write past it fails with EFBIG, as on a full disk."""

    count = 0

    def __init__(self, cfg: Path, port: int, limit_bytes: int | None = None) -> None:
        Daemon.count += 1
        run = cfg.parent / "run" / str(Daemon.count)
        run.mkdir(parents=True)
        self.port = port
        self.systemd = Systemd(run)

        def limit() -> None:
            if limit_bytes is not None:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

        env = {**os.environ, "PYTHONWARNINGS": "ignore", "NOTIFY_SOCKET": self.systemd.path}
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_runtime", "serve", "--config", str(cfg)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
            preexec_fn=limit,
        )
        self.running = Running(proc)
        self.proc = proc

    def ready(self) -> Daemon:
        try:
            self.systemd.wait_for("READY")
        except AssertionError:
            raise AssertionError("no READY; the log:\n" + self.log()[-3000:]) from None
        return self

    def log(self) -> str:
        return "".join(self.running.lines["stderr"])

    def wait_log(self, pattern: str, timeout: float = 60) -> str:
        return self.running.wait_for("stderr", pattern, timeout).group(0)

    def health(self) -> dict[str, Any]:
        return dict(json.loads(get(self.port, "/healthz")[1]))

    def hup_and_wait(self, key: str, result: str, count: int) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: self.health()[key][result] == count, what=f"{key} {result} #{count}:\n{self.log()[-3000:]}")
        return self.health()

    def close(self) -> None:
        self.running.__exit__()
        self.systemd.sock.close()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        d.close()


def daemon_config(
    tmp_path: Path,
    port: int,
    pub: Path,
    model: str,
    *,
    store: bool = False,
    sinks: str = "",
    pipelines_in: str = "auto",
) -> Path:
    cfg = tmp_path / "edge-runtime.toml"
    default_sink = json.dumps(f"jsonl:{tmp_path / 'imu.jsonl'}")
    where = f'model_store = "{tmp_path / "store"}"\nupdates = "{tmp_path / "inbox"}"\n' if store else ""
    cfg.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\ntrusted_keys = ["{pub}"]\n{where}'
        f'pipelines_in = "{pipelines_in}"\n'
        f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
        f'[pipelines.imu]\nsource = "synthetic:sine?channels=6&rate=6000"\nmodel = "{model}"\n'
        f'device = "litert:cpu"\npolicy = "block"\nsinks = [{sinks or default_sink}]\n'
    )
    return cfg


def test_daemon_refuses_a_reload_to_an_unsigned_tampered_or_older_model_and_keeps_serving(
    tmp_path: Path, keys: dict[str, Path], daemons: list[Daemon]
) -> None:
    port = free_port()
    v2 = release(tmp_path / "r2", "2.0.0", keys["key"])
    cfg = daemon_config(tmp_path, port, keys["pub"], str(v2))
    out = tmp_path / "imu.jsonl"
    d = Daemon(cfg, port)
    daemons.append(d)
    d.ready()
    h = d.health()
    assert h["state"] == "ready" and h["pipelines"]["imu"]["model_version"] == "2.0.0", h

    def reload_to(model: Path, result: str, count: int) -> dict[str, Any]:
        cfg.write_text(cfg.read_text().replace(f'model = "{current_model[0]}"', f'model = "{model}"'))
        current_model[0] = model
        return d.hup_and_wait("reloads", result, count)

    current_model = [v2]
    h = reload_to(release(tmp_path / "u", "3.0.0", None), "failed", 1)
    assert h["state"] == "degraded" and "pipelines.imu: unsigned: no signed manifest" in h["why"][-1], h
    h = reload_to(release(tmp_path / "r1", "1.0.0", keys["key"]), "failed", 2)
    assert (
        "pipelines.imu: downgrade refused: model_version 1.0.0 is below the 2.0.0 this pipeline serves"
        in (h["why"][-1])
    ), h
    tampered = release(tmp_path / "t", "3.0.0", keys["key"])
    with open(tampered, "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\xff\xfe")
    h = reload_to(tampered, "failed", 3)
    assert "sha256 differs from the signed manifest" in h["why"][-1], h
    assert h["pipelines"]["imu"]["model_version"] == "2.0.0" and h["pipelines"]["imu"]["model"] == str(v2)
    served = len(lines(out))
    wait_for(lambda: len(lines(out)) > served + 5, what="results after three refused reloads")
    h = reload_to(release(tmp_path / "r2b", "2.0.0", keys["key"]), "ok", 1)  # equal version: allowed
    assert h["state"] == "ready" and h["pipelines"]["imu"]["model_version"] == "2.0.0", h
    h = reload_to(release(tmp_path / "r3", "3.0.0", keys["key"]), "ok", 2)
    assert h["pipelines"]["imu"]["model_version"] == "3.0.0", h
    d.proc.send_signal(signal.SIGTERM)
    done = d.running.finish()
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    got = lines(out, final=True)
    assert [r["window_index"] for r in got] == list(range(len(got))), "no result lost or repeated"


@pytest.mark.parametrize("pipelines_in", ["threads", "processes"])
def test_daemon_installs_updates_from_the_inbox_and_refuses_bad_ones(
    tmp_path: Path, keys: dict[str, Path], daemons: list[Daemon], pipelines_in: str
) -> None:
    port = free_port()
    inbox, store = tmp_path / "inbox", tmp_path / "store"
    release(inbox, "1.0.0", keys["key"])  # waiting before the first start: installed at start
    cfg = daemon_config(tmp_path, port, keys["pub"], "@store", store=True, pipelines_in=pipelines_in)
    d = Daemon(cfg, port)
    daemons.append(d)
    d.ready()
    h = d.health()
    assert h["pipelines"]["imu"]["model_version"] == "1.0.0" and h["updates"] == {"ok": 1, "failed": 0}, h
    assert installed_version(store) == "1.0.0" and os.listdir(inbox) == []

    t0 = time.monotonic()
    release(inbox, "2.0.0", keys["key"])
    h = d.hup_and_wait("updates", "ok", 2)
    took = time.monotonic() - t0
    assert h["state"] == "ready" and h["pipelines"]["imu"]["model_version"] == "2.0.0", h
    assert h["pipelines"]["imu"]["model"].endswith("/motion-2.0.0.tflite"), h
    assert installed_version(store) == "2.0.0" and os.listdir(inbox) == []
    for step in ("staged", "verified", "ran once in a child process on litert:cpu", "probed", "committed"):
        d.wait_log(rf"update motion-2\.0\.0\.tflite: {step}", timeout=1)
    d.wait_log(r"update motion-2\.0\.0\.tflite: done in \d+ ms: imu serves 2\.0\.0", timeout=1)
    print(f"update on SIGHUP, until /healthz shows it: {took:.2f} s")

    # refused: a downgrade, an unsigned one, one signed by an untrusted key: each to rejected/
    release(inbox, "1.5.0", keys["key"])
    h = d.hup_and_wait("updates", "failed", 1)
    assert (
        h["state"] == "degraded" and "update failed (the current release serves): motion-1.5.0.tflite" in (h["why"][-1])
    ), h
    reason = (inbox / REJECTED / "motion-1.5.0.tflite.reason").read_text()
    assert "downgrade refused: model_version 1.5.0 is below the installed 2.0.0" in reason
    assert sorted(os.listdir(inbox / REJECTED)) == [
        "motion-1.5.0.json",
        "motion-1.5.0.tflite",
        "motion-1.5.0.tflite.manifest.json",
        "motion-1.5.0.tflite.manifest.json.sig",
        "motion-1.5.0.tflite.reason",
    ]
    release(inbox, "3.0.0", None)
    release(inbox, "3.0.1", keys["other_key"])
    h = d.hup_and_wait("updates", "failed", 3)
    assert "unsigned" in (inbox / REJECTED / "motion-3.0.0.tflite.reason").read_text()
    assert "not a trusted key" in (inbox / REJECTED / "motion-3.0.1.tflite.reason").read_text()
    assert os.listdir(inbox) == [REJECTED] and installed_version(store) == "2.0.0"
    assert h["pipelines"]["imu"]["model_version"] == "2.0.0"

    # committed, then its input cannot take the running stream's windows (the 8x8 digits model
    # under a 6-channel IMU stream, no window in the config): rolled back, the pipeline serves on
    release(inbox, "3.5.0", keys["key"], model=MODELS / "digits_cnn_int8.tflite")
    h = d.hup_and_wait("updates", "failed", 4)
    reason = (inbox / REJECTED / "motion-3.5.0.tflite.reason").read_text()
    assert "does not take this stream's windows" in reason, reason
    assert installed_version(store) == "2.0.0" and h["pipelines"]["imu"]["model_version"] == "2.0.0", h
    assert h["pipelines"]["imu"]["state"] == "running", h

    # committed, then it does not load in the daemon (10 classes, the pipeline's 4 labels): rolled back
    labels = json.loads(MODEL.with_suffix(".json").read_text())["labels"]
    cfg.write_text(cfg.read_text() + f"labels = {json.dumps(labels)}\n")
    d.hup_and_wait("reloads", "ok", h["reloads"]["ok"] + 1)  # each SIGHUP reloads, then applies updates
    release(inbox, "4.0.0", keys["key"], model=MODELS / "digits_cnn_int8.tflite")
    h = d.hup_and_wait("updates", "failed", 5)
    reason = (inbox / REJECTED / "motion-4.0.0.tflite.reason").read_text()
    assert "installed, but it did not load" in reason and "which has 10 classes" in reason, reason
    assert installed_version(store) == "2.0.0", "rolled back"
    assert h["pipelines"]["imu"]["model_version"] == "2.0.0"
    d.wait_log(r"rolled back from 4\.0\.0-[0-9a-f]{12} to 2\.0\.0-", timeout=1)

    release(inbox, "5.0.0", keys["key"])
    h = d.hup_and_wait("updates", "ok", 3)
    assert h["state"] == "ready" and h["pipelines"]["imu"]["model_version"] == "5.0.0", h
    text = get(port, "/metrics")[1]
    assert 'edge_runtime_updates_total{result="ok"} 3.0' in text
    assert 'edge_runtime_updates_total{result="failed"} 5.0' in text
    d.proc.send_signal(signal.SIGTERM)
    done = d.running.finish()
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    got = lines(tmp_path / "imu.jsonl", final=True)
    assert [r["window_index"] for r in got] == list(range(len(got))), "no result lost or repeated by the updates"


def serves(d: Daemon, version: str) -> bool:
    return bool(d.health()["pipelines"]["imu"]["model_version"] == version)


#: Steps of an update at which the daemon is killed (the kill lands at or just after the log line).
KILL_AT = ["copied:motion", "probed", "release-renamed", "current-switched", "committed"]


def test_sigkill_during_an_update_leaves_the_last_committed_release(
    tmp_path: Path, keys: dict[str, Path], daemons: list[Daemon]
) -> None:
    """A power cut at a step of an update (SIGKILL once the step's log line is written): the store
    holds a complete, verifiable release (the old or the new one); the next start comes up READY
    serving it, and the next update works. The update left in the inbox is installed at the next
    start (the last round)."""
    inbox, store = tmp_path / "inbox", tmp_path / "store"
    apply_update(release(tmp_path / "first", "1.0.0", keys["key"]), store, [keys["pub"]], lambda p: None)
    port = free_port()
    cfg = daemon_config(tmp_path, port, keys["pub"], "@store", store=True)
    d = Daemon(cfg, port)
    daemons.append(d)
    d.ready()
    served = "1.0.0"
    for i, step in enumerate([*KILL_AT, None]):
        version = f"{i + 2}.0.0"
        release(inbox, version, keys["key"])
        d.proc.send_signal(signal.SIGHUP)
        if step is None:  # the last round: the update completes
            wait_for(functools.partial(serves, d, version), what=f"{version} serving")
            break
        d.wait_log(rf"update motion-{re.escape(version)}\.tflite: {step}")
        d.proc.kill()
        d.running.finish()
        # the store, as the next start finds it: a complete release, verified, old or new
        now = installed_version(store)
        assert now in (served, version), (step, now)
        if step in ("current-switched", "committed"):
            assert now == version, f"killed after {step}: the new release is current"
        if step == "copied:motion":  # the probe, still to come, takes far longer than the kill
            assert now == served, f"killed at {step}: the old release is current"
        path = current(store)
        assert path is not None and verify(path, [keys["pub"]]).model_version == now
        assert not [p for p in os.listdir(store) if p.startswith(".staging-")], "current() cleaned up"
        if step != "committed":  # the update is lost (as if the copy in the inbox was): no retry at start
            shutil.rmtree(inbox)
        d = Daemon(cfg, port)
        daemons.append(d)
        d.ready()
        expected = version if step == "committed" else now  # left in the inbox: installed again (a no-op)
        h = d.health()
        assert h["state"] == "ready" and h["pipelines"]["imu"]["model_version"] == expected, (step, h)
        served = expected
    assert installed_version(store) == f"{len(KILL_AT) + 2}.0.0"
    assert len(os.listdir(store / "releases")) == 2, "the current and the previous release are kept"


def test_disk_full_while_staging_fails_the_update_cleanly(
    tmp_path: Path, keys: dict[str, Path], daemons: list[Daemon]
) -> None:
    """The daemon may write no file beyond 64 KiB (RLIMIT_FSIZE; the model is 140 KiB): staging the
    update fails with EFBIG, the daemon serves on with the release it had, the store is unchanged
    and holds no staging copy; the refused update is in rejected/ with the reason."""
    inbox, store = tmp_path / "inbox", tmp_path / "store"
    apply_update(release(tmp_path / "first", "1.0.0", keys["key"]), store, [keys["pub"]], lambda p: None)
    limit = 64 << 10
    assert MODEL.stat().st_size > limit
    port = free_port()
    cfg = daemon_config(tmp_path, port, keys["pub"], "@store", store=True, sinks='"stdout"')
    d = Daemon(cfg, port, limit_bytes=limit)
    daemons.append(d)
    d.ready()
    release(inbox, "2.0.0", keys["key"])
    h = d.hup_and_wait("updates", "failed", 1)
    assert d.proc.poll() is None, "the daemon is still running"
    assert "File too large (EFBIG)" in h["why"][-1] and "motion-2.0.0.tflite" in h["why"][-1], h
    assert h["pipelines"]["imu"]["model_version"] == "1.0.0" and h["pipelines"]["imu"]["state"] == "running", h
    assert installed_version(store) == "1.0.0"
    assert sorted(os.listdir(store)) == [".lock", "current", "releases"], "no staging directory left"
    assert "EFBIG" in (inbox / REJECTED / "motion-2.0.0.tflite.reason").read_text()
    results = d.health()["pipelines"]["imu"]["results"]
    wait_for(lambda: d.health()["pipelines"]["imu"]["results"] > results + 5, what="results after the failure")


def test_an_update_installed_at_start_that_does_not_load_is_rolled_back(
    tmp_path: Path, keys: dict[str, Path], daemons: list[Daemon]
) -> None:
    """Dropped while the daemon was down, installed at its start, then it does not fit the pipeline
    (10 classes, 4 labels): the store goes back to the release before it, which the daemon serves."""
    inbox, store = tmp_path / "inbox", tmp_path / "store"
    apply_update(release(tmp_path / "first", "1.0.0", keys["key"]), store, [keys["pub"]], lambda p: None)
    release(inbox, "2.0.0", keys["key"], model=MODELS / "digits_cnn_int8.tflite")
    port = free_port()
    cfg = daemon_config(tmp_path, port, keys["pub"], "@store", store=True)
    labels = json.loads(MODEL.with_suffix(".json").read_text())["labels"]
    cfg.write_text(cfg.read_text() + f"labels = {json.dumps(labels)}\n")
    d = Daemon(cfg, port)
    daemons.append(d)
    d.ready()
    h = d.health()
    assert h["pipelines"]["imu"]["model_version"] == "1.0.0" and h["updates"] == {"ok": 0, "failed": 1}, h
    assert installed_version(store) == "1.0.0"
    assert "which has 10 classes" in (inbox / REJECTED / "motion-2.0.0.tflite.reason").read_text()
