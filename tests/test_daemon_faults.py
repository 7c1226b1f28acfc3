"""Device trouble at run time, in the service itself: real models on both backends, real streams
and sinks; only the failing accelerator is played (this machine has none that fails), by a
runner that wraps a real one and raises, or hangs, on its Nth streaming call."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MODELS

from edge_runtime import load
from edge_runtime.daemon.config import load_config
from edge_runtime.daemon.notify import Notifier
from edge_runtime.daemon.process_worker import ProcessWorker
from edge_runtime.daemon.service import Service, StoppedDuringStart
from edge_runtime.daemon.worker import Worker
from edge_runtime.errors import InferenceError

MODEL = MODELS / "basicmotions_int8.tflite"


class Failing:
    """A real runner that raises (``mode="raise"``) or blocks until ``release`` (``"hang"``) on its
    ``at``-th ``classify_in_place`` call, and every call after it for ``raise``."""

    def __init__(self, runner: Any, at: int, mode: str, release: threading.Event) -> None:
        self._runner, self._at, self._mode, self._release = runner, at, mode, release
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner, name)

    def classify_in_place(self, fill: Callable[..., None], **kw: Any) -> Any:
        self.calls += 1
        if self.calls >= self._at:
            if self._mode == "raise":
                raise InferenceError("the accelerator reset (played by the test)", device=self._runner.device)
            if self.calls == self._at:
                self._release.wait(60)
        return self._runner.classify_in_place(fill, **kw)


@pytest.fixture
def release() -> Iterator[threading.Event]:
    ev = threading.Event()
    yield ev
    ev.set()  # a hung call returns at the end of the test, so its thread ends


def loader_failing_on(device: str, at: int, mode: str, release: threading.Event) -> Callable[..., Any]:
    def loader(path: Any, request: str, **options: Any) -> Any:
        runner = load(path, request, **options)
        return Failing(runner, at, mode, release) if request == device else runner

    return loader


class FailingLoader:
    """``edge_runtime.load``, with the runner of ``device`` made to raise from its ``at``-th call.
    A module-level class, so that a pipeline's process can be sent it (by pickling)."""

    def __init__(self, device: str, at: int) -> None:
        self.device, self.at = device, at

    def __call__(self, path: Any, request: str, **options: Any) -> Any:
        runner = load(path, request, **options)
        return Failing(runner, self.at, "raise", threading.Event()) if request == self.device else runner


class SigtermWhilePickled:
    """``edge_runtime.load``, as a loader that sends this process SIGTERM while it is pickled for a
    pipeline's process: that is, from inside ``Process.start()``."""

    def __call__(self, path: Any, request: str, **options: Any) -> Any:
        return load(path, request, **options)

    def __reduce__(self) -> tuple[type, tuple[()]]:
        os.kill(os.getpid(), signal.SIGTERM)
        return (SigtermWhilePickled, ())


