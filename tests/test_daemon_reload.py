"""SIGHUP reloads and the stops of ``edge-runtime serve``: the real command under a real notify
socket, real signals, files and HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import MODELS, ROOT
from test_daemon_service import Systemd, free_port, get, lines, serving, wait_until_lines

MODEL = MODELS / "basicmotions_int8.tflite"


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def health(port: int) -> dict[str, Any]:
    return dict(json.loads(get(port, "/healthz")[1]))


def pipeline(name: str, out: Path, *, device: str = "litert:cpu", model: Path = MODEL, extra: str = "") -> str:
    return f"""
[pipelines.{name}]
source = "synthetic:sine?channels=6&rate=6000"
model = "{model}"
device = "{device}"
policy = "block"
sinks = ["jsonl:{out}"]
{extra}
"""


@pytest.mark.parametrize("pipelines_in", ["threads", "processes"])
def test_sighup_swaps_models_without_losing_or_repeating_a_result(tmp_path: Path, pipelines_in: str) -> None:
    port = free_port()
    head = (
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\npipelines_in = "{pipelines_in}"\n'
        f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
    )
    cfg = tmp_path / "edge-runtime.toml"
    imu, extra_out = tmp_path / "imu.jsonl", tmp_path / "extra.jsonl"
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"TFL3" + bytes(200))

    def write(body: str) -> None:
        cfg.write_text(head + body)

    def reload_and_wait(result: str, count: int) -> dict[str, Any]:
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: health(port)["reloads"][result] == count, what=f"reload {result} #{count}")
        return health(port)

    write(pipeline("imu", imu))
    systemd = Systemd(tmp_path)
    with serving(cfg, systemd) as proc:
        systemd.wait_for("READY")
        wait_until_lines(imu, 5)

        # 1. another device, and a second pipeline: both take effect
        write(pipeline("imu", imu, device="openvino:CPU") + pipeline("extra", extra_out))
        h = reload_and_wait("ok", 1)
        assert h["state"] == "ready", h
        wait_for(lambda: any(r["device"] == "openvino:CPU" for r in lines(imu)), what="a result on openvino:CPU")
        wait_until_lines(extra_out, 3)

        # 2. a file that is not TOML, a model that does not load, a model that is not the pinned one:
        #    each refused as a whole, the running pipelines go on, /healthz says why
        cfg.write_text(head + "[pipelines.imu\n")
        h = reload_and_wait("failed", 1)
        assert h["state"] == "degraded" and "not valid TOML" in h["why"][-1], h
        write(pipeline("imu", imu, model=broken))
        h = reload_and_wait("failed", 2)
        assert h["state"] == "degraded" and "reload failed (the previous config serves)" in h["why"][-1], h
        assert str(broken) in h["why"][-1] or "broken.tflite" in h["why"][-1], h
        write(pipeline("imu", imu, extra=f'sha256 = "{"0" * 64}"'))
        h = reload_and_wait("failed", 3)
        assert "the config pins 000" in h["why"][-1], h
        served = len(lines(imu))
        wait_until_lines(imu, served + 5)  # still serving, on the config of step 1
        assert lines(imu)[-1]["device"] == "openvino:CPU"

        # 3. back to one pipeline on LiteRT: the extra one stops, the state is ready again
        write(pipeline("imu", imu))
        h = reload_and_wait("ok", 2)
        assert h["state"] == "ready" and set(h["pipelines"]) == {"imu"}, h
        assert 'pipeline="extra"' not in get(port, "/metrics")[1], "a removed pipeline's series are gone"
        wait_for(lambda: lines(imu)[-1]["device"] == "litert:cpu", what="a result on litert:cpu again")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    assert err.count("reload failed, the running config keeps serving") == 3, err
    got = lines(imu, final=True)
    assert [r["window_index"] for r in got] == list(range(len(got))), "no result lost or repeated by 5 reloads"
    devices = [r["device"] for r in got]
    first_ov, last_ov = devices.index("openvino:CPU"), len(devices) - 1 - devices[::-1].index("openvino:CPU")
    assert set(devices[:first_ov]) == {"litert:cpu"} and set(devices[first_ov : last_ov + 1]) == {"openvino:CPU"}
    extra = lines(extra_out)
    assert [r["window_index"] for r in extra] == list(range(len(extra))), "the removed pipeline finished cleanly"


def test_a_stalled_pipeline_stops_the_watchdog(tmp_path: Path) -> None:
    """Results to stdout that nobody reads: the pipe fills, the write blocks, the loop stops turning.
    systemd must stop hearing WATCHDOG=1 (and restart the service); /healthz says why."""
    port = free_port()
    cfg = tmp_path / "edge-runtime.toml"
    cfg.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
        f'[pipelines.imu]\nsource = "synthetic:sine?channels=6&speed=max"\nmodel = "{MODEL}"\n'
        'sinks = ["stdout"]\ninference_timeout_s = 1.0\n'
    )
    systemd = Systemd(tmp_path)
    # WatchdogSec=2: pinged every second, a stall counts after one (a busy machine can hold a
    # thread back for a fraction of a second; a full pipe holds it for good).
    with serving(cfg, systemd, watchdog_usec=2_000_000) as proc:  # stdout is a pipe this test never reads
        systemd.wait_for("READY")

        def stalled_for() -> float:  # seconds, from "...has not returned for 3.2 s"
            h = health(port)
            return float(h["why"][0].split(" for ")[-1][:-2]) if h["pipelines"]["imu"]["state"] == "stalled" else 0.0

        # A stall seen for 3 s is the full pipe, not a thread that a busy machine held back a while.
        wait_for(lambda: stalled_for() > 3.0, what="a stall of 3 s")
        h = health(port)
        assert h["state"] == "failed" and "writing a result to its sinks has not returned" in h["why"][0], h
        # What is queued on the socket was sent before the stall was 1 s old (pings stop then):
        # drop it, then nothing may come for 3 ping periods.
        systemd.sock.setblocking(False)
        try:
            while True:
                systemd.sock.recv(4096)
        except BlockingIOError:
            pass
        systemd.sock.settimeout(3.0)
        got: list[str] = []
        try:
            while True:
                got.append(systemd.sock.recv(4096).decode())
        except TimeoutError:
            pass
        assert not any("WATCHDOG=1" in m for m in got), got
        assert health(port)["pipelines"]["imu"]["state"] == "stalled"
        proc.kill()
        proc.communicate()


def test_sigterm_while_loading_stops_cleanly(tmp_path: Path) -> None:
    """SIGTERM as soon as the first of many pipelines has loaded: one line, exit 0, nothing served."""
    body = "".join(pipeline(f"p{i}", tmp_path / f"p{i}.jsonl", device="openvino:CPU") for i in range(40))
    cfg = tmp_path / "edge-runtime.toml"
    cfg.write_text(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n[metrics]\nenabled = false\n{body}')
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_runtime", "serve", "--config", str(cfg), "--log-level", "info"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "pipeline p0:" in line:
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert err.strip().splitlines()[-1] == "edge-runtime: stopped by SIGTERM while loading the models", err
    assert "Traceback" not in err
    assert all(lines(tmp_path / f"p{i}.jsonl") == [] for i in range(40)), "nothing was served"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_sigint_while_serving_finishes_queued_windows(tmp_path: Path, sig: signal.Signals) -> None:
    out = tmp_path / "imu.jsonl"
    cfg = tmp_path / "edge-runtime.toml"
    cfg.write_text(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n[metrics]\nenabled = false\n' + pipeline("imu", out))
    systemd = Systemd(tmp_path)
    with serving(cfg, systemd) as proc:
        systemd.wait_for("READY")
        wait_until_lines(out, 20)
        proc.send_signal(sig)
        systemd.wait_for("STOPPING")
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    got = lines(out, final=True)
    assert [r["window_index"] for r in got] == list(range(len(got)))


def test_a_frozen_pipeline_process_is_replaced_on_the_next_device(tmp_path: Path) -> None:
    """A pipeline's process that stops (SIGSTOP: as a driver stuck in the kernel would hold it) is
    hung: killed, and a new process serves the pipeline on the next device of its list; a process
    that dies (SIGKILL) is a failed pipeline, and the others go on."""
    port = free_port()
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    cfg = tmp_path / "edge-runtime.toml"
    cfg.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\npipelines_in = "processes"\n'
        f'[metrics]\nlisten = "127.0.0.1:{port}"\n'
        + pipeline("a", a, extra="inference_timeout_s = 1.0").replace(
            'device = "litert:cpu"', 'device = ["litert:cpu", "openvino:CPU"]'
        )
        + pipeline("b", b)
    )
    systemd = Systemd(tmp_path)
    with serving(cfg, systemd) as proc:
        systemd.wait_for("READY")
        wait_until_lines(a, 5)
        first = health(port)["pipelines"]["a"]["pid"]
        os.kill(first, signal.SIGSTOP)
        wait_for(lambda: health(port)["pipelines"]["a"]["device"] == "openvino:CPU", what="the fallback")
        h = health(port)
        assert h["state"] == "degraded" and h["pipelines"]["a"]["pid"] != first, h
        assert "a: degraded: fell back from litert:cpu to openvino:CPU: inference on litert:cpu hung" in h["why"][0]
        wait_for(lambda: lines(a)[-1]["device"] == "openvino:CPU", what="results from the new process")
        os.kill(h["pipelines"]["b"]["pid"], signal.SIGKILL)
        wait_for(lambda: health(port)["pipelines"]["b"]["state"] == "failed", what="b failed")
        assert "killed by SIGKILL" in " ".join(health(port)["why"])
        served = len(lines(a))
        wait_until_lines(a, served + 5)  # a goes on
        text = get(port, "/metrics")[1]
        assert 'edge_runtime_device_errors_total{device="litert:cpu",pipeline="a"} 1.0' in text
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err[-3000:]  # a pipeline failed: systemd's Restart=on-failure
    assert "pipeline b failed: the pipeline's process ended unexpectedly (killed by SIGKILL)" in err


def test_a_whole_process_held_up_is_not_a_device_hang(tmp_path: Path) -> None:
    """SIGSTOP of the whole service for 3 s (an overloaded board, a debugger): every pipeline is
    silent, but so was the service's own loop, so no device is blamed and nothing falls back."""
    port = free_port()
    out = tmp_path / "imu.jsonl"
    cfg = tmp_path / "edge-runtime.toml"
    cfg.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
        + pipeline("imu", out, extra="inference_timeout_s = 1.0").replace(
            'device = "litert:cpu"', 'device = ["litert:cpu", "openvino:CPU"]'
        )
    )
    systemd = Systemd(tmp_path)
    with serving(cfg, systemd) as proc:
        systemd.wait_for("READY")
        wait_until_lines(out, 5)
        proc.send_signal(signal.SIGSTOP)
        time.sleep(3.0)  # the fault itself is a duration: the process is held for 3 s
        proc.send_signal(signal.SIGCONT)
        served = len(lines(out))
        wait_until_lines(out, served + 20)
        h = health(port)
        assert h["state"] == "ready" and h["pipelines"]["imu"]["device"] == "litert:cpu", h
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert "the service was not scheduled for" in err and "falling back" not in err, err[-3000:]
