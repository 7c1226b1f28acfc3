"""``edge-runtime serve --config``: the real command, a real notify socket, real files and signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import MODELS, ROOT, Cli

MODEL = MODELS / "basicmotions_int8.tflite"


def config(tmp_path: Path, pipelines: str, metrics: str = "enabled = false") -> Path:
    path = tmp_path / "edge-runtime.toml"
    path.write_text(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n[metrics]\n{metrics}\n{pipelines}')
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


class Systemd:
    """The notify socket systemd would give the service, and what arrived on it."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = str(tmp_path / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[dict[str, str]] = []

    def wait_for(self, key: str, timeout: float = 60) -> dict[str, str]:
        """The next message holding ``key`` (every message on the way is kept in ``messages``)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {key} within {timeout} s; got {self.messages}")
            self.sock.settimeout(left)
            data = self.sock.recv(4096).decode()
            msg = dict(line.split("=", 1) for line in data.split("\n"))
            self.messages.append(msg)
            if key in msg:
                return msg


@contextmanager
def serving(cfg: Path, systemd: Systemd, watchdog_usec: int = 400_000) -> Iterator[subprocess.Popen[str]]:
    """``edge-runtime serve --config cfg`` under the fake systemd; killed (if still running) and the
    notify socket closed when the block ends."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": str(watchdog_usec)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_runtime", "serve", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        systemd.sock.close()


def lines(path: Path, final: bool = False) -> list[dict[str, object]]:
    """The records of a JSON lines file. While the daemon writes it, the last line can be half
    written: only complete lines (up to the last newline) are read. ``final``: the writer has
    stopped, so a line without its newline is a torn record and fails the test."""
    text = path.read_text() if path.exists() else ""
    complete = text[: text.rfind("\n") + 1]
    if final:
        assert complete == text, f"{path} ends in a torn line: {text[len(complete) :][:200]!r}"
    return [json.loads(x) for x in complete.splitlines()]


def wait_until_lines(path: Path, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(lines(path)) < n:
        assert time.monotonic() < deadline, f"{path} has {len(lines(path))} lines, waited for {n}"
        time.sleep(0.02)


def test_ready_watchdog_logrotate_and_a_clean_stop_with_nothing_lost(tmp_path: Path) -> None:
    out = tmp_path / "out" / "imu.jsonl"
    cfg = config(
        tmp_path,
        f"""
[pipelines.imu]
source = "synthetic:sine?channels=6&rate=4000"
model = "{MODEL}"
policy = "block"
sinks = ["jsonl:{out}"]

[pipelines.quiet]
# a sensor that is legitimately silent: one frame every 100 s
source = "synthetic:sine?channels=6&rate=0.1"
model = "{MODEL}"
sinks = ["jsonl:{tmp_path / "out" / "quiet.jsonl"}"]
""",
    )
    systemd = Systemd(tmp_path)
    with serving(cfg, systemd) as proc:
        ready = systemd.wait_for("READY")
        assert "imu: 0 results" in ready["STATUS"] and "quiet" in ready["STATUS"]
        for _ in range(3):  # fed while the quiet pipeline has produced nothing: its loop still turns
            systemd.wait_for("WATCHDOG")
        wait_until_lines(out, 5)
        out.rename(tmp_path / "out" / "imu.jsonl.1")  # logrotate moves the file, then sends SIGHUP
        proc.send_signal(signal.SIGHUP)
        wait_until_lines(out, 5)
        proc.send_signal(signal.SIGTERM)
        assert "STOPPING" in systemd.wait_for("STOPPING")
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err
    got = lines(tmp_path / "out" / "imu.jsonl.1", final=True) + lines(out, final=True)
    assert [r["window_index"] for r in got] == list(range(len(got))), "block policy: no window lost or repeated"
    assert {r["pipeline"] for r in got} == {"imu"} and lines(tmp_path / "out" / "quiet.jsonl") == []


def test_the_service_ends_when_every_source_has_ended(tmp_path: Path) -> None:
    """A finite source (a recording, a count) ends its pipeline; with none left, the service exits 0."""
    cfg = config(
        tmp_path,
        f"""
[pipelines.once]
source = "synthetic:sine?channels=6&count=30&speed=max"
model = "{MODEL}"
policy = "block"
sinks = ["jsonl:{tmp_path / "once.jsonl"}"]
""",
    )
    systemd = Systemd(tmp_path)
    with serving(cfg, systemd) as proc:
        systemd.wait_for("READY")
        _, err = proc.communicate(timeout=60)  # the only source ends: the service ends by itself
    assert proc.returncode == 0, err[-2000:]
    assert len(lines(tmp_path / "once.jsonl")) == 3  # 30 frames x 10 samples, windows of 100


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('sinks = ["mqtt"]\n', "pipelines.imu.sinks: 'mqtt' needs an [mqtt] table"),
        ("window = 0\n", "pipelines.imu.window: must be a whole number >= 1, got 0"),
        # found by loading the model, at --check as at start: not at the first frame
        ("window = 99\n", "pipelines.imu.window: a window of 99 samples cannot fill the input of basicmotions_int8"),
        ('labels = ["a", "b"]\n', "pipelines.imu.labels: 2 labels for basicmotions_int8.tflite, which has 4 classes"),
        ("thresholds = [0.5]\n", "pipelines.imu.thresholds: "),
    ],
)
@pytest.mark.parametrize("verb", ["--config", "--check"])
def test_a_config_it_cannot_serve_is_one_line(tmp_path: Path, cli: Cli, extra: str, message: str, verb: str) -> None:
    cfg = config(tmp_path, f'[pipelines.imu]\nsource = "synthetic:sine?channels=6"\nmodel = "{MODEL}"\n{extra}')
    out = cli("serve", verb, cfg)
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].startswith("edge-runtime: error: " + message)


