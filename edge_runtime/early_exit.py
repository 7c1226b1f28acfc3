"""Early-exit models: run stage after stage, stop at the first confident exit.

Stage k+1 runs only when exit k is not confident. The carried tensor goes from stage
k's output view straight into stage k+1's input tensor: one copy, and no dequantize /
requantize where the two quantizations match (the shipped bundle's build makes them
match; where they do not, the carry is requantized and ``requantized_carries`` says so).

Copies per inference: the input is written once into stage 0's input tensor (quantized
there from float by ``classify``/``infer``; written by the caller's ``fill`` on the
streaming path, ``classify_in_place``), one copy per carry, and each exit's logits are
dequantized once (a few floats) for the softmax. Confidence is computed once per exit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from .bundle import Manifest, confidence, read_manifest, softmax, with_thresholds
from .devices import parse_request
from .errors import ArgumentError, InputError, ModelClosedError, ModelLoadError
from .futures import RequestPool, serial_pool
from .model import Model, TrustedKeys, load_model
from .result import Classification, label_for
from .runner import Fill, Inputs
from .tensors import TensorSpec, dequantize, quantize

if TYPE_CHECKING:
    from .measure import MeasuredChoice

log = logging.getLogger("edge_runtime")


#: The result type of every runner; the older name of it, kept for code written against it.
EarlyExitResult = Classification

#: A clock in integer nanoseconds (``time.perf_counter_ns``); injectable for deterministic tests.
Clock = Callable[[], int]


class EarlyExitModel:
    """A bundle loaded on one device; a ``Runner``. ``classify`` names the class with the first
    confident exit; ``infer`` returns that exit's scores as the one output."""

    def __init__(
        self,
        manifest: Manifest,
        stages: list[Model],
        *,
        labels: Sequence[str] | None = None,
        clock: Clock = time.perf_counter_ns,
        cost_passes: int = 3,
    ) -> None:
        self.manifest = manifest
        self.stages = stages
        self.path: Path = manifest.path
        self.format = "bundle"
        self.labels: tuple[str, ...] | None = tuple(labels) if labels else manifest.labels
        first = stages[0]
        self.backend: str = first.backend
        self.device: str = first.device
        self.device_info = first.device_info
        self.reason: str = first.reason
        #: The table and the fastest setting when the bundle was loaded with ``...:measure`` or
        #: ``threads="auto"`` (``edge_runtime.measure_bundle``); None otherwise.
        self.measurement: MeasuredChoice | None = None
        self.attempts: tuple[str, ...] = first.attempts
        self.execution_devices: tuple[str, ...] = first.execution_devices
        self.inputs: tuple[TensorSpec, ...] = first.inputs
        self.outputs: tuple[TensorSpec, ...] = (TensorSpec("scores", (1, len(manifest.labels)), np.dtype(np.float32)),)
        self._idx: list[tuple[int, int | None]] = []  # (logits output index, carry output index)
        self.requantized_carries: list[int] = []
        self._clock = clock
        self._closed = False
        self._pool: RequestPool | None = None  # made by the first submit
        self._pool_lock = threading.Lock()
        self._check_stages()
        #: Estimated cost of each stage (us), for deadlines: measured at load (median of
        #: ``cost_passes`` passes of 8 runs, after 3 warm-up runs), then kept current by every run
        #: (moving average). Kept short: it is on the load path (~25 ms for the shipped bundle);
        #: calibration measures the costs it relies on far more thoroughly.
        self.stage_cost_us: list[float] = self.measure_stage_costs(passes=cost_passes, runs=8, warmup=3)[0]
        self._base_cost_us = list(self.stage_cost_us)
        self.op_count = sum(s.op_count or 0 for s in stages)
        self.size_bytes = sum(s.size_bytes for s in stages)
        #: The bundle's signed manifest verified at load (``trusted_keys=``), else None.
        self.release = first.release

    def _check_stages(self) -> None:
        m = self.manifest
        for k, model in enumerate(self.stages):
            if not model.session.capabilities.writable_inputs:
                raise self._error(f"stage {k} ({model.path.name}): {model.backend} has no writable input buffers")
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
            backend=self.stages[0].backend,
            device=self.stages[0].device,
        )

    def measure_stage_costs(
        self, *, passes: int = 5, runs: int = 20, warmup: int = 5
    ) -> tuple[list[float], list[float]]:
        """Each stage's cost in us: ``warmup`` untimed runs, then ``passes`` passes of ``runs``
        runs of every stage (on a zero input); the median of each pass, then the median of
        the passes. Returns (costs, spread), the spread being max - min of the pass medians.
        Does not change ``stage_cost_us``.
        """
        spec = self.inputs[0]
        zero = np.zeros(spec.shape, spec.dtype)

        def fill(dst: npt.NDArray[Any]) -> None:
            np.copyto(dst, zero)

        for _ in range(warmup):
            self._run(fill, force_all=True)
        medians = []
        for _ in range(max(1, passes)):
            samples = [self._run(fill, force_all=True)[2] for _ in range(max(1, runs))]
            medians.append([float(np.median([s[k] for s in samples])) for k in range(len(self.stages))])
        per_stage = np.asarray(medians)
        costs = [float(c) for c in np.median(per_stage, axis=0)]
        spread = [float(c) for c in per_stage.max(axis=0) - per_stage.min(axis=0)]
        return costs, spread

    @property
    def thresholds(self) -> tuple[float | None, ...]:
        return self.manifest.thresholds

    def set_thresholds(self, thresholds: Sequence[float | None]) -> None:
        """Change the exit thresholds now (not saved; ``calibrate`` saves them). Checked like the
        manifest: ``ArgumentError`` for a wrong count or a value outside the measure's range."""
        self.manifest = with_thresholds(self.manifest, tuple(thresholds))

    @property
    def closed(self) -> bool:
        return all(s.closed for s in self.stages)

    # -- inference -----------------------------------------------------------------
    def _writer(self, x: Inputs) -> Fill:
        """Check ``x`` (float, or the input's dtype) and return the fill that writes it into stage 0:
        quantized straight into the input tensor (float), or copied (already the input's dtype)."""
        if isinstance(x, Mapping) or (isinstance(x, (list, tuple)) and len(x) == 1 and not np.isscalar(x[0])):
            items = list(x.values()) if isinstance(x, Mapping) else list(x)
            if len(items) != 1:
                raise self._input_error(f"got {len(items)} inputs, a bundle takes 1")
            x = items[0]
        a = np.asarray(x)
        spec = self.inputs[0]
        if a.shape != spec.shape:
            raise self._input_error(f"input shape {a.shape}, expected {spec.shape}")
        if a.dtype == spec.dtype:

            def copy_in(dst: npt.NDArray[Any]) -> None:
                np.copyto(dst, a)

            return copy_in
        if np.issubdtype(a.dtype, np.floating) and spec.quantization is not None:
            if not np.isfinite(a).all():
                raise self._input_error("input holds NaN or infinity: it has no quantized value")

            def quantize_in(dst: npt.NDArray[Any]) -> None:
                quantize(a, spec, out=dst)

            return quantize_in
        raise self._input_error(f"input dtype {a.dtype.name}, expected {spec.dtype.name} or float")

    def _input_error(self, reason: str) -> InputError:
        return InputError(reason, path=str(self.path), backend=self.backend, device=self.device)

    def _run(
        self, fill: Fill, *, force_all: bool = False, deadline_ms: float | None = None
    ) -> tuple[list[npt.NDArray[np.float64]], bool, list[float], float]:
        """Run stages; return (softmax of every exit that ran, cut by deadline, stage times in us,
        the confidence of the last exit that ran, by its own measure)."""
        if self._closed:
            raise self._closed_error()
        clock = self._clock
        start = clock()
        probs: list[npt.NDArray[np.float64]] = []
        times: list[float] = []
        m = self.manifest
        carry: npt.NDArray[Any] | None = None
        carry_spec: TensorSpec | None = None
        cut = False
        conf = 0.0
        for k, (spec, model) in enumerate(zip(m.stages, self.stages)):
            if k and deadline_ms is not None and not force_all:
                if (clock() - start) / 1e6 + self.stage_cost_us[k] / 1e3 > deadline_ms:
                    cut = True
                    break
            t0 = clock()
            session = model.session
            dst = session.input_buffer(0)
            if k == 0:
                fill(dst)  # the input's one write into the model
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
            rule = spec.exit
            conf = confidence(rule.measure if rule is not None else "max_prob", p)
            done = rule is None or (not force_all and rule.confident(conf))
            if not done and ci is not None:
                carry = session.output_view(ci)  # valid until this stage runs again
                carry_spec = model.outputs[ci]
            t1 = clock()
            times.append((t1 - t0) / 1e3)
            if done:
                break
        return probs, cut, times, conf

    def classify(self, x: Inputs, *, deadline_ms: float | None = None, force_all: bool = False) -> Classification:
        """Run until an exit is confident (or the last stage). ``x``: float (quantized straight into
        stage 0's input tensor) or the input's own dtype.

        ``deadline_ms``: do not start a stage that, by its measured cost, would end after
        the deadline; return the best exit so far, marked ``cut_by_deadline``.
        ``force_all``: run every stage and answer with the last exit (for comparisons).
        """
        if self._closed:  # before the input is checked, as Model does
            raise self._closed_error()
        return self._classify(self._writer(x), deadline_ms, force_all)

    def classify_in_place(self, fill: Fill, *, deadline_ms: float | None = None) -> Classification:
        """The streaming path: ``fill`` writes the quantized input straight into stage 0's input
        tensor (no other copy of the window is made); then as ``classify``."""
        return self._classify(fill, deadline_ms, False)

    def _classify(self, fill: Fill, deadline_ms: float | None, force_all: bool) -> Classification:
        if deadline_ms is not None and not (isinstance(deadline_ms, (int, float)) and deadline_ms >= 0):
            raise ArgumentError(f"deadline_ms must be a number of milliseconds >= 0, got {deadline_ms!r}")
        probs, cut, times, conf = self._run(fill, force_all=force_all, deadline_ms=deadline_ms)
        for k, t in enumerate(times):  # keep the deadline estimates current
            self.stage_cost_us[k] = 0.9 * self.stage_cost_us[k] + 0.1 * t
        if cut:  # a skipped stage is not measured: drift back toward its load-time cost, so
            for k in range(len(times), len(self.stage_cost_us)):  # one slow spell cannot cut it for good
                self.stage_cost_us[k] = 0.9 * self.stage_cost_us[k] + 0.1 * self._base_cost_us[k]
        exit_index = len(probs) - 1
        p = probs[-1]
        idx = int(np.argmax(p))
        rule = self.manifest.stages[exit_index].exit
        return Classification(
            label_for(idx, self.labels),
            idx,
            p.astype(np.float32),
            conf,
            exit_index,
            tuple(times),
            cut,
            rule.measure if rule is not None else "max_prob",
        )

    def infer(self, x: Inputs) -> list[npt.NDArray[np.float32]]:
        """The runner contract: ``[scores]``, the softmax of the exit taken, float32 of shape
        ``[1, labels]`` (a new array). ``classify`` says which exit and how confident."""
        return [self.classify(x).scores.reshape(self.outputs[0].shape)]

    # -- asynchronous execution (see edge_runtime.futures) ------------------------------------
    def submit(self, x: Inputs) -> Future[list[npt.NDArray[np.float32]]]:
        """A future of what ``infer(x)`` returns. Requests run one at a time, in submission order,
        on one worker thread using the stages' own sessions (a bundle's stages carry tensors
        between their own buffers): asynchronous, not parallel. Do not call ``classify`` or
        ``infer`` while requests are pending. ``x`` is checked and copied now (``InputError``
        here, not in the future); a failure while running settles this future only."""
        shape = self.outputs[0].shape
        return self._submit(x, None, lambda c: [c.scores.reshape(shape)])

    def submit_classify(self, x: Inputs, *, deadline_ms: float | None = None) -> Future[Classification]:
        """A future of what ``classify(x, deadline_ms=...)`` returns; runs as ``submit`` does.
        The deadline counts from when the request starts, not from this call."""
        if deadline_ms is not None and not (isinstance(deadline_ms, (int, float)) and deadline_ms >= 0):
            raise ArgumentError(f"deadline_ms must be a number of milliseconds >= 0, got {deadline_ms!r}")
        return self._submit(x, deadline_ms, lambda c: c)

    def _submit(self, x: Inputs, deadline_ms: float | None, shape: Callable[[Classification], Any]) -> Future[Any]:
        if self._closed:
            raise self._closed_error()
        if not isinstance(x, Mapping) and not isinstance(x, (list, tuple)):
            x = np.array(x, copy=True)  # the request's own copy: the caller may change x at once
        else:
            x = [np.array(a, copy=True) for a in (x.values() if isinstance(x, Mapping) else x)]
        fill = self._writer(x)
        with self._pool_lock:
            if self._closed:
                raise self._closed_error()
            if self._pool is None:
                self._pool = serial_pool(
                    lambda arrays: arrays, path=str(self.path), backend=self.backend, device=self.device
                )
            pool = self._pool
        return pool.submit([], lambda _: shape(self._classify(fill, deadline_ms, False)))

    def exits_all(self, x: npt.ArrayLike) -> tuple[list[npt.NDArray[np.float64]], list[float]]:
        """Softmax of every exit (all stages run) and each stage's time in us: calibration's raw data."""
        probs, _, times, _ = self._run(self._writer(x), force_all=True)
        return probs, times

    def to_dict(self) -> dict[str, Any]:
        """Everything ``edge-runtime info`` shows for a bundle, as plain data."""
        return {
            "path": str(self.path),
            "format": "bundle",
            "name": self.manifest.name,
            "backend": self.backend,
            "device": self.device,
            "device_full_name": self.device_info.full_name,
            "device_kind": self.device_info.kind,
            "execution_devices": list(self.execution_devices),
            "op_count": self.op_count,
            "size_bytes": self.size_bytes,
            "reason": self.reason,
            "attempts": list(self.attempts),
            "labels": list(self.labels or ()),
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
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

    def describe(self) -> str:
        """One line: ``bundle digits_early_exit (3 stages) on litert:cpu (...)``."""
        return (
            f"bundle {self.manifest.name} ({len(self.stages)} stages) on {self.device} ({self.device_info.full_name})"
        )

    def close(self) -> None:
        """Release every stage. Safe to call twice; afterwards calls raise ``ModelClosedError``
        naming the bundle (not one of its stage files), as ``Model`` names its file. Submitted
        requests not yet started are cancelled; the one running is waited for."""
        with self._pool_lock:  # no submit can make a new pool once this is done
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        for s in self.stages:
            s.close()

    def _closed_error(self) -> ModelClosedError:
        return ModelClosedError("model is closed", path=str(self.path), backend=self.backend, device=self.device)

    def __enter__(self) -> EarlyExitModel:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<EarlyExitModel {self.manifest.name} {self.backend} {'closed' if self.closed else self.device}>"


def load_bundle(
    path: str | Path,
    device: str | Sequence[str] = "auto",
    *,
    labels: Sequence[str] | None = None,
    trusted_keys: TrustedKeys | None = None,
    **options: Any,
) -> EarlyExitModel:
    """Load every stage of the bundle at ``path`` on one device (the one stage 0 lands on).

    ``options`` are ``load_model``'s (threads, cache_dir, ...). ``trusted_keys`` (among them):
    the whole bundle directory is verified against its signed ``manifest.json`` first, and
    each stage's bytes, once read, are compared with it (see ``edge_runtime.load``). Raises
    ``ModelFileError`` for a bad manifest, and what ``load_model`` raises for a stage.
    """
    if options.get("batch", 1) != 1:
        raise ArgumentError(
            f"batch={options['batch']!r}: an early-exit bundle runs one window at a time", path=str(path)
        )
    if trusted_keys is not None and options.get("release") is None:
        from .model import verify_signed

        options["release"] = verify_signed(path, trusted_keys)
    manifest = read_manifest(path)
    data = options.pop("measure_data", None)
    requests = [parse_request(r) for r in ([device] if isinstance(device, str) else device)]
    measured = None
    if any(r.measure for r in requests) or options.get("threads") == "auto":
        from .measure_bundle import measure_bundle  # imported only when measuring

        measured = measure_bundle(manifest, requests, options, data, labels=labels)
        device = measured.fastest.request
        options["threads"] = measured.fastest.threads
    elif data is not None:
        raise ArgumentError("measure_data is used only with device='...:measure' or threads='auto'", path=str(path))
    stages: list[Model] = []
    try:
        first = manifest.stages[0]
        file0 = first.tflite or first.openvino
        assert file0 is not None
        m0 = load_model(manifest.path / file0, device, sidecar=False, **options)
        if m0.backend == "openvino" and first.openvino and file0 != first.openvino:
            m0.close()
            m0 = load_model(
                manifest.path / first.openvino, m0.device, sidecar=False, **options
            )  # IR where there is one
        stages.append(m0)
        for spec in manifest.stages[1:]:
            name = spec.openvino if m0.backend == "openvino" and spec.openvino else (spec.tflite or spec.openvino)
            assert name is not None
            stages.append(load_model(manifest.path / name, m0.device, sidecar=False, **options))
        bundle = EarlyExitModel(manifest, stages, labels=labels)
    except BaseException:
        for s in stages:
            s.close()
        raise
    if measured is not None:
        bundle.measurement = measured
        bundle.reason = f"{', '.join(r.text for r in requests)} -> {measured.summary()}"
    return bundle
