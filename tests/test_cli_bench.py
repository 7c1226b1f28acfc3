"""``edge-runtime bench``: latency and throughput modes, --streams, --batch, --threads auto, --time,
init and first-inference time, usage errors, Ctrl-C / SIGTERM partial output. Real models, real
subprocesses; few runs, no timing asserts (the figures are only checked for consistency)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from conftest import MODELS, Cli, backend_available

DIGITS = MODELS / "digits_cnn_int8.tflite"
DIGITS_ONNX = MODELS / "digits_cnn_int8.onnx"  # a fixed batch of 1
MOTIONS = MODELS / "basicmotions_int8.tflite"  # carries a batch dimension through (--batch)
needs_litert = pytest.mark.skipif(not backend_available("litert"), reason="litert not installed")
needs_openvino = pytest.mark.skipif(not backend_available("openvino"), reason="openvino not installed")
needs_onnxruntime = pytest.mark.skipif(not backend_available("onnxruntime"), reason="onnxruntime not installed")

LATENCY_KEYS = {"min_us", "p50_us", "p90_us", "p99_us", "mean_us", "runs", "throughput_per_s"}
COMMON_KEYS = {
    "model",
    "backend",
    "device",
    "device_full_name",
    "reason",
    "threads",
    "threads_used",
    "mode",
    "batch",
    "init_ms",
    "first_inference_ms",
    "warmup",
    "runs_limit",
    "time_limit_s",
    "call",
    "interrupted",
}


def bench_json(cli: Cli, *args: str | Path) -> dict[str, object]:
    out = cli("bench", *args, "--json", "-q")
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    data: dict[str, object] = json.loads(out.stdout)
    return data


def ordered(d: dict[str, object]) -> None:
    assert 0 < d["min_us"] <= d["p50_us"] <= d["p90_us"] <= d["p99_us"]  # type: ignore[operator]
    assert d["mean_us"] > 0  # type: ignore[operator]


@needs_litert
def test_latency_mode_reports_init_and_first_inference(cli: Cli) -> None:
    d = bench_json(cli, DIGITS, "-d", "litert:cpu", "--threads", "1", "--runs", "30", "--warmup", "3")
    assert COMMON_KEYS | LATENCY_KEYS | {"samples_per_s"} <= set(d)
    assert d["mode"] == "latency" and d["call"] == "Model.infer_raw" and d["batch"] == 1
    assert d["runs"] == 30 and d["runs_limit"] == 30 and d["time_limit_s"] is None
    assert d["threads"] == 1 and d["threads_used"] == 1
    assert d["init_ms"] > 0 and d["first_inference_ms"] > 0  # type: ignore[operator]
    assert d["samples_per_s"] == d["throughput_per_s"]
    ordered(d)


@needs_litert
def test_table_shows_init_first_inference_and_threads(cli: Cli) -> None:
    out = cli("bench", DIGITS, "-d", "litert:cpu", "--threads", "1", "--runs", "20", "--warmup", "2")
    assert out.returncode == 0, out.stderr
    assert "init:" in out.stdout and "first inference:" in out.stdout and "threads:    1" in out.stdout
    assert "p99" in out.stdout and "inferences/s" in out.stdout


@needs_litert
def test_time_runs_for_the_given_seconds_and_runs_cap_it(cli: Cli) -> None:
    d = bench_json(cli, DIGITS, "-d", "litert:cpu", "--time", "0.2", "--warmup", "2")
    assert d["time_limit_s"] == 0.2 and d["runs_limit"] is None and d["runs"] > 0  # type: ignore[operator]
    d = bench_json(cli, DIGITS, "-d", "litert:cpu", "--time", "30", "--runs", "25", "--warmup", "2")
    assert d["runs"] == 25, "with --runs and --time, whichever comes first (here the runs)"


@needs_litert
def test_throughput_mode_keeps_streams_in_flight(cli: Cli) -> None:
    d = bench_json(cli, DIGITS, "-d", "litert:cpu", "--threads", "1", "--mode", "throughput", "--streams", "3",
                   "--runs", "60", "--warmup", "5")  # fmt: skip
    assert COMMON_KEYS | LATENCY_KEYS | {"streams", "requests", "samples", "samples_per_s", "workers"} <= set(d)
    assert d["mode"] == "throughput" and d["call"] == "Model.submit" and d["streams"] == 3
    assert d["requests"] == d["samples"] == d["runs"] == 60
    assert d["samples_per_s"] > 0 and d["first_inference_ms"] > 0  # type: ignore[operator]
    ordered(d)


@needs_litert
def test_throughput_default_streams_is_twice_the_workers(cli: Cli) -> None:
    d = bench_json(cli, DIGITS, "-d", "litert:cpu", "--threads", "1", "--mode", "throughput", "--time", "0.2",
                   "--warmup", "2")  # fmt: skip
    assert d["streams"] == 2 * d["workers"]  # type: ignore[operator]


@needs_litert
def test_threads_auto_prints_the_measured_choice(cli: Cli, tmp_path: Path) -> None:
    out = cli("bench", DIGITS, "-d", "litert:cpu", "--threads", "auto", "--runs", "20", "--warmup", "2", "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["threads"] == "auto" and isinstance(d["threads_used"], int) and d["threads_used"] >= 1
    assert "threads=auto" in d["reason"]
    text = cli("bench", DIGITS, "-d", "litert:cpu", "--threads", "auto", "--runs", "20", "-q").stdout
    assert "threads:    auto -> " in text and "(taken from the measurement cache)" in text  # the second run


@needs_litert
def test_batch_in_latency_mode_runs_b_samples_per_call(cli: Cli) -> None:
    d = bench_json(cli, MOTIONS, "-d", "litert:cpu", "--threads", "1", "--batch", "4", "--runs", "20", "--warmup", "2")
    assert d["batch"] == 4 and d["runs"] == 20
    assert d["samples_per_s"] == pytest.approx(4 * d["throughput_per_s"], rel=1e-3)  # type: ignore[operator]


@needs_litert
def test_batch_with_streams_uses_the_dynamic_batcher(cli: Cli) -> None:
    pytest.importorskip("edge_runtime.batching")
    d = bench_json(cli, MOTIONS, "-d", "litert:cpu", "--threads", "1", "--mode", "throughput", "--batch", "2",
                   "--streams", "4", "--max-wait-us", "500", "--runs", "40", "--warmup", "4")  # fmt: skip
    assert d["call"] == "DynamicBatcher.submit" and d["batch"] == 2 and d["max_wait_us"] == 500
    assert d["streams"] == 4 and d["samples"] == 40 and d["device"] == "litert:cpu"
    assert isinstance(d["batcher_stats"], dict) and d["batcher_stats"]["samples"] >= 40
    ordered(d)


@needs_litert
def test_batch_with_one_stream_loads_a_batched_model(cli: Cli) -> None:
    d = bench_json(cli, MOTIONS, "-d", "litert:cpu", "--mode", "throughput", "--batch", "2", "--streams", "1",
                   "--runs", "10", "--warmup", "2")  # fmt: skip
    assert d["call"] == "Model.submit" and d["samples"] == 20 and d["requests"] == 10


@needs_openvino
def test_openvino_throughput(cli: Cli) -> None:
    d = bench_json(cli, DIGITS, "-d", "openvino:CPU", "--mode", "throughput", "--streams", "2", "--runs", "30",
                   "--warmup", "3")  # fmt: skip
    assert d["device"] == "openvino:CPU" and d["requests"] == 30


@needs_onnxruntime
@pytest.mark.parametrize("threads", [(), ("--threads", "1")])
def test_onnxruntime_latency(cli: Cli, threads: tuple[str, ...]) -> None:
    d = bench_json(cli, DIGITS_ONNX, "-d", "onnxruntime:CPU", *threads, "--runs", "30", "--warmup", "3")
    assert COMMON_KEYS | LATENCY_KEYS | {"samples_per_s"} <= set(d)
    assert d["backend"] == "onnxruntime" and d["device"] == "onnxruntime:CPU"
    assert d["mode"] == "latency" and d["call"] == "Model.infer_raw" and d["batch"] == 1 and d["runs"] == 30
    assert d["threads_used"] == (1 if threads else None)
    assert d["init_ms"] > 0 and d["first_inference_ms"] > 0  # type: ignore[operator]
    ordered(d)
    out = cli("bench", DIGITS_ONNX, "-d", "onnxruntime:CPU", *threads, "--runs", "20", "--warmup", "2", "-q")
    assert out.returncode == 0, out.stderr
    assert "device:     onnxruntime:CPU" in out.stdout and "p50" in out.stdout and "inferences/s" in out.stdout


@needs_onnxruntime
def test_onnxruntime_throughput(cli: Cli) -> None:
    d = bench_json(cli, DIGITS_ONNX, "-d", "onnxruntime:CPU", "--mode", "throughput", "--streams", "2", "--runs", "40",
                   "--warmup", "4")  # fmt: skip
    assert COMMON_KEYS | LATENCY_KEYS | {"streams", "requests", "samples", "samples_per_s", "workers"} <= set(d)
    assert d["device"] == "onnxruntime:CPU" and d["call"] == "Model.submit" and d["streams"] == 2
    assert d["requests"] == d["samples"] == d["runs"] == 40 and d["workers"] >= 1  # type: ignore[operator]
    ordered(d)


@needs_onnxruntime
@pytest.mark.parametrize("mode", [("--mode", "latency"), ("--mode", "throughput", "--streams", "1"),
                                  ("--mode", "throughput", "--streams", "4")])  # fmt: skip
def test_onnxruntime_batch_on_a_fixed_batch_model_is_a_one_line_error(cli: Cli, mode: tuple[str, ...]) -> None:
    out = cli("bench", DIGITS_ONNX, "-d", "onnxruntime:CPU", *mode, "--batch", "4", "--runs", "5", "-q")
    assert out.returncode == 1, out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("edge-runtime: error: "), out.stderr
    assert "fixed first dimension of 1" in out.stderr and "Traceback" not in out.stderr
    assert out.stdout == ""


def test_help_names_every_option_and_the_units(cli: Cli) -> None:
    text = " ".join(cli("bench", "--help").stdout.split())
    for opt in ("--mode", "--streams", "--batch", "--threads", "--time", "--max-wait-us", "--runs", "--warmup"):
        assert opt in text, opt
    assert "whichever comes first" in text and "microseconds" in text and "samples/s" in text
    assert "'auto'" in text and "first inference" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--mode", "latnecy"), "argument --mode: invalid choice: 'latnecy'"),
        (("--streams", "x"), "argument --streams: 'x' is not a whole number"),
        (("--streams", "0"), "argument --streams: must be a whole number >= 1"),
        (("--batch", "two"), "argument --batch: 'two' is not a whole number"),
        (("--batch", "0"), "argument --batch: must be a whole number >= 1"),
        (("--threads", "aut"), "argument --threads: takes a whole number >= 1 or 'auto', got 'aut'"),
        (("--time", "1s"), "argument --time: '1s' is not a number"),
        (("--time", "0"), "argument --time: must be > 0"),
        (("--time", "inf"), "argument --time: must be a finite number of seconds"),
        (("--max-wait-us", "-5"), "argument --max-wait-us: must be a finite number >= 0"),
        (("--mode", "throughput", "--batch", "2", "--streams", "1", "--max-wait-us", "0"), "several --streams"),
        (("--strems", "2"), "(see edge-runtime bench --help)"),
        (("--streams", "4"), "--streams 4 needs --mode throughput"),
        (("--max-wait-us", "100"), "--max-wait-us applies only to --mode throughput with --batch > 1"),
        (("--max-wait-us", "inf"), "must be a finite number >= 0"),
        (("--mode", "throughput", "--data", str(MODELS / "digits_cnn_int8_test.npz")), "--data takes none of --mode"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(cli: Cli, args: tuple[str, ...], message: str) -> None:
    out = cli("bench", DIGITS, "-d", "litert:cpu", "--runs", "5", *args)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("edge-runtime: error: "), out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert out.stdout == ""


@needs_litert
@pytest.mark.parametrize(
    ("mode", "sig", "code", "batch"),
    [
        ("latency", signal.SIGINT, 130, 1),
        ("throughput", signal.SIGINT, 130, 1),
        ("throughput", signal.SIGTERM, 143, 1),
        ("throughput", signal.SIGINT, 130, 4),  # the dynamic batcher: the main thread runs batches itself
        ("throughput", signal.SIGTERM, 143, 4),
    ],
)
def test_stopping_prints_the_statistics_so_far(cli: Cli, mode: str, sig: signal.Signals, code: int, batch: int) -> None:
    unit = "runs" if mode == "latency" else "requests"
    model = DIGITS if batch == 1 else MOTIONS
    with cli.start("bench", model, "-d", "litert:cpu", "--mode", mode, "--time", "120", "--warmup", "2",
                   "--batch", str(batch), "--json") as run:  # fmt: skip
        progress = run.wait_for("stderr", rf"^bench: (\d+) {unit}, \d+/120 s$")
        run.proc.send_signal(sig)
        out = run.finish()
    assert out.returncode == code, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    d = json.loads(out.stdout)
    assert d["interrupted"] is True and d["mode"] == mode
    assert int(progress.group(1)) <= d["runs"]
    ordered(d)
