"""Tensor specs and the int8/uint8 (de)quantization arithmetic.

No backend is imported here: backends build ``TensorSpec`` records, everything
else reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import ArgumentError


@dataclass(frozen=True)
class Quantization:
    """Affine quantization ``real = scale * (q - zero_point)``.

    ``scales`` and ``zero_points`` have one entry per tensor (``axis is None``) or one
    per slice along ``axis`` (per-channel).
    """

    scales: tuple[float, ...]
    zero_points: tuple[int, ...]
    axis: int | None = None

    @property
    def per_channel(self) -> bool:
        return self.axis is not None and len(self.scales) > 1

    @property
    def scale(self) -> float:
        """The per-tensor scale; raises ``ArgumentError`` (a ``ValueError``) for per-channel quantization."""
        if self.per_channel:
            raise ArgumentError("per-channel quantization has no single scale")
        return self.scales[0]

    @property
    def zero_point(self) -> int:
        """The per-tensor zero point; raises ``ArgumentError`` (a ``ValueError``) for per-channel quantization."""
        if self.per_channel:
            raise ArgumentError("per-channel quantization has no single zero point")
        return self.zero_points[0]

    @cached_property
    def _arrays(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        return np.asarray(self.scales, dtype=np.float32), np.asarray(self.zero_points, dtype=np.float32)

    def _broadcast(
        self, ndim: int
    ) -> tuple[npt.NDArray[np.float32] | np.float32, npt.NDArray[np.float32] | np.float32]:
        scales, zps = self._arrays  # computed once per Quantization
        if self.per_channel and self.axis is not None:
            shape = [1] * ndim
            shape[self.axis] = len(self.scales)
            return scales.reshape(shape), zps.reshape(shape)
        return scales[0], zps[0]

    def to_dict(self) -> dict[str, Any]:
        return {"scales": list(self.scales), "zero_points": list(self.zero_points), "axis": self.axis}


@dataclass(frozen=True)
class TensorSpec:
    """What one model input or output looks like.

    ``shape`` is the static shape the model runs with (after any reshape of a dynamic
    batch dimension to 1). ``quantization`` is ``None`` for float tensors and for
    quantized tensors whose parameters the backend could not recover.
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    quantization: Quantization | None = None

    @property
    def quantized(self) -> bool:
        return self.quantization is not None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype.name,
            "quantization": self.quantization.to_dict() if self.quantization else None,
        }

    def describe(self) -> str:
        """One human line: ``name int8[1,8,8,1] scale=0.0039 zp=-128``."""
        text = f"{self.name} {self.dtype.name}[{','.join(map(str, self.shape))}]"
        q = self.quantization
        if q is None:
            return text
        if q.per_channel:
            return text + f" per-channel(axis={q.axis}, {len(q.scales)} scales)"
        return text + f" scale={q.scales[0]:.6g} zp={q.zero_points[0]}"


def quantize(x: npt.ArrayLike, spec: TensorSpec, out: npt.NDArray[Any] | None = None) -> npt.NDArray[Any]:
    """Quantize real values to ``spec``'s integer dtype: ``clip(round(x / scale) + zp)``.

    Rounds half to even (NumPy ``rint``); TFLite's own quantizer rounds half away
    from zero, so a value exactly halfway between two steps may land one step apart.
    Writes into ``out`` when given (it must have ``spec``'s shape and dtype) and
    returns it; otherwise returns a new array.
    """
    q = spec.quantization
    if q is None:
        raise ArgumentError(f"tensor {spec.name!r} has no quantization parameters")
    info = np.iinfo(spec.dtype)
    scale, zp = q._broadcast(len(spec.shape))
    values = np.rint(np.asarray(x, dtype=np.float32) / scale) + zp
    np.clip(values, info.min, info.max, out=values)
    if out is None:
        result: npt.NDArray[Any] = values.astype(spec.dtype)
        return result
    np.copyto(out, values, casting="unsafe")
    return out


class Quantizer:
    """``quantize`` for one tensor, into memory that already exists: the same values
    (``clip(rint(x / scale) + zp)``, computed in float32), no allocation per call.

    Owns a float32 scratch buffer of ``spec``'s shape (not thread-safe: one per model, as the
    model's interpreter is). ``x`` must be a float array of ``spec``'s shape; ``out`` is the
    tensor's memory (``spec``'s shape and dtype).
    """

    def __init__(self, spec: TensorSpec) -> None:
        q = spec.quantization
        if q is None:
            raise ArgumentError(f"tensor {spec.name!r} has no quantization parameters")
        info = np.iinfo(spec.dtype)
        self._scale, self._zp = q._broadcast(len(spec.shape))
        self._lo, self._hi = np.float32(info.min), np.float32(info.max)
        self._scratch = np.empty(spec.shape, np.float32)

    def __call__(self, x: npt.NDArray[Any], out: npt.NDArray[Any]) -> None:
        s = self._scratch
        if x.dtype == np.float32:
            np.divide(x, self._scale, out=s)
        else:  # to float32 first, as quantize() does, so that the division rounds the same way
            np.copyto(s, x, casting="unsafe")
            np.divide(s, self._scale, out=s)
        np.rint(s, out=s)
        np.add(s, self._zp, out=s)
        np.maximum(s, self._lo, out=s)
        np.minimum(s, self._hi, out=s)
        np.copyto(out, s, casting="unsafe")  # the one write into the tensor


def dequantize(q_values: npt.NDArray[Any], spec: TensorSpec) -> npt.NDArray[np.float32]:
    """Return ``scale * (q - zp)`` as a new float32 array (float tensors: a float32 copy)."""
    q = spec.quantization
    if q is None:
        copy: npt.NDArray[np.float32] = np.array(q_values, dtype=np.float32)
        return copy
    scale, zp = q._broadcast(q_values.ndim)
    return ((q_values.astype(np.float32) - zp) * scale).astype(np.float32, copy=False)


def random_tensor(spec: TensorSpec, seed: int = 0) -> npt.NDArray[Any]:
    """A new array of ``spec``'s shape and dtype: uniform over the full integer range, or
    standard normal for float tensors. Deterministic for a given ``seed`` (benchmarks, tests)."""
    rng = np.random.default_rng(seed)
    if np.issubdtype(spec.dtype, np.integer):
        info = np.iinfo(spec.dtype)
        ints: npt.NDArray[Any] = rng.integers(info.min, info.max, size=spec.shape, endpoint=True).astype(spec.dtype)
        return ints
    floats: npt.NDArray[Any] = rng.standard_normal(spec.shape).astype(spec.dtype)
    return floats


def unquantized_message(spec: TensorSpec) -> str:
    """Why float values cannot go into integer tensor ``spec`` (no quantization known): shared by
    ``Model.infer`` and stream preprocessing, so both refuse the same way."""
    return (
        f"input {spec.name!r} is {spec.dtype.name} with unknown quantization: float values have no defined "
        f"{spec.dtype.name} value; pass {spec.dtype.name} values (streams: a source of that type, no preprocessing)"
    )
