"""The ``edge-runtime`` command, run as a user runs it (a real subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import backend_available


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_runtime", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def test_help_lists_the_verbs() -> None:
    out = run("--help")
    assert out.returncode == 0
    for verb in ("devices", "info", "bench"):
        assert verb in out.stdout
    bench_help = run("bench", "--help").stdout
    assert "--runs" in bench_help and "litert:edgetpu" in bench_help and "openvino:AUTO:NPU,CPU" in bench_help


def test_devices_json() -> None:
    out = run("devices", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert {"devices", "runtimes"} <= set(data)
    kinds = {d["kind"] for d in data["devices"] if d["available"]}
    assert "cpu" in kinds
    assert all(d["available"] or d["reason"] for d in data["devices"])
    if backend_available("litert"):
        module = data["runtimes"]["litert"]["module"]
        assert module in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite"), module


def test_info_json(digits_model: Path) -> None:
    out = run("info", str(digits_model), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["inputs"][0]["dtype"] == "int8" and data["inputs"][0]["quantization"]["scales"]
    assert data["op_count"] > 0 and data["device"] and data["reason"]


def test_info_table_shows_quantization_and_reasons(digits_model: Path) -> None:
    out = run("info", str(digits_model), "-d", "openvino:NPU", "-d", "cpu")
    assert out.returncode == 0, out.stderr
    assert "openvino:NPU: not found" in out.stdout
    assert "zero point" in out.stdout and "int8" in out.stdout


@pytest.mark.parametrize("device", ["litert:cpu", "openvino:CPU"])
def test_bench_json(digits_model: Path, device: str) -> None:
    if not backend_available(device.split(":")[0]):
        pytest.skip(f"{device} backend not installed")
    out = run("bench", str(digits_model), "-d", device, "--runs", "50", "--warmup", "5", "--json", "--threads", "1")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["device"] == device and data["runs"] == 50
    assert 0 < data["min_us"] <= data["p50_us"] <= data["p90_us"] <= data["p99_us"]
    assert data["throughput_per_s"] > 0


def test_errors_exit_1_with_the_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"12345678")
    out = run("info", str(bad))
    assert out.returncode == 1
    assert out.stderr.startswith("edge-runtime: error: not a TFLite flatbuffer") and str(bad) in out.stderr
    out = run("info", str(bad), "-d", "warp-drive")
    assert out.returncode == 1 and "cannot parse device request 'warp-drive'" in out.stderr


def test_bench_rejects_zero_runs(digits_model: Path) -> None:
    out = run("bench", str(digits_model), "--runs", "0")
    assert out.returncode == 2 and "--runs must be >= 1" in out.stderr
