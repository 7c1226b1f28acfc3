"""Early-exit models: run stage after stage, stop at the first confident exit.

Stage k+1 runs only when exit k is not confident. The carried tensor goes from stage
k's output view straight into stage k+1's input tensor: one copy, and no dequantize /
requantize where the two quantizations match (the shipped bundle's build makes them
match; where they do not, the carry is requantized and ``requantized_carries`` says so).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from .bundle import Manifest, confidence, read_manifest, softmax, with_thresholds
from .errors import InputError, ModelLoadError
from .model import Model, load
from .tensors import TensorSpec, dequantize, quantize

log = logging.getLogger("edge_runtime")


@dataclass(frozen=True)
class EarlyExitResult:
    """One inference. ``scores`` are softmax probabilities of the exit taken (float).

    ``confidence`` is that exit's measure (the last stage, which has no rule, reports max_prob).

    ``exit_index`` counts from 0; ``stage_us`` holds the time of each stage that ran, in
    microseconds; ``cut_by_deadline`` is True when a later stage was skipped because it
    would not have fitted in ``deadline_ms``.
    """

    label: str
    label_index: int
    scores: npt.NDArray[np.float64]
    exit_index: int
    confidence: float
    stage_us: tuple[float, ...]
    cut_by_deadline: bool = False

    @property
    def total_us(self) -> float:
        return float(sum(self.stage_us))

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "label_index": self.label_index,
            "exit": self.exit_index,
            "confidence": round(self.confidence, 4),
            "scores": [round(float(s), 4) for s in self.scores],
            "stage_us": [round(t, 1) for t in self.stage_us],
            "cut_by_deadline": self.cut_by_deadline,
        }


class EarlyExitModel:
    """A bundle loaded on one device: ``infer`` returns an ``EarlyExitResult``."""

    def __init__(self, manifest: Manifest, stages: list[Model]) -> None:
        self.manifest = manifest
        self.stages = stages
        self.path = manifest.path
        self.format = "bundle"
        self.labels = manifest.labels
        first = stages[0]
        self.backend = first.backend
        self.device = first.device
        self.device_info = first.device_info
        self.reason = first.reason
        self.attempts = first.attempts
        self.inputs: tuple[TensorSpec, ...] = first.inputs
        self._idx: list[tuple[int, int | None]] = []  # (logits output index, carry output index)
        self.requantized_carries: list[int] = []
        self._check_stages()
        # Estimated cost of each stage (us), for deadlines; refined by every run (EWMA).
        self.stage_cost_us = self._measure_costs()
        self._base_cost_us = list(self.stage_cost_us)
        self.outputs = (TensorSpec("scores", (1, len(self.labels)), np.dtype(np.float32)),)
        self._stream_input = np.empty(self.inputs[0].shape, self.inputs[0].dtype)
        self.op_count = sum(s.op_count or 0 for s in stages)
        self.size_bytes = sum(s.size_bytes for s in stages)

    def _check_stages(self) -> None:
        m = self.manifest
        for k, (spec, model) in enumerate(zip(m.stages, self.stages)):
            want_in, want_logits, want_carry = spec.names(model.backend)
            names = [o.name for o in model.outputs]
            where = f"stage {k} ({model.path.name})"
            if model.inputs[0].name != want_in:
                raise self._error(f"{where}: input is {model.inputs[0].name!r}, the manifest says {want_in!r}")
            if want_logits not in names:
                raise self._error(f"{where}: no output {want_logits!r} (logits); outputs: {names}")
            li = names.index(want_logits)
            if int(np.prod(model.outputs[li].shape)) != len(m.labels):
                raise self._error(
                    f"{where}: the exit head gives {model.outputs[li].shape} scores for {len(m.labels)} labels"
                )
            ci = None
            if want_carry is not None:
                if want_carry not in names:
                    raise self._error(f"{where}: no output {want_carry!r} (carry); outputs: {names}")
                ci = names.index(want_carry)
                nxt = self.stages[k + 1].inputs[0]
                out = model.outputs[ci]
                if out.shape != nxt.shape or out.dtype != nxt.dtype:
                    raise self._error(
                        f"{where}: carries {out.dtype.name}{list(out.shape)} but stage {k + 1} takes "
                        f"{nxt.dtype.name}{list(nxt.shape)}"
                    )
                if out.quantization != nxt.quantization:
                    self.requantized_carries.append(k)
                    log.warning(
                        "edge_runtime: bundle %s stage %d: carry quantization %s differs from stage %d "
                        "input %s; requantizing it",
                        m.path,
                        k,
                        out.quantization,
                        k + 1,
                        nxt.quantization,
                    )
            self._idx.append((li, ci))

    def _error(self, reason: str) -> ModelLoadError:
        return ModelLoadError(
            f"bundle {self.manifest.name}: {reason}",
            path=str(self.manifest.path),
            backend=self.backend,
            device=self.device,
        )

    def _measure_costs(self, runs: int = 20) -> list[float]:
        x = np.zeros(self.inputs[0].shape, self.inputs[0].dtype)
        for _ in range(3):
            self._run(x, force_all=True)
        samples = [self._run(x, force_all=True)[2] for _ in range(runs)]
        return [float(np.median([s[k] for s in samples])) for k in range(len(self.stages))]

    @property
    def thresholds(self) -> tuple[float | None, ...]:
        return self.manifest.thresholds

    def set_thresholds(self, thresholds: Sequence[float | None]) -> None:
        """Change the exit thresholds now (not saved; ``calibrate`` saves them). Checked like the manifest."""
        self.manifest = with_thresholds(self.manifest, tuple(thresholds))

    # -- inference -----------------------------------------------------------------
    def _first_input(self, x: npt.ArrayLike) -> npt.NDArray[Any]:
        a = np.asarray(x)
        spec = self.inputs[0]
        if a.shape != spec.shape:
            raise InputError(
                f"input shape {a.shape}, expected {spec.shape}",
                path=str(self.path),
                backend=self.backend,
                device=self.device,
            )
        if a.dtype == spec.dtype:
            return a
        if np.issubdtype(a.dtype, np.floating) and spec.quantization is not None:
            if not np.isfinite(a).all():
                raise InputError("input holds NaN or infinity", path=str(self.path))
            return quantize(a, spec)
        raise InputError(f"input dtype {a.dtype.name}, expected {spec.dtype.name} or float", path=str(self.path))

    def _run(
        self, x: npt.NDArray[Any], *, force_all: bool = False, deadline_ms: float | None = None
    ) -> tuple[list[npt.NDArray[np.float64]], bool, list[float]]:
        """Run stages; return (softmax of every exit that ran, cut by deadline, stage times in us)."""
        clock = time.perf_counter_ns
        start = clock()
        probs: list[npt.NDArray[np.float64]] = []
        times: list[float] = []
        m = self.manifest
        carry: npt.NDArray[Any] | None = None
        carry_spec: TensorSpec | None = None
        cut = False
        for k, (spec, model) in enumerate(zip(m.stages, self.stages)):
            if k and deadline_ms is not None and not force_all:
                if (clock() - start) / 1e6 + self.stage_cost_us[k] / 1e3 > deadline_ms:
                    cut = True
                    break
            t0 = clock()
            session = model.session
            dst = session.input_buffer(0)
            if k == 0:
                np.copyto(dst, x)
            elif k - 1 in self.requantized_carries and carry is not None and carry_spec is not None:
                np.copyto(dst, quantize(dequantize(carry, carry_spec), model.inputs[0]))
            else:
                assert carry is not None
                np.copyto(dst, carry)  # the carried int8 tensor, output view -> input tensor: one copy
            del dst
            carry = None
            session.invoke()
            li, ci = self._idx[k]
            logits_view = session.output_view(li)
            p = softmax(dequantize(logits_view, model.outputs[li]))
            del logits_view
            probs.append(p)
            done = spec.exit is None or (not force_all and spec.exit.confident(confidence(spec.exit.measure, p)))
            if not done and ci is not None:
                carry = session.output_view(ci)  # valid until this stage runs again
                carry_spec = model.outputs[ci]
            t1 = clock()
            times.append((t1 - t0) / 1e3)
            if done:
                break
        return probs, cut, times

    def infer(self, x: npt.ArrayLike, *, deadline_ms: float | None = None, force_all: bool = False) -> EarlyExitResult:
        """Run until an exit is confident (or the last stage). ``x``: float (quantized here) or the input dtype.

        ``deadline_ms``: do not start a stage that, by its measured cost, would end after
        the deadline; return the best exit so far, marked ``cut_by_deadline``.
        ``force_all``: run every stage and answer with the last exit (for comparisons).
        """
        probs, cut, times = self._run(self._first_input(x), force_all=force_all, deadline_ms=deadline_ms)
        for k, t in enumerate(times):  # keep the deadline estimates current
            self.stage_cost_us[k] = 0.9 * self.stage_cost_us[k] + 0.1 * t
        if cut:  # a skipped stage is not measured: drift back toward its load-time cost, so
            for k in range(len(times), len(self.stage_cost_us)):  # one slow spell cannot cut it for good
                self.stage_cost_us[k] = 0.9 * self.stage_cost_us[k] + 0.1 * self._base_cost_us[k]
        exit_index = len(probs) - 1
        p = probs[-1]
        idx = int(np.argmax(p))
        rule = self.manifest.stages[exit_index].exit
        conf = confidence(rule.measure if rule else "max_prob", p)
        return EarlyExitResult(self.labels[idx], idx, p, exit_index, conf, tuple(times), cut)

    def exits_all(self, x: npt.ArrayLike) -> tuple[list[npt.NDArray[np.float64]], list[float]]:
        """Softmax of every exit (all stages run) and each stage's time in us: calibration's raw data."""
        probs, _, times = self._run(self._first_input(x), force_all=True)
        return probs, times

    def infer_in_place(self, fill: Any, index: int = 0) -> list[npt.NDArray[Any]]:
        """For streams: ``fill`` writes the (quantized) input; returns ``[scores]`` (float32, shape [1, labels])."""
        buf = self._stream_input  # this model's own buffer: fill writes, infer copies it into stage 0
        fill(buf)
        result = self.infer(buf)
        self.last_result = result
        return [result.scores.astype(np.float32).reshape(1, -1)]

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": "bundle",
            "name": self.manifest.name,
            "backend": self.backend,
            "device": self.device,
            "device_full_name": self.device_info.full_name,
            "reason": self.reason,
            "passed_over": list(self.attempts),
            "labels": list(self.labels),
            "stages": [
                {
                    "file": m.path.name,
                    "inputs": [s.to_dict() for s in m.inputs],
                    "outputs": [s.to_dict() for s in m.outputs],
                    "exit": None
                    if spec.exit is None
                    else {"measure": spec.exit.measure, "threshold": spec.exit.threshold},
                    "cost_us": round(cost, 1),
                }
                for m, spec, cost in zip(self.stages, self.manifest.stages, self.stage_cost_us)
            ],
            "requantized_carries": self.requantized_carries,
            "calibration": self.manifest.calibration,
        }

    def close(self) -> None:
        for s in self.stages:
            s.close()

    @property
    def closed(self) -> bool:
        return all(s.closed for s in self.stages)

    def __enter__(self) -> EarlyExitModel:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def load_bundle(path: str | Path, device: str | Sequence[str] = "auto", **options: Any) -> EarlyExitModel:
    """Load every stage of the bundle at ``path`` on one device (the one stage 0 lands on)."""
    manifest = read_manifest(path)
    stages: list[Model] = []
    try:
        first = manifest.stages[0]
        file0 = first.tflite or first.openvino
        assert file0 is not None
        m0 = load(manifest.path / file0, device, **options)
        if m0.backend == "openvino" and first.openvino and file0 != first.openvino:
            m0.close()
            m0 = load(manifest.path / first.openvino, m0.device, **options)  # IR where the bundle has one
        stages.append(m0)
        for spec in manifest.stages[1:]:
            name = spec.openvino if m0.backend == "openvino" and spec.openvino else (spec.tflite or spec.openvino)
            assert name is not None
            stages.append(load(manifest.path / name, m0.device, **options))
        return EarlyExitModel(manifest, stages)
    except BaseException:
        for s in stages:
            s.close()
        raise
