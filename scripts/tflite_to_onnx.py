#!/usr/bin/env python3
"""Convert a full-integer int8 TFLite model into an int8 ONNX model in QDQ form.

The ``.tflite`` flatbuffer is read directly with ``ai_edge_litert.schema_py_generated`` (not
through the interpreter, whose op details hide delegated ops). The ONNX graph keeps the TFLite
quantization exactly:

* the graph input is int8 with the TFLite input's shape (NHWC stays NHWC at the interface) and
  the graph output is int8, produced by the last QuantizeLinear;
* every TFLite operator becomes DequantizeLinear of its int8 inputs -> float op(s) ->
  QuantizeLinear to the TFLite output tensor's scale and zero point. Weights are int8
  initializers with per-channel scales (``axis`` set) where TFLite has them; biases are int32
  initializers with scale ``input_scale * weight_scale`` and zero point 0; fused RELU / RELU6 /
  RELU_N1_TO_1 become Relu / Clip before the QuantizeLinear;
* inside the graph every activation is carried as uint8 with zero point ``zp + 128`` and the
  same scale (``scale * (q - zp) == scale * ((q + 128) - (zp + 128))``, so the real values are
  those of TFLite). Only the graph input, the graph output (the last QuantizeLinear, TFLite's
  int8 zero point) and constant activations stay int8; the int8 graph input is moved into uint8
  once, by DequantizeLinear (TFLite's int8 zero point) -> QuantizeLinear (same scale, uint8 zero
  point + 128), which is exact. OpenVINO's CPU plugin has no int8 convolution for signed
  activations with a non-zero zero point ("No suitable implementations"); with uint8 activations
  it compiles and runs the convolutions in int8 (u8 activations x i8 weights). Weights stay int8,
  symmetric, per-channel;
* every activation tensor between operators keeps TFLite's layout (NHWC). Conv and pooling run in
  ONNX's NCHW, so they are wrapped in Transposes (NHWC->NCHW after the DequantizeLinear,
  NCHW->NHWC before the QuantizeLinear); onnxruntime's optimizer cancels the back-to-back pairs,
  and a Reshape/flatten always sees TFLite's NHWC element order.

Supported operators: ADD, AVERAGE_POOL_2D, CONV_2D, DEPTHWISE_CONV_2D, EXPAND_DIMS,
FULLY_CONNECTED, MAX_POOL_2D, MEAN, RESHAPE, SOFTMAX. SHAPE / STRIDED_SLICE / PACK (and any other
operator) that only compute a RESHAPE's target shape are dead once the RESHAPE uses its output
tensor's static shape, and are dropped. Any other live operator is an error naming it.

Usage as a module::

    import tflite_to_onnx
    model = tflite_to_onnx.convert(Path("model.tflite"))        # onnx.ModelProto
    tflite_to_onnx.convert_file("model.tflite", "model.onnx")   # writes the file

Usage as a command::

    python scripts/tflite_to_onnx.py IN.tflite OUT.onnx

The output is deterministic: the same input gives the same bytes (no timestamps, no paths).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

try:
    import onnx
    from ai_edge_litert import schema_py_generated as schema
    from onnx import TensorProto, helper, numpy_helper
except ImportError as exc:  # a command run without its tools: one line, not a traceback
    if __name__ == "__main__":
        sys.exit(
            f"tflite_to_onnx.py: {exc}: it needs the onnx and ai-edge-litert packages (pip install onnx ai-edge-litert)"
        )
    raise

PRODUCER_NAME = "edge_runtime scripts/tflite_to_onnx.py"
PRODUCER_VERSION = "2"
OPSET = 17

_BUILTIN_NAMES: dict[int, str] = {
    v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)
}
_TYPE_NAMES: dict[int, str] = {
    v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_") and isinstance(v, int)
}
_NUMPY_TYPES: dict[int, type[np.generic]] = {
    schema.TensorType.INT8: np.int8,
    schema.TensorType.UINT8: np.uint8,
    schema.TensorType.INT16: np.int16,
    schema.TensorType.INT32: np.int32,
    schema.TensorType.INT64: np.int64,
    schema.TensorType.FLOAT32: np.float32,
}
_NCHW = [0, 3, 1, 2]
_NHWC = [0, 2, 3, 1]

SUPPORTED_OPS = (
    "ADD",
    "AVERAGE_POOL_2D",
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "EXPAND_DIMS",
    "FULLY_CONNECTED",
    "MAX_POOL_2D",
    "MEAN",
    "RESHAPE",
    "SOFTMAX",
)


class ConversionError(ValueError):
    """The .tflite file cannot be converted (unreadable, not full-integer int8, or an unsupported op)."""


@dataclass(frozen=True)
class Quant:
    """Quantization of one TFLite tensor: per-tensor (``axis`` None) or per-channel."""

    scale: np.ndarray  # float32, shape [] or [C]
    zero_point: np.ndarray  # same shape as scale
    axis: int | None


def op_name(model: Any, op: Any) -> str:
    """The operator's name as TFLite spells it (``CONV_2D``; ``CUSTOM(name)`` for a custom op)."""
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
    name = _BUILTIN_NAMES.get(builtin, f"BUILTIN_{builtin}")
    if name == "CUSTOM":
        custom = code.customCode.decode() if code.customCode else "?"
        return f"CUSTOM({custom})"
    return name


