"""Shared fixtures: real models (shipped, MLPerf Tiny reference, and ones built here)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

try:  # Imported here, at a shallow stack: CPython 3.11.7 fails to compile hypothesis's modules
    import hypothesis  # noqa: F401  # when its pytest plugin first imports them deep in the summary hook.
except ImportError:
    pass

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
DATA = Path(__file__).resolve().parent / "data"
MLPERF = Path(os.environ.get("EDGE_RUNTIME_MLPERF_DIR", ROOT.parent / "shared" / "models" / "mlperf_tiny"))

SHIPPED = sorted(MODELS.glob("*.tflite"))
MLPERF_MODELS = sorted(MLPERF.glob("*.tflite")) if MLPERF.is_dir() else []


def backend_available(name: str) -> bool:
    from edge_runtime.backends import unavailable_reason

    return unavailable_reason(name) is None


BACKENDS = [
    pytest.param(b, marks=pytest.mark.skipif(not backend_available(b), reason=f"{b} not installed"))
    for b in ("litert", "openvino")
]


def sidecar(model: Path) -> dict[str, Any]:
    return json.loads(model.with_suffix(".json").read_text())


@pytest.fixture(scope="session")
def digits_model() -> Path:
    path = MODELS / "digits_cnn_int8.tflite"
    assert path.is_file(), "models/digits_cnn_int8.tflite is shipped with the repository"
    return path


@pytest.fixture
def mlperf(request: pytest.FixtureRequest) -> Path:
    if not MLPERF.is_dir():
        pytest.skip(f"MLPerf Tiny reference models not found at {MLPERF}")
    return MLPERF


def random_input(spec: Any, seed: int = 0) -> np.ndarray[Any, Any]:
    from edge_runtime.tensors import random_tensor

    return random_tensor(spec, seed)


@pytest.fixture(scope="session")
def ir_model(tmp_path_factory: pytest.TempPathFactory, digits_model: Path) -> Path:
    """The shipped digits model converted to OpenVINO IR (.xml + .bin) by OpenVINO itself."""
    if not backend_available("openvino"):
        pytest.skip("openvino not installed")
    import openvino as ov

    out = tmp_path_factory.mktemp("ir") / "digits.xml"
    ov.save_model(ov.Core().read_model(str(digits_model)), str(out), compress_to_fp16=False)
    return out


@pytest.fixture(scope="session")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray[Any, Any]]:
    """A QDQ ONNX model: int8 [N,4] -> dequantize(0.05, 3) -> MatMul W -> quantize(0.1, -5) -> int8 [N,3]."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = (np.arange(12, dtype=np.float32).reshape(4, 3) - 6) / 10
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xf"]),
        helper.make_node("MatMul", ["xf", "W"], ["y"]),
        helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["q"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "xs"),
        numpy_helper.from_array(np.array(3, np.int8), "xz"),
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(np.array(0.1, np.float32), "ys"),
        numpy_helper.from_array(np.array(-5, np.int8), "yz"),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.INT8, ["N", 4])],
        [helper.make_tensor_value_info("q", TensorProto.INT8, ["N", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("onnx") / "qdq.onnx"
    onnx.save(model, str(path))
    return path, w
