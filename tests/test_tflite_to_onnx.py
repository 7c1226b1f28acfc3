"""scripts/tflite_to_onnx.py: int8 TFLite -> int8 QDQ ONNX, checked against the LiteRT interpreter.

Real onnxruntime and real LiteRT, no mocks. The shipped ``models/digits_cnn_int8.onnx`` must be
byte-identical to a fresh conversion, so it cannot drift from the script.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnx")
ort: Any = pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
MODELS = ROOT / "models"
DATA = Path(__file__).resolve().parent / "data"
MLPERF = Path(__file__).resolve().parents[2] / "shared" / "models" / "mlperf_tiny"
SHIPPED = ["digits_cnn_int8", "basicmotions_int8"]
MLPERF_NAMES = ["ad01_int8", "kws_ref_model", "pretrainedResnet_quant", "vww_96_int8"]

sys.path.insert(0, str(SCRIPTS))
import tflite_to_onnx  # type: ignore[import-not-found]  # noqa: E402


def _run_both(tflite: Path, onnx_path: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outputs (int64, one row per sample) of LiteRT on ``tflite`` and onnxruntime CPU on ``onnx_path``."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tflite))
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    lite, onnx_out = [], []
    for sample in x:
        interpreter.set_tensor(inp["index"], sample[None])
        interpreter.invoke()
        lite.append(interpreter.get_tensor(out["index"]).astype(np.int64).reshape(-1))
        onnx_out.append(np.asarray(session.run(None, {name: sample[None]})[0]).astype(np.int64).reshape(-1))
    return np.stack(lite), np.stack(onnx_out)


def _input_quantization(tflite: Path) -> tuple[float, int, list[int]]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tflite))
    inp = interpreter.get_input_details()[0]
    scale, zero_point = inp["quantization"]
    return float(scale), int(zero_point), [int(d) for d in inp["shape"]]


@pytest.mark.parametrize("stem", SHIPPED)
def test_shipped_model_agrees_with_litert_on_test_split(stem: str, tmp_path: Path) -> None:
    tflite = MODELS / f"{stem}.tflite"
    onnx_path = tflite_to_onnx.convert_file(tflite, tmp_path / f"{stem}.onnx")
    scale, zero_point, shape = _input_quantization(tflite)
    data = np.load(MODELS / f"{stem}_test.npz")
    x = np.clip(np.rint(data["x"] / np.float32(scale)) + zero_point, -128, 127).astype(np.int8)
    assert list(x.shape[1:]) == shape[1:]

    lite, onnx_out = _run_both(tflite, onnx_path, x)

    assert np.abs(lite - onnx_out).max() <= 2, "ONNX output differs from LiteRT by more than 2 quantization steps"
    assert np.array_equal(lite.argmax(1), onnx_out.argmax(1))
    # int8 interface as in the .tflite: same shape, int8 in and out.
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == shape
    assert session.get_inputs()[0].type == session.get_outputs()[0].type == "tensor(int8)"


def test_shipped_onnx_is_byte_identical_to_a_fresh_conversion(tmp_path: Path) -> None:
    fresh = tflite_to_onnx.convert_file(MODELS / "digits_cnn_int8.tflite", tmp_path / "digits_cnn_int8.onnx")
    shipped = MODELS / "digits_cnn_int8.onnx"
    assert shipped.read_bytes() == fresh.read_bytes(), (
        "models/digits_cnn_int8.onnx is stale: rebuild it with python scripts/build_onnx_model.py"
    )


def test_conversion_is_deterministic_and_documents_its_producer() -> None:
    a = tflite_to_onnx.convert(MODELS / "basicmotions_int8.tflite")
    b = tflite_to_onnx.convert(MODELS / "basicmotions_int8.tflite")
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)
    assert a.producer_name == "edge_runtime scripts/tflite_to_onnx.py"
    assert a.opset_import[0].version >= 17


def test_qdq_form_keeps_the_tflite_input_quantization() -> None:
    from onnx import numpy_helper

    model = tflite_to_onnx.convert(MODELS / "digits_cnn_int8.tflite")
    scale, zero_point, _ = _input_quantization(MODELS / "digits_cnn_int8.tflite")
    graph_input = model.graph.input[0].name
    first = [n for n in model.graph.node if graph_input in n.input]
    assert [n.op_type for n in first] == ["DequantizeLinear"]
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert float(inits[first[0].input[1]]) == pytest.approx(scale, rel=1e-7)
    assert int(inits[first[0].input[2]]) == zero_point
    ops = {n.op_type for n in model.graph.node}
    assert {"Shape", "StridedSlice", "Concat"}.isdisjoint(ops), "the flatten's shape computation is dropped"
    producer = next(n for n in model.graph.node if model.graph.output[0].name in n.output)
    assert producer.op_type == "QuantizeLinear"


def test_unsupported_op_is_a_clear_error_naming_op_and_model() -> None:
    path = DATA / "custom_op.tflite"
    with pytest.raises(tflite_to_onnx.ConversionError, match=r"custom_op\.tflite.*CUSTOM\(EdgeRuntimeTestOnlyOp\)"):
        tflite_to_onnx.convert(path)
    with pytest.raises(tflite_to_onnx.ConversionError, match=r"m\.tflite: unsupported TFLite operator LSTM"):
        tflite_to_onnx.check_supported("LSTM", Path("m.tflite"))


def test_cli_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\x00" * 64)
    for source in (junk, tmp_path / "missing.tflite", DATA / "custom_op.tflite"):
        proc = subprocess.run(
            [sys.executable, str(SCRIPTS / "tflite_to_onnx.py"), str(source), str(tmp_path / "out.onnx")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("tflite_to_onnx: error: ") and proc.stderr.count("\n") == 1, proc.stderr
        assert str(source) in proc.stderr
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("name", MLPERF_NAMES)
def test_mlperf_tiny_model_agrees_with_litert(name: str, tmp_path: Path) -> None:
    tflite = MLPERF / f"{name}.tflite"
    if not tflite.is_file():
        pytest.skip(f"MLPerf Tiny reference model not present: {tflite}")
    onnx_path = tflite_to_onnx.convert_file(tflite, tmp_path / f"{name}.onnx")
    _, _, shape = _input_quantization(tflite)
    x = np.random.default_rng(20261130).integers(-128, 128, size=(40, *shape[1:]), dtype=np.int8)

    lite, onnx_out = _run_both(tflite, onnx_path, x)

    diff = np.abs(lite - onnx_out).max(axis=1)
    # Requantization rounding differs by a step here and there; ResNet-8's residual ADDs amplify
    # it on random (out-of-distribution) images, as much as LiteRT's own kernels differ among
    # themselves (XNNPACK vs reference), so the bound is on the typical sample.
    assert np.median(diff) <= 2
    assert np.mean(lite.argmax(1) == onnx_out.argmax(1)) >= 0.9


@pytest.mark.parametrize("stem", SHIPPED)
def test_shipped_model_compiles_and_runs_on_openvino_cpu(stem: str, tmp_path: Path) -> None:
    # Activations are carried as uint8 (zero point + 128) inside the graph: OpenVINO's CPU plugin
    # has no convolution for int8 activations with a non-zero zero point ("No suitable
    # implementations"). The int8 interface is unchanged.
    ov: Any = pytest.importorskip("openvino")
    tflite = MODELS / f"{stem}.tflite"
    onnx_path = tflite_to_onnx.convert_file(tflite, tmp_path / f"{stem}.onnx")
    scale, zero_point, _ = _input_quantization(tflite)
    data = np.load(MODELS / f"{stem}_test.npz")
    x = np.clip(np.rint(data["x"] / np.float32(scale)) + zero_point, -128, 127).astype(np.int8)
    lite, _ = _run_both(tflite, onnx_path, x)

    core = ov.Core()
    default = core.compile_model(str(onnx_path), "CPU")  # what a user gets (bf16 glue on bf16 CPUs)
    assert default.inputs[0].get_element_type() == default.outputs[0].get_element_type() == ov.Type.i8
    conv_precisions = [
        op.get_rt_info()["runtimePrecision"].astype(str)
        for op in default.get_runtime_model().get_ordered_ops()
        if op.get_rt_info()["layerType"].astype(str) == "Convolution"
    ]
    assert conv_precisions and set(conv_precisions) <= {"u8", "i8"}, f"convolutions not int8: {conv_precisions}"
    f32 = core.compile_model(str(onnx_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for compiled, bound in ((default, 4), (f32, 2)):
        request = compiled.create_infer_request()
        ov_out = np.stack([np.asarray(request.infer({0: s[None]})[0]).astype(np.int64).reshape(-1) for s in x])
        assert np.abs(lite - ov_out).max() <= bound, "OpenVINO output differs from LiteRT by too many steps"
        assert np.array_equal(lite.argmax(1), ov_out.argmax(1))
