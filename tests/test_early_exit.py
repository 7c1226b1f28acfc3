"""Early-exit bundles on the real interpreters: manifest checks, real early exit, calibration, deadlines."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import BACKENDS, MODELS, backend_available

import edge_runtime as er
from edge_runtime.bundle import read_manifest
from edge_runtime.early_exit import EarlyExitModel

BUNDLE = MODELS / "digits_early_exit"
DEVICE = {"litert": "litert:cpu", "openvino": "openvino:CPU"}


@pytest.fixture
def bundle_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(BUNDLE, dst)
    return dst


def edit(bundle: Path, change: Any) -> None:
    path = bundle / "bundle.json"
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


def data(name: str) -> tuple[np.ndarray, np.ndarray]:
    d = np.load(BUNDLE / f"{name}.npz")
    return d["x"].astype(np.float32), d["y"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_bundle_loads_through_load(backend: str) -> None:
    with er.load(BUNDLE, DEVICE[backend]) as model:
        assert isinstance(model, EarlyExitModel)
        assert model.backend == backend and len(model.stages) == 3
        assert model.requantized_carries == [], "the build makes carry quantizations match"
        x, _y = data("test")
        r = model.infer(x[0].reshape(model.inputs[0].shape))
        assert r.label in model.labels and 0 <= r.exit_index < 3 and len(r.stage_us) == r.exit_index + 1
        assert abs(float(r.scores.sum()) - 1.0) < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_later_stages_run_only_when_needed(backend: str) -> None:
    with er.load(BUNDLE, DEVICE[backend]) as model:
        x, _ = data("test")
        sample = x[0].reshape(model.inputs[0].shape)
        model.set_thresholds([0.0, 0.0])  # every first exit is confident
        first = model.infer(sample)
        assert first.exit_index == 0 and len(first.stage_us) == 1
        model.set_thresholds([1.0, 1.0])  # never confident (max_prob of 1.0 exactly is not reached by int8 logits)
        last = model.infer(sample)
        assert last.exit_index == 2 and len(last.stage_us) == 3
        forced = model.infer(sample, force_all=True)
        np.testing.assert_allclose(forced.scores, last.scores)


def test_the_carry_is_passed_raw_and_matches_chaining_by_hand() -> None:
    """Stage by stage with infer_raw: the bundle's final scores equal chaining the raw int8 carries."""
    with er.load(BUNDLE, "litert:cpu") as model:
        x, _ = data("test")
        q = er.quantize(x[3].reshape(model.inputs[0].shape), model.inputs[0])
        manifest = model.manifest
        carry = q
        for _k, (spec, stage) in enumerate(zip(manifest.stages, model.stages)):
            outs = dict(zip([o.name for o in stage.outputs], stage.infer_raw(carry)))
            if spec.carry is not None:
                carry = outs[spec.carry]
        logits_spec = next(o for o in model.stages[-1].outputs if o.name == manifest.stages[-1].logits)
        expected = er.dequantize(outs[manifest.stages[-1].logits], logits_spec)
        got = model.infer(x[3].reshape(model.inputs[0].shape), force_all=True)
        from edge_runtime.bundle import softmax

        np.testing.assert_allclose(got.scores, softmax(expected))


@pytest.mark.skipif(not (backend_available("litert") and backend_available("openvino")), reason="needs both")
def test_both_backends_take_the_same_exits() -> None:
    x, _ = data("test")
    with er.load(BUNDLE, "litert:cpu") as lm, er.load(BUNDLE, "openvino:CPU") as om:
        assert lm.thresholds == om.thresholds
        shape = lm.inputs[0].shape
        same_exit = same_label = 0
        for sample in x[:100]:
            a, b = lm.infer(sample.reshape(shape)), om.infer(sample.reshape(shape))
            same_exit += a.exit_index == b.exit_index
            same_label += a.label == b.label
    # int8 kernels differ slightly between backends; a sample right at a threshold may exit
    # one stage apart. Nearly all must agree.
    assert same_exit >= 97 and same_label >= 98, (same_exit, same_label)


def test_deadline_cuts_later_stages() -> None:
    with er.load(BUNDLE, "litert:cpu") as model:
        x, _ = data("test")
        model.set_thresholds([1.0, 1.0])
        sample = x[0].reshape(model.inputs[0].shape)
        r = model.infer(sample, deadline_ms=(model.stage_cost_us[0] + 0.5 * model.stage_cost_us[1]) / 1e3)
        assert r.cut_by_deadline and r.exit_index == 0
        r = model.infer(sample, deadline_ms=1000)
        assert not r.cut_by_deadline and r.exit_index == 2


