"""The daemon's TOML config: every mistake is refused with the key's full path and the reason."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import MODELS, ROOT, Cli

from edge_runtime.daemon import ConfigError, load_config

EXAMPLE = ROOT / "edge_runtime" / "data" / "edge-runtime.example.toml"
MODEL = MODELS / "basicmotions_int8.tflite"
RECORDING = MODELS / "basicmotions_recording.csv"
GOOD = f"""
[pipelines.imu]
source = "file:{RECORDING}?speed=max"
model = "{MODEL}"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge-runtime.toml"
    path.write_text(text)
    return path


def test_the_shipped_example_is_valid_and_means_what_it_says() -> None:
    cfg = load_config(EXAMPLE)
    (imu,) = cfg.pipelines
    assert imu.name == "imu" and imu.model == EXAMPLE.parent / "basicmotions_int8.tflite"
    assert imu.source.startswith(f"file:{EXAMPLE.parent}/basicmotions_recording.csv?")
    assert imu.device == ("litert:cpu", "openvino:CPU") and imu.threads == 1 and imu.window == 100 and imu.hop == 50
    assert imu.sha256 == hashlib.sha256(imu.model.read_bytes()).hexdigest()
    assert [s.kind for s in imu.sinks] == ["stdout", "jsonl"] and cfg.mqtt is None
    assert cfg.metrics.enabled and cfg.metrics.listen == "127.0.0.1:9464"


def test_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    (p,) = cfg.pipelines
    assert p.device == ("auto",) and p.policy == "drop-oldest" and p.queue_slots == 8 and p.preprocess == "auto"
    assert p.on_device_error == "fall-back" and [s.kind for s in p.sinks] == ["stdout"]
    assert cfg.state_dir == Path("/var/lib/edge-runtime") and cfg.log_level == "info"


SHA_OK = hashlib.sha256(MODEL.read_bytes()).hexdigest()

BAD = [
    ("[pipelines.imu\nsource = 1", "not valid TOML"),
    (GOOD + "window = 0\n", "pipelines.imu.window: must be a whole number >= 1, got 0"),
    (GOOD + "window = 50\nhop = 60\n", "pipelines.imu.hop: must be <= window (50), got 60"),
    (GOOD + "chanels = 6\n", "pipelines.imu.chanels: unknown key; known keys here: baud, deadline_ms"),
    (GOOD + 'threads = "two"\n', "pipelines.imu.threads: must be a whole number, got 'two'"),
    (GOOD + "threads = true\n", "pipelines.imu.threads: must be a whole number, got True"),
    (GOOD + 'policy = "newest"\n', "pipelines.imu.policy: must be one of drop-oldest, block, got 'newest'"),
    (GOOD + 'device = "warp-drive"\n', "pipelines.imu.device: cannot parse device request 'warp-drive'"),
    (GOOD + "device = []\n", "pipelines.imu.device: must be a request string or a non-empty list of them"),
    (GOOD + 'sinks = ["mqtt"]\n', "pipelines.imu.sinks: 'mqtt' needs an [mqtt] table"),
    (GOOD + 'sinks = ["kafka"]\n', "pipelines.imu.sinks: unknown sink 'kafka'"),
    (GOOD + "deadline_ms = -1\n", "pipelines.imu.deadline_ms: must be > 0, got -1"),
    (GOOD + 'sha256 = "abc"\n', "pipelines.imu.sha256: must be 64 lowercase hex digits"),
    (GOOD + f'sha256 = "{"0" * 64}"\n', f"pipelines.imu.sha256: {MODEL} has sha256 {SHA_OK}, the config pins"),
    (GOOD + 'preprocess = "missing.json"\n', "pipelines.imu.preprocess: sidecar not found"),
    ('[pipelines.imu]\nmodel = "x.tflite"\n', "pipelines.imu.source: missing"),
    (
        f'[pipelines.imu]\nsource = "synthetic:sine"\nmodel = "{MODELS}/nope.tflite"\n',
        "pipelines.imu.model: no such file",
    ),
    (
        f'[pipelines.imu]\nsource = "synthetic:sine?chanels=6"\nmodel = "{MODEL}"\n',
        "pipelines.imu.source: unknown key 'chanels'",
    ),
    (f'[pipelines.imu]\nsource = "ttyUSB0"\nmodel = "{MODEL}"\n', "pipelines.imu.source: must be a device path"),
    (f'[pipelines."i m u"]\nsource = "synthetic:sine"\nmodel = "{MODEL}"\n', "pipelines.i m u: a pipeline name is"),
    ("[daemon]\n", "pipelines: declare at least one pipeline"),
    (GOOD + '[daemon]\nlog_level = "loud"\n', "daemon.log_level: must be one of debug, info, warning, error"),
    (GOOD + '[metrics]\nlisten = "9464"\n', "metrics.listen: must be HOST:PORT"),
    (GOOD + "[mqtt]\nqos = 3\n", "mqtt.qos: must be a whole number in 0..2, got 3"),
    (GOOD + '[mqtt]\ntopic_prefix = "a/#"\n', "mqtt.topic_prefix: must be a topic without wildcards"),
    (GOOD + "[mqtt]\nport = 0\n", "mqtt.port: must be a whole number in 1..65535, got 0"),
    (GOOD + "[sinks]\n", "sinks: unknown key; known keys here: daemon, metrics, mqtt, pipelines"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m.split(":")[0] + f"-{i}" for i, (_, m) in enumerate(BAD)])
