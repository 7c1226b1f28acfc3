"""Loading and running real int8 models on the real LiteRT and OpenVINO interpreters.

``load_model`` (the concrete ``Model``) where a test uses the raw paths (``infer_raw``,
``infer_in_place``, ``session``); ``load`` (a ``Runner``) where the contract is enough.
The contract itself, on models and bundles alike: test_runner_contract.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import BACKENDS, MLPERF_MODELS, MODELS, SHIPPED, backend_available, random_input, sidecar

import edge_runtime as er

ALL_TFLITE = SHIPPED + MLPERF_MODELS
DEVICE = {"litert": "litert:cpu", "openvino": "openvino:CPU"}


def _bare_litert(path: Path, x: np.ndarray[Any, Any]) -> list[np.ndarray[Any, Any]]:
    from edge_runtime.backends.litert import _import_runtime

    interp = _import_runtime().interpreter(model_path=str(path))
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    return [interp.get_tensor(d["index"]) for d in interp.get_output_details()]


def _bare_openvino(path: Path, x: np.ndarray[Any, Any]) -> list[np.ndarray[Any, Any]]:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape({model.inputs[0]: ov.PartialShape(list(x.shape))})
    request = core.compile_model(model, "CPU").create_infer_request()
    result = request.infer({0: x})
    return [np.asarray(result[o]) for o in request.model_outputs]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("path", ALL_TFLITE, ids=lambda p: p.name)
def test_infer_raw_is_bit_identical_to_the_bare_interpreter(path: Path, backend: str) -> None:
    with er.load_model(path, DEVICE[backend]) as model:
        assert model.backend == backend and model.device == DEVICE[backend]
        for seed in range(3):
            x = random_input(model.inputs[0], seed)
            ours = model.infer_raw(x)
            bare = _bare_litert(path, x) if backend == "litert" else _bare_openvino(path, x)
            assert len(ours) == len(bare)
            for a, b in zip(ours, bare):
                assert a.dtype == b.dtype and a.shape == b.shape
                np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not (backend_available("litert") and backend_available("openvino")), reason="needs both backends")
@pytest.mark.parametrize("path", ALL_TFLITE, ids=lambda p: p.name)
def test_both_backends_report_the_same_specs(path: Path) -> None:
    with er.load(path, "litert:cpu") as lm, er.load(path, "openvino:CPU") as om:
        assert (len(lm.inputs), len(lm.outputs)) == (len(om.inputs), len(om.outputs))
        for a, b in zip(lm.inputs + lm.outputs, om.inputs + om.outputs):
            assert a.shape == b.shape and a.dtype == b.dtype
            assert a.quantization is not None and b.quantization is not None, (a, b)
            assert a.quantization.zero_points == b.quantization.zero_points
            np.testing.assert_allclose(a.quantization.scales, b.quantization.scales, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_model_accuracy_matches_its_readme(path: Path, backend: str) -> None:
    meta = sidecar(path)
    data = np.load(path.with_name(path.stem + "_test.npz"))
    x, y = data["x"], data["y"]
    with er.load(path, DEVICE[backend]) as model:
        spec = model.inputs[0]
        pred = np.array([int(np.argmax(model.infer(sample.reshape(spec.shape))[0])) for sample in x])
    accuracy = float(np.mean(pred == y))
    stated = float(meta["int8_accuracy"])
    # LiteRT is the reference the stated figure was measured on; OpenVINO may round differently.
    assert accuracy == pytest.approx(stated, abs=0.002 if backend == "litert" else 0.02), (accuracy, stated)
    assert accuracy > 0.6


@pytest.mark.parametrize("backend", BACKENDS)
def test_infer_quantizes_float_input_and_dequantizes_output(digits_model: Path, backend: str) -> None:
    with er.load_model(digits_model, DEVICE[backend]) as model:
        spec, out = model.inputs[0], model.outputs[0]
        assert spec.dtype == np.int8 and spec.quantization is not None and out.quantization is not None
        real = np.random.default_rng(1).uniform(0, 1, spec.shape).astype(np.float32)
        q = er.quantize(real, spec)
        raw = model.infer_raw(q)[0]
        result = model.infer(real)[0]
        assert result.dtype == np.float32
        expected = (raw.astype(np.float32) - out.quantization.zero_points[0]) * out.quantization.scales[0]
        np.testing.assert_array_equal(result, expected)
        # An array already in the input dtype passes unchanged.
        np.testing.assert_array_equal(model.infer(q)[0], result)


@pytest.mark.parametrize("backend", BACKENDS)
def test_outputs_belong_to_the_caller(digits_model: Path, backend: str) -> None:
    """A later run must not overwrite what an earlier one returned (no view of the backend's memory)."""
    with er.load_model(digits_model, DEVICE[backend]) as model:
        a, b = random_input(model.inputs[0], 1), random_input(model.inputs[0], 2)
        raw_a, scores_a = model.infer_raw(a)[0], model.infer(a)[0]
        kept_raw, kept_scores = raw_a.copy(), scores_a.copy()
        raw_b = model.infer_raw(b)[0]
        assert not np.array_equal(raw_b, kept_raw), "the two inputs must give different outputs for this to test"
        model.infer(b)
        np.testing.assert_array_equal(raw_a, kept_raw)
        np.testing.assert_array_equal(scores_a, kept_scores)


def test_quantize_rounds_and_saturates() -> None:
    spec = er.TensorSpec("x", (5,), np.dtype(np.int8), er.Quantization((0.5,), (-10,)))
    q = er.quantize(np.array([0.0, 0.74, 1000.0, -1000.0, -1.0], np.float32), spec)
    np.testing.assert_array_equal(q, [-10, -9, 127, -128, -12])
    np.testing.assert_allclose(er.dequantize(q, spec), [0.0, 0.5, 68.5, -59.0, -1.0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_inputs_raise_input_error(digits_model: Path, backend: str) -> None:
    with er.load_model(digits_model, DEVICE[backend]) as model:
        spec = model.inputs[0]
        with pytest.raises(er.InputError, match=r"shape \(1, 64\), expected \(1, 8, 8, 1\)") as info:
            model.infer_raw(np.zeros((1, 64), np.int8))
        assert str(digits_model) in str(info.value) and DEVICE[backend] in str(info.value)
        with pytest.raises(er.InputError, match=r"dtype float32, expected int8 \(infer_raw converts nothing"):
            model.infer_raw(np.zeros(spec.shape, np.float32))
        with pytest.raises(er.InputError, match="dtype int32, expected int8"):
            model.infer(np.zeros(spec.shape, np.int32))
        with pytest.raises(er.InputError, match="unknown \\['nope'\\]"):
            model.infer({"nope": np.zeros(spec.shape, np.int8)})
        by_name = model.infer_raw({spec.name: np.zeros(spec.shape, np.int8)})
        np.testing.assert_array_equal(by_name[0], model.infer_raw(np.zeros(spec.shape, np.int8))[0])


def test_openvino_ir_loads_from_memory_and_matches_tflite(ir_model: Path, digits_model: Path) -> None:
    with er.load_model(ir_model) as ir, er.load_model(digits_model, "openvino:CPU") as tfl:
        assert ir.format == "ir" and ir.backend == "openvino"
        assert ir.inputs[0].quantization == tfl.inputs[0].quantization
        x = random_input(ir.inputs[0], 3)
        np.testing.assert_array_equal(ir.infer_raw(x)[0], tfl.infer_raw(x)[0])


def test_openvino_ir_rejected_by_litert_request(ir_model: Path) -> None:
    with pytest.raises(er.DeviceUnavailableError, match="litert cannot read ir models"):
        er.load(ir_model, "litert:cpu")


def test_onnx_qdq_model(onnx_model: tuple[Path, np.ndarray[Any, Any]]) -> None:
    path, w = onnx_model
    with er.load_model(path, "openvino:CPU") as model:
        assert model.format == "onnx" and model.device == "openvino:CPU"
        (spec,), (out,) = model.inputs, model.outputs
        assert spec.shape == (1, 4), "dynamic batch is reshaped to 1"
        assert spec.quantization == er.Quantization((pytest.approx(0.05),), (3,))  # type: ignore[arg-type]
        assert out.quantization is not None and out.quantization.zero_points == (-5,)
        x = np.array([[10, -20, 30, 127]], np.int8)
        expected = np.clip(np.rint(((x.astype(np.float32) - 3) * 0.05) @ w / 0.1) - 5, -128, 127)
        np.testing.assert_array_equal(model.infer_raw(x)[0], expected.astype(np.int8))


@pytest.mark.skipif(not backend_available("openvino"), reason="openvino not installed")
def test_openvino_reshapes_dynamic_batch_to_static(digits_model: Path) -> None:
    import openvino as ov

    assert ov.Core().read_model(str(digits_model)).inputs[0].get_partial_shape().is_dynamic
    with er.load(digits_model, "openvino:CPU") as model:
        assert model.inputs[0].shape == (1, 8, 8, 1)


@pytest.mark.skipif(not backend_available("openvino"), reason="openvino not installed")
def test_openvino_cache_dir_is_written_and_reused(digits_model: Path, tmp_path: Path) -> None:
    cache = tmp_path / "ov-cache"
    with er.load_model(digits_model, "openvino:CPU", cache_dir=cache) as first:
        x = random_input(first.inputs[0], 5)
        expected = first.infer_raw(x)[0]
    blobs = sorted(p.name for p in cache.iterdir())
    assert blobs, "OpenVINO wrote no compiled blob into CACHE_DIR"
    with er.load_model(digits_model, "openvino:CPU", cache_dir=cache) as second:
        np.testing.assert_array_equal(second.infer_raw(x)[0], expected)
    assert sorted(p.name for p in cache.iterdir()) == blobs


def test_float_onnx_model_gets_no_invented_quantization(tmp_path: Path) -> None:
    """A float model whose graph starts with (x - m) * s: that is normalisation, not quantization."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Sub", ["x", "m"], ["c"]), helper.make_node("Mul", ["c", "s"], ["y"])]
    inits = [
        numpy_helper.from_array(np.array(127.5, np.float32), "m"),
        numpy_helper.from_array(np.array(1 / 127.5, np.float32), "s"),
    ]
    graph = helper.make_graph(
        nodes,
        "norm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "norm.onnx"
    onnx.save(model, str(path))
    with er.load(path) as m:
        assert m.inputs[0].quantization is None and m.outputs[0].quantization is None
        out = m.infer(np.array([[0.0, 127.5, 255.0, 63.75]]))[0]  # float64 in: cast, not quantized
        np.testing.assert_allclose(out, [[-1.0, 0.0, 1.0, -0.5]], atol=1e-6)


def test_onnx_with_external_data_loads(tmp_path: Path, onnx_model: tuple[Path, np.ndarray[Any, Any]]) -> None:
    onnx = pytest.importorskip("onnx")
    path, _ = onnx_model
    model = onnx.load(str(path))
    out = tmp_path / "ext.onnx"
    onnx.save_model(
        model,
        str(out),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.data",
        size_threshold=0,
    )
    assert (tmp_path / "weights.data").is_file()
    x = np.array([[1, 2, 3, 4]], np.int8)
    for device in [b for b in ("onnxruntime:CPU", "openvino:CPU") if backend_available(b.split(":")[0])]:
        with er.load_model(out, device) as m, er.load_model(path, device) as ref:
            assert not m.attempts, "loaded on the device asked for, with no refusal before it"
            np.testing.assert_array_equal(m.infer_raw(x)[0], ref.infer_raw(x)[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_input_is_refused(digits_model: Path, backend: str) -> None:
    with er.load(digits_model, DEVICE[backend]) as model:
        x = np.zeros(model.inputs[0].shape, np.float32)
        x[0, 0, 0, 0] = np.nan
        with pytest.raises(er.InputError, match="NaN or infinity"):
            model.infer(x)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "2"])
def test_threads_are_checked_before_loading(tmp_path: Path, bad: Any) -> None:
    never_read = tmp_path / "absent.tflite"  # checked first: the missing file is not what is reported
    with pytest.raises(er.ArgumentError, match="threads must be a whole number >= 1") as info:
        er.load(never_read, threads=bad)
    assert isinstance(info.value, ValueError), "ArgumentError is also a ValueError, as before"
    with pytest.raises(er.ArgumentError, match="threads must be a whole number >= 1"):
        er.load_model(never_read, threads=bad)


def test_num_threads_is_the_older_spelling(digits_model: Path) -> None:
    with pytest.warns(DeprecationWarning, match=r"num_threads= is now threads="):
        er.load(digits_model, "litert:cpu" if backend_available("litert") else "openvino:CPU", num_threads=1).close()
    with pytest.warns(DeprecationWarning), pytest.raises(er.ArgumentError, match="threads must be a whole number"):
        er.load(digits_model, num_threads=0)
    with pytest.raises(er.ArgumentError, match="disagree: pass only threads"):
        er.load(digits_model, threads=2, num_threads=1)


def test_empty_request_list_is_a_request_error(tmp_path: Path) -> None:
    with pytest.raises(er.DeviceRequestError, match="empty device request list"):
        er.load(tmp_path / "never-read.tflite", [])


@pytest.mark.parametrize("backend", BACKENDS)
def test_infer_in_place_writes_the_tensor_or_falls_back_to_one_copy(digits_model: Path, backend: str) -> None:
    from edge_runtime.backends.base import Capabilities

    with er.load_model(digits_model, DEVICE[backend]) as model:
        x = random_input(model.inputs[0], 9)
        expected = model.infer_raw(x)[0]
        owned: list[bool] = []  # per call: did fill get a new array (True) or the backend's tensor (False)?

        def fill(dst: np.ndarray[Any, Any]) -> None:
            assert dst.shape == x.shape and dst.dtype == x.dtype
            owned.append(bool(dst.flags.owndata))
            dst[...] = x

        np.testing.assert_array_equal(model.infer_in_place(fill)[0], expected)
        np.testing.assert_array_equal(model.classify_in_place(fill).scores, model.infer(x)[0].reshape(-1))
        assert model.session.capabilities.writable_inputs
        # As a backend without writable buffers: the capability is read once, at load.
        model.session.capabilities = Capabilities(writable_inputs=False)
        model._writable = False
        np.testing.assert_array_equal(model.infer_in_place(fill)[0], expected)
        np.testing.assert_array_equal(model.classify_in_place(fill).scores, model.infer(x)[0].reshape(-1))
        assert owned == [False, False, True, True]
        assert model.to_dict()["execution_devices"] == ["CPU" if backend == "openvino" else "litert:cpu"]


def test_load_model_and_load_bundle_take_the_older_spelling_too(digits_model: Path) -> None:
    device = "litert:cpu" if backend_available("litert") else "openvino:CPU"
    with pytest.warns(DeprecationWarning, match="num_threads= is now threads="):
        er.load_model(digits_model, device, num_threads=1).close()
    with pytest.warns(DeprecationWarning, match="num_threads= is now threads="):
        er.load_bundle(MODELS / "digits_early_exit", device, num_threads=1).close()
