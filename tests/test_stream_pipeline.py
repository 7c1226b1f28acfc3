"""The whole stream: source -> windows -> queue -> in-place preprocessing -> real model -> results."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import BACKENDS, MODELS, ROOT, Cli

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
    return source.labels[round(timestamp_us / (1e6 / source.rate))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_recording_replay_classifies_every_case(backend: str) -> None:
    """The real IMU recording through the real pipeline: the model's stated accuracy, window by window."""
    source = FileSource(f"file:{RECORDING}?speed=max&frame=10")
    with er.load(MODEL, DEVICE[backend]) as model:
        stream = Stream(model, source, preprocess=Preprocess.from_sidecar(SIDECAR), labels=LABELS, policy=BLOCK)
        results = list(stream.results())
    assert len(results) == 40 and stream.stats.dropped == 0
    assert [r.window_index for r in results] == list(range(40))
    assert [r.timestamp_us for r in results] == [(k * 100 + 99) * 100_000 for k in range(40)]
    correct = sum(truth_at(source, r.timestamp_us) == r.label for r in results)
    stated = json.loads(SIDECAR.read_text())["int8_accuracy"]
    assert correct / 40 >= stated - 0.025, (correct, stated)


def test_stream_matches_infer_on_the_same_windows() -> None:
    """In-place preprocessing gives the same scores as quantize + infer_raw on the same window."""
    source = FileSource(f"file:{RECORDING}?speed=max&frame=25")
    pre = Preprocess.from_sidecar(SIDECAR)
    mean, std = np.array(pre.offset, np.float32), np.array(pre.scale, np.float32)
    with er.load_model(MODEL, "litert:cpu") as model:
        stream = Stream(model, source, preprocess=pre, hop=50, policy=BLOCK)
        results = list(stream.results())
        assert len(results) == (4000 - 100) // 50 + 1
        for r in results[::7]:
            last = round(r.timestamp_us / 100_000)
            window = source.values[last - 99 : last + 1]
            q = er.quantize(((window - mean) / std)[None], model.inputs[0])
            expected = er.dequantize(model.infer_raw(q)[0], model.outputs[0]).reshape(-1)
            np.testing.assert_allclose(r.scores, expected, atol=2 / 256)


def test_sensor_faster_than_inference_drops_and_counts() -> None:
    with er.load(MODEL, "litert:cpu", threads=1) as model:
        # A window every frame, as fast as the generator can; the consumer takes one result,
        # then stalls until the reader has sent everything: every window that did not fit
        # in the 4 slots is dropped and counted (no timing decides how many).
        src = open_source("synthetic:sine?channels=6&frame=10&count=3000&speed=max")
        stream = Stream(model, src, hop=10, queue_slots=4)
        results = []
        for r in stream.results():
            results.append(r)
            if len(results) == 1:
                assert stream._run.reader_done.wait(timeout=60), "the reader did not finish"
        st = stream.stats
    assert st.windows == (3000 * 10 - 100) // 10 + 1
    assert st.results + st.dropped == st.windows, st
    assert 2 <= st.results <= 1 + 4 + 1 and st.dropped >= st.windows - 6, st  # one taken, 4 slots (+1 in hand)
    assert len(results) == st.results


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
    assert [r.window_index for r in results] == list(range(len(results)))


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
    emu = Emulator(values, rate=10, speed=2000, frame_samples=10, link=tmp_path / "tty")
    stop = threading.Event()

    threading.Thread(target=emu.run, daemon=True).start()
    with er.load(MODEL, "litert:cpu") as model:
        stream = Stream(model, open_source(emu.address), preprocess=Preprocess.from_sidecar(SIDECAR), labels=LABELS)
        results = list(stream.results(max_results=40, duration_s=120, stop=stop))
    emu.close()
    truth = FileSource(f"file:{RECORDING}")
    assert len(results) == 40 and stream.stats.dropped == 0
    assert sum(truth_at(truth, r.timestamp_us) == r.label for r in results) == 40
    assert all(r.latency_us > r.invoke_us > 0 for r in results)


def test_cli_demo_is_the_main_job(cli: Cli) -> None:
    out = cli("demo", "--json", "--speed", "200")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    summary = lines[-1]["summary"]
    assert len(lines) == 41 and summary["results"] == 40 and summary["dropped"] == 0
    assert summary["accuracy_vs_recording_labels"] == "40/40"
    assert summary["source"]["decoder"]["crc_errors"] == 0 and summary["source"]["decoder"]["frames"] == 400


