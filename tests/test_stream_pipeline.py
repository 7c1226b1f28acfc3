"""The whole stream: source -> windows -> queue -> in-place preprocessing -> real model -> results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import BACKENDS, MODELS, ROOT

import edge_runtime as er
from edge_runtime.hil.emulator import Emulator
from edge_runtime.stream.pipeline import Stream
from edge_runtime.stream.preprocess import Preprocess
from edge_runtime.stream.queue import BLOCK
from edge_runtime.stream.sources import FileSource, open_source

MODEL = MODELS / "basicmotions_int8.tflite"
SIDECAR = MODELS / "basicmotions_int8.json"
RECORDING = MODELS / "basicmotions_recording.csv"
LABELS = json.loads(SIDECAR.read_text())["labels"]
DEVICE = {"litert": "litert:cpu", "openvino": "openvino:CPU"}


def truth_at(source: FileSource, timestamp_us: int) -> str:
    assert source.labels is not None
    return source.labels[round(timestamp_us / (1e6 / source.recorded_rate))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_recording_replay_classifies_every_case(backend: str) -> None:
    """The real IMU recording through the real pipeline: the model's stated accuracy, window by window."""
    source = FileSource(f"file:{RECORDING}?speed=max&frame=10")
    with er.load(MODEL, DEVICE[backend]) as model:
        stream = Stream(model, source, preprocess=Preprocess.from_sidecar(SIDECAR), labels=LABELS, policy=BLOCK)
        results = list(stream.results())
    assert len(results) == 40 and stream.stats.dropped == 0
    assert [r.window for r in results] == list(range(40))
    assert [r.timestamp_us for r in results] == [(k * 100 + 99) * 100_000 for k in range(40)]
    correct = sum(truth_at(source, r.timestamp_us) == r.label for r in results)
    stated = json.loads(SIDECAR.read_text())["int8_accuracy"]
    assert correct / 40 >= stated - 0.025, (correct, stated)


def test_stream_matches_infer_on_the_same_windows() -> None:
    """In-place preprocessing gives the same scores as quantize + infer_raw on the same window."""
    source = FileSource(f"file:{RECORDING}?speed=max&frame=25")
    pre = Preprocess.from_sidecar(SIDECAR)
    mean, std = np.array(pre.offset, np.float32), np.array(pre.scale, np.float32)
    with er.load(MODEL, "litert:cpu") as model:
        stream = Stream(model, source, preprocess=pre, hop=50, policy=BLOCK)
        results = list(stream.results())
        assert len(results) == (4000 - 100) // 50 + 1
        for r in results[::7]:
            last = round(r.timestamp_us / 100_000)
            window = source.values[last - 99 : last + 1]
            q = er.quantize(((window - mean) / std)[None], model.inputs[0])
            expected = er.dequantize(model.infer_raw(q)[0], model.outputs[0]).reshape(-1)
            np.testing.assert_allclose(r.scores, expected, atol=2 / 256)


def test_sensor_ten_times_faster_than_inference_drops_and_counts() -> None:
    with er.load(MODEL, "litert:cpu", num_threads=1) as model:
        src = open_source("synthetic:sine?channels=6&frame=10&count=3000&speed=max")
        stream = Stream(model, src, hop=10, queue_slots=4)
        results = list(stream.results())
        st = stream.stats
    assert st.windows == (3000 * 10 - 100) // 10 + 1
    assert st.dropped > 0 and st.results + st.dropped == st.windows, st
    assert len(results) == st.results
    assert stream._queue is not None and len(stream._queue._slots) == 4  # memory: the slots it started with


def test_block_policy_loses_nothing() -> None:
    with er.load(MODEL, "litert:cpu") as model:
        src = open_source("synthetic:ramp?channels=6&frame=10&count=500&speed=max")
        stream = Stream(model, src, hop=50, queue_slots=2, policy=BLOCK)
        results = list(stream.results())
    assert stream.stats.dropped == 0 and len(results) == (5000 - 100) // 50 + 1
    assert [r.window for r in results] == list(range(len(results)))


def test_an_error_in_user_code_stops_the_stream_and_propagates() -> None:
    with er.load(MODEL, "litert:cpu") as model:
        stream = Stream(model, open_source("synthetic:sine?channels=6&frame=10&rate=5000"))

        def on_result(r: object) -> None:
            raise RuntimeError("user bug")

        with pytest.raises(RuntimeError, match="user bug"):
            stream.run(on_result)


def test_a_source_of_the_wrong_shape_is_a_clear_error() -> None:
    with er.load(MODEL, "litert:cpu") as model:
        stream = Stream(model, open_source("synthetic:sine?channels=4&frame=10&count=20&speed=max"))
        with pytest.raises(er.InputError, match=r"100 samples x 4 channels .* does not fit"):
            list(stream.results())


def test_pty_stream_end_to_end(tmp_path: Path) -> None:
    values = FileSource(f"file:{RECORDING}").values
    emu = Emulator(values, rate_hz=20000, sample_rate_hz=10, frame_samples=10, link=tmp_path / "tty")
    stop = threading.Event()

    def play() -> None:
        emu.run()
        threading.Timer(0.3, stop.set).start()

    threading.Thread(target=play, daemon=True).start()
    with er.load(MODEL, "litert:cpu") as model:
        stream = Stream(model, open_source(emu.address), preprocess=Preprocess.from_sidecar(SIDECAR), labels=LABELS)
        results = list(stream.results(stop=stop))
    emu.close()
    truth = FileSource(f"file:{RECORDING}")
    assert len(results) == 40 and stream.stats.dropped == 0
    assert sum(truth_at(truth, r.timestamp_us) == r.label for r in results) == 40
    assert all(r.latency_us > r.invoke_us > 0 for r in results)


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_runtime", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def test_cli_demo_is_the_main_job() -> None:
    out = _cli("demo", "--json", "--speed", "200")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    summary = lines[-1]["summary"]
    assert len(lines) == 41 and summary["results"] == 40 and summary["dropped"] == 0
    assert summary["accuracy vs recording labels"] == "40/40"
    assert summary["source"]["decoder"]["crc_errors"] == 0 and summary["source"]["decoder"]["frames"] == 400


def test_cli_run_on_a_synthetic_source() -> None:
    out = _cli(
        "run",
        str(MODEL),
        "--source",
        "synthetic:sine?channels=6&frame=10&count=100&speed=max",
        "--policy",
        "block",
        "--hop",
        "100",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == 11 and lines[-1]["summary"]["results"] == 10
    assert {"window", "timestamp_us", "label", "scores", "latency_us"} <= set(lines[0])
    assert lines[0]["label"] in LABELS


def test_cli_emulate_and_run_as_two_processes(tmp_path: Path) -> None:
    link = tmp_path / "ttyIMU"
    emu = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_runtime",
            "emulate",
            str(RECORDING),
            "--rate",
            "4000",
            "--link",
            str(link),
            "--garbage-every",
            "5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert emu.stdout is not None
        address = emu.stdout.readline().strip()
        assert address == str(link)
        out = _cli("run", str(MODEL), "--source", address, "--json", "--max-results", "40", timeout=60)
        assert out.returncode == 0, out.stderr
        lines = [json.loads(line) for line in out.stdout.splitlines()]
        summary = lines[-1]["summary"]
        assert (
            summary["results"] == 40
            and summary["source"]["decoder"]["malformed"] + summary["source"]["decoder"]["crc_errors"] >= 70
        )
        assert emu.wait(30) == 0
    finally:
        emu.kill()
