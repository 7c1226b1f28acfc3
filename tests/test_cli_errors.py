"""The ``edge-runtime`` command when things go wrong, run as a user runs it (real subprocesses).

Every mistake: exactly one line ``edge-runtime: error: ...`` on stderr, no traceback, exit
status 2 for a usage error, 1 for a runtime failure. Ctrl-C: 130, with what was measured
so far; SIGTERM in ``run``: the summary, then 0. Logging options work after the verb.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from conftest import DATA, MODELS, Cli, backend_available

DIGITS = MODELS / "digits_cnn_int8.tflite"
BUNDLE = MODELS / "digits_early_exit"
MOTIONS = MODELS / "basicmotions_int8.tflite"  # 6 channels x 100 samples per window
RECORDING = MODELS / "basicmotions_recording.csv"
SINE = "synthetic:sine?channels=6&count=50&speed=max"
ERROR = "edge-runtime: error: "


class Row(NamedTuple):
    args: tuple[str, ...]  # "{tmp}" stands for the folder of bad files
    status: int
    phrase: str  # what the error line must name: the path, the option, the value


USAGE, RUNTIME = 2, 1
Completed = subprocess.CompletedProcess[str]
ROWS: dict[str, Row] = {
    # -- usage errors (2): argparse, ArgumentError, DeviceRequestError -------------------------
    "no verb": Row((), USAGE, "the following arguments are required: VERB"),
    "unknown verb": Row(("frobnicate",), USAGE, "invalid choice: 'frobnicate'"),
    "no model": Row(("info",), USAGE, "required: model"),
    "--threads 0": Row(("info", str(DIGITS), "--threads", "0"), USAGE, "argument --threads: must be a whole number"),
    "--threads -1": Row(("info", str(DIGITS), "--threads", "-1"), USAGE, "argument --threads: must be a whole number"),
    "--threads two": Row(("info", str(DIGITS), "--threads", "two"), USAGE, "argument --threads: 'two' is not"),
    "--log-level loud": Row(("info", str(DIGITS), "--log-level", "loud"), USAGE, "argument --log-level"),
    "-d bad request": Row(("info", str(DIGITS), "-d", "warp-drive"), USAGE, "cannot parse device request 'warp-drive'"),
    "-d bad second request": Row(("info", str(DIGITS), "-d", "cpu", "-d", "litert:tpu"), USAGE, "'litert:tpu'"),
    "--openvino-plugin without =": Row(
        ("info", str(DIGITS), "--openvino-plugin", "FPGA"), USAGE, "--openvino-plugin takes NAME=PATH"
    ),
    "--openvino-plugin missing file": Row(
        ("info", str(DIGITS), "--openvino-plugin", "FPGA={tmp}/libnope.so"), USAGE, "{tmp}/libnope.so: no such file"
    ),
    "bench --runs 0": Row(("bench", str(DIGITS), "--runs", "0"), USAGE, "argument --runs"),
    "bench bundle without --data": Row(("bench", str(BUNDLE)), USAGE, "benchmarking a bundle needs --data"),
    "bench bundle --data missing": Row(
        ("bench", str(BUNDLE), "--data", "{tmp}/missing.npz"), USAGE, "--data: no such file [path={tmp}/missing.npz]"
    ),
    "bench bundle --data wrong shape": Row(
        ("bench", str(BUNDLE), "--data", "{tmp}/wrong_shape.npz"), USAGE, "expected one sample of 1024 values"
    ),
    "calibrate a plain model": Row(
        ("calibrate", str(DIGITS), "--data", str(BUNDLE / "calibration.npz")), USAGE, "not an early-exit bundle"
    ),
    "calibrate --max-accuracy-drop 1.5": Row(
        ("calibrate", str(BUNDLE), "--data", str(BUNDLE / "calibration.npz"), "--max-accuracy-drop", "1.5"),
        USAGE,
        "--max-accuracy-drop is a fraction",
    ),
    "run without --source": Row(("run", str(MOTIONS)), USAGE, "required: --source"),
    "run --window 0": Row(("run", str(MOTIONS), "--source", SINE, "--window", "0"), USAGE, "argument --window"),
    "run --hop > --window": Row(
        ("run", str(MOTIONS), "--source", SINE, "--window", "50", "--hop", "60"),
        USAGE,
        "hop 60 is larger than the window 50",
    ),
    "run --preprocess missing": Row(
        ("run", str(MOTIONS), "--source", SINE, "--preprocess", "{tmp}/missing.json"),
        USAGE,
        "sidecar not found [path={tmp}/missing.json]",
    ),
    "run --preprocess not JSON": Row(
        ("run", str(MOTIONS), "--source", SINE, "--preprocess", "{tmp}/not_json.json"),
        USAGE,
        "the sidecar is not JSON",
    ),
    "run --preprocess unknown key": Row(
        ("run", str(MOTIONS), "--source", SINE, "--preprocess", "{tmp}/misspelt.json"),
        USAGE,
        "unknown key(s) ['divisr']",
    ),
    "a model whose sidecar is misspelt": Row(("info", "{tmp}/misspelt/digits.tflite"), USAGE, "['lables']"),
    "demo --speed 0": Row(("demo", "--speed", "0"), USAGE, "argument --speed"),
    # -- runtime failures (1) ------------------------------------------------------------------
    "a .txt file": Row(("info", "{tmp}/notes.txt"), RUNTIME, "unknown model format (suffix '.txt'"),
    "a directory that is no bundle": Row(("info", "{tmp}/empty_dir"), RUNTIME, "is a directory without bundle.json"),
    "a missing model": Row(("info", "{tmp}/absent.tflite"), RUNTIME, "no such file [path={tmp}/absent.tflite]"),
    "8 bytes of a model": Row(("info", "{tmp}/bad.tflite"), RUNTIME, "not a TFLite flatbuffer"),
    "a truncated model": Row(("bench", "{tmp}/truncated.tflite"), RUNTIME, "truncated or corrupt TFLite model"),
    "a model no backend can load": Row(
        ("info", str(DATA / "custom_op.tflite")), RUNTIME, "no device could load the model"
    ),
    "a bundle with a bad manifest": Row(("info", "{tmp}/bad_bundle"), RUNTIME, "unknown key(s) ['extra']"),
    "-d a device that is not here": Row(("info", str(DIGITS), "-d", "openvino:NPU"), RUNTIME, "openvino:NPU"),
    "run --source a missing device": Row(("run", str(MOTIONS), "--source", "/dev/ttyUSB9"), RUNTIME, "/dev/ttyUSB9"),
    "run --source a CSV without file:": Row(
        ("run", str(MOTIONS), "--source", str(RECORDING)), RUNTIME, f"did you mean file:{RECORDING}?"
    ),
    "emulate a missing recording": Row(("emulate", "{tmp}/absent.csv"), RUNTIME, "recording not found"),
    "demo --model missing": Row(("demo", "--model", "{tmp}/absent.tflite"), RUNTIME, "{tmp}/absent.tflite"),
}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder of bad inputs for every row."""
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "notes.txt").write_text("not a model\n")
    (tmp / "empty_dir").mkdir()
    (tmp / "bad.tflite").write_bytes(b"12345678")
    (tmp / "truncated.tflite").write_bytes(DIGITS.read_bytes()[:1000])
    (tmp / "not_json.json").write_text("labels: [a, b]\n")
    (tmp / "misspelt.json").write_text(json.dumps({"preprocessing": {"kind": "scale", "divisr": 16}}))
    np.savez(tmp / "wrong_shape.npz", x=np.zeros((3, 5), np.float32), y=np.zeros(3, np.int64))
    (tmp / "misspelt").mkdir()
    shutil.copyfile(DIGITS, tmp / "misspelt" / "digits.tflite")
    side = json.loads(DIGITS.with_suffix(".json").read_text())
    side["lables"] = side.pop("labels")
    (tmp / "misspelt" / "digits.json").write_text(json.dumps(side))
    shutil.copytree(BUNDLE, tmp / "bad_bundle")
    manifest = json.loads((BUNDLE / "bundle.json").read_text())
    (tmp / "bad_bundle" / "bundle.json").write_text(json.dumps({**manifest, "extra": 1}))
    return tmp


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest, cli: Cli, bad_files: Path) -> dict[str, Future[Completed]]:
    """The rows selected for this session, run up front a few at a time (each is a fresh
    interpreter, mostly start-up: four at once take half the time on two cores). Each row's
    test takes its own result, or its own exception (a row that hangs fails alone)."""
    selected = {
        item.callspec.params["name"]
        for item in request.session.items
        if isinstance(item, pytest.Function) and item.originalname == "test_a_mistake_is_one_line_and_an_exit_status"
    }
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {
            name: pool.submit(cli, *(a.replace("{tmp}", str(bad_files)) for a in row.args), timeout=60)
            for name, row in ROWS.items()
            if name in selected
        }
        wait(futures.values())
        return futures


