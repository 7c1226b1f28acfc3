"""Preprocessing that writes straight into the model's input tensor.

A window of raw samples goes through channel selection, ``(x - offset) / scale`` per
channel, and quantization to the input's int8/uint8 scale and zero point, fused into
one affine map ``q = rint(x * a + b)`` computed in one preallocated float32 scratch
buffer. (``tensors.quantize`` computes ``rint(x / s) + zp``; with the zero point folded
in, a value within float error of a half step can round the other way: one step, about
once in a million values on the shipped model.) The only write into the model's memory is the final ``copyto`` into the
input tensor: that is the one unavoidable copy of a window's data, and it is where
the float values become the model's integers.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InputError
from ..model import Model
from ..runner import Runner
from ..sidecar import read_sidecar
from ..tensors import TensorSpec, unquantized_message

_MAGIC = np.array(1.5 * 2**23, dtype=np.float32)


@dataclass(frozen=True)
class Preprocess:
    """What to do to a window before the model: select ``channels``, then ``(x - offset) / scale``.

    ``offset`` and ``scale`` are one value or one per selected channel (a normalisation:
    offset = mean, scale = std). Quantization to the model input is always last and
    comes from the model's ``TensorSpec``.
    """

    channels: tuple[int, ...] | None = None
    offset: tuple[float, ...] = (0.0,)
    scale: tuple[float, ...] = (1.0,)

    @classmethod
    def from_sidecar(cls, path: str | Path) -> Preprocess:
        """The ``preprocessing`` block of a model's JSON sidecar (see ``edge_runtime.sidecar``);
        ``ArgumentError`` for a file that is missing, not JSON, or has unknown keys."""
        side = read_sidecar(path)
        return cls(offset=side.offset, scale=side.scale)

    @classmethod
    def choose(cls, choice: str, runner: Runner) -> Preprocess:
        """``none``; ``auto`` (the runner's own sidecar, if it is a model that has one); or a
        sidecar file's path. What ``--preprocess`` and the daemon's ``preprocess`` key mean."""
        if choice == "none":
            return cls()
        if choice != "auto":
            return cls.from_sidecar(choice)
        side = runner.sidecar if isinstance(runner, Model) else None
        return cls(offset=side.offset, scale=side.scale) if side is not None else cls()

    @property
    def identity(self) -> bool:
        """True when this changes nothing (no channel selection, offset 0, scale 1)."""
        return self.channels is None and not any(self.offset) and all(s == 1.0 for s in self.scale)

    def describe(self) -> str:
        parts = []
        if self.channels is not None:
            parts.append(f"channels {list(self.channels)}")
        if any(self.offset) or any(s != 1.0 for s in self.scale):
            parts.append(f"(x - {list(self.offset)}) / {list(self.scale)}")
        return ", ".join(parts) or "none"


class Preprocessor:
    """``Preprocess`` compiled for one window shape and one model input.

    Owns a float32 scratch buffer of the window's shape; ``__call__`` allocates no
    array that grows with the window.
    """

    def __init__(
        self, pre: Preprocess, window: int, channels: int, spec: TensorSpec, dtype: npt.DTypeLike = np.float32
    ) -> None:
        self.spec = spec
        sel = pre.channels
        n_out = len(sel) if sel is not None else channels
        if sel is not None and any(not 0 <= c < channels for c in sel):
            raise InputError(f"channel selection {list(sel)} outside 0..{channels - 1}")
        if int(np.prod(spec.shape)) != window * n_out:
            raise InputError(
                f"a window of {window} samples x {n_out} channels ({window * n_out} values) does not fit "
                f"input {spec.name!r} of shape {spec.shape}"
            )
        offset = _per_channel(pre.offset, n_out, "offset")
        scale = _per_channel(pre.scale, n_out, "scale")
        if np.any(scale == 0):
            raise InputError("preprocessing scale must not be 0")
        q = spec.quantization
        integer = bool(np.issubdtype(spec.dtype, np.integer))
        #: An integer input with no known quantization takes the samples as they are, or nothing:
        #: floats have no defined value in it (``Model.infer`` refuses them the same way).
        self._raw = integer and q is None
        if self._raw and not (pre.identity and np.dtype(dtype) == spec.dtype):
            raise InputError(unquantized_message(spec))
        if q is not None and q.per_channel:
            raise InputError("per-channel quantized inputs are not supported by stream preprocessing")
        qscale, zp = (q.scales[0], q.zero_points[0]) if q is not None else (1.0, 0)
        shape = (window, n_out)
        # Full-shape coefficients: a broadcast operand makes NumPy allocate iterator buffers
        # (~3.5 KiB) on every call; same-shape operands allocate nothing.
        self._a = np.ascontiguousarray(np.broadcast_to(1.0 / (scale * qscale), shape), dtype=np.float32)
        self._b = np.ascontiguousarray(np.broadcast_to(zp - offset / (scale * qscale), shape), dtype=np.float32)
        self._quantize = q is not None and np.issubdtype(spec.dtype, np.integer)
        info = np.iinfo(spec.dtype) if np.issubdtype(spec.dtype, np.integer) else None
        self._lo = np.array(info.min if info is not None else 0, dtype=np.float32)
        self._hi = np.array(info.max if info is not None else 0, dtype=np.float32)
        self.dtype = np.dtype(dtype)
        self._sel = np.asarray(sel, dtype=np.intp) if sel is not None else None
        self._picked = np.zeros(shape, dtype=self.dtype) if sel is not None else None
        self._scratch = np.zeros(shape, dtype=np.float32)
        self.window, self.channels = window, channels
        # Float -> 8-bit without NumPy's casting buffer (a ~4 KiB allocation per call): after
        # clipping, adding 1.5 * 2**23 leaves round-half-even(x) in the low mantissa bits of
        # the float32, so its lowest byte *is* the int8/uint8 value (little-endian hosts).
        self._magic = (
            self._scratch.view(spec.dtype)[:, ::4]
            if self._quantize and spec.dtype.itemsize == 1 and sys.byteorder == "little"
            else None
        )

    def __call__(self, window: npt.NDArray[Any], dst: npt.NDArray[Any]) -> None:
        """Write the preprocessed, quantized ``window`` into ``dst`` (the input tensor's memory).

        ``window`` is ``(size, channels)`` of the dtype given at construction; ``dst`` is
        C-contiguous (a tensor's own memory always is). Allocates nothing that grows with
        the window (see scripts/bench_stream.py).
        """
        if self._raw:  # same dtype, no preprocessing: the samples are the input
            np.copyto(dst.reshape(window.shape), window)
            return
        src = window
        if self._sel is not None and self._picked is not None:
            np.take(window, self._sel, axis=1, out=self._picked, mode="clip")
            src = self._picked
        s = self._scratch
        if src.dtype != np.float32:
            np.copyto(s, src, casting="unsafe")  # widen first: mixed-type ufuncs allocate cast buffers
            np.multiply(s, self._a, out=s)
        else:
            np.multiply(src, self._a, out=s)
        np.add(s, self._b, out=s)
        if self._quantize:
            np.maximum(s, self._lo, out=s)
            np.minimum(s, self._hi, out=s)
            if self._magic is not None:
                np.add(s, _MAGIC, out=s)  # rounds half to even, as np.rint
                np.copyto(dst.reshape(s.shape), self._magic)  # the one write into the model's input
                return
            np.rint(s, out=s)
        np.copyto(dst.reshape(s.shape), s, casting="unsafe")  # the one write into the model's input


def _per_channel(values: Sequence[float], n: int, what: str) -> npt.NDArray[np.float64]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 1:
        return np.full(n, float(arr[0]))
    if arr.size != n:
        raise InputError(f"preprocessing {what} has {arr.size} values for {n} channels")
    return arr
