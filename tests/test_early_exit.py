"""Early-exit bundles on the real interpreters: manifest checks, real early exit, calibration, deadlines.

``load_bundle`` where a test needs the ``EarlyExitModel`` (thresholds, stages, stage costs);
deadlines are decided by a fake clock (``timed_bundle``), never by how fast this machine is.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import BACKENDS, MODELS, Cli, backend_available

import edge_runtime as er
from edge_runtime.bundle import confidence, read_manifest, softmax
from edge_runtime.early_exit import EarlyExitModel

BUNDLE = MODELS / "digits_early_exit"
DEVICE = {"litert": "litert:cpu", "openvino": "openvino:CPU"}
#: Run every stage unless a deadline cuts it: exits 0 and 1 are never confident.
NEVER = [None, None]


@pytest.fixture
def bundle_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(BUNDLE, dst)
    return dst


def edit(bundle: Path, change: Callable[[dict[str, Any]], object]) -> None:
    path = bundle / "bundle.json"
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


def data(name: str) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    d = np.load(BUNDLE / f"{name}.npz")
    x: np.ndarray[Any, Any] = d["x"].astype(np.float32)
    y: np.ndarray[Any, Any] = d["y"]
    return x, y


def first_sample(model: EarlyExitModel) -> np.ndarray[Any, Any]:
    x, _ = data("test")
    sample: np.ndarray[Any, Any] = x[0].reshape(model.inputs[0].shape)
    return sample


class StageClock:
    """A fake nanosecond clock: it stands still except while a stage runs, which then takes
    exactly ``cost_us[k]`` (set by the test, changeable between runs)."""

    def __init__(self, cost_us: list[float]) -> None:
        self.cost_us = cost_us
        self.now_ns = 0

    def __call__(self) -> int:
        return self.now_ns


@pytest.fixture
def timed_bundle(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[EarlyExitModel, StageClock]]:
    """The shipped bundle on LiteRT, its stages timed by a ``StageClock`` of 100, 200 and 400 us.

    The real interpreters run; each stage's ``invoke`` advances the clock by that stage's
    cost. The load-time stage costs are measured on the same clock, so they are exact.
    """
    loaded = er.load_bundle(BUNDLE, "litert:cpu")
    clock = StageClock([100.0, 200.0, 400.0])
    for k, stage in enumerate(loaded.stages):
        session = stage.session

        def invoke(real: Callable[[], None] = session.invoke, k: int = k) -> None:
            real()
            clock.now_ns += round(clock.cost_us[k] * 1000)

        monkeypatch.setattr(session, "invoke", invoke)
    model = EarlyExitModel(loaded.manifest, loaded.stages, clock=clock, cost_passes=1)
    with model:
        assert model.stage_cost_us == [100.0, 200.0, 400.0]
        yield model, clock


@pytest.mark.parametrize("backend", BACKENDS)
def test_bundle_loads_through_load(backend: str) -> None:
    with er.load(BUNDLE, DEVICE[backend]) as runner:
        assert isinstance(runner, EarlyExitModel)
        model = runner
        assert model.backend == backend and len(model.stages) == 3
        assert model.requantized_carries == [], "the build makes carry quantizations match"
        assert model.labels == model.manifest.labels
        x, _y = data("test")
        for sample in x[:20]:
            sample = sample.reshape(model.inputs[0].shape)
            probs, _ = model.exits_all(sample)
            # The exit taken is the first confident one (by its own measure), else the last.
            rules = [s.exit for s in model.manifest.stages]
            expected = next(
                (k for k, r in enumerate(rules) if r is not None and r.confident(confidence(r.measure, probs[k]))),
                len(rules) - 1,
            )
            r = model.classify(sample)
            assert r.exit_index == expected and len(r.stage_us) == expected + 1
            np.testing.assert_allclose(r.scores, probs[expected], rtol=1e-6)
            assert r.label == model.manifest.labels[r.label_index] and r.label_index == int(np.argmax(probs[expected]))
            assert abs(float(r.scores.sum()) - 1.0) < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_later_stages_run_only_when_needed(backend: str) -> None:
    with er.load_bundle(BUNDLE, DEVICE[backend]) as model:
        sample = first_sample(model)
        model.set_thresholds([0.0, 0.0])  # every first exit is confident
        first = model.classify(sample)
        assert first.exit_index == 0 and len(first.stage_us) == 1
        model.set_thresholds(NEVER)
        last = model.classify(sample)
        assert last.exit_index == 2 and len(last.stage_us) == 3
        model.set_thresholds([0.0, 0.0])
        forced = model.classify(sample, force_all=True)
        assert forced.exit_index == 2 and len(forced.stage_us) == 3
        np.testing.assert_allclose(forced.scores, last.scores)


def test_the_carry_is_passed_raw_and_matches_chaining_by_hand() -> None:
    """Stage by stage with infer_raw: the bundle's final scores equal chaining the raw int8 carries."""
    with er.load_bundle(BUNDLE, "litert:cpu") as model:
        x, _ = data("test")
        q = er.quantize(x[3].reshape(model.inputs[0].shape), model.inputs[0])
        manifest = model.manifest
        carry = q
        outs: dict[str, np.ndarray[Any, Any]] = {}
        for spec, stage in zip(manifest.stages, model.stages):
            outs = dict(zip([o.name for o in stage.outputs], stage.infer_raw(carry)))
            if spec.carry is not None:
                carry = outs[spec.carry]
        logits_spec = next(o for o in model.stages[-1].outputs if o.name == manifest.stages[-1].logits)
        expected = er.dequantize(outs[manifest.stages[-1].logits], logits_spec)
        got = model.classify(x[3].reshape(model.inputs[0].shape), force_all=True)
        np.testing.assert_allclose(got.scores, softmax(expected), rtol=1e-6)