def the_error_line(out: subprocess.CompletedProcess[str]) -> str:
    """The one line on stderr, checked: it starts ``edge-runtime: error: ``; nothing else was written there."""
    assert "Traceback" not in out.stderr + out.stdout, out.stderr[-3000:]
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR), f"stderr is not one error line:\n{out.stderr[-3000:]}"
    return lines[0]


@pytest.mark.parametrize("name", list(ROWS))
def test_a_mistake_is_one_line_and_an_exit_status(
    name: str, outcomes: dict[str, Future[Completed]], bad_files: Path
) -> None:
    row, out = ROWS[name], outcomes[name].result()
    line = the_error_line(out)
    assert out.returncode == row.status, (out.returncode, line)
    assert row.phrase.replace("{tmp}", str(bad_files)) in line
    assert out.stdout == "", "a failed command prints no partial result"


# -- logging options, before or after the verb ---------------------------------------------------

needs_litert = pytest.mark.skipif(not backend_available("litert"), reason="litert not installed")
XNNPACK = "Created TensorFlow Lite XNNPACK delegate"


@needs_litert
@pytest.mark.parametrize("where", ["after the verb", "before the verb"])
def test_verbose_shows_the_litert_info_line_in_the_log(cli: Cli, where: str) -> None:
    args = ("info", str(DIGITS), "-d", "litert:cpu")
    out = cli(*args, "-v") if where == "after the verb" else cli("-v", *args)
    assert out.returncode == 0, out.stderr
    assert f"edge-runtime: info: {XNNPACK} for CPU." in out.stderr.splitlines()