def test_a_mistake_names_the_key_and_the_reason(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert message in info.value.reason, info.value.reason
    assert info.value.path == str(tmp_path / "edge-runtime.toml")


def test_a_bundle_is_not_pinned_by_sha256(tmp_path: Path) -> None:
    text = f'[pipelines.digits]\nsource = "synthetic:sine"\nmodel = "{MODELS / "digits_early_exit"}"\n'
    assert load_config(write(tmp_path, text)).pipelines[0].model.is_dir()
    with pytest.raises(ConfigError, match=r"pipelines\.digits\.sha256: pins one file"):
        load_config(write(tmp_path, text + f'sha256 = "{SHA_OK}"\n'))


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    shutil.copy(MODEL, tmp_path / "m.tflite")
    shutil.copy(RECORDING, tmp_path / "rec.csv")
    (p,) = load_config(write(tmp_path, '[pipelines.a]\nsource = "file:rec.csv"\nmodel = "m.tflite"\n')).pipelines
    assert p.model == tmp_path / "m.tflite" and p.source == f"file:{tmp_path}/rec.csv"


def test_cli_check_says_ok_or_one_line(cli: Cli, tmp_path: Path) -> None:
    out = cli("serve", "--check", EXAMPLE, "--json")
    assert out.returncode == 0, out.stderr
    assert [p["name"] for p in json.loads(out.stdout)["pipelines"]] == ["imu"]
    out = cli("serve", "--check", write(tmp_path, GOOD + "window = 0\n"))
    assert out.returncode == 2 and out.stdout == "" and out.stderr.count("\n") == 1
    assert out.stderr.startswith("edge-runtime: error: pipelines.imu.window: must be a whole number >= 1, got 0")
    out = cli("serve", "--check", tmp_path / "missing.toml")
    assert out.returncode == 2 and "config file not found" in out.stderr


def test_every_key_is_documented_in_the_shipped_example() -> None:
    """The example is the reference: a key the config reads but the example does not show is a defect."""
    from edge_runtime.daemon import config as c

    text = EXAMPLE.read_text()
    shown = {m.group(1) for m in re.finditer(r"^#?\s*([a-z_0-9]+)\s*=", text, re.MULTILINE)}
    for table, keys in (("daemon", c._DAEMON), ("metrics", c._METRICS), ("mqtt", c._MQTT), ("pipeline", c._PIPELINE)):
        missing = sorted(set(keys) - shown)
        assert not missing, f"[{table}] keys not in {EXAMPLE.name}: {missing}"