def test_cli_run_on_a_synthetic_source(cli: Cli) -> None:
    out = cli(
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
    assert {"stream_id", "window_index", "timestamp_us", "label", "exit_index", "scores", "latency_us"} <= set(lines[0])
    assert lines[0]["label"] in LABELS


def test_cli_emulate_and_run_as_two_processes(tmp_path: Path, cli: Cli) -> None:
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
        out = cli("run", str(MODEL), "--source", address, "--json", "--max-results", "40", timeout=60)
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
    ("source", "status", "message"),
    [
        # a value typed wrong is a usage error (exit 2); a source that cannot be used, a runtime one (exit 1)
        ("synthetic:sine?channels=abc", 2, "channels='abc' in 'synthetic:sine?channels=abc' is not a whole number"),
        ("synthetic:sine?rate=0", 2, "rate='0' in 'synthetic:sine?rate=0' must be > 0"),
        ("synthetic:sine?chanels=6", 2, "unknown key 'chanels' in 'synthetic:sine?chanels=6'"),
        ("synthetic:square", 2, "unknown synthetic signal 'square'"),
        (f"file:{RECORDING}?speed=fast", 2, "speed='fast'"),
        ("/dev/ttyNOPE?baud=fast", 2, "baud='fast'"),
        ("/dev/ttyNOPE?parity=E", 2, "unknown key 'parity'"),
        ("file:/nonexistent/rec.csv", 1, "recording not found"),
        ("foo://bar", 1, "not a usable serial address"),
        ("/dev/ttyNOPE", 1, "no such device: /dev/ttyNOPE (pass wait=True / --wait"),
        (str(RECORDING), 1, f"is a regular file, not a serial port: did you mean file:{RECORDING}?"),
    ],
)
def test_cli_bad_sources_are_clear_errors(source: str, status: int, message: str, cli: Cli) -> None:
    out = cli("run", str(MODEL), "--source", source, timeout=60)
    assert out.returncode == status, (out.returncode, out.stderr[-500:])
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("edge-runtime: error: ") and message in last, out.stderr[-500:]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--window", "0"], "argument --window: must be a whole number >= 1, got 0"),
        (["--hop", "-5"], "argument --hop: must be a whole number >= 1, got -5"),
        (["--queue", "0"], "must be a whole number >= 1, got 0"),
        (["--queue-slots", "x"], "'x' is not a whole number"),
        (["--window", "50", "--hop", "60"], "hop 60 is larger than the window 50"),
        (["--window", "7"], "a window of 7 samples cannot fill input"),
    ],
)
def test_cli_bad_window_options_are_usage_errors(flags: list[str], message: str, cli: Cli) -> None:
    out = cli("run", str(MODEL), "--source", "synthetic:sine?channels=6&count=20", *flags, timeout=60)
    assert out.returncode == 2, out.stderr[-500:]
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("edge-runtime: error: ") and message in out.stderr


def test_cli_ctrl_c_still_prints_the_summary(cli: Cli) -> None:
    import signal

    with cli.start("run", MODEL, "--source", "synthetic:sine?channels=6&frame_samples=10&rate=2000", "--json") as run:
        first = run.wait_for("stdout", r"^\{")  # a result: the stream runs
        assert json.loads(first.string)["window_index"] == 0
        run.proc.send_signal(signal.SIGINT)
        out = run.finish(timeout=30)
    assert out.returncode == 130
    summary = json.loads(out.stdout.strip().splitlines()[-1])["summary"]
    assert summary["results"] >= 1 and summary["frames"] >= 10


def test_a_bundle_streams_through_the_same_calls() -> None:
    """A bundle is a runner like a model: windows go into stage 0 in place; results carry the exit."""
    bundle = MODELS / "digits_early_exit"
    with er.load(bundle, "litert:cpu") as model:
        # 32 samples x 32 channels = one 32x32 image per window; the ramp's values saturate the input.
        src = open_source("synthetic:ramp?channels=32&frame_samples=32&count=12&speed=max")
        stream = Stream(model, src, policy=BLOCK, window=32)
        results = list(stream.results())
    assert len(results) == 12 and stream.stats.results == 12
    assert all(r.label in [str(d) for d in range(10)] and 0 <= r.exit_index <= 2 for r in results)
    assert sum(stream.stats.exits) == 12 and len(stream.stats.exits) == max(r.exit_index for r in results) + 1
    assert all(abs(sum(r.scores) - 1) < 1e-3 for r in results)  # a bundle's scores are the exit's softmax


