"""The ``Runner`` contract: the same calls, the same answers' shape, on a plain model and on an
early-exit bundle, on LiteRT and on OpenVINO (real interpreters, no mocks).

Both runners get labels that are words, not the digits' own "0".."9", so that a label read
from the sidecar or the manifest cannot be mistaken for the index printed as text.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import MODELS, backend_available

import edge_runtime as er
from edge_runtime.bundle import MEASURES, confidence, read_manifest, write_manifest
from edge_runtime.early_exit import EarlyExitModel
from edge_runtime.sidecar import read_sidecar

DEVICE = {"litert": "litert:cpu", "openvino": "openvino:CPU"}
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
KINDS = ("model", "bundle")
#: What ``to_dict()`` holds for every runner (``edge-runtime info --json``).
COMMON_KEYS = {
    "path",
    "format",
    "backend",
    "device",
    "device_full_name",
    "execution_devices",
    "reason",
    "attempts",
    "labels",
    "inputs",
    "outputs",
}


@pytest.fixture(scope="module")
def worded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The digits model (with its sidecar) and the digits bundle, copied, their labels made words."""
    root = tmp_path_factory.mktemp("worded")
    model = root / "digits.tflite"
    shutil.copyfile(MODELS / "digits_cnn_int8.tflite", model)
    side = json.loads((MODELS / "digits_cnn_int8.json").read_text())
    side["labels"] = list(WORDS)
    model.with_suffix(".json").write_text(json.dumps(side))
    bundle = root / "bundle"
    shutil.copytree(MODELS / "digits_early_exit", bundle)
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["labels"] = list(WORDS)
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    return {"model": model, "bundle": bundle}


@pytest.fixture(scope="module")
def samples() -> dict[str, np.ndarray[Any, Any]]:
    """A few float inputs each runner classifies (already preprocessed, as ``infer`` takes them)."""
    model = np.load(MODELS / "digits_cnn_int8_test.npz")["x"][:5].astype(np.float32)
    bundle = np.load(MODELS / "digits_early_exit" / "test.npz")["x"][:5].astype(np.float32)
    return {"model": model.reshape(5, 1, 8, 8, 1), "bundle": bundle.reshape(5, 1, 32, 32, 1)}


RUNNERS = [
    pytest.param((k, b), id=f"{k}-{b}", marks=pytest.mark.skipif(not backend_available(b), reason=f"{b} not installed"))
    for k in KINDS
    for b in DEVICE
]


@pytest.fixture(scope="module", params=RUNNERS)
def loaded(request: pytest.FixtureRequest, worded: dict[str, Path]) -> Iterator[tuple[str, er.Runner]]:
    """(kind, runner): each runner loaded once for the module, through ``load``."""
    kind, backend = request.param
    with er.load(worded[kind], DEVICE[backend]) as runner:
        yield kind, runner


def test_both_are_runners_with_the_same_properties(loaded: tuple[str, er.Runner], worded: dict[str, Path]) -> None:
    kind, r = loaded
    assert isinstance(r, er.Runner)
    assert isinstance(r, er.Model if kind == "model" else EarlyExitModel)
    assert r.path == worded[kind] and r.format == ("tflite" if kind == "model" else "bundle")
    assert r.device == DEVICE[r.backend] and r.reason and isinstance(r.attempts, tuple)
    assert r.labels == WORDS, "from the sidecar (model) or the manifest (bundle)"
    assert not r.closed
    assert all(isinstance(s, er.TensorSpec) for s in (*r.inputs, *r.outputs))
    assert len(r.inputs) == 1 and r.inputs[0].dtype == np.int8


def test_infer_returns_new_float32_arrays(loaded: tuple[str, er.Runner], samples: dict[str, Any]) -> None:
    kind, r = loaded
    x = samples[kind][0]
    out = r.infer(x)
    assert isinstance(out, list) and len(out) == len(r.outputs)
    assert out[0].dtype == np.float32 and out[0].shape == r.outputs[0].shape
    if kind == "bundle":
        assert r.outputs[0].shape == (1, len(WORDS)), "a bundle's one output is its scores"
    kept = out[0].copy()
    out[0][...] = -1  # the caller's to change
    np.testing.assert_array_equal(r.infer(x)[0], kept)


