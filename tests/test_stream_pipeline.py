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
    import time

    with er.load(MODEL, "litert:cpu", num_threads=1) as model:
        # 10,000 frames/s, a window every frame; inference made slow on purpose (2 ms per result).
        src = open_source("synthetic:sine?channels=6&frame=10&count=3000&rate=100000")
        stream = Stream(model, src, hop=10, queue_slots=4)
        results = []
        for r in stream.results():
            results.append(r)
            time.sleep(0.002)
        st = stream.stats
    assert st.windows == (3000 * 10 - 100) // 10 + 1
    assert st.dropped > st.windows // 2 and st.results + st.dropped == st.windows, st
    assert len(results) == st.results
    assert stream._queue is not None and len(stream._queue._slots) == 4  # memory: the slots it started with


def test_a_stream_can_run_twice() -> None:
    with er.load(MODEL, "litert:cpu") as model:
        stream = Stream(model, open_source("synthetic:sine?channels=6&frame=10&count=30&speed=max"), policy=BLOCK)
        first = list(stream.results())
        second = list(stream.results())
    assert len(first) == len(second) == 3 and stream.stats.results == 3


def test_frames_of_another_format_are_skipped_and_counted() -> None:
    from edge_runtime.stream.codec import make_frame

    class Mixed:
        url = "mixed"

        def __init__(self) -> None:
            from edge_runtime.stream.sources import SourceStats

            self.stats = SourceStats()

        def run(self, on_frame: object, stop: threading.Event) -> None:
            for seq in range(1, 41):
                dtype = np.int16 if seq % 4 == 0 else np.float32  # every 4th frame is int16
                on_frame(make_frame(np.ones((10, 6), dtype), seq=seq), 0)  # type: ignore[operator]

    with er.load(MODEL, "litert:cpu") as model:
        stream = Stream(model, Mixed(), policy=BLOCK)  # type: ignore[arg-type]
        results = list(stream.results())
    st = stream.stats
    assert st.frames == 40 and st.format_mismatch == 10  # the first frame (float32) set the format
    assert st.gaps_reset == 9 and results == []  # a skipped frame is a hole: no window spans it


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


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("synthetic:sine?channels=abc", "channels='abc' in 'synthetic:sine?channels=abc' is not a whole number"),
        ("synthetic:sine?rate=0", "rate='0' in 'synthetic:sine?rate=0' must be > 0"),
        ("synthetic:square", "unknown synthetic signal 'square'"),
        (f"file:{RECORDING}?speed=fast", "speed='fast'"),
        ("file:/nonexistent/rec.csv", "recording not found"),
        ("/dev/ttyNOPE?baud=fast", "baud='fast'"),
        ("foo://bar", "not a usable serial address"),
    ],
)
def test_cli_bad_sources_are_clear_errors(source: str, message: str) -> None:
    out = _cli("run", str(MODEL), "--source", source, timeout=60)
    assert out.returncode == 1, (out.returncode, out.stderr[-500:])
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("edge-runtime: error: ") and message in last, out.stderr[-500:]


@pytest.mark.parametrize(("flag", "value"), [("--window", "0"), ("--hop", "-5"), ("--queue", "0")])
def test_cli_bad_window_options_are_clear_errors(flag: str, value: str) -> None:
    out = _cli("run", str(MODEL), "--source", "synthetic:sine?channels=6&count=20", flag, value, timeout=60)
    assert out.returncode == 1 and "must be at least 1" in out.stderr, out.stderr[-500:]


def test_cli_ctrl_c_still_prints_the_summary() -> None:
    import signal
    import time

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_runtime",
            "run",
            str(MODEL),
            "--source",
            "synthetic:sine?channels=6&frame=10&rate=2000",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # a result: the stream runs
    assert json.loads(first)["window"] == 0
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130
    summary = json.loads(rest.strip().splitlines()[-1])["summary"]
    assert summary["results"] >= 1 and summary["frames"] >= 10