@pytest.mark.skipif(not (backend_available("litert") and backend_available("openvino")), reason="needs both")
def test_both_backends_take_the_same_exits() -> None:
    x, _ = data("test")
    with er.load_bundle(BUNDLE, "litert:cpu") as lm, er.load_bundle(BUNDLE, "openvino:CPU") as om:
        assert lm.thresholds == om.thresholds
        shape = lm.inputs[0].shape
        same_exit = same_label = 0
        for sample in x[:100]:
            a, b = lm.classify(sample.reshape(shape)), om.classify(sample.reshape(shape))
            same_exit += a.exit_index == b.exit_index
            same_label += a.label == b.label
    # int8 kernels differ slightly between backends; a sample right at a threshold may exit
    # one stage apart. Nearly all must agree.
    assert same_exit >= 97 and same_label >= 98, (same_exit, same_label)


@pytest.mark.parametrize(
    ("deadline_ms", "exit_index", "cut"),
    [
        (0.2, 0, True),  # 100 us spent + stage 1's 200 us > 200 us: stage 1 is not started
        (0.35, 1, True),  # 300 us spent + stage 2's 400 us > 350 us
        (0.75, 2, False),  # 700 us in all fits
        (None, 2, False),
    ],
)
def test_deadline_cuts_later_stages(
    timed_bundle: tuple[EarlyExitModel, StageClock], deadline_ms: float | None, exit_index: int, cut: bool
) -> None:
    model, _clock = timed_bundle
    model.set_thresholds(NEVER)
    sample = first_sample(model)
    r = model.classify(sample, deadline_ms=deadline_ms)
    assert (r.exit_index, r.cut_by_deadline) == (exit_index, cut)
    assert r.stage_us == (100.0, 200.0, 400.0)[: exit_index + 1]
    forced = model.classify(sample, deadline_ms=deadline_ms, force_all=True)
    assert (forced.exit_index, forced.cut_by_deadline) == (2, False), "force_all runs every stage"


def test_a_stage_cut_by_a_slow_spell_comes_back(timed_bundle: tuple[EarlyExitModel, StageClock]) -> None:
    """Stage 2 is slow for a while: its estimate grows, deadlines cut it; once the spell is over
    the estimate of the skipped stage drifts back to its load-time cost and it runs again."""
    model, clock = timed_bundle
    model.set_thresholds(NEVER)
    sample = first_sample(model)
    deadline = 1.5 * sum(model.stage_cost_us) / 1e3  # 1.05 ms: 700 us of stages fit
    clock.cost_us[2] = 4000.0  # the slow spell (no deadline yet: every stage runs and is measured)
    for _ in range(10):
        model.classify(sample)
    assert model.stage_cost_us[2] > 2000
    clock.cost_us[2] = 400.0  # over
    results = [model.classify(sample, deadline_ms=deadline) for _ in range(60)]
    cut = [r.cut_by_deadline for r in results]
    assert cut[0] and results[0].exit_index == 1, "the inflated estimate cuts stage 2"
    back = cut.index(False)
    assert not any(cut[back:]), "once back, it stays back"
    assert all(r.exit_index == 2 and r.stage_us == (100.0, 200.0, 400.0) for r in results[back:])
    assert model.stage_cost_us[:2] == [100.0, 200.0] and model.stage_cost_us[2] < 500


def test_calibration_keeps_accuracy_and_writes_atomically(bundle_copy: Path) -> None:
    from edge_runtime.calibrate import apply, choose

    x, y = data("calibration")
    with er.load_bundle(bundle_copy, "litert:cpu") as model:
        cal = choose(model, x, y, max_accuracy_drop=0.01)
        assert cal.chosen.accuracy >= cal.all_stages.accuracy - 0.01
        # Modelled from the measured stage costs and the exits taken: fewer stages, less time.
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
def test_bad_manifests_name_bundle_stage_and_field(
    bundle_copy: Path, change: Callable[[dict[str, Any]], object], message: str
) -> None:
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
    with er.load_bundle(BUNDLE, "litert:cpu") as model:
        model.set_thresholds([0.5, 0.6])
        assert model.thresholds == (0.5, 0.6)
        with pytest.raises(er.ArgumentError, match="outside"):
            model.set_thresholds([0.5, 7.0])
        with pytest.raises(er.ArgumentError, match="2 exits"):
            model.set_thresholds([0.5])
        assert model.thresholds == (0.5, 0.6), "a refused change leaves the thresholds as they were"