def test_calibration_keeps_accuracy_and_writes_atomically(bundle_copy: Path) -> None:
    from edge_runtime.calibrate import apply, choose

    x, y = data("calibration")
    with er.load(bundle_copy, "litert:cpu") as model:
        cal = choose(model, x, y, max_accuracy_drop=0.01)
        assert cal.chosen.accuracy >= cal.all_stages.accuracy - 0.01
        assert cal.chosen.mean_latency_us < cal.all_stages.mean_latency_us
        apply(model, cal, "calibration.npz")
    manifest = read_manifest(bundle_copy)
    assert manifest.thresholds == pytest.approx(cal.chosen.thresholds, abs=1e-6)
    assert manifest.calibration is not None and manifest.calibration["samples"] == len(y)
    assert [p.name for p in bundle_copy.iterdir() if p.name.startswith(".bundle.")] == [], "no temp file left"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.update(extra=1), r"top level: unknown key\(s\) \['extra'\]"),
        (lambda r: r["stages"][0].update(carry_name="x"), r"stages\[0\]: unknown key\(s\) \['carry_name'\]"),
        (lambda r: r["stages"][1].update(tflite="missing.tflite", openvino=None), r"stages\[1\]\.tflite: stage file "),
        (lambda r: r["stages"][0]["exit"].update(threshold=1.5), r"stages\[0\]\.exit\.threshold: 1\.5 is outside"),
        (lambda r: r["stages"][0]["exit"].update(measure="vibes"), r"stages\[0\]\.exit\.measure: 'vibes'"),
        (lambda r: r.update(version=2), r"made for manifest version 2"),
        (lambda r: r.update(format="other"), r"format: 'other'"),
        (lambda r: r["stages"][2].update(exit={"measure": "max_prob", "threshold": 0.5}), r"last stage always exits"),
    ],
)
def test_bad_manifests_name_bundle_stage_and_field(bundle_copy: Path, change: Any, message: str) -> None:
    edit(bundle_copy, change)
    with pytest.raises(er.ModelFileError, match=message) as info:
        er.load(bundle_copy, "litert:cpu")
    assert str(bundle_copy) in str(info.value)


def test_label_count_must_match_the_heads(bundle_copy: Path) -> None:
    edit(bundle_copy, lambda r: r.update(labels=r["labels"][:-1]))
    with pytest.raises(er.ModelLoadError, match=r"stage 0 .*exit head gives .* scores for 9 labels"):
        er.load(bundle_copy, "litert:cpu")


def test_mismatched_stage_shapes_are_caught(bundle_copy: Path) -> None:
    """Stage 1 replaced by stage 2: its input is not what stage 0 carries."""
    edit(
        bundle_copy,
        lambda r: r["stages"][1].update(tflite=r["stages"][2]["tflite"], openvino=None, input=r["stages"][2]["input"]),
    )
    with pytest.raises(
        er.ModelLoadError,
        match=r"stage 0 .*carries int8\[1, 32, 32, 16\] but stage 1 takes "
        r"int8\[1, 32, 32, 32\]",
    ):
        er.load(bundle_copy, "litert:cpu")


def test_thresholds_change_at_run_time_without_reloading() -> None:
    with er.load(BUNDLE, "litert:cpu") as model:
        model.set_thresholds([0.5, 0.6])
        assert model.thresholds == (0.5, 0.6)
        with pytest.raises(ValueError, match="outside"):
            model.set_thresholds([0.5, 7.0])
        with pytest.raises(ValueError, match="2 exits"):
            model.set_thresholds([0.5])


def test_a_bundle_runs_in_a_stream() -> None:
    """Streams take bundles too: each window is one early-exit inference."""
    from edge_runtime.stream.pipeline import Stream
    from edge_runtime.stream.queue import BLOCK
    from edge_runtime.stream.sources import open_source

    with er.load(BUNDLE, "litert:cpu") as model:
        # [1, 32, 32, 1] input: windows of 32 samples x 32 channels
        src = open_source("synthetic:sine?channels=32&frame=8&count=40&speed=max")
        stream = Stream(model, src, policy=BLOCK, labels=list(model.labels))  # type: ignore[arg-type]
        results = list(stream.results())
    assert len(results) == (40 * 8 - 32) // 32 + 1
    assert all(r.label in model.labels and abs(sum(r.scores) - 1) < 1e-3 for r in results)
    assert model.last_result.exit_index in (0, 1, 2)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("measure", "placeholder"), [("entropy", 1.0), ("margin", 0.5)])
