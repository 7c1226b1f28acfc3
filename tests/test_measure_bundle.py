"""Measured choice for an early-exit bundle (``edge_runtime.measure_bundle``): the whole bundle
is timed per setting, on representative data when given, else every stage once. As in
test_measure.py, nothing asserts which setting is fastest on this noisy machine: the tests
check what was timed, the cache, and what the bundle says in ``reason``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import MODELS

import edge_runtime
import edge_runtime.bundle
from edge_runtime import measure
from edge_runtime.early_exit import EarlyExitModel
from edge_runtime.errors import ArgumentError

BUNDLE = MODELS / "digits_early_exit"
DATA = np.load(BUNDLE / "test.npz")["x"][:32]


def bundle(device: str = "litert:cpu", **options: Any) -> EarlyExitModel:
    """``edge_runtime.load`` of the bundle (the public door, typed for the test)."""
    runner = edge_runtime.load(BUNDLE, device, **options)
    assert isinstance(runner, EarlyExitModel)
    return runner


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setattr(measure, "BUDGET_S", 0.05)
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGE_RUNTIME_MEASURE_CACHE", str(cache))
    return cache


def test_threads_auto_times_the_whole_bundle_per_thread_count_and_caches_it() -> None:
    with bundle("litert:cpu", threads="auto") as b:
        got = b.measurement
        assert got is not None and not got.cached
        assert [(t.request, t.threads) for t in got.table] == [
            ("litert:cpu", n) for n in measure.default_thread_counts()
        ]
        assert all(t.error is None and t.p50_us > 0 for t in got.table)
        assert b.stages[0].device == got.fastest.request
        assert "fastest of" in b.reason
    with bundle("litert:cpu", threads="auto") as again:
        assert again.measurement is not None and again.measurement.cached
        assert again.measurement.key == got.key


def test_data_and_per_stage_are_different_decisions() -> None:
    with bundle("litert:cpu", threads="auto") as per_stage:
        assert per_stage.measurement is not None
    with bundle("litert:cpu", threads="auto", measure_data=DATA) as on_data:
        assert on_data.measurement is not None and not on_data.measurement.cached
        assert on_data.measurement.key != per_stage.measurement.key
    other = DATA[::-1].copy()  # other data: another decision
    with bundle("litert:cpu", threads="auto", measure_data=other) as b:
        assert b.measurement is not None and not b.measurement.cached


def test_data_with_a_batch_dimension_of_one_per_window_works() -> None:
    with bundle("litert:cpu", threads="auto", measure_data=DATA[:, None]) as b:
        assert b.measurement is not None


def test_the_data_path_classifies_the_windows_and_the_per_stage_path_runs_every_stage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What each figure times: on data, ``classify`` over the given windows in turn (the real
    method, counted); without data, every stage's ``infer_raw`` once per call and no classify."""
    from edge_runtime.early_exit import EarlyExitModel
    from edge_runtime.model import Model

    seen: list[bytes] = []
    stage_runs: list[int] = []
    real_classify, real_infer_raw = EarlyExitModel.classify, Model.infer_raw

    def classify(self: EarlyExitModel, x: object, **kw: object) -> object:
        seen.append(np.asarray(x).tobytes())
        return real_classify(self, x, **kw)  # type: ignore[arg-type]

    def infer_raw(self: Model, x: object) -> object:
        stage_runs.append(id(self))
        return real_infer_raw(self, x)  # type: ignore[arg-type]

    monkeypatch.setattr(EarlyExitModel, "classify", classify)
    monkeypatch.setattr(Model, "infer_raw", infer_raw)
    windows = DATA[:5]
    measure_bundle_p50(windows)
    assert seen and {w.tobytes() for w in windows} == set(seen)  # every window, nothing else
    seen.clear()
    stage_runs.clear()
    measure_bundle_p50(None)
    assert not seen
    stages = len(edge_runtime.bundle.read_manifest(BUNDLE).stages)
    assert len(stage_runs) % stages == 0 and len(set(stage_runs)) == stages


def measure_bundle_p50(data: np.ndarray | None) -> float:
    from edge_runtime.bundle import read_manifest
    from edge_runtime.devices import parse_request
    from edge_runtime.measure_bundle import measure_bundle

    choice = measure_bundle(read_manifest(BUNDLE), [parse_request("litert:cpu")], {"threads": 1}, data, budget_s=0.05)
    return choice.fastest.p50_us


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"measure_data": DATA}, "only with device"),
        ({"threads": "auto", "measure_data": np.zeros((4, 5, 5), np.float32)}, "the bundle takes"),
        ({"threads": "auto", "measure_data": np.zeros((0, 32, 32, 1), np.float32)}, "array of windows"),
    ],
)
def test_bad_measure_data(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ArgumentError, match=match):
        bundle("litert:cpu", **kwargs)


def test_measure_data_for_a_model_file_is_an_error() -> None:
    with pytest.raises(ArgumentError, match="early-exit bundles"):
        edge_runtime.load(MODELS / "digits_cnn_int8.tflite", "litert:cpu", threads="auto", measure_data=DATA)