def unsupported_op_message(op: str, model_path: Path | str) -> str:
    """The one-line error for an operator the converter does not map."""
    return f"{model_path}: unsupported TFLite operator {op} (tflite_to_onnx supports {', '.join(SUPPORTED_OPS)})"


def check_supported(op: str, model_path: Path | str) -> None:
    """Raise :class:`ConversionError` naming ``op`` and ``model_path`` unless ``op`` is supported."""
    if op not in SUPPORTED_OPS:
        raise ConversionError(unsupported_op_message(op, model_path))


class _Converter:
    """State of one conversion: the parsed TFLite model and the ONNX graph being built."""

    def __init__(self, path: Path, buf: bytes) -> None:
        self.path = path
        self.buf = buf
        try:
            self.model = schema.ModelT.InitFromPackedBuf(buf, 0)
        except Exception as exc:  # flatbuffers raises many kinds on garbage input
            raise ConversionError(f"{path}: not a readable TFLite flatbuffer ({type(exc).__name__}: {exc})") from exc
        if not self.model.subgraphs:
            raise ConversionError(f"{path}: the model has no subgraph")
        if len(self.model.subgraphs) != 1:
            raise ConversionError(f"{path}: {len(self.model.subgraphs)} subgraphs; only single-subgraph models convert")
        self.graph = self.model.subgraphs[0]
        self.tensors = self.graph.tensors
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.names: dict[int, str] = {}
        self._used_names: set[str] = set()
        self._counter = 0
        self._quant_consts: dict[tuple[Any, ...], tuple[str, str]] = {}
        self.graph_inputs: set[int] = {int(i) for i in self.graph.inputs}
        self.graph_outputs: set[int] = {int(i) for i in self.graph.outputs}
        self._carried_inputs: dict[int, str] = {}

    # ---- tensors -------------------------------------------------------------------------

    def fresh(self, hint: str) -> str:
        """A new, unique value or node name."""
        self._counter += 1
        name = f"{hint}__{self._counter}"
        self._used_names.add(name)
        return name

    def tensor_name(self, idx: int) -> str:
        """The ONNX name of TFLite tensor ``idx`` (its TFLite name, made unique)."""
        if idx not in self.names:
            t = self.tensors[idx]
            base = t.name.decode() if t.name else f"tensor_{idx}"
            name = base if base not in self._used_names else f"{base}#{idx}"
            self._used_names.add(name)
            self.names[idx] = name
        return self.names[idx]

    def shape(self, idx: int) -> list[int]:
        """Static shape of TFLite tensor ``idx``."""
        s = self.tensors[idx].shape
        return [] if s is None else [int(d) for d in s]

    def ttype(self, idx: int) -> int:
        """TFLite ``TensorType`` of tensor ``idx``."""
        return int(self.tensors[idx].type)

    def data(self, idx: int) -> np.ndarray | None:
        """Constant contents of tensor ``idx`` (shaped, typed), or None for a runtime tensor."""
        t = self.tensors[idx]
        buffer = self.model.buffers[t.buffer] if 0 <= t.buffer < len(self.model.buffers) else None
        if buffer is None:
            return None
        raw: bytes
        if buffer.data is not None and len(buffer.data) > 0:
            raw = bytes(np.asarray(buffer.data, dtype=np.uint8))
        elif getattr(buffer, "offset", 0) and getattr(buffer, "size", 0):
            raw = self.buf[int(buffer.offset) : int(buffer.offset) + int(buffer.size)]
        else:
            return None
        dtype = _NUMPY_TYPES.get(int(t.type))
        if dtype is None:
            raise ConversionError(
                f"{self.path}: constant tensor {self.tensor_name(idx)!r} has unsupported type "
                f"{_TYPE_NAMES.get(int(t.type), t.type)}"
            )
        return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(self.shape(idx))

    def quant(self, idx: int) -> Quant:
        """Quantization parameters of tensor ``idx``; error if it has none."""
        q = self.tensors[idx].quantization
        if q is None or q.scale is None or len(q.scale) == 0:
            raise ConversionError(
                f"{self.path}: tensor {self.tensor_name(idx)!r} is not quantized; only full-integer int8 models convert"
            )
        scale = np.asarray(q.scale, dtype=np.float32)
        zp = np.asarray(q.zeroPoint if q.zeroPoint is not None else np.zeros(len(scale)), dtype=np.int64)
        if len(scale) == 1:
            return Quant(scale.reshape(()), zp.reshape(()), None)
        return Quant(scale, zp, int(q.quantizedDimension))

    def carried_as_uint8(self, idx: int) -> bool:
        """Whether int8 activation ``idx`` is carried inside the graph as uint8 (zero point + 128).

        Every activation is (a graph input through :meth:`carried_name`), except the graph's
        outputs (the int8 interface) and constant tensors (int8 initializers).
        """
        return idx not in self.graph_outputs and self.data(idx) is None

    def carried_quant(self, idx: int) -> tuple[Quant, type[np.generic]]:
        """Quantization and zero-point dtype of activation ``idx`` as the ONNX graph carries it."""
        q = self.quant(idx)
        if q.axis is not None:
            raise ConversionError(f"{self.path}: activation {self.tensor_name(idx)!r} is quantized per channel")
        if self.carried_as_uint8(idx):
            return Quant(q.scale, q.zero_point + 128, None), np.uint8
        return q, np.int8

    def require_int8(self, idx: int) -> None:
        """Error unless tensor ``idx`` is int8 (activations of a full-integer model are)."""
        if self.ttype(idx) != schema.TensorType.INT8:
            tname = _TYPE_NAMES.get(self.ttype(idx), str(self.ttype(idx)))
            raise ConversionError(
                f"{self.path}: tensor {self.tensor_name(idx)!r} is {tname}, not int8; "
                "only full-integer int8 models convert"
            )

    # ---- graph building ------------------------------------------------------------------

    def node(self, op_type: str, inputs: list[str], outputs: list[str] | None = None, **attrs: Any) -> str:
        """Append one ONNX node; returns its (first) output name."""
        outs = outputs if outputs is not None else [self.fresh(op_type.lower())]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.fresh(f"n_{op_type}"), **attrs))
        return outs[0]

    def const(self, array: np.ndarray, hint: str) -> str:
        """Add ``array`` as an initializer; returns its name."""
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.array(array, order="C", copy=True), name))
        return name

    def quant_consts(self, q: Quant, zp_dtype: type[np.generic], hint: str) -> tuple[str, str]:
        """Initializers for a (scale, zero point) pair, shared by every node that uses the same pair."""
        scale = q.scale.astype(np.float32)
        zero_point = q.zero_point.astype(zp_dtype)
        key = (scale.shape, scale.tobytes(), zero_point.dtype.str, zero_point.tobytes())
        if key not in self._quant_consts:
            self._quant_consts[key] = (self.const(scale, f"{hint}_scale"), self.const(zero_point, f"{hint}_zero_point"))
        return self._quant_consts[key]

    def dequantize(
        self, q_name: str, q: Quant, hint: str, zp_dtype: type[np.generic] = np.int8, axis: int | None = None
    ) -> str:
        """DequantizeLinear of ``q_name``; ``axis`` overrides ``q.axis`` for per-channel data."""
        scale, zp = self.quant_consts(q, zp_dtype, hint)
        attrs: dict[str, Any] = {}
        if q.axis is not None:
            attrs["axis"] = q.axis if axis is None else axis
        return self.node("DequantizeLinear", [q_name, scale, zp], [self.fresh(f"{hint}_dq")], **attrs)

    def carried_name(self, idx: int) -> str:
        """The ONNX value holding activation ``idx`` in its carried type (see :meth:`carried_quant`).

        That is the tensor itself (a constant becomes an int8 initializer) except for an int8
        graph input, which is converted once into uint8: DequantizeLinear with its int8 zero
        point -> QuantizeLinear with the same scale and zero point + 128 (exact).
        """
        name = self.tensor_name(idx)
        if idx in self.graph_inputs and self.carried_as_uint8(idx):
            if idx not in self._carried_inputs:
                q = self.quant(idx)
                value = self.dequantize(name, q, name)
                carried, zp_dtype = self.carried_quant(idx)
                scale, zp = self.quant_consts(carried, zp_dtype, name)
                self._carried_inputs[idx] = self.node("QuantizeLinear", [value, scale, zp], [self.fresh(f"{name}_u8")])
            return self._carried_inputs[idx]
        constant = self.data(idx)
        if constant is not None and name not in {i.name for i in self.initializers}:
            self.initializers.append(numpy_helper.from_array(constant, name))
        return name

    def activation_input(self, idx: int, layout: list[int] | None = None) -> str:
        """Float value of int8 tensor ``idx``, transposed by ``layout`` when given."""
        self.require_int8(idx)
        q, zp_dtype = self.carried_quant(idx)
        name = self.carried_name(idx)
        value = self.dequantize(name, q, self.tensor_name(idx), zp_dtype=zp_dtype)
        if layout is not None:
            value = self.node("Transpose", [value], [self.fresh(f"{name}_nchw")], perm=layout)
        return value

    def quantize_output(self, value: str, idx: int, activation: int, layout: list[int] | None = None) -> None:
        """Fused activation, Transpose by ``layout`` when given, then QuantizeLinear into tensor ``idx``.

        The result is int8 for a graph output and uint8 (zero point + 128) for any other tensor.
        """
        self.require_int8(idx)
        value = self.fused_activation(value, activation)
        q, zp_dtype = self.carried_quant(idx)
        out = self.tensor_name(idx)
        scale, zp = self.quant_consts(q, zp_dtype, out)
        if layout is not None:
            value = self.node("Transpose", [value], [self.fresh(f"{out}_nhwc")], perm=layout)
        self.node("QuantizeLinear", [value, scale, zp], [out])

    def fused_activation(self, value: str, activation: int) -> str:
        """Relu / Clip for a TFLite fused activation function."""
        kind = schema.ActivationFunctionType
        if activation == kind.NONE:
            return value
        if activation == kind.RELU:
            return self.node("Relu", [value])
        if activation in (kind.RELU6, kind.RELU_N1_TO_1):
            lo, hi = (0.0, 6.0) if activation == kind.RELU6 else (-1.0, 1.0)
            return self.node(
                "Clip",
                [
                    value,
                    self.const(np.array(lo, np.float32), "clip_min"),
                    self.const(np.array(hi, np.float32), "clip_max"),
                ],
            )
        names = {v: k for k, v in vars(kind).items() if not k.startswith("_")}
        raise ConversionError(f"{self.path}: unsupported fused activation {names.get(activation, activation)}")

    def weights(self, idx: int, perm: list[int] | None, hint: str) -> tuple[str, Quant]:
        """Float value of constant int8 weight tensor ``idx``, transposed by ``perm`` (quant axis follows)."""
        data = self.data(idx)
        if data is None:
            raise ConversionError(f"{self.path}: weights {self.tensor_name(idx)!r} are not constant")
        self.require_int8(idx)
        q = self.quant(idx)
        axis = q.axis
        if perm is not None:
            data = np.transpose(data, perm)
            if axis is not None:
                axis = perm.index(axis)
        q = Quant(q.scale, q.zero_point, axis)
        name = self.const(data, f"{hint}_weight")
        return self.dequantize(name, q, f"{hint}_weight"), q

    def bias(self, idx: int, input_q: Quant, weight_q: Quant, hint: str) -> str | None:
        """Float value of int32 bias ``idx``: scale = input_scale * weight_scale, zero point 0."""
        if idx < 0:
            return None
        data = self.data(idx)
        if data is None or self.ttype(idx) != schema.TensorType.INT32:
            raise ConversionError(f"{self.path}: bias {self.tensor_name(idx)!r} is not a constant int32 tensor")
        scale = (input_q.scale.astype(np.float32) * weight_q.scale.astype(np.float32)).astype(np.float32)
        q = Quant(scale, np.zeros(scale.shape, np.int64), 0 if scale.ndim else None)
        name = self.const(data.astype(np.int32), f"{hint}_bias")
        return self.dequantize(name, q, f"{hint}_bias", zp_dtype=np.int32)

    # ---- padding -------------------------------------------------------------------------

    @staticmethod
    def same_pads(
        in_hw: list[int], out_hw: list[int], kernel: list[int], strides: list[int], dilations: list[int]
    ) -> list[int]:
        """ONNX pads [top, left, bottom, right] for TFLite SAME padding."""
        before, after = [], []
        for i, o, k, s, d in zip(in_hw, out_hw, kernel, strides, dilations):
            eff = (k - 1) * d + 1
            total = max((o - 1) * s + eff - i, 0)
            before.append(total // 2)
            after.append(total - total // 2)
        return before + after

    def pads(
        self, padding: int, in_idx: int, out_idx: int, kernel: list[int], strides: list[int], dilations: list[int]
    ) -> list[int]:
        """Pads for a 2D NHWC op with TFLite ``padding`` (SAME or VALID)."""
        if padding == schema.Padding.VALID:
            return [0, 0, 0, 0]
        if padding != schema.Padding.SAME:
            raise ConversionError(f"{self.path}: unsupported padding {padding}")
        return self.same_pads(self.shape(in_idx)[1:3], self.shape(out_idx)[1:3], kernel, strides, dilations)

    # ---- operators -----------------------------------------------------------------------

    def conv(self, op: Any, depthwise: bool) -> None:
        """CONV_2D / DEPTHWISE_CONV_2D -> Conv (group = channels for depthwise), NCHW inside."""
        opts = op.builtinOptions
        x_idx, w_idx = int(op.inputs[0]), int(op.inputs[1])
        b_idx = int(op.inputs[2]) if len(op.inputs) > 2 else -1
        out_idx = int(op.outputs[0])
        hint = self.tensor_name(out_idx)
        x = self.activation_input(x_idx, _NCHW)
        w_shape = self.shape(w_idx)
        in_channels = self.shape(x_idx)[3]
        if depthwise:
            w, wq = self.weights(w_idx, [3, 0, 1, 2], hint)  # [1, kh, kw, C*m] -> [C*m, 1, kh, kw]
            group = in_channels
        else:
            w, wq = self.weights(w_idx, [0, 3, 1, 2], hint)  # [O, kh, kw, I] -> [O, I, kh, kw]
            group = in_channels // w_shape[3]
        kernel = [w_shape[1], w_shape[2]]
        strides = [int(opts.strideH), int(opts.strideW)]
        dilations = [int(opts.dilationHFactor), int(opts.dilationWFactor)]
        inputs = [x, w]
        b = self.bias(b_idx, self.quant(x_idx), wq, hint)
        if b is not None:
            inputs.append(b)
        y = self.node(
            "Conv",
            inputs,
            kernel_shape=kernel,
            strides=strides,
            dilations=dilations,
            group=group,
            pads=self.pads(int(opts.padding), x_idx, out_idx, kernel, strides, dilations),
        )
        self.quantize_output(y, out_idx, int(opts.fusedActivationFunction), _NHWC)

    def pool(self, op: Any, kind: str) -> None:
        """MAX_POOL_2D / AVERAGE_POOL_2D (AveragePool excludes padding, as TFLite does)."""
        opts = op.builtinOptions
        x_idx, out_idx = int(op.inputs[0]), int(op.outputs[0])
        x = self.activation_input(x_idx, _NCHW)
        kernel = [int(opts.filterHeight), int(opts.filterWidth)]
        strides = [int(opts.strideH), int(opts.strideW)]
        attrs: dict[str, Any] = {
            "kernel_shape": kernel,
            "strides": strides,
            "pads": self.pads(int(opts.padding), x_idx, out_idx, kernel, strides, [1, 1]),
        }
        if kind == "AveragePool":
            attrs["count_include_pad"] = 0
        y = self.node(kind, [x], **attrs)
        self.quantize_output(y, out_idx, int(opts.fusedActivationFunction), _NHWC)

    def fully_connected(self, op: Any) -> None:
        """FULLY_CONNECTED -> Gemm(transB=1) on [-1, in] rows; output reshaped to its static shape."""
        opts = op.builtinOptions
        x_idx, w_idx = int(op.inputs[0]), int(op.inputs[1])
        b_idx = int(op.inputs[2]) if len(op.inputs) > 2 else -1
        out_idx = int(op.outputs[0])
        if int(opts.weightsFormat) != schema.FullyConnectedOptionsWeightsFormat.DEFAULT:
            raise ConversionError(f"{self.path}: FULLY_CONNECTED with shuffled weights is not supported")
        hint = self.tensor_name(out_idx)
        x = self.activation_input(x_idx)
        w, wq = self.weights(w_idx, None, hint)  # [out, in]
        n_in = self.shape(w_idx)[1]
        if len(self.shape(x_idx)) != 2 or self.shape(x_idx)[1] != n_in:
            x = self.node("Reshape", [x, self.const(np.array([-1, n_in], np.int64), "fc_rows")])
        inputs = [x, w]
        b = self.bias(b_idx, self.quant(x_idx), wq, hint)
        if b is not None:
            inputs.append(b)
        y = self.node("Gemm", inputs, transB=1)
        out_shape = self.shape(out_idx)
        if len(out_shape) != 2:  # keep_num_dims: [..., out]
            y = self.node("Reshape", [y, self.const(np.array(out_shape, np.int64), "fc_shape")])
        self.quantize_output(y, out_idx, int(opts.fusedActivationFunction))

    def add(self, op: Any) -> None:
        """ADD (numpy broadcasting, fused activation)."""
        a = self.activation_input(int(op.inputs[0]))
        b = self.activation_input(int(op.inputs[1]))
        y = self.node("Add", [a, b])
        act = int(op.builtinOptions.fusedActivationFunction) if op.builtinOptions is not None else 0
        self.quantize_output(y, int(op.outputs[0]), act)

    def softmax(self, op: Any) -> None:
        """SOFTMAX over the last axis, with beta."""
        x = self.activation_input(int(op.inputs[0]))
        beta = float(op.builtinOptions.beta) if op.builtinOptions is not None else 1.0
        if beta != 1.0:
            x = self.node("Mul", [x, self.const(np.array(beta, np.float32), "softmax_beta")])
        y = self.node("Softmax", [x], axis=-1)
        self.quantize_output(y, int(op.outputs[0]), schema.ActivationFunctionType.NONE)

    def mean(self, op: Any) -> None:
        """MEAN over constant axes -> ReduceMean (keepdims per params)."""
        x_idx = int(op.inputs[0])
        axes_data = self.data(int(op.inputs[1]))
        if axes_data is None:
            raise ConversionError(f"{self.path}: MEAN with non-constant axes is not supported")
        rank = len(self.shape(x_idx))
        axes = sorted({int(a) % rank for a in np.asarray(axes_data).reshape(-1)})
        keep = bool(op.builtinOptions.keepDims) if op.builtinOptions is not None else False
        x = self.activation_input(x_idx)
        y = self.node("ReduceMean", [x], axes=axes, keepdims=int(keep))
        self.quantize_output(y, int(op.outputs[0]), schema.ActivationFunctionType.NONE)

    def reshape(self, op: Any) -> None:
        """RESHAPE / EXPAND_DIMS -> Reshape to the output tensor's static shape.

        The quantized values move unchanged when input and output share their quantization (as
        TFLite requires) and are carried in the same type (both uint8 inside the graph, or both
        int8); otherwise (e.g. a uint8 activation reshaped into the int8 graph output) the op is
        DequantizeLinear -> Reshape -> QuantizeLinear, which gives the same real values.
        """
        x_idx, out_idx = int(op.inputs[0]), int(op.outputs[0])
        self.require_int8(x_idx)
        self.require_int8(out_idx)
        target = self.const(np.array(self.shape(out_idx), np.int64), f"{self.tensor_name(out_idx)}_shape")
        qi, qo = self.quant(x_idx), self.quant(out_idx)
        same = (
            qi.axis is None
            and qo.axis is None
            and np.array_equal(qi.scale, qo.scale)
            and np.array_equal(qi.zero_point, qo.zero_point)
            and self.carried_as_uint8(x_idx) == self.carried_as_uint8(out_idx)
        )
        if same:
            self.node("Reshape", [self.carried_name(x_idx), target], [self.tensor_name(out_idx)])
        else:
            y = self.node("Reshape", [self.activation_input(x_idx), target])
            self.quantize_output(y, out_idx, schema.ActivationFunctionType.NONE)

    # ---- driver --------------------------------------------------------------------------

    def live_ops(self) -> list[Any]:
        """Operators that contribute to a graph output (a RESHAPE needs only its data input)."""
        needed = {int(i) for i in self.graph.outputs}
        live: list[Any] = []
        for op in reversed(self.graph.operators):
            if not any(int(o) in needed for o in op.outputs):
                continue
            live.append(op)
            name = op_name(self.model, op)
            inputs = [int(i) for i in op.inputs]
            if name in ("RESHAPE", "EXPAND_DIMS"):
                inputs = inputs[:1]
            needed.update(i for i in inputs if i >= 0)
        return list(reversed(live))

    def run(self) -> onnx.ModelProto:
        """Build and return the ONNX model."""
        inputs = [int(i) for i in self.graph.inputs]
        outputs = [int(i) for i in self.graph.outputs]
        for idx in inputs + outputs:
            self.require_int8(idx)
            self.tensor_name(idx)  # graph I/O keep their TFLite names first
        ops = self.live_ops()
        for op in ops:
            check_supported(op_name(self.model, op), self.path)
        handlers = {
            "ADD": self.add,
            "AVERAGE_POOL_2D": lambda op: self.pool(op, "AveragePool"),
            "CONV_2D": lambda op: self.conv(op, depthwise=False),
            "DEPTHWISE_CONV_2D": lambda op: self.conv(op, depthwise=True),
            "EXPAND_DIMS": self.reshape,
            "FULLY_CONNECTED": self.fully_connected,
            "MAX_POOL_2D": lambda op: self.pool(op, "MaxPool"),
            "MEAN": self.mean,
            "RESHAPE": self.reshape,
            "SOFTMAX": self.softmax,
        }
        for op in ops:
            handlers[op_name(self.model, op)](op)

        def value(idx: int) -> onnx.ValueInfoProto:
            return helper.make_tensor_value_info(self.tensor_name(idx), TensorProto.INT8, self.shape(idx))

        graph = helper.make_graph(
            self.nodes,
            Path(self.path).stem,
            [value(i) for i in inputs],
            [value(i) for i in outputs],
            initializer=self.initializers,
        )
        model = helper.make_model(
            graph,
            producer_name=PRODUCER_NAME,
            producer_version=PRODUCER_VERSION,
            opset_imports=[helper.make_opsetid("", OPSET)],
            doc_string=(
                f"Converted from {Path(self.path).name} "
                f"(sha256 {hashlib.sha256(self.buf).hexdigest()}) by {PRODUCER_NAME}: "
                "int8 QDQ, TFLite quantization kept exactly."
            ),
        )
        model.ir_version = 8  # opset 17's IR version; readable by every onnxruntime >= 1.13
        try:
            onnx.checker.check_model(model, full_check=True)
        except onnx.checker.ValidationError as exc:  # a converter bug, not bad input
            raise RuntimeError(f"{self.path}: converted model fails onnx.checker: {exc}") from exc
        return model


def convert(tflite_path: Path) -> onnx.ModelProto:
    """Convert the int8 ``.tflite`` at ``tflite_path`` into an int8 QDQ ONNX model.

    Raises :class:`ConversionError` (a ``ValueError``) for a file that is not a readable
    full-integer int8 TFLite model or that contains an operator without a mapping, and
    ``OSError`` when the file cannot be read.
    """
    path = Path(tflite_path)
    return _Converter(path, path.read_bytes()).run()


def convert_file(tflite_path: Path | str, onnx_path: Path | str) -> Path:
    """Convert ``tflite_path`` and write the ONNX model to ``onnx_path``; returns the written path."""
    out = Path(onnx_path)
    model = convert(Path(tflite_path))
    data = model.SerializeToString(deterministic=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: ``tflite_to_onnx.py IN.tflite OUT.onnx``. Exit 0 on success, 2 on bad input."""
    parser = argparse.ArgumentParser(
        description="Convert a full-integer int8 .tflite model into an int8 QDQ .onnx model "
        "(TFLite quantization kept exactly; NHWC int8 input and int8 output as in the .tflite).",
    )
    parser.add_argument("tflite", type=Path, help="input .tflite file (full-integer int8)")
    parser.add_argument("onnx", type=Path, help="output .onnx file (overwritten)")
    args = parser.parse_args(argv)
    try:
        out = convert_file(args.tflite, args.onnx)
    except (ConversionError, OSError) as exc:
        message = str(exc) if isinstance(exc, ConversionError) else f"{args.tflite}: {exc.strerror or exc}"
        print(f"tflite_to_onnx: error: {message}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