def test_calibration_with_other_measures_matches_run_time(bundle_copy: Path, measure: str, placeholder: float) -> None:
    """What calibration predicts for its thresholds is what inference then does, for each measure."""
    import os

    from edge_runtime.calibrate import apply, choose

    def use(raw: dict[str, Any]) -> None:
        for st in raw["stages"][:-1]:
            st["exit"] = {"measure": measure, "threshold": placeholder}

    edit(bundle_copy, use)
    mode = (bundle_copy / "bundle.json").stat().st_mode & 0o777
    x, y = data("calibration")
    with er.load(bundle_copy, "litert:cpu") as model:
        cal = choose(model, x, y, max_accuracy_drop=0.01)
        apply(model, cal, "calibration.npz")
    assert (bundle_copy / "bundle.json").stat().st_mode & 0o777 == mode, "calibrate keeps the file's permissions"
    with er.load(bundle_copy, "litert:cpu") as model:
        assert all(s.exit is None or s.exit.measure == measure for s in model.manifest.stages)
        shape = model.inputs[0].shape
        exits = [model.infer(sample.reshape(shape)).exit_index for sample in x]
    rates = np.bincount(exits, minlength=3) / len(exits)
    np.testing.assert_allclose(rates, cal.chosen.exit_rates, atol=0.02)
    assert os.path.getsize(bundle_copy / "bundle.json") > 0


def test_never_exit_is_saved_as_null_and_honoured(bundle_copy: Path) -> None:
    from edge_runtime.calibrate import Calibration, apply, evaluate

    x, _y = data("calibration")
    with er.load(bundle_copy, "litert:cpu") as model:
        measures = ["max_prob", "max_prob"]
        conf = np.ones((3, 4))
        pred = np.zeros((3, 4), dtype=np.int64)
        never = evaluate((2.0, 0.5), measures, conf, pred, np.zeros(4, dtype=np.int64), np.ones(3))
        apply(model, Calibration(never, never, (1.0, 1.0, 1.0), 4, 0.01, (never,)), "test")
        assert model.thresholds == (None, 0.5)
    raw = json.loads((bundle_copy / "bundle.json").read_text())
    assert raw["stages"][0]["exit"]["threshold"] is None
    with er.load(bundle_copy, "litert:cpu") as model:
        model.set_thresholds([None, 0.0])
        r = model.infer(x[0].reshape(model.inputs[0].shape))
        assert r.exit_index == 1, "exit 0 is never taken; exit 1 (threshold 0) always is"


def test_a_stage_cut_by_a_slow_spell_comes_back() -> None:
    with er.load(BUNDLE, "litert:cpu") as model:
        x, _ = data("test")
        sample = x[0].reshape(model.inputs[0].shape)
        model.set_thresholds([1.0, 1.0])
        deadline = 1.5 * sum(model.stage_cost_us) / 1e3
        model.stage_cost_us[2] *= 10  # one slow spell inflated the estimate
        results = [model.infer(sample, deadline_ms=deadline) for _ in range(60)]
        assert results[0].cut_by_deadline
        assert not results[-1].cut_by_deadline and results[-1].exit_index == 2


def test_cli_calibrate_and_bench_a_bundle(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from conftest import ROOT

    bundle = tmp_path / "b"
    shutil.copytree(BUNDLE, bundle)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    run = [sys.executable, "-m", "edge_runtime"]
    out = subprocess.run(
        [*run, "calibrate", str(bundle), "--data", str(bundle / "calibration.npz"), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-1000:]
    record = json.loads(out.stdout)["calibration"]
    assert record["accuracy"] >= record["accuracy_all_stages"] - 0.01
    assert record["mean_latency_us"] < record["mean_latency_all_stages_us"]
    out = subprocess.run(
        [*run, "bench", str(bundle), "--data", str(bundle / "test.npz"), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-1000:]
    bench = json.loads(out.stdout)
    assert bench["speedup_mean"] > 1.5 and bench["accuracy_drop_pp"] <= 1.0
    assert sum(bench["variants"]["early exit"]["exit_histogram"]) == bench["samples"]