def write_config(tmp_path: Path, source: str, extra: str = "") -> Path:
    path = tmp_path / "edge-runtime.toml"
    path.write_text(
        f"""
[daemon]
state_dir = "{tmp_path / "state"}"
[metrics]
listen = "127.0.0.1:0"
[pipelines.imu]
source = "{source}"
model = "{MODEL}"
device = ["litert:cpu", "openvino:CPU"]
policy = "block"
sinks = ["jsonl:{tmp_path / "imu.jsonl"}"]
{extra}
"""
    )
    return path


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class Serving:
    """``start()`` and ``run()`` on a thread of their own (no signal handlers are touched)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.rc: int | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        try:
            self.service.start()
            self.rc = self.service.run()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test
            self.error = exc

    def join(self, timeout: float = 60.0) -> int:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the service did not end"
        if self.error is not None:
            raise self.error
        assert self.rc is not None
        return self.rc


def test_an_error_on_the_device_falls_back_and_reruns_the_same_window(tmp_path: Path, release: threading.Event) -> None:
    # 4000 samples, windows of 100: 40 windows; the 10th inference on LiteRT raises
    cfg = load_config(write_config(tmp_path, "synthetic:sine?channels=6&count=400&speed=max"))
    service = Service(cfg, Notifier(None), loader=loader_failing_on("litert:cpu", 10, "raise", release))
    assert Serving(service).join() == 0  # the finite source ends; the pipeline did not fail
    got = records(tmp_path / "imu.jsonl")
    assert [r["window_index"] for r in got] == list(range(40)), "no window lost or repeated"
    assert [r["device"] for r in got] == ["litert:cpu"] * 9 + ["openvino:CPU"] * 31
    w = service.workers[0]
    assert isinstance(w, Worker)
    assert w.degraded.startswith("fell back from litert:cpu to openvino:CPU: inference failed on litert:cpu")
    assert w.stream.stats.device_errors == 1
    assert service.metrics is not None
    text = service.metrics.text().decode()
    assert 'edge_runtime_device_errors_total{device="litert:cpu",pipeline="imu"} 1.0' in text
    assert 'edge_runtime_device_info{device="openvino:CPU",pipeline="imu"} 1.0' in text
    assert 'edge_runtime_device_info{device="litert:cpu"' not in text


def test_an_error_in_a_pipeline_process_falls_back_there_and_reruns_the_same_window(tmp_path: Path) -> None:
    # As above, with the pipeline in a process of its own: the child recovers and tells the parent.
    path = write_config(tmp_path, "synthetic:sine?channels=6&count=400&speed=max")
    path.write_text(path.read_text().replace("[daemon]\n", '[daemon]\npipelines_in = "processes"\n'))
    service = Service(load_config(path), Notifier(None), loader=FailingLoader("litert:cpu", 10))
    assert Serving(service).join() == 0
    got = records(tmp_path / "imu.jsonl")
    assert [r["window_index"] for r in got] == list(range(40)), "no window lost or repeated"
    assert [r["device"] for r in got] == ["litert:cpu"] * 9 + ["openvino:CPU"] * 31
    w = service.workers[0]
    assert isinstance(w, ProcessWorker) and w.fallbacks == 1 and w.device == "openvino:CPU"
    assert w.degraded.startswith("fell back from litert:cpu to openvino:CPU: inference failed on litert:cpu")
    assert service.metrics is not None
    text = service.metrics.text().decode()
    assert 'edge_runtime_device_errors_total{device="litert:cpu",pipeline="imu"} 1.0' in text
    assert 'edge_runtime_device_info{device="openvino:CPU",pipeline="imu"} 1.0' in text


def test_sigterm_while_a_pipeline_process_starts_leaves_no_process_behind(tmp_path: Path) -> None:
    # The stop is held until Process.start() is done, then raised: the started child must be
    # killed with it (it ignores SIGTERM, and waiting for "go" it would outlive the service).
    path = write_config(tmp_path, "synthetic:sine?channels=6&rate=100")
    path.write_text(path.read_text().replace("[daemon]\n", '[daemon]\npipelines_in = "processes"\n'))
    before = set(multiprocessing.active_children())
    previous = signal.getsignal(signal.SIGTERM)
    service = Service(load_config(path), Notifier(None), loader=SigtermWhilePickled())
    with pytest.raises(StoppedDuringStart):
        service.start()
    assert set(multiprocessing.active_children()) == before, "the started child was not ended"
    assert service.workers == [] and signal.getsignal(signal.SIGTERM) is previous


class SigtermOn(logging.Handler):
    """Sends this process SIGTERM when a log message contains ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_after_a_pipeline_process_loaded_leaves_no_process_behind(tmp_path: Path) -> None:
    # The handler raises between the line that logs the loaded pipeline and the one that adds its
    # worker to the service: the service must still end that child.
    path = write_config(tmp_path, "synthetic:sine?channels=6&rate=100")
    path.write_text(path.read_text().replace("[daemon]\n", '[daemon]\npipelines_in = "processes"\n'))
    before = set(multiprocessing.active_children())
    service = Service(load_config(path), Notifier(None))
    trigger = SigtermOn("pipeline imu: ")
    logger = logging.getLogger("edge_runtime")
    logger.addHandler(trigger)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with pytest.raises(StoppedDuringStart):
            service.start()
    finally:
        logger.removeHandler(trigger)
        logger.setLevel(level)
    assert service.workers == [], "stopped before the worker was added"
    assert set(multiprocessing.active_children()) == before, "the loaded child was not ended"


def test_with_on_device_error_fail_the_pipeline_fails(tmp_path: Path, release: threading.Event) -> None:
    path = write_config(tmp_path, "synthetic:sine?channels=6&count=400&speed=max", 'on_device_error = "fail"')
    service = Service(load_config(path), Notifier(None), loader=loader_failing_on("litert:cpu", 5, "raise", release))
    assert Serving(service).join() == 1
    assert len(records(tmp_path / "imu.jsonl")) == 4
    health = service.health()
    assert health["state"] == "failed"
    assert health["why"] == ["imu: failed: the accelerator reset (played by the test) [device=litert:cpu]"]


def test_no_device_left_fails_the_pipeline_with_every_reason(tmp_path: Path, release: threading.Event) -> None:
    path = write_config(tmp_path, "synthetic:sine?channels=6&count=400&speed=max")
    path.write_text(path.read_text().replace('["litert:cpu", "openvino:CPU"]', '["litert:cpu"]'))
    service = Service(load_config(path), Notifier(None), loader=loader_failing_on("litert:cpu", 3, "raise", release))
    assert Serving(service).join() == 1
    assert service.workers[0].error is not None and len(records(tmp_path / "imu.jsonl")) == 2


def test_a_hung_inference_hands_the_source_to_the_next_device(tmp_path: Path, release: threading.Event) -> None:
    path = write_config(tmp_path, "synthetic:sine?channels=6&rate=4000", "inference_timeout_s = 0.5")
    service = Service(load_config(path), Notifier(None), loader=loader_failing_on("litert:cpu", 10, "hang", release))
    serving = Serving(service)
    out = tmp_path / "imu.jsonl"
    wait_for(lambda: sum(r["device"] == "openvino:CPU" for r in records(out)) >= 5, what="results on openvino:CPU")
    health = service.health()
    assert health["state"] == "degraded" and health["pipelines"]["imu"]["device"] == "openvino:CPU"
    assert (
        "imu: degraded: fell back from litert:cpu to openvino:CPU: inference on litert:cpu hung for" in health["why"][0]
    )
    hung = service._abandoned[0]
    release.set()  # the hung call returns: its result must not reach the sink
    wait_for(lambda: hung.done, what="the abandoned pipeline's thread to end")
    service.stop.set()
    assert serving.join() == 0
    got = records(out)
    assert sum(r["device"] == "litert:cpu" for r in got) == 9, "the hung call's late result is discarded"
    assert hung.discarded >= 1 and hung.error is None
