"""A model's JSON sidecar (``MODEL.json`` beside ``MODEL.tflite``): labels and preprocessing.

Read strictly: an unknown key at the top level or in the ``preprocessing`` block is an
error that names the key and lists the known ones (a misspelt ``divisor`` must not
silently mean "no scaling"). Example (``models/basicmotions_int8.json``)::

    {"name": ..., "labels": ["badminton", "running", ...],
     "preprocessing": {"kind": "standardize_per_channel", "mean": [...], "std": [...]},
     ...descriptive keys (accuracy, data source, sha256) the runtime does not read...}

Preprocessing kinds: ``none``; ``scale`` (``x = raw / divisor``);
``standardize_per_channel`` (``x = (raw - mean[c]) / std[c]``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ArgumentError

#: Top-level keys: ``labels`` and ``preprocessing`` are read; the rest describe the model.
TOP_KEYS = frozenset(
    {
        "name",
        "file",
        "size_bytes",
        "sha256",
        "task",
        "labels",
        "input",
        "output",
        "preprocessing",
        "float_accuracy",
        "int8_accuracy",
        "accuracy_note",
        "num_train_samples",
        "num_test_samples",
        "test_split",
        "test_data",
        "data_source",
        "training",
        "seed",
        "rebuild_command",
    }
)
#: Keys of the preprocessing block per kind; ``formula``, ``statistics``, ``dtype``,
#: ``channels`` (names) and the ranges are descriptive and allowed with every kind.
_DESCRIPTIVE = frozenset({"kind", "formula", "statistics", "dtype", "channels", "raw_range", "output_range"})
PREPROCESS_KEYS: dict[str, frozenset[str]] = {
    "none": _DESCRIPTIVE,
    "scale": _DESCRIPTIVE | {"divisor"},
    "standardize_per_channel": _DESCRIPTIVE | {"mean", "std"},
}


@dataclass(frozen=True)
class Sidecar:
    """What the runtime reads from a sidecar. ``offset``/``scale``: ``x = (raw - offset) / scale``,
    one value or one per channel."""

    path: Path
    labels: tuple[str, ...] | None
    offset: tuple[float, ...]
    scale: tuple[float, ...]


def sidecar_path(model: str | Path) -> Path:
    """Where a model's sidecar would be: ``MODEL.json`` beside the model file."""
    return Path(model).with_suffix(".json")


def read_sidecar(path: str | Path) -> Sidecar:
    """Parse a sidecar; raise ``ArgumentError`` naming the file, the key and the known keys."""
    p = Path(path)
    where = str(p)
    try:
        raw = json.loads(p.read_text())
    except FileNotFoundError:
        raise ArgumentError("sidecar not found", path=where) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArgumentError(f"cannot read the sidecar: {exc}", path=where) from exc
    except ValueError as exc:
        raise ArgumentError(f"the sidecar is not JSON: {exc}", path=where) from exc
    if not isinstance(raw, dict):
        raise ArgumentError("the sidecar must be a JSON object", path=where)
    _known(raw, TOP_KEYS, "top level", where)
    labels = raw.get("labels")
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)):
        raise ArgumentError("labels: must be a list of strings", path=where)
    pre = raw.get("preprocessing") or {"kind": "none"}
    if not isinstance(pre, dict):
        raise ArgumentError("preprocessing: must be an object", path=where)
    kind = pre.get("kind", "none")
    if kind not in PREPROCESS_KEYS:
        raise ArgumentError(
            f"preprocessing.kind: unknown kind {kind!r}; known: {', '.join(PREPROCESS_KEYS)}", path=where
        )
    _known(pre, PREPROCESS_KEYS[kind], f"preprocessing ({kind})", where)
    offset: tuple[float, ...] = (0.0,)
    scale: tuple[float, ...] = (1.0,)
    if kind == "scale":
        scale = (_number(pre.get("divisor"), "preprocessing.divisor", where),)
    elif kind == "standardize_per_channel":
        offset = _numbers(pre.get("mean"), "preprocessing.mean", where)
        scale = _numbers(pre.get("std"), "preprocessing.std", where)
    if any(s == 0 for s in scale):
        raise ArgumentError("preprocessing: a divisor or std of 0", path=where)
    return Sidecar(p, tuple(labels) if labels else None, offset, scale)


def _known(block: dict[str, Any], known: frozenset[str], where: str, path: str) -> None:
    unknown = sorted(set(block) - known)
    if unknown:
        raise ArgumentError(f"{where}: unknown key(s) {unknown}; known: {', '.join(sorted(known))}", path=path)


def _number(value: Any, key: str, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentError(f"{key}: must be a number, got {value!r}", path=path)
    return float(value)


def _numbers(value: Any, key: str, path: str) -> tuple[float, ...]:
    if not isinstance(value, list) or not value:
        raise ArgumentError(f"{key}: must be a non-empty list of numbers", path=path)
    return tuple(_number(v, key, path) for v in value)