@needs_litert
def test_without_verbose_the_litert_info_line_is_hidden(cli: Cli) -> None:
    out = cli("info", str(DIGITS), "-d", "litert:cpu")
    assert out.returncode == 0, out.stderr
    assert XNNPACK not in out.stdout + out.stderr and out.stderr == ""


@needs_litert
def test_log_level_after_the_verb(cli: Cli) -> None:
    fallback = ("info", str(DIGITS), "-d", "litert:delegate=/nonexistent/libnpu.so", "-d", "litert:cpu")
    out = cli(*fallback)  # default: warnings
    assert (
        out.returncode == 0 and "edge-runtime: warning: " in out.stderr and "fell back to litert:cpu" in out.stderr
    ), out.stderr
    out = cli(*fallback, "--log-level", "error")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    out = cli(*fallback, "--log-level", "debug")
    assert out.returncode == 0, out.stderr
    assert "edge-runtime: warning: " in out.stderr and XNNPACK in out.stderr, "debug shows warnings and info too"
    out = cli("--log-level", "error", *fallback, "--log-level", "warning")
    assert out.returncode == 0 and "edge-runtime: warning: " in out.stderr, "after the verb wins"


# -- Ctrl-C and SIGTERM ----------------------------------------------------------------------------


@needs_litert
def test_ctrl_c_in_bench_prints_the_partial_statistics(cli: Cli) -> None:
    with cli.start("bench", DIGITS, "-d", "litert:cpu", "--runs", "1000000", "--warmup", "5", "--json") as run:
        progress = run.wait_for("stderr", r"^bench: (\d+)/1000000 runs$")
        run.proc.send_signal(signal.SIGINT)
        out = run.finish()
    assert out.returncode == 130, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    stats = json.loads(out.stdout)
    assert stats["interrupted"] is True
    assert int(progress.group(1)) <= stats["runs"] < 1000000
    assert 0 < stats["min_us"] <= stats["p50_us"] <= stats["p99_us"]


def test_ctrl_c_in_demo_prints_the_summary(cli: Cli) -> None:
    # 4000 samples at 10 Hz, played at 20x: a window every 0.5 s, 20 s in all. Still playing at Ctrl-C.
    with cli.start("demo", "--json", "--speed", "20") as run:
        first = run.wait_for("stdout", r'^\{"stream_id"')
        assert json.loads(first.string)["window_index"] == 0
        run.proc.send_signal(signal.SIGINT)
        out = run.finish()
    assert out.returncode == 130, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    *results, last = out.stdout.splitlines()
    summary = json.loads(last)["summary"]
    assert 1 <= summary["results"] == len(results) < 40
    assert summary["results"] == sum(summary["exits"])


def test_sigterm_in_run_prints_the_summary_and_exits_0(cli: Cli) -> None:
    source = "synthetic:sine?channels=6&rate=2000"  # real time, endless
    with cli.start("run", MOTIONS, "--source", source) as run:
        run.wait_for("stdout", r"^stream .* window +0 ")
        run.proc.send_signal(signal.SIGTERM)
        out = run.finish()
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    results = [line for line in out.stdout.splitlines() if line.startswith("stream ")]
    counted = re.search(r"^results +(\d+)$", out.stdout, re.M)
    assert counted is not None, out.stdout[-2000:]
    assert int(counted.group(1)) == len(results) >= 1


def test_serial_options_on_a_file_or_synthetic_source_are_usage_errors(cli: Cli) -> None:
    model = MODELS / "basicmotions_int8.tflite"
    out = cli("run", model, "--source", "synthetic:sine?channels=6", "--baud", "9600")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "--baud only applies to serial ports, not to synthetic: sources" in out.stderr