def test_serve_needs_config_or_check(cli: Cli) -> None:
    out = cli("serve")
    assert out.returncode == 2 and "give one of --config FILE (run) or --check FILE" in out.stderr


def test_metrics_and_health_over_http(tmp_path: Path) -> None:
    port = free_port()
    cfg = config(
        tmp_path,
        f"""
[pipelines.imu]
source = "synthetic:sine?channels=6&rate=4000"
model = "{MODEL}"
sinks = ["jsonl:{tmp_path / "imu.jsonl"}"]
""",
        metrics=f'listen = "127.0.0.1:{port}"',
    )
    systemd = Systemd(tmp_path)
    with serving(cfg, systemd) as proc:
        systemd.wait_for("READY")
        wait_until_lines(tmp_path / "imu.jsonl", 3)
        code, body = get(port, "/healthz")
        health = json.loads(body)
        assert code == 200 and health["state"] == "ready" and health["pipelines"]["imu"]["device"] == "litert:cpu"
        code, text = get(port, "/metrics")
        assert code == 200
        assert 'edge_runtime_inference_seconds_bucket{exit_index="0",le="0.001",pipeline="imu"}' in text
        assert 'edge_runtime_results_total{exit_index="0",pipeline="imu"}' in text
        assert 'edge_runtime_device_info{device="litert:cpu",pipeline="imu"} 1.0' in text
        assert "process_resident_memory_bytes" in text
        assert "edge_runtime_mqtt" not in text, "no MQTT figures without [mqtt]"
        frames = [ln for ln in text.splitlines() if ln.startswith('edge_runtime_frames{pipeline="imu"}')]
        assert frames and float(frames[0].split()[-1]) > 0
        assert get(port, "/nope")[0] == 404
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]


def test_a_metrics_port_already_taken_is_one_line(tmp_path: Path, cli: Cli) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        cfg = config(
            tmp_path,
            f'[pipelines.imu]\nsource = "synthetic:sine?channels=6"\nmodel = "{MODEL}"\n',
            metrics=f'listen = "127.0.0.1:{port}"',
        )
        out = cli("serve", "--config", cfg)
    assert out.returncode == 1, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"edge-runtime: error: cannot serve metrics on 127.0.0.1:{port}: Address already in use")
