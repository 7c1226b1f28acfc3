"""Helpers shared by the model build scripts (dev only: run with the training environment).

Imported as ``train_common`` by ``build_models.py`` and ``build_early_exit.py``, which
run as ``python scripts/<name>.py`` (so this folder is on ``sys.path``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import io
import zipfile
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - typing only
    import keras

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)

FloatArray = np.ndarray
IntArray = np.ndarray


def version(dist: str) -> str:
    """The installed version of distribution ``dist``, or "not installed"."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def seed_everything(seed: int) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)  # python, numpy and TensorFlow RNGs
    tf.config.experimental.enable_op_determinism()


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates of the Conv1D/Conv2D/Dense layers (batch 1), nested models included."""
    import keras
    from keras import layers

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += count_macs(layer)
        elif isinstance(layer, layers.Conv1D | layers.Conv2D):
            kernel = layer.kernel.shape  # (*k, cin, cout)
            total += int(np.prod(layer.output.shape[1:-1])) * int(np.prod(kernel))
        elif isinstance(layer, layers.Dense):
            total += int(np.prod(layer.kernel.shape))
    return total


def quantize_input(x: FloatArray, scale: float, zero_point: int) -> np.ndarray:
    """clip(rint(x / scale) + zero_point) in float32, half to even (as edge_runtime)."""
    q = np.rint(np.asarray(x, dtype=np.float32) / np.float32(scale)) + np.float32(zero_point)
    q_int8: np.ndarray = np.clip(q, -128, 127).astype(np.int8)
    return q_int8


def save_npz_deterministic(path: Path, **arrays: np.ndarray) -> None:
    """Like np.savez_compressed, but with fixed zip timestamps (byte-stable)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, array in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            npy = io.BytesIO()
            np.lib.format.write_array(  # type: ignore[no-untyped-call]
                npy, np.ascontiguousarray(array), allow_pickle=False
            )
            zf.writestr(info, npy.getvalue())
    path.write_bytes(buffer.getvalue())


def pct(value: float) -> str:
    return f"{100.0 * value:.2f} %"


def iso_date(text: str) -> str:
    """argparse type: an ISO date (YYYY-MM-DD)."""
    try:
        return _dt.date.fromisoformat(text).isoformat()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO date (YYYY-MM-DD): {text!r}") from exc
