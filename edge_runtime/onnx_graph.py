"""Reading what a runtime needs from an ONNX file's bytes, without the ``onnx`` package.

ONNX Runtime reports only names, element types and shapes of a model's inputs and outputs;
the quantization of an int8 input or output lives in the graph (the ``DequantizeLinear``
after an input, the ``QuantizeLinear`` or ``QLinear*`` op before an output). This module
reads that part of the protobuf by hand: a ``.onnx`` file is a ``ModelProto`` in protobuf's
wire format, and the few fields needed (graph nodes, initializers, inputs, outputs) are
stable since ONNX 1.0. Weights are not copied: tensors other than the small scale and zero
point constants are skipped by length.

Why not ``onnx``: it is a 17 MB wheel and ~100 ms to import for a few dozen fields, and the
runtime must not need it on a board (``pip install '.[onnxruntime]'`` brings ONNX Runtime
alone). Pure: every function reads only the bytes it is given.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from .errors import ModelFileError
from .tensors import Quantization

# Field numbers (onnx/onnx.proto).
_MODEL_GRAPH = 7
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT = 1, 5, 11, 12
_NODE_INPUT, _NODE_OUTPUT, _NODE_NAME, _NODE_OP_TYPE, _NODE_ATTRIBUTE, _NODE_DOMAIN = 1, 2, 3, 4, 5, 7
_ATTR_NAME, _ATTR_T, _ATTR_I = 1, 5, 3
_VALUE_INFO_NAME, _VALUE_INFO_TYPE = 1, 2
_TYPE_TENSOR, _TENSOR_TYPE_SHAPE, _SHAPE_DIM, _DIM_VALUE, _DIM_PARAM = 1, 2, 1, 1, 2
_TENSOR_DIMS, _TENSOR_DATA_TYPE, _TENSOR_FLOAT_DATA, _TENSOR_INT32_DATA = 1, 2, 4, 5
_TENSOR_INT64_DATA, _TENSOR_NAME, _TENSOR_RAW_DATA = 7, 8, 9
#: TensorProto.DataType values read here -> (struct code, bytes per element).
_RAW = {1: ("f", 4), 2: ("B", 1), 3: ("b", 1), 4: ("H", 2), 5: ("h", 2), 6: ("i", 4), 7: ("q", 8), 11: ("d", 8)}
#: A constant larger than this is not a scale or zero point: its values are not decoded.
_MAX_CONST_ELEMENTS = 4096

#: Ops that move an integer tensor without changing its values (looked through).
PASS_THROUGH = frozenset({"Identity", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze"})
#: op type -> (scale input, zero-point input) of the quantized tensor an op READS at input 0.
_READS = {
    "DequantizeLinear": (1, 2),
    "QLinearConv": (1, 2),
    "QLinearMatMul": (1, 2),
    "QLinearAdd": (1, 2),
    "QLinearMul": (1, 2),
    "QLinearAveragePool": (1, 2),
    "QLinearGlobalAveragePool": (1, 2),
    "QLinearSigmoid": (1, 2),
    "QLinearLeakyRelu": (1, 2),
    "QLinearSoftmax": (1, 2),
}
#: op type -> (scale input, zero-point input) of the quantized tensor an op WRITES.
_WRITES = {
    "QuantizeLinear": (1, 2),
    "QLinearConv": (6, 7),
    "QLinearMatMul": (6, 7),
    "QLinearAdd": (6, 7),
    "QLinearMul": (6, 7),
    "QLinearAveragePool": (3, 4),
    "QLinearGlobalAveragePool": (3, 4),
    "QLinearSigmoid": (3, 4),
    "QLinearLeakyRelu": (3, 4),
    "QLinearSoftmax": (3, 4),
    "QLinearConcat": (0, 1),
}


@dataclass(frozen=True)
class Node:
    """One graph node: its op, its input and output tensor names (an absent optional input is "")."""

    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    name: str = ""
    domain: str = ""


@dataclass
class Graph:
    """The parts of an ONNX graph read here. ``constants`` holds the values of the small
    initializers and ``Constant`` nodes (as floats), by tensor name."""

    nodes: list[Node] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    initializers: set[str] = field(default_factory=set)
    constants: dict[str, tuple[float, ...]] = field(default_factory=dict)
    #: The ``axis`` attribute of each DequantizeLinear/QuantizeLinear node, by node index.
    axes: dict[int, int] = field(default_factory=dict)
    #: Each graph input's dimensions: an int, a symbol (``"N"``) or None (unnamed, or no shape).
    input_shapes: dict[str, list[int | str | None]] = field(default_factory=dict)

    @property
    def real_inputs(self) -> list[str]:
        """Graph inputs that are not initializers (older exporters list weights as inputs too)."""
        return [n for n in self.inputs if n not in self.initializers]


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) for each field of one message: an int for varint and
    fixed-width fields, a view (no copy) for length-delimited ones."""
    pos = 0
    end = len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise ValueError("field runs past the end of its message")
            yield number, wire, buf[pos : pos + length]
            pos += length
        elif wire == 1:
            if pos + 8 > end:
                raise ValueError("truncated 64-bit field")
            yield number, wire, int.from_bytes(buf[pos : pos + 8], "little")
            pos += 8
        elif wire == 5:
            if pos + 4 > end:
                raise ValueError("truncated 32-bit field")
            yield number, wire, int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _text(value: int | memoryview) -> str:
    return bytes(value).decode("utf-8", "replace") if isinstance(value, memoryview) else ""


