"""The hand-written ONNX graph reader against models written by the ``onnx`` package."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.errors import ModelFileError
from edge_runtime.onnx_graph import io_quantization, read_graph
from edge_runtime.tensors import Quantization

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _model(nodes, inputs, outputs, inits=(), ir_version: int = 9) -> bytes:  # type: ignore[no-untyped-def]
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = ir_version
    return bytes(model.SerializeToString())


def _scalar(name: str, value: float, dtype: type) -> object:
    return numpy_helper.from_array(np.array(value, dtype), name)


def test_qdq_int8_interface_is_recovered() -> None:
    content = _model(
        [
            helper.make_node("DequantizeLinear", ["x", "s_in", "z_in"], ["xf"]),
            helper.make_node("Relu", ["xf"], ["h"]),
            helper.make_node("QuantizeLinear", ["h", "s_out", "z_out"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.INT8, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.INT8, ["N", 4])],
        [
            _scalar("s_in", 0.05, np.float32),
            _scalar("z_in", -3, np.int8),
            _scalar("s_out", 0.1, np.float32),
            _scalar("z_out", -128, np.int8),
        ],
    )
    graph = read_graph(content)
    assert graph.real_inputs == ["x"] and graph.outputs == ["y"]
    assert graph.input_shapes["x"] == ["N", 4]
    ins, outs = io_quantization(graph)
    assert ins["x"] == Quantization((np.float32(0.05).item(),), (-3,))
    assert outs["y"] == Quantization((np.float32(0.1).item(),), (-128,))


def test_constant_nodes_layout_ops_and_qoperator_ops() -> None:
    """Scales from Constant nodes; a Transpose between the input and its reader; QLinearMatMul
    writing the output (its y_scale and y_zero_point are inputs 6 and 7)."""
    w = numpy_helper.from_array(np.ones((4, 2), np.int8), "w")
    consts = [
        helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(v, dt), name))
        for name, v, dt in [
            ("xs", 0.5, np.float32),
            ("xz", 1, np.uint8),
            ("ws", 0.25, np.float32),
            ("wz", 0, np.int8),
            ("ys", 2.0, np.float32),
            ("yz", 7, np.uint8),
        ]
    ]
    content = _model(
        [
            *consts,
            helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]),
            helper.make_node("QLinearMatMul", ["xt", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [4, 1])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 2])],
        [w],
    )
    ins, outs = io_quantization(read_graph(content))
    assert ins == {"x": Quantization((0.5,), (1,))}
    assert outs == {"y": Quantization((2.0,), (7,))}


def test_per_channel_and_unknown_patterns() -> None:
    """Per-channel DequantizeLinear keeps its axis; an input read by two nodes, or by an op that
    says nothing of its quantization, is left out; a float graph has none."""
    content = _model(
        [
            helper.make_node("DequantizeLinear", ["x", "s", "z"], ["xf"], axis=1),
            helper.make_node("Add", ["xf", "xf"], ["f"]),
            helper.make_node("Cast", ["u"], ["uf"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["f", "uf"], ["y"]),
        ],
        [
            helper.make_tensor_value_info("x", TensorProto.INT8, [1, 3]),
            helper.make_tensor_value_info("u", TensorProto.INT8, [1, 3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [
            numpy_helper.from_array(np.array([0.1, 0.2, 0.4], np.float32), "s"),
            numpy_helper.from_array(np.array([0, 1, -1], np.int8), "z"),
        ],
    )
    ins, outs = io_quantization(read_graph(content))
    q = ins["x"]
    assert q.axis == 1 and q.zero_points == (0, 1, -1) and len(q.scales) == 3
    assert "u" not in ins and outs == {}


def test_large_initializers_are_skipped_not_decoded() -> None:
    big = numpy_helper.from_array(np.zeros((64, 128), np.float32), "big")
    content = _model(
        [helper.make_node("MatMul", ["x", "big"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 128])],
        [big],
    )
    graph = read_graph(content)
    assert "big" in graph.initializers and "big" not in graph.constants
    assert graph.real_inputs == ["x"]


@pytest.mark.parametrize("content", [b"\x08\x09\x3a\xff\xff\xff", b"\x08\x89", b"\x08\x09"])
def test_damaged_bytes_are_a_model_file_error(content: bytes) -> None:
    with pytest.raises(ModelFileError) as err:
        read_graph(content, "m.onnx")
    assert "m.onnx" in str(err.value) and "ONNX" in str(err.value)
