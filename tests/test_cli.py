"""The ``edge-runtime`` command, run as a user runs it (a real subprocess). Mistakes: test_cli_errors.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Cli, backend_available


def test_help_lists_the_verbs(cli: Cli) -> None:
    out = cli("--help")
    assert out.returncode == 0
    for verb in ("devices", "info", "bench", "calibrate", "run", "emulate", "demo"):
        assert verb in out.stdout
    bench_help = cli("bench", "--help").stdout
    assert "--runs" in bench_help and "litert:edgetpu" in bench_help and "openvino:AUTO:NPU,CPU" in bench_help


def test_devices_json(cli: Cli) -> None:
    out = cli("devices", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert {"devices", "runtimes"} <= set(data)
    kinds = {d["kind"] for d in data["devices"] if d["available"]}
    assert "cpu" in kinds
    assert all(d["available"] or d["reason"] for d in data["devices"])
    if backend_available("litert"):
        module = data["runtimes"]["litert"]["module"]
        assert module in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite"), module


def test_info_json(cli: Cli, digits_model: Path) -> None:
    out = cli("info", digits_model, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["inputs"][0]["dtype"] == "int8" and data["inputs"][0]["quantization"]["scales"]
    assert data["op_count"] > 0 and data["device"] and data["reason"]
    assert "attempts" in data and "passed_over" not in data
    assert data["labels"] == [str(i) for i in range(10)], "the labels come from the JSON sidecar"


def test_info_table_shows_quantization_and_reasons(cli: Cli, digits_model: Path) -> None:
    out = cli("info", digits_model, "-d", "openvino:NPU", "-d", "cpu")
    assert out.returncode == 0, out.stderr
    assert "openvino:NPU: not found" in out.stdout
    assert "zero point" in out.stdout and "int8" in out.stdout


@pytest.mark.parametrize("device", ["litert:cpu", "openvino:CPU"])
def test_bench_json(cli: Cli, digits_model: Path, device: str) -> None:
    if not backend_available(device.split(":")[0]):
        pytest.skip(f"{device} backend not installed")
    out = cli("bench", digits_model, "-d", device, "--runs", "50", "--warmup", "5", "--json", "--threads", "1")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["device"] == device and data["runs"] == 50 and data["threads"] == 1
    assert data["interrupted"] is False
    assert 0 < data["min_us"] <= data["p50_us"] <= data["p90_us"] <= data["p99_us"]
    assert data["throughput_per_s"] > 0