def _packed_varints(value: int | memoryview) -> list[int]:
    if isinstance(value, int):
        return [value]
    out, pos = [], 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        out.append(v - (1 << 64) if v >= 1 << 63 else v)
    return out


def _tensor(buf: memoryview) -> tuple[str, tuple[float, ...] | None]:
    """A TensorProto's name and, when it is small and of a type read here, its values."""
    name = ""
    dims: list[int] = []
    dtype = 0
    raw: memoryview | None = None
    floats: list[float] = []
    ints: list[int] = []
    for number, _wire, value in _fields(buf):
        if number == _TENSOR_NAME:
            name = _text(value)
        elif number == _TENSOR_DIMS:
            dims.extend(_packed_varints(value))
        elif number == _TENSOR_DATA_TYPE and isinstance(value, int):
            dtype = value
        elif number == _TENSOR_RAW_DATA and isinstance(value, memoryview):
            raw = value
        elif number == _TENSOR_FLOAT_DATA:
            if isinstance(value, memoryview):
                floats.extend(struct.unpack(f"<{len(value) // 4}f", value))
            else:
                floats.append(struct.unpack("<f", value.to_bytes(4, "little"))[0])
        elif number in (_TENSOR_INT32_DATA, _TENSOR_INT64_DATA):
            ints.extend(_packed_varints(value))
    count = 1
    for d in dims:
        count *= d
    if count > _MAX_CONST_ELEMENTS:
        return name, None
    if raw is not None:
        code = _RAW.get(dtype)
        if code is None or len(raw) != count * code[1]:
            return name, None
        return name, tuple(float(v) for v in struct.unpack(f"<{count}{code[0]}", raw))
    if floats:
        return name, tuple(floats)
    if ints:
        if dtype in (2, 3, 4, 5, 6):  # int32_data holds the small types too; int8 as sign-extended
            ints = [v - (1 << 32) if v >= 1 << 31 else v for v in ints]
        return name, tuple(float(v) for v in ints)
    return name, () if count == 0 else None


def _node(buf: memoryview) -> tuple[Node, tuple[float, ...] | None, int | None]:
    """The node, the value of its ``value`` attribute (``Constant`` nodes) and its ``axis``."""
    op = name = domain = ""
    inputs: list[str] = []
    outputs: list[str] = []
    const: tuple[float, ...] | None = None
    axis: int | None = None
    for number, _, value in _fields(buf):
        if number == _NODE_INPUT:
            inputs.append(_text(value))
        elif number == _NODE_OUTPUT:
            outputs.append(_text(value))
        elif number == _NODE_OP_TYPE:
            op = _text(value)
        elif number == _NODE_NAME:
            name = _text(value)
        elif number == _NODE_DOMAIN:
            domain = _text(value)
        elif number == _NODE_ATTRIBUTE and isinstance(value, memoryview):
            attr_name = ""
            attr_t: memoryview | None = None
            attr_i: int | None = None
            for anum, _, aval in _fields(value):
                if anum == _ATTR_NAME:
                    attr_name = _text(aval)
                elif anum == _ATTR_T and isinstance(aval, memoryview):
                    attr_t = aval
                elif anum == _ATTR_I and isinstance(aval, int):
                    attr_i = aval - (1 << 64) if aval >= 1 << 63 else aval
            if attr_name == "value" and attr_t is not None:
                const = _tensor(attr_t)[1]
            elif attr_name == "axis" and attr_i is not None:
                axis = attr_i
    return Node(op, tuple(inputs), tuple(outputs), name, domain), const, axis


def _sub(buf: memoryview, number: int) -> memoryview | None:
    return next((v for n, w, v in _fields(buf) if n == number and w == 2 and isinstance(v, memoryview)), None)