def test_classify_names_the_class(loaded: tuple[str, er.Runner], samples: dict[str, Any]) -> None:
    kind, r = loaded
    for x in samples[kind]:
        c = r.classify(x)
        assert isinstance(c, er.Classification)
        assert c.scores.dtype == np.float32 and c.scores.shape == (len(WORDS),)
        assert c.label_index == int(np.argmax(c.scores)) and c.label == WORDS[c.label_index]
        np.testing.assert_allclose(c.scores, r.infer(x)[0].reshape(-1), rtol=1e-6)
        assert not c.cut_by_deadline and all(t > 0 for t in c.stage_us) and c.total_us == sum(c.stage_us)
        if kind == "model":
            assert c.exit_index == 0 and len(c.stage_us) == 1 and c.measure == "max_score"
            assert c.confidence == float(c.scores.max())
            assert r.classify(x, deadline_ms=1e-6).label_index == c.label_index, "a plain model has no stage to cut"
        else:
            assert c.measure in MEASURES and len(c.stage_us) == c.exit_index + 1
            assert c.confidence == pytest.approx(confidence(c.measure, c.scores.astype(np.float64)), abs=1e-6)
            assert abs(float(c.scores.sum()) - 1) < 1e-5
        d = c.to_dict()
        assert d["label"] == c.label and d["exit_index"] == c.exit_index and json.dumps(d)


def test_classify_in_place_answers_as_classify(loaded: tuple[str, er.Runner], samples: dict[str, Any]) -> None:
    kind, r = loaded
    spec = r.inputs[0]
    seen: list[tuple[tuple[int, ...], np.dtype[Any]]] = []
    for x in samples[kind]:
        q = er.quantize(x, spec)
        seen.clear()

        def fill(dst: np.ndarray[Any, Any], q: np.ndarray[Any, Any] = q) -> None:
            seen.append((dst.shape, dst.dtype))
            np.copyto(dst, q)

        c, expected = r.classify_in_place(fill), r.classify(x)
        assert seen == [(spec.shape, spec.dtype)], "fill is called once, with the input tensor's shape and dtype"
        assert (c.label, c.label_index, c.exit_index) == (expected.label, expected.label_index, expected.exit_index)
        np.testing.assert_array_equal(c.scores, expected.scores)


def test_to_dict_and_describe(loaded: tuple[str, er.Runner]) -> None:
    _kind, r = loaded
    d = r.to_dict()
    assert COMMON_KEYS <= set(d) and "passed_over" not in d
    assert d["attempts"] == list(r.attempts) and d["device"] == r.device and d["labels"] == list(WORDS)
    assert json.loads(json.dumps(d)) == d, "plain data"
    text = r.describe()
    assert isinstance(text, str) and "\n" not in text and r.device in text


def _calls_after_close(r: er.Runner, x: np.ndarray[Any, Any]) -> dict[str, Callable[[], object]]:
    q = er.quantize(x, r.inputs[0])

    def fill(dst: np.ndarray[Any, Any]) -> None:
        raise AssertionError("fill must not be called on a closed runner")

    calls: dict[str, Callable[[], object]] = {
        "infer": lambda: r.infer(x),
        "classify": lambda: r.classify(x),
        "classify_in_place": lambda: r.classify_in_place(fill),
    }
    if isinstance(r, er.Model):
        m = r
        calls.update(
            infer_raw=lambda: m.infer_raw(q),
            infer_in_place=lambda: m.infer_in_place(fill),
            session=lambda: m.session,
        )
    return calls