def test_a_bundle_runs_in_a_stream() -> None:
    """Streams take bundles too: each window is one early-exit inference, counted per exit."""
    from edge_runtime.stream.pipeline import Stream
    from edge_runtime.stream.queue import BLOCK
    from edge_runtime.stream.sources import open_source

    with er.load_bundle(BUNDLE, "litert:cpu") as model:
        assert model.labels is not None
        # [1, 32, 32, 1] input: windows of 32 samples x 32 channels
        src = open_source("synthetic:sine?channels=32&frame=8&count=40&speed=max")
        stream = Stream(model, src, policy=BLOCK)
        results = list(stream.results())
        labels = model.labels
    assert len(results) == (40 * 8 - 32) // 32 + 1
    assert [r.window_index for r in results] == list(range(len(results)))
    assert all(r.label in labels and abs(sum(r.scores) - 1) < 1e-3 for r in results)
    exits = np.bincount([r.exit_index for r in results], minlength=len(stream.stats.exits))
    assert stream.stats.exits == exits.tolist() and sum(stream.stats.exits) == len(results)


@pytest.mark.parametrize(("measure", "placeholder"), [("entropy", 1.0), ("margin", 0.5)])
def test_calibration_with_other_measures_matches_run_time(bundle_copy: Path, measure: str, placeholder: float) -> None:
    """What calibration predicts for its thresholds is what inference then does, for each measure."""
    from edge_runtime.calibrate import apply, choose

    def use(raw: dict[str, Any]) -> None:
        for st in raw["stages"][:-1]:
            st["exit"] = {"measure": measure, "threshold": placeholder}

    edit(bundle_copy, use)
    mode = (bundle_copy / "bundle.json").stat().st_mode & 0o777
    x, y = data("calibration")
    with er.load_bundle(bundle_copy, "litert:cpu") as model:
        cal = choose(model, x, y, max_accuracy_drop=0.01)
        apply(model, cal, "calibration.npz")
    assert (bundle_copy / "bundle.json").stat().st_mode & 0o777 == mode, "calibrate keeps the file's permissions"
    with er.load_bundle(bundle_copy, "litert:cpu") as model:
        assert all(s.exit is None or s.exit.measure == measure for s in model.manifest.stages)
        shape = model.inputs[0].shape
        results = [model.classify(sample.reshape(shape)) for sample in x]
    # Confidence is reported by the exit's own measure (the last stage, which has no rule, by max_prob).
    assert {r.measure for r in results if r.exit_index < 2} == {measure}
    rates = np.bincount([r.exit_index for r in results], minlength=3) / len(results)
    np.testing.assert_allclose(rates, cal.chosen.exit_rates, atol=0.02)


def test_never_exit_is_saved_as_null_and_honoured(bundle_copy: Path) -> None:
    from edge_runtime.calibrate import Calibration, apply, evaluate

    x, _y = data("calibration")
    with er.load_bundle(bundle_copy, "litert:cpu") as model:
        measures = ["max_prob", "max_prob"]
        conf = np.ones((3, 4))
        pred = np.zeros((3, 4), dtype=np.int64)
        never = evaluate((2.0, 0.5), measures, conf, pred, np.zeros(4, dtype=np.int64), np.ones(3))
        apply(model, Calibration(never, never, (1.0, 1.0, 1.0), 4, 0.01, (never,)), "test")
        assert model.thresholds == (None, 0.5)
    raw = json.loads((bundle_copy / "bundle.json").read_text())
    assert raw["stages"][0]["exit"]["threshold"] is None
    with er.load_bundle(bundle_copy, "litert:cpu") as model:
        model.set_thresholds([None, 0.0])
        r = model.classify(x[0].reshape(model.inputs[0].shape))
        assert r.exit_index == 1, "exit 0 is never taken; exit 1 (threshold 0) always is"


def test_cli_calibrate_and_bench_a_bundle(cli: Cli, bundle_copy: Path) -> None:
    out = cli("calibrate", bundle_copy, "--data", bundle_copy / "calibration.npz", "--json", timeout=300)
    assert out.returncode == 0, out.stderr[-1000:]
    record = json.loads(out.stdout)["calibration"]
    assert record["accuracy"] >= record["accuracy_all_stages"] - 0.01
    assert record["mean_latency_us"] < record["mean_latency_all_stages_us"]
    assert read_manifest(bundle_copy).calibration == record, "written to bundle.json"
    out = cli("bench", bundle_copy, "--data", bundle_copy / "test.npz", "--json", timeout=300)
    assert out.returncode == 0, out.stderr[-1000:]
    bench = json.loads(out.stdout)
    early, every = bench["variants"]["early exit"], bench["variants"]["all stages"]
    assert early["samples"] == every["samples"] == bench["samples"]
    assert sum(early["exit_histogram"]) == bench["samples"] and early["exit_histogram"][0] > 0
    assert every["exit_histogram"] == [0, 0, bench["samples"]], "all stages: every sample leaves at the last exit"
    assert bench["accuracy_drop_pp"] <= 1.0 and bench["speedup_mean"] > 0
