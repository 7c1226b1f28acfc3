"""``load_model()`` and ``Model``: one model file on one device, over every backend.

``load_model`` reads and checks the file, finds devices, asks the pure ``select()`` for
the order to try them in, and tries each until one loads. Every device passed over
or failed keeps its reason on ``Model.attempts``; a fallback is logged as a warning.
``edge_runtime.load`` (in ``loader.py``) is the one door for files and bundles alike.

Copies on the per-inference paths (each one counted):

- ``infer``: float input is quantized straight into the backend's input tensor (one
  write; an input already of the tensor's dtype is one copy), outputs are dequantized
  from the backend's output memory into new float32 arrays the caller owns.
- ``infer_raw``: one copy in (into the input tensor), one copy out per output.
- ``classify_in_place``: the caller writes the input tensor itself; only the first
  output is read, dequantized into the new float32 ``scores`` of the result.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Union

import numpy as np
import numpy.typing as npt

from .backends import get_backend
from .backends.base import Session
from .backends.isolation_policy import Isolation, as_isolation
from .device_info import Device
from .devices import Candidate, DeviceRequest, Selection, parse_request, probe, select
from .errors import (
    ArgumentError,
    BackendUnavailableError,
    DeviceRequestError,
    DeviceUnavailableError,
    InputError,
    ModelClosedError,
    ModelFileError,
    ModelLoadError,
    SignatureError,
)
from .futures import RequestPool
from .model_file import READERS, ModelSource, read_model_file
from .result import Classification, top_score
from .runner import Fill, Inputs
from .sidecar import Sidecar, read_sidecar, sidecar_path
from .tensors import Quantizer, TensorSpec, dequantize, quantize, unquantized_message

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from .manifest import ManifestFile, VerifiedManifest

log = logging.getLogger("edge_runtime")

#: What ``trusted_keys=`` takes: public key files (PEM, ``edge-runtime keys create`` writes them)
#: or ``Ed25519PublicKey`` objects; one of them alone is taken as a list of one.
TrustedKeys = Union[
    str, os.PathLike[str], "Ed25519PublicKey", Sequence[Union[str, os.PathLike[str], "Ed25519PublicKey"]]
]

NEED_CRYPTOGRAPHY = "signed models need the 'cryptography' package: pip install cryptography"


class Model:
    """A model file loaded on one device; a ``Runner``. Create with ``edge_runtime.load``; close when done."""

    def __init__(
        self,
        session: Session,
        source: ModelSource,
        chosen: Candidate,
        selection: Selection,
        attempts: Sequence[str],
        sidecar: Sidecar | None = None,
        labels: Sequence[str] | None = None,
        release: VerifiedManifest | None = None,
    ) -> None:
        self._session: Session | None = session
        self.path: Path = source.path
        self.format: str = source.format
        self.size_bytes: int = source.size
        self.backend: str = session.backend
        #: The device as a request string that selects it again, e.g. ``litert:cpu``.
        self.device: str = session.device
        self.device_info: Device = chosen.device
        #: Why this device: the request that named it and the rule that ranked it.
        self.reason: str = f"{chosen.request} -> {chosen.why}"
        self.selection: Selection = selection
        #: One line per device passed over or failed before this one, in order.
        self.attempts: tuple[str, ...] = tuple(attempts)
        self.inputs: tuple[TensorSpec, ...] = session.inputs
        self.outputs: tuple[TensorSpec, ...] = session.outputs
        self.op_count: int | None = session.op_count
        #: Where the ops really run, as far as the backend can tell (OpenVINO EXECUTION_DEVICES).
        self.execution_devices: tuple[str, ...] = session.execution_devices
        #: True when every op runs on the device asked for, False when some run elsewhere (e.g. on
        #: the CPU behind a GPU), None when the backend cannot tell; ``placement`` says it in words.
        self.fully_accelerated: bool | None = session.fully_accelerated
        self.placement: str = session.placement
        #: The compiled-model cache on this load ("hit", "miss", "off", "openvino": see ``Session``).
        self.compile_cache: str = session.compile_cache
        #: The JSON sidecar read beside the model (labels, preprocessing), if there was one.
        self.sidecar: Sidecar | None = sidecar
        #: Class names: ``labels=`` given to ``load``, else the sidecar's, else None.
        self.labels: tuple[str, ...] | None = tuple(labels) if labels else (sidecar.labels if sidecar else None)
        self._names = {s.name: i for i, s in enumerate(self.inputs)}
        first = self.inputs[0] if len(self.inputs) == 1 else None
        self._fast = (first.dtype, first.shape) if first is not None else None
        self._writable = session.capabilities.writable_inputs
        self._quantizers = [Quantizer(s) if s.quantization is not None else None for s in self.inputs]
        #: The signed manifest verified at load (``trusted_keys=``; a bundle stage: the bundle's),
        #: its ``model_version`` and ``digest`` naming the release; None when loaded unverified.
        self.release: VerifiedManifest | None = release
        self._pool: RequestPool | None = None  # made by the first submit (or start_workers)
        self._pool_lock = threading.Lock()
        self._submit_local = threading.local()  # per submitting thread: its own Quantizers

    @property
    def session(self) -> Session:
        """The backend session (for the streaming layer's in-place writes)."""
        if self._session is None:
            raise ModelClosedError("model is closed", path=str(self.path), backend=self.backend, device=self.device)
        return self._session

    @property
    def closed(self) -> bool:
        return self._session is None

    def infer_raw(self, x: Inputs) -> list[npt.NDArray[Any]]:
        """Run once with no conversion: inputs must already have the model's dtypes and shapes.

        Inputs are copied into the backend's tensors; returns new arrays (in the
        model's own output dtypes) that the caller owns. Bit-identical to the bare
        interpreter on the same input.
        """
        session = self.session
        fast = self._fast
        if fast is not None and type(x) is np.ndarray and x.dtype == fast[0] and x.shape == fast[1]:
            return session.run([x])
        return session.run(self._arrays(x, convert=False))

    def infer_in_place(self, fill: Fill, index: int = 0) -> list[npt.NDArray[Any]]:
        """Let ``fill`` write input ``index`` straight into the backend's tensor, then run.

        ``fill`` gets a writable view of the input tensor's own memory (the model's
        dtype and shape), valid only during the call: keep no reference to it (LiteRT
        refuses to invoke while one is alive). Returns raw outputs, as ``infer_raw``.
        """
        session = self.session
        if not self._writable:
            return session.run([self._filled(fill, index)])
        view = session.input_buffer(index)
        fill(view)
        del view
        return session.run_prepared()

    def _filled(self, fill: Fill, index: int) -> npt.NDArray[Any]:
        """For a backend without writable input buffers: fill a new array (one copy more)."""
        if len(self.inputs) != 1:
            raise self._input_error("in-place writes need writable input buffers for multi-input models")
        spec = self.inputs[index]
        buf = np.empty(spec.shape, spec.dtype)
        fill(buf)
        return buf

    def infer(self, x: Inputs) -> list[npt.NDArray[np.float32]]:
        """Run once; float inputs are quantized to the model's int8/uint8 inputs, outputs dequantized.

        Float input is quantized straight into the input tensor (``clip(rint(x / scale) + zp)``);
        an array already of the input's dtype is copied in unchanged. Returns float32 arrays,
        one per output, new and owned by the caller.
        """
        session = self.session
        if not self._writable:
            raw = session.run(self._arrays(x, convert=True))
            return [dequantize(r, spec) for r, spec in zip(raw, self.outputs)]
        items = [x] if self._fast is not None and type(x) is np.ndarray else self._items(x)
        for i, (a, spec) in enumerate(zip(items, self.inputs)):
            self._check(a, spec, convert=True)
            buf = session.input_buffer(i)
            if a.dtype == spec.dtype:
                np.copyto(buf, a)
            elif (quantizer := self._quantizers[i]) is not None:
                quantizer(a, buf)  # straight into the tensor, no allocation
            else:
                np.copyto(buf, a, casting="same_kind")  # float into a float tensor
            del buf  # LiteRT refuses to invoke while a view of its tensors is alive
        session.invoke()
        out = []
        for i, spec in enumerate(self.outputs):
            view = session.output_view(i)
            out.append(dequantize(view, spec))  # the one copy out, owned by the caller
            del view
        return out

    def classify(self, x: Inputs, *, deadline_ms: float | None = None) -> Classification:
        """Run once and name the class of the first output (``deadline_ms`` is for bundles; ignored)."""
        t0 = time.perf_counter_ns()
        scores = self.infer(x)[0].reshape(-1)
        return top_score(scores, self.labels, (time.perf_counter_ns() - t0) / 1e3)

    def classify_in_place(self, fill: Fill, *, deadline_ms: float | None = None) -> Classification:
        """The streaming path: ``fill`` writes input 0 in place (see ``infer_in_place``); only the
        first output is read, dequantized into the result's new ``scores``."""
        session = self.session
        t0 = time.perf_counter_ns()
        spec = self.outputs[0]
        if not self._writable:
            scores = dequantize(session.run([self._filled(fill, 0)])[0], spec).reshape(-1)
        else:
            view = session.input_buffer(0)
            fill(view)
            del view
            session.invoke()
            out = session.output_view(0)
            scores = dequantize(out, spec).reshape(-1)
            del out
        return top_score(scores, self.labels, (time.perf_counter_ns() - t0) / 1e3)

    # -- asynchronous execution (see edge_runtime.futures) ------------------------------------
    def start_workers(self, workers: int | None = None) -> RequestPool:
        """Make the pool ``submit`` runs on, if not made yet, and return it (``workers``: how many
        requests run at once; ``pool.workers`` says how many it got). Optional: the first
        ``submit`` makes it with the default. ``ArgumentError`` when a pool of another size
        exists. LiteRT (cpu): ``workers`` new interpreters, default the cores divided by the
        thread count; OpenVINO: ``workers`` threads on infer requests of their own, default
        the compiled model's ``OPTIMAL_NUMBER_OF_INFER_REQUESTS`` (load with
        ``performance_hint="THROUGHPUT"`` for several streams); isolated sessions and delegates:
        one worker on the model's own session (no parallelism)."""
        check_threads(workers)
        with self._pool_lock:
            session = self.session  # ModelClosedError once closed
            pool = self._pool
            if pool is None:
                pool = self._pool = session.open_pool(workers)
            elif workers is not None and workers != pool.workers:
                raise ArgumentError(f"the submit pool already has {pool.workers} workers; asked for {workers}")
        return pool

    def submit(self, x: Inputs) -> Future[list[npt.NDArray[np.float32]]]:
        """Run ``x`` asynchronously: a future of what ``infer(x)`` returns (float32 arrays, one per
        output, new and owned by the caller; bit-identical to ``infer``).

        ``x`` is checked and converted now (quantized into new arrays the request owns, so
        the caller may change ``x`` at once): a bad input raises ``InputError`` here, not in the
        future; a closed model raises ``ModelClosedError``. A failure while running settles
        this future only, with ``InferenceError``. Blocks while the pool's ``max_in_flight``
        requests are pending. See ``start_workers`` for where requests run.
        """
        arrays = self._request_arrays(x)
        outputs = self.outputs
        return self.start_workers().submit(arrays, lambda raw: [dequantize(r, s) for r, s in zip(raw, outputs)])

    def submit_classify(self, x: Inputs) -> Future[Classification]:
        """``submit``, then name the class of the first output as ``classify`` does. The result's
        ``stage_us`` holds the time from this call to the result, in microseconds (the wait in
        the queue included)."""
        arrays = self._request_arrays(x)
        spec, labels = self.outputs[0], self.labels
        t0 = time.perf_counter_ns()

        def finish(raw: list[npt.NDArray[Any]]) -> Classification:
            scores = dequantize(raw[0], spec).reshape(-1)
            return top_score(scores, labels, (time.perf_counter_ns() - t0) / 1e3)

        return self.start_workers().submit(arrays, finish)

    def _request_arrays(self, x: Inputs) -> list[npt.NDArray[Any]]:
        """``x`` checked as ``infer`` checks it, as new arrays of the inputs' dtypes (quantized the
        way ``infer`` quantizes, so the results are bit-identical), owned by one request."""
        if self._session is None:
            raise ModelClosedError("model is closed", path=str(self.path), backend=self.backend, device=self.device)
        quantizers: list[Quantizer | None] | None = getattr(self._submit_local, "quantizers", None)
        if quantizers is None:  # a Quantizer owns scratch memory: one set per submitting thread
            quantizers = self._submit_local.quantizers = [
                Quantizer(s) if s.quantization is not None else None for s in self.inputs
            ]
        items = [x] if self._fast is not None and type(x) is np.ndarray else self._items(x)
        arrays = []
        for i, (a, spec) in enumerate(zip(items, self.inputs)):
            self._check(a, spec, convert=True)
            out = np.empty(spec.shape, spec.dtype)
            if a.dtype == spec.dtype:
                np.copyto(out, a)
            elif (quantizer := quantizers[i]) is not None:
                quantizer(a, out)
            else:
                np.copyto(out, a, casting="same_kind")
            arrays.append(out)
        return arrays

    def _items(self, x: Inputs) -> list[npt.NDArray[Any]]:
        """The inputs in model order, as arrays (no copy of an array), counted and named."""
        if isinstance(x, Mapping):
            unknown = sorted(set(x) - set(self._names))
            missing = sorted(set(self._names) - set(x))
            if unknown or missing:
                raise self._input_error(
                    f"input names: unknown {unknown}, missing {missing}; expected {list(self._names)}"
                )
            items = [x[s.name] for s in self.inputs]
        elif isinstance(x, (list, tuple)) and len(self.inputs) > 1:
            items = list(x)
        else:
            items = [x]  # type: ignore[list-item]
        if len(items) != len(self.inputs):
            raise self._input_error(f"got {len(items)} inputs, the model takes {len(self.inputs)}")
        return [np.asarray(a) for a in items]

    def _arrays(self, x: Inputs, *, convert: bool) -> list[npt.NDArray[Any]]:
        arrays = []
        for a, spec in zip(self._items(x), self.inputs):
            self._check(a, spec, convert)
            if a.dtype != spec.dtype:
                a = quantize(a, spec) if spec.quantization is not None else a.astype(spec.dtype)
            arrays.append(a)
        return arrays

    def _check(self, a: npt.NDArray[Any], spec: TensorSpec, convert: bool) -> None:
        """Raise ``InputError`` unless ``a`` can go into ``spec``: same dtype, or (``convert``)
        finite float into a quantized integer tensor or a float tensor."""
        if a.shape != spec.shape:
            raise self._input_error(f"input {spec.name!r}: shape {a.shape}, expected {spec.shape}")
        if a.dtype == spec.dtype:
            return
        if convert and np.issubdtype(a.dtype, np.floating):
            if not np.isfinite(a).all():
                raise self._input_error(f"input {spec.name!r} holds NaN or infinity: it has no quantized value")
            if spec.quantization is not None or np.issubdtype(spec.dtype, np.floating):
                return
            raise self._input_error(unquantized_message(spec))
        hint = "" if convert else " (infer_raw converts nothing; use infer for float input)"
        raise self._input_error(f"input {spec.name!r}: dtype {a.dtype.name}, expected {spec.dtype.name}{hint}")

    def _input_error(self, reason: str) -> InputError:
        return InputError(reason, path=str(self.path), backend=self.backend, device=self.device)

    def to_dict(self) -> dict[str, Any]:
        """Everything ``edge-runtime info`` shows, as plain data."""
        return {
            "path": str(self.path),
            "format": self.format,
            "size_bytes": self.size_bytes,
            "backend": self.backend,
            "device": self.device,
            "device_full_name": self.device_info.full_name,
            "device_kind": self.device_info.kind,
            "execution_devices": list(self.execution_devices),
            "fully_accelerated": self.fully_accelerated,
            "placement": self.placement,
            "compile_cache": self.compile_cache,
            "reason": self.reason,
            "attempts": list(self.attempts),
            "op_count": self.op_count,
            "labels": list(self.labels) if self.labels else None,
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
        }

    def describe(self) -> str:
        """One line: ``digits_cnn_int8.tflite on litert:cpu (x86_64 CPU, ...)``."""
        return f"{self.path.name} on {self.device} ({self.device_info.full_name})"

    def close(self) -> None:
        """Release the backend session. Safe to call twice; afterwards calls raise ``ModelClosedError``.

        Submitted requests not yet started are cancelled (their futures raise ``CancelledError``);
        those running are waited for; then the pool and the session are released."""
        with self._pool_lock:  # no submit can make a new pool once this is done
            pool, self._pool = self._pool, None
            session, self._session = self._session, None
        if pool is not None:
            pool.close()
        if session is not None:
            session.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.device
        return f"<Model {self.path.name} {self.backend} {state}>"


def merge_threads(threads: int | None, num_threads: int | None) -> int | None:
    """``threads``, or ``num_threads`` (its older spelling, with a ``DeprecationWarning``); checked."""
    if num_threads is not None:
        if threads is not None and threads != num_threads:
            raise ArgumentError(f"threads={threads!r} and num_threads={num_threads!r} disagree: pass only threads")
        warnings.warn("num_threads= is now threads=", DeprecationWarning, stacklevel=3)
        threads = num_threads
    check_threads(threads)
    return threads


def check_threads(threads: int | None) -> None:
    """Raise ``ArgumentError`` unless ``threads`` is None or a whole number >= 1."""
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ArgumentError(f"threads must be a whole number >= 1 (or None for the backend's default), got {threads!r}")


def candidates_for(
    source: ModelSource,
    requests: Sequence[DeviceRequest],
    devices: Sequence[Device] | None,
    openvino_plugins: dict[str, str] | None,
    what: str,
    where: str,
) -> Selection:
    """The devices ``requests`` select for ``source``: ``devices`` when given (registering
    ``openvino_plugins``), else probed now, only the backends the requests need. Raises
    ``DeviceUnavailableError`` (naming ``what`` at ``where``, with each device passed over)
    when none is left."""
    readers = READERS[source.format]
    if devices is None:
        wanted = {r.backend for r in requests if r.backend} if all(r.backend for r in requests) else set(readers)
        devices = probe([b for b in readers if b in wanted], openvino_plugins=openvino_plugins, requests=requests)
    elif openvino_plugins:
        get_backend("openvino").core(openvino_plugins)
    selection = select(requests, devices, source.format)
    if not selection.candidates:
        raise DeviceUnavailableError(
            f"no requested device can run this {what} (asked for {', '.join(r.text for r in requests)})",
            path=where,
            attempts=[str(p) for p in selection.passed_over],
        )
    return selection


def check_batch(batch: int, name: str = "batch") -> None:
    """Raise ``ArgumentError`` unless ``batch`` (the option ``name``) is a whole number >= 1."""
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ArgumentError(f"{name} must be a whole number >= 1, got {batch!r}")


def load_model(
    path: str | Path,
    device: str | Sequence[str] = "auto",
    *,
    threads: int | Literal["auto"] | None = None,
    performance_hint: str | None = "LATENCY",
    cache_dir: str | Path | None = None,
    openvino_config: dict[str, Any] | None = None,
    openvino_plugins: dict[str, str] | None = None,
    devices: Sequence[Device] | None = None,
    labels: Sequence[str] | None = None,
    sidecar: bool = True,
    measure_cache: str | Path | None = None,
    num_threads: int | None = None,
    isolate: bool | Isolation = False,
    trusted_keys: TrustedKeys | None = None,
    release: VerifiedManifest | None = None,
    batch: int = 1,
) -> Model:
    """Load one ``.tflite``, OpenVINO IR ``.xml`` or ``.onnx`` file on the best requested device.

    ``edge_runtime.load`` takes the same arguments and also loads bundles; this is the
    precisely typed door for a model file. ``sidecar``: read ``MODEL.json`` beside the
    file (labels, preprocessing) when it exists; a malformed one is an ``ArgumentError``.
    ``release``: a manifest already verified that lists this file (``load_bundle`` passes its
    bundle's): the bytes read must match its entry, as with ``trusted_keys``, without verifying
    again. ``batch``: samples per call (every input's and output's first dimension). See
    ``edge_runtime.load`` for the rest.
    """
    check_batch(batch)
    policy = as_isolation(isolate)
    auto_threads = threads == "auto"
    requests = [parse_request(r) for r in ([device] if isinstance(device, str) else device)]
    if not requests:
        raise DeviceRequestError("empty device request list", path=str(path))
    threads = merge_threads(None if threads == "auto" else threads, num_threads)
    if release is None and trusted_keys is not None:
        release = verify_signed(path, trusted_keys)
    source = read_model_file(path) if release is None else read_signed(path, release)
    where = str(source.path)
    side = read_sidecar(sidecar_path(source.path)) if sidecar and sidecar_path(source.path).is_file() else None
    selection = candidates_for(source, requests, devices, openvino_plugins, f"{source.format} model", where)
    attempts = [str(p) for p in selection.passed_over]
    options = {
        "num_threads": threads,
        "performance_hint": performance_hint,
        "cache_dir": str(cache_dir) if cache_dir else None,
        "openvino_config": openvino_config,
    }
    if batch != 1:
        options["batch"] = batch
    measure = any(r.measure for r in requests)
    if measure or auto_threads or (len(requests) == 1 and requests[0].is_auto and threads is None):
        from .measure import plan  # imported when measuring or when plain auto may use a cached choice

        text = ", ".join(r.text for r in requests)
        selection, threads = plan(source, text, selection, threads, measure, auto_threads, measure_cache, options)
        options["num_threads"] = threads
    # A fallback is loud: each device that refused the model is a warning once a later one has
    # loaded it. When every device refuses, the ModelLoadError lists them all, once (no warnings).
    refused: list[tuple[str, str]] = []
    for i, cand in enumerate(selection.candidates):
        try:
            if policy is not None:
                from .backends.isolated import open_isolated  # socket, subprocess...: only when isolating

                session = open_isolated(source, cand.device, policy, **options)
            else:
                session = get_backend(cand.device.backend).open_session(source, cand.device, **options)
        except (ModelLoadError, BackendUnavailableError) as exc:
            attempts.append(f"{cand.device.request}: {exc.reason}")
            refused.append((cand.device.request, exc.reason))
            if i + 1 < len(selection.candidates):
                log.info(
                    "edge_runtime: %s could not load %s: %s; trying the next device",
                    cand.device.request,
                    where,
                    exc.reason,
                )
            continue
        for request, reason in refused:
            log.warning(
                "edge_runtime: %s could not load %s: %s; fell back to %s", request, where, reason, session.device
            )
        if attempts:
            log.info("edge_runtime: %s loaded on %s after: %s", where, session.device, "; ".join(attempts))
        try:
            return Model(session, source, cand, selection, attempts, side, labels, release)
        except BaseException:
            session.close()
            raise
    raise ModelLoadError("no device could load the model", path=where, attempts=attempts)


def need_cryptography(path: str | os.PathLike[str] | None = None) -> None:
    """Raise ``ArgumentError`` (naming ``path``) unless the ``cryptography`` package imports: signed
    models need it, and ``edge_runtime`` imports it only when trusted keys are given."""
    try:
        import cryptography  # noqa: F401
    except ImportError:
        raise ArgumentError(NEED_CRYPTOGRAPHY, path=None if path is None else str(path)) from None


def key_list(trusted_keys: TrustedKeys) -> list[Any]:
    """``trusted_keys`` as a list: one key file or key object alone is a list of one."""
    if isinstance(trusted_keys, (str, os.PathLike)) or not isinstance(trusted_keys, Sequence):
        return [trusted_keys]
    return list(trusted_keys)


def verify_signed(
    path: str | os.PathLike[str], trusted_keys: TrustedKeys, installed_version: str | None = None
) -> VerifiedManifest:
    """``manifest.verify(path, trusted_keys)``, importing ``manifest`` (and ``cryptography``) only
    now: ``import edge_runtime`` and an unsigned load stay light. Raises ``SignatureError`` (a
    ``ModelFileError``: refused before any backend reads the file), ``VersionError``, and
    ``ArgumentError`` for a bad key or when ``cryptography`` is missing."""
    need_cryptography(path)
    from .manifest import verify

    return verify(path, key_list(trusted_keys), installed_version=installed_version)


def read_signed(path: str | os.PathLike[str], release: VerifiedManifest) -> ModelSource:
    """``read_model_file(path)`` for a file of the verified ``release``, the bytes read compared
    with it (``check_signed_bytes``). When the read's structure check refuses the bytes and the
    file on disk no longer matches the manifest, the ``SignatureError`` says so (the file was
    replaced after its verification), not the structure check."""
    p = Path(path)
    try:
        source = read_model_file(p)
    except ModelFileError as exc:
        files = [p, p.with_suffix(".bin")] if p.suffix.lower() == ".xml" else [p]
        for f in files:
            entry = _entry(release, f)
            try:
                digest = hashlib.sha256(f.read_bytes()).hexdigest()
            except OSError:
                continue
            if digest != entry.sha256:
                raise SignatureError(
                    "changed after its verification: the file on disk differs from the signed manifest", path=str(f)
                ) from exc
        raise
    check_signed_bytes(release, source)
    return source


def _entry(release: VerifiedManifest, path: Path) -> ManifestFile:
    """The manifest's entry for ``path``; ``SignatureError`` when ``release`` does not list it."""
    root = release.target if release.kind == "bundle" else release.target.parent
    try:
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix()
    except ValueError:
        raise SignatureError(f"not inside the signed release {release.target}", path=str(path)) from None
    for f in release.files:
        if f.path == rel:
            return f
    raise SignatureError("not listed in the signed manifest", path=str(path))


def check_signed_bytes(release: VerifiedManifest, source: ModelSource) -> None:
    """The bytes ``read_model_file`` read (and an IR's ``.bin``) are those ``release`` lists:
    closes the gap between verifying the files and reading them (a file replaced in between is
    refused). ``SignatureError`` naming the file otherwise."""
    read: list[tuple[Path, bytes]] = [(source.path, source.content)]
    if source.weights is not None:
        read.append((source.path.with_suffix(".bin"), source.weights))
    for path, data in read:
        entry = _entry(release, path)
        if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
            raise SignatureError(
                "changed between its verification and its read: the bytes read differ from the signed manifest",
                path=str(path),
            )