@pytest.mark.parametrize("kind", KINDS)
def test_close_is_idempotent_and_every_call_then_raises_the_same(
    kind: str, worded: dict[str, Path], samples: dict[str, Any]
) -> None:
    backends = [b for b in DEVICE if backend_available(b)]
    if not backends:
        pytest.skip("no backend installed")
    x = samples[kind][0]
    seen: dict[str, set[tuple[type[BaseException], str, str | None]]] = {}
    for backend in backends:
        with er.load(worded[kind], DEVICE[backend]) as r:
            assert not r.closed
            assert r.classify(x).label in WORDS
        assert r.closed, "the with block closed it"
        r.close()  # a second close is harmless
        assert r.closed
        for name, call in _calls_after_close(r, x).items():
            with pytest.raises(er.ModelClosedError) as info:
                call()
            err = info.value
            assert isinstance(err, er.InferenceError)
            assert (err.backend, err.device) == (backend, DEVICE[backend])
            seen.setdefault(name, set()).add((type(err), err.reason, err.path))
    for name, kinds in seen.items():
        assert kinds == {(er.ModelClosedError, "model is closed", str(worded[kind]))}, (name, kinds)


def test_importing_the_package_imports_no_backend() -> None:
    code = (
        "import sys, edge_runtime\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('openvino', 'ai_edge_litert', 'tflite_runtime')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd to count open files")
def test_write_manifest_that_fails_leaves_no_temp_file_and_no_open_fd(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(MODELS / "digits_early_exit", bundle)
    before_bytes = (bundle / "bundle.json").read_bytes()
    before_files = sorted(p.name for p in bundle.iterdir())
    manifest = read_manifest(bundle)
    fds = _open_fds()
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_manifest(manifest, {"date": "today", "unserialisable": object()})
    assert _open_fds() == fds, "the temp file's descriptor was closed"
    assert sorted(p.name for p in bundle.iterdir()) == before_files, "no temp file left behind"
    assert (bundle / "bundle.json").read_bytes() == before_bytes, "the manifest is untouched"
    write_manifest(manifest, {"date": "today"})  # and a good write still works
    assert read_manifest(bundle).calibration == {"date": "today"}
    assert _open_fds() == fds


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda s: s.update(lables=s.pop("labels")),
            r"top level: unknown key\(s\) \['lables'\]; known: .*\blabels\b.*\bpreprocessing\b",
        ),
        (
            lambda s: s["preprocessing"].update(divisr=s["preprocessing"].pop("divisor")),
            r"preprocessing \(scale\): unknown key\(s\) \['divisr'\]; known: .*\bdivisor\b",
        ),
        (
            lambda s: s["preprocessing"].update(kind="zscore"),
            r"preprocessing\.kind: unknown kind 'zscore'; known: none, scale, standardize_per_channel",
        ),
    ],
    ids=["top-level key", "preprocessing key", "kind"],
)
def test_sidecars_are_read_strictly(
    tmp_path: Path, change: Callable[[dict[str, Any]], object], message: str, worded: dict[str, Path]
) -> None:
    model = tmp_path / "digits.tflite"
    shutil.copyfile(worded["model"], model)
    side = json.loads(worded["model"].with_suffix(".json").read_text())
    change(side)
    model.with_suffix(".json").write_text(json.dumps(side))
    with pytest.raises(er.ArgumentError, match=message) as info:
        read_sidecar(model.with_suffix(".json"))
    assert info.value.path == str(model.with_suffix(".json"))
    with pytest.raises(er.ArgumentError, match=message):  # loading the model reads it the same way
        er.load(model)
    er.load_model(model, sidecar=False).close()  # the model itself is fine


def test_the_shipped_sidecars_are_read() -> None:
    digits = read_sidecar(MODELS / "digits_cnn_int8.json")
    assert digits.labels == tuple(str(i) for i in range(10))
    assert (digits.offset, digits.scale) == ((0.0,), (16.0,)), "kind scale, divisor 16"
    motions = read_sidecar(MODELS / "basicmotions_int8.json")
    assert motions.labels is not None and len(motions.labels) == 4
    assert len(motions.offset) == len(motions.scale) == 6, "standardize_per_channel over 6 IMU channels"