def test_cli_run_a_bundle_takes_its_labels_from_the_manifest(cli: Cli) -> None:
    out = cli(
        "run",
        str(MODELS / "digits_early_exit"),
        "--source",
        "synthetic:ramp?channels=32&frame_samples=32&count=3&speed=max",
        "--window",
        "32",
        "--json",
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == 4 and lines[-1]["summary"]["results"] == 3
    assert all(line["label"] in [str(d) for d in range(10)] and "exit_index" in line for line in lines[:3])


def test_results_cannot_be_consumed_twice_at_once() -> None:
    with er.load(MODEL, "litert:cpu") as model:
        stream = Stream(model, open_source("synthetic:sine?channels=6&count=50&speed=max"), policy=BLOCK)
        first = stream.results()
        next(first)
        with pytest.raises(er.StreamError, match="already being consumed"):
            next(stream.results())
        first.close()
        assert len(list(stream.results())) == 5  # once the first run ended, a new one may start


def test_a_reader_that_does_not_stop_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """A source that ignores stop: the run ends anyway, says so, and refuses a new run while it lives."""
    from edge_runtime.stream import pipeline
    from edge_runtime.stream.codec import make_frame
    from edge_runtime.stream.sources import SourceStats

    release = threading.Event()

    class Stubborn:
        url = "stubborn"

        def __init__(self) -> None:
            self.stats = SourceStats()

        def run(self, on_frame: object, stop: threading.Event) -> None:
            frame = make_frame(np.zeros((100, 6), np.float32))
            on_frame(frame, 0)  # type: ignore[operator]
            release.wait(60)  # ignores stop

    monkeypatch.setattr(pipeline, "READER_STOP_TIMEOUT_S", 0.05)
    with er.load(MODEL, "litert:cpu") as model:
        stream = Stream(model, Stubborn(), policy=BLOCK)  # type: ignore[arg-type]
        assert len(list(stream.results(max_results=1))) == 1
        assert stream.stats.reader_stuck
        with pytest.raises(er.StreamError, match="still running"):
            next(stream.results())
    release.set()


def test_preprocessing_refuses_floats_into_an_unquantized_integer_input_like_infer() -> None:
    from edge_runtime.stream.preprocess import Preprocessor
    from edge_runtime.tensors import TensorSpec, unquantized_message

    spec = TensorSpec("x", (1, 10, 3), np.dtype(np.int8))
    with pytest.raises(er.InputError) as info:
        Preprocessor(Preprocess(), 10, 3, spec, np.float32)
    assert info.value.reason == unquantized_message(spec)
    raw = Preprocessor(Preprocess(), 10, 3, spec, np.int8)  # samples of the input's own type: taken as they are
    window = np.arange(30, dtype=np.int8).reshape(10, 3)
    dst = np.zeros(spec.shape, np.int8)
    raw(window, dst)
    assert np.array_equal(dst.reshape(10, 3), window)
    with pytest.raises(er.InputError, match="unknown quantization"):
        Preprocessor(Preprocess(scale=(2.0,)), 10, 3, spec, np.int8)  # preprocessing makes floats: refused too


def test_swap_changes_the_runner_between_two_windows_and_refuses_one_that_does_not_fit() -> None:
    """Mid-run swap LiteRT -> OpenVINO: every window is inferred exactly once, by one runner or the
    other, and each gives the result it gives alone (same backend, same window: bit-exact)."""
    pre = Preprocess.from_sidecar(SIDECAR)
    url = f"file:{RECORDING}?speed=max&frame=10"
    with er.load(MODEL, "litert:cpu") as lite, er.load(MODEL, "openvino:CPU") as ov:
        alone = {
            m.device: [r.scores for r in Stream(m, FileSource(url), preprocess=pre, policy=BLOCK).results()]
            for m in (lite, ov)
        }
        stream = Stream(lite, FileSource(url), preprocess=pre, policy=BLOCK)
        got = []
        swap = None
        for r in stream.results():
            got.append((r.window_index, stream.model.device, r.scores))
            if r.window_index == 10:
                swap = stream.swap(ov, preprocess=pre)
        assert swap is not None and swap.done.is_set() and swap.old is lite and stream.stats.swaps == 1
        assert [i for i, _, _ in got] == list(range(len(alone["litert:cpu"])))
        assert {d for i, d, _ in got if i <= 10} == {"litert:cpu"} and {d for i, d, _ in got if i > 10} == {
            "openvino:CPU"
        }
        for i, device, scores in got:
            assert scores == alone[device][i]
        with er.load(MODELS / "digits_cnn_int8.tflite", "litert:cpu") as other:
            with pytest.raises(er.ArgumentError, match="does not take this stream's windows"):
                stream.swap(other)
        assert stream.model is ov