def _value_info(buf: memoryview) -> tuple[str, list[int | str | None] | None]:
    """A ValueInfoProto's name and its tensor dimensions (None when it states no shape)."""
    name = next((_text(v) for n, _, v in _fields(buf) if n == _VALUE_INFO_NAME), "")
    type_proto = _sub(buf, _VALUE_INFO_TYPE)
    tensor = _sub(type_proto, _TYPE_TENSOR) if type_proto is not None else None
    shape = _sub(tensor, _TENSOR_TYPE_SHAPE) if tensor is not None else None
    if shape is None:
        return name, None
    dims: list[int | str | None] = []
    for number, _, value in _fields(shape):
        if number != _SHAPE_DIM or not isinstance(value, memoryview):
            continue
        dim: int | str | None = None
        for dnum, _, dval in _fields(value):
            if dnum == _DIM_VALUE and isinstance(dval, int):
                dim = dval
            elif dnum == _DIM_PARAM:
                dim = _text(dval) or None
        dims.append(dim)
    return name, dims


def read_graph(content: bytes, path: str = "") -> Graph:
    """Parse the graph of an ONNX model; raise ``ModelFileError`` when the bytes are not one."""
    graph = Graph()
    try:
        body = next((v for n, w, v in _fields(memoryview(content)) if n == _MODEL_GRAPH and w == 2), None)
        if not isinstance(body, memoryview):
            raise ValueError("no graph in the model")
        for number, wire, value in _fields(body):
            if wire != 2 or not isinstance(value, memoryview):
                continue
            if number == _GRAPH_NODE:
                node, const, axis = _node(value)
                if node.op_type == "Constant" and const is not None and node.outputs:
                    graph.constants[node.outputs[0]] = const
                if axis is not None:
                    graph.axes[len(graph.nodes)] = axis
                graph.nodes.append(node)
            elif number == _GRAPH_INITIALIZER:
                name, values = _tensor(value)
                graph.initializers.add(name)
                if values is not None:
                    graph.constants[name] = values
            elif number in (_GRAPH_INPUT, _GRAPH_OUTPUT):
                name, dims = _value_info(value)
                (graph.inputs if number == _GRAPH_INPUT else graph.outputs).append(name)
                if number == _GRAPH_INPUT and dims is not None:
                    graph.input_shapes[name] = dims
    except (ValueError, struct.error, UnicodeDecodeError) as exc:
        raise ModelFileError(f"not a readable ONNX model: {exc}", path=path) from None
    return graph


def _quantization(graph: Graph, node_index: int, scale_at: int, zp_at: int) -> Quantization | None:
    node = graph.nodes[node_index]
    if scale_at >= len(node.inputs):
        return None
    scales = graph.constants.get(node.inputs[scale_at])
    if not scales:
        return None
    zps: tuple[float, ...] = (0.0,) * len(scales)
    if zp_at < len(node.inputs) and node.inputs[zp_at]:
        found = graph.constants.get(node.inputs[zp_at])
        if found is None or len(found) != len(scales):
            return None
        zps = found
    if len(scales) == 1:
        return Quantization((scales[0],), (round(zps[0]),))
    axis = graph.axes.get(node_index, 1)
    return Quantization(tuple(scales), tuple(round(z) for z in zps), axis)


def io_quantization(graph: Graph) -> tuple[dict[str, Quantization], dict[str, Quantization]]:
    """The quantization of each integer graph input (read by ``DequantizeLinear`` or a
    ``QLinear*`` op, possibly behind layout ops) and each graph output (written by
    ``QuantizeLinear`` or a ``QLinear*`` op), by tensor name. Inputs read by more than one
    node, or by ops not listed here, are left out: their quantization is unknown."""
    consumers: dict[str, list[int]] = {}
    producer: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        for name in node.inputs:
            consumers.setdefault(name, []).append(i)
        for name in node.outputs:
            producer[name] = i
    ins: dict[str, Quantization] = {}
    for name in graph.real_inputs:
        tensor = name
        for _ in range(8):
            users = consumers.get(tensor, [])
            if len(users) != 1:
                break
            node = graph.nodes[users[0]]
            if node.op_type in PASS_THROUGH and node.inputs and node.inputs[0] == tensor:
                tensor = node.outputs[0]
                continue
            where = _READS.get(node.op_type)
            if where is not None and node.inputs and node.inputs[0] == tensor:
                q = _quantization(graph, users[0], *where)
                if q is not None:
                    ins[name] = q
            break
    outs: dict[str, Quantization] = {}
    for name in graph.outputs:
        tensor = name
        for _ in range(8):
            index = producer.get(tensor)
            if index is None:
                break
            node = graph.nodes[index]
            if node.op_type in PASS_THROUGH and node.inputs:
                tensor = node.inputs[0]
                continue
            where = _WRITES.get(node.op_type)
            if where is not None:
                q = _quantization(graph, index, *where)
                if q is not None:
                    outs[name] = q
            break
    return ins, outs
