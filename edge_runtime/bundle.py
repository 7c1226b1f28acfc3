"""The early-exit bundle manifest (``bundle.json``): parse strictly, write atomically.

A bundle is a directory: ``bundle.json`` plus one model file per stage (``.tflite``, and
optionally an OpenVINO IR ``.xml``/``.bin`` for the same stage). Stage k takes the
carried tensor of stage k-1 (stage 0 the model input) and outputs an exit head's logits
and the tensor to carry on; the last stage outputs logits only.

Format, version 1::

    {
      "format": "edge_runtime.early_exit",
      "version": 1,
      "name": "digits_early_exit",
      "labels": ["0", "1", ...],
      "stages": [
        {"tflite": "stage0.tflite", "openvino": "stage0.xml",         # at least one file
         "input": NAME, "logits": NAME, "carry": NAME,                # tensor names (TFLite's)
         "openvino_input": NAME, ...                                  # optional: names on OpenVINO
         "exit": {"measure": "max_prob" | "margin" | "entropy", "threshold": T}},
        ...,
        {..., "carry": null, "exit": null}                            # the last stage always exits
      ],
      "calibration": null | {"data": ..., "date": ..., "exits": [...], ...}
    }

Confidence is computed on dequantized logits in float (int8 softmax steps are 1/256
wide): ``max_prob`` (the top softmax probability, exit when >= T, T in [0, 1]),
``margin`` (top minus second probability, >= T, T in [0, 1]) and ``entropy`` (of the
softmax, in nats, exit when <= T, T in [0, ln(labels)]). A threshold of ``null`` means
"never exit here" (calibration writes it when an exit does not pay for itself).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import ArgumentError, ModelFileError

MANIFEST = "bundle.json"
FORMAT = "edge_runtime.early_exit"
VERSION = 1
MEASURES = ("max_prob", "margin", "entropy")

_TOP_KEYS = {"format", "version", "name", "labels", "stages", "calibration"}
_STAGE_KEYS = {
    "tflite",
    "openvino",
    "input",
    "logits",
    "carry",
    "exit",
    "openvino_input",
    "openvino_logits",
    "openvino_carry",
}
_EXIT_KEYS = {"measure", "threshold"}


@dataclass(frozen=True)
class ExitRule:
    """When an exit head is confident enough to stop. ``threshold`` None: never stop here."""

    measure: str
    threshold: float | None

    def confident(self, value: Any) -> Any:
        """For one confidence value (a bool) or an array of them (a bool array)."""
        if self.threshold is None:
            return np.zeros_like(value, dtype=bool) if isinstance(value, np.ndarray) else False
        return value <= self.threshold if self.measure == "entropy" else value >= self.threshold


@dataclass(frozen=True)
class StageSpec:
    tflite: str | None
    openvino: str | None
    input: str
    logits: str
    carry: str | None
    exit: ExitRule | None
    openvino_names: dict[str, str] = field(default_factory=dict)

    def names(self, backend: str) -> tuple[str, str, str | None]:
        """(input, logits, carry) tensor names as ``backend`` reports them."""
        if backend == "openvino":
            n = self.openvino_names
            return n.get("input", self.input), n.get("logits", self.logits), n.get("carry", self.carry)
        return self.input, self.logits, self.carry


@dataclass(frozen=True)
class Manifest:
    path: Path  # the bundle directory
    name: str
    labels: tuple[str, ...]
    stages: tuple[StageSpec, ...]
    calibration: dict[str, Any] | None
    raw: dict[str, Any]

    @property
    def thresholds(self) -> tuple[float | None, ...]:
        return tuple(s.exit.threshold for s in self.stages if s.exit is not None)


def confidence(measure: str, probs: npt.NDArray[np.float64]) -> float:
    """The confidence ``measure`` of one softmax vector (float)."""
    if measure == "max_prob":
        return float(probs.max())
    if measure == "margin":
        top2 = np.partition(probs, -2)[-2:]
        return float(top2[1] - top2[0])
    p = probs[probs > 0]
    return float(-(p * np.log(p)).sum())


def softmax(logits: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    z = np.exp(z - z.max())
    out: npt.NDArray[np.float64] = z / z.sum()
    return out


def _err(bundle: Path, where: str, reason: str) -> ModelFileError:
    return ModelFileError(f"bundle manifest: {where}: {reason}", path=str(bundle / MANIFEST))


def threshold_range(measure: str, n_labels: int) -> tuple[float, float]:
    return (0.0, math.log(n_labels)) if measure == "entropy" else (0.0, 1.0)


def _exit(bundle: Path, where: str, raw: Any, n_labels: int) -> ExitRule:
    if not isinstance(raw, dict):
        raise _err(bundle, where, "must be an object with measure and threshold")
    unknown = sorted(set(raw) - _EXIT_KEYS)
    if unknown:
        raise _err(bundle, where, f"unknown key(s) {unknown}; allowed: {sorted(_EXIT_KEYS)}")
    measure = raw.get("measure")
    if measure not in MEASURES:
        raise _err(bundle, f"{where}.measure", f"{measure!r} is not one of {', '.join(MEASURES)}")
    t = raw.get("threshold")
    if t is None:  # calibration found this exit never worth taking
        return ExitRule(measure, None)
    lo, hi = threshold_range(measure, n_labels)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not lo <= t <= hi:
        raise _err(bundle, f"{where}.threshold", f"{t!r} is outside [{lo:g}, {hi:.4g}] for {measure} (or null: never)")
    return ExitRule(measure, float(t))


def read_manifest(bundle: str | Path) -> Manifest:
    """Parse and check ``bundle/bundle.json``; every problem names the bundle, the stage and the field."""
    path = Path(bundle)
    try:
        raw = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise ModelFileError(f"not an early-exit bundle: no {MANIFEST}", path=str(path)) from None
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"bundle manifest is not readable JSON: {exc}", path=str(path / MANIFEST)) from exc
    if not isinstance(raw, dict):
        raise _err(path, "top level", "must be a JSON object")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise _err(path, "top level", f"unknown key(s) {unknown}; allowed: {sorted(_TOP_KEYS)}")
    if raw.get("format") != FORMAT:
        raise _err(path, "format", f"{raw.get('format')!r}, expected {FORMAT!r}")
    version = raw.get("version")
    if not isinstance(version, int) or version < 1:
        raise _err(path, "version", f"{version!r} is not a manifest version")
    if version > VERSION:
        raise _err(
            path,
            "version",
            f"made for manifest version {version}; this edge_runtime reads up to {VERSION}: upgrade edge_runtime",
        )
    labels = raw.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise _err(path, "labels", "must be a non-empty list of strings")
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise _err(path, "stages", "must be a non-empty list")
    stages = []
    for k, st in enumerate(stages_raw):
        where = f"stages[{k}]"
        if not isinstance(st, dict):
            raise _err(path, where, "must be an object")
        unknown = sorted(set(st) - _STAGE_KEYS)
        if unknown:
            raise _err(path, where, f"unknown key(s) {unknown}; allowed: {sorted(_STAGE_KEYS)}")
        last = k == len(stages_raw) - 1
        for key in ("input", "logits"):
            if not isinstance(st.get(key), str):
                raise _err(path, f"{where}.{key}", "must be a tensor name")
        if last and st.get("carry") is not None:
            raise _err(path, f"{where}.carry", "the last stage carries nothing: must be null")
        if not last and not isinstance(st.get("carry"), str):
            raise _err(path, f"{where}.carry", "must be the name of the tensor carried to the next stage")
        if last and st.get("exit") is not None:
            raise _err(path, f"{where}.exit", "the last stage always exits: must be null")
        rule = None if last else _exit(path, f"{where}.exit", st.get("exit"), len(labels))
        files = {b: st.get(b) for b in ("tflite", "openvino")}
        if not any(files.values()):
            raise _err(path, where, "names no model file (tflite or openvino)")
        for backend, name in files.items():
            if name is None:
                continue
            if not isinstance(name, str) or not (path / name).is_file():
                raise _err(path, f"{where}.{backend}", f"stage file {name!r} is missing")
        ov_names = {k.removeprefix("openvino_"): v for k, v in st.items() if k.startswith("openvino_") and v}
        stages.append(
            StageSpec(files["tflite"], files["openvino"], st["input"], st["logits"], st.get("carry"), rule, ov_names)
        )
    calibration = raw.get("calibration")
    if calibration is not None and not isinstance(calibration, dict):
        raise _err(path, "calibration", "must be an object or null")
    return Manifest(path, str(raw.get("name", path.name)), tuple(labels), tuple(stages), calibration, raw)


def with_thresholds(manifest: Manifest, thresholds: Sequence[float | None]) -> Manifest:
    """A copy of ``manifest`` with new exit thresholds (checked against each measure's range; None: never)."""
    exits = [s for s in manifest.stages if s.exit is not None]
    if len(thresholds) != len(exits):
        raise ArgumentError(f"{len(thresholds)} thresholds for {len(exits)} exits", path=str(manifest.path))
    stages = []
    it = iter(thresholds)
    for s in manifest.stages:
        if s.exit is None:
            stages.append(s)
            continue
        value = next(it)
        if value is None:
            stages.append(replace(s, exit=ExitRule(s.exit.measure, None)))
            continue
        try:
            t = float(value)
        except (TypeError, ValueError):
            raise ArgumentError(
                f"threshold {value!r} is not a number (or None: never)", path=str(manifest.path)
            ) from None
        lo, hi = threshold_range(s.exit.measure, len(manifest.labels))
        if not lo <= t <= hi:
            raise ArgumentError(
                f"threshold {t} outside [{lo:g}, {hi:.4g}] for {s.exit.measure} (or None: never)",
                path=str(manifest.path),
            )
        stages.append(replace(s, exit=ExitRule(s.exit.measure, t)))
    return replace(manifest, stages=tuple(stages))


def write_manifest(manifest: Manifest, calibration: dict[str, Any] | None) -> None:
    """Write thresholds and ``calibration`` into ``bundle.json`` atomically (temp file, fsync, rename)."""
    raw = json.loads(json.dumps(manifest.raw))
    exits = iter(s.exit for s in manifest.stages)
    for st in raw["stages"]:
        rule = next(exits)
        if rule is not None:
            t = None if rule.threshold is None else round(rule.threshold, 6)
            st["exit"] = {"measure": rule.measure, "threshold": t}
    raw["calibration"] = calibration
    target = manifest.path / MANIFEST
    try:
        mode = target.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=".bundle.", suffix=".json", dir=manifest.path)
    try:
        try:
            fh = os.fdopen(fd, "w")
        except BaseException:
            os.close(fd)
            raise
        with fh:  # owns fd from here: closed on every path
            os.fchmod(fh.fileno(), mode)  # mkstemp makes 0600: keep the manifest's own permissions
            json.dump(raw, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        dir_fd = os.open(manifest.path, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power cut
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
