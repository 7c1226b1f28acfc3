"""``load()`` and ``Model``: one API over every backend.

``load`` reads and checks the file, finds devices, asks the pure ``select()`` for
the order to try them in, and tries each until one loads. Every device passed over
or failed keeps its reason on ``Model.attempts``; a fallback is logged as a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from .backends import get_backend
from .backends.base import Session
from .device_info import Device
from .devices import Candidate, Selection, parse_request, probe, select
from .errors import (
    BackendUnavailableError,
    DeviceRequestError,
    DeviceUnavailableError,
    InferenceError,
    InputError,
    ModelLoadError,
)
from .model_file import READERS, ModelSource, read_model_file
from .tensors import TensorSpec, dequantize, quantize

log = logging.getLogger("edge_runtime")

#: What ``infer`` accepts: one array (single-input models), a list in input order, or name -> array.
Inputs = npt.ArrayLike | Sequence[npt.ArrayLike] | Mapping[str, npt.ArrayLike]


class Model:
    """A model loaded on one device. Create with ``edge_runtime.load``; close when done."""

    def __init__(
        self, session: Session, source: ModelSource, chosen: Candidate, selection: Selection, attempts: Sequence[str]
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
        self._names = {s.name: i for i, s in enumerate(self.inputs)}
        first = self.inputs[0] if len(self.inputs) == 1 else None
        self._fast = (first.dtype, first.shape) if first is not None else None

    @property
    def session(self) -> Session:
        """The backend session (for the streaming layer's in-place writes)."""
        if self._session is None:
            raise InferenceError("model is closed", path=str(self.path), backend=self.backend, device=self.device)
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

    def infer_in_place(self, fill: Callable[[npt.NDArray[Any]], None], index: int = 0) -> list[npt.NDArray[Any]]:
        """Let ``fill`` write input ``index`` straight into the backend's tensor, then run.

        ``fill`` gets a writable view of the input tensor's own memory (the model's
        dtype and shape), valid only during the call: keep no reference to it (LiteRT
        refuses to invoke while one is alive). Returns raw outputs, as ``infer_raw``.
        """
        session = self.session
        if not session.capabilities.writable_inputs:  # a backend without its own buffers: one copy
            spec = self.inputs[index]
            buf = np.empty(spec.shape, spec.dtype)
            fill(buf)
            arrays = [buf] if len(self.inputs) == 1 else None
            if arrays is None:
                raise InputError(
                    "infer_in_place needs writable input buffers for multi-input models",
                    path=str(self.path),
                    backend=self.backend,
                    device=self.device,
                )
            return session.run(arrays)
        view = session.input_buffer(index)
        fill(view)
        del view
        return session.run_prepared()

    def infer(self, x: Inputs) -> list[npt.NDArray[np.float32]]:
        """Run once; float inputs are quantized to the model's int8/uint8 inputs, outputs dequantized.

        An array already of the input's dtype passes unchanged. Returns float32 arrays,
        one per output, new and owned by the caller.
        """
        raw = self.session.run(self._arrays(x, convert=True))
        return [dequantize(r, spec) for r, spec in zip(raw, self.outputs)]

    def _arrays(self, x: Inputs, *, convert: bool) -> list[npt.NDArray[Any]]:
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
        return [self._one(np.asarray(a), spec, convert) for a, spec in zip(items, self.inputs)]

    def _one(self, a: npt.NDArray[Any], spec: TensorSpec, convert: bool) -> npt.NDArray[Any]:
        if a.shape != spec.shape:
            raise self._input_error(f"input {spec.name!r}: shape {a.shape}, expected {spec.shape}")
        if a.dtype == spec.dtype:
            return a
        if convert and np.issubdtype(a.dtype, np.floating):
            if not np.isfinite(a).all():
                raise self._input_error(f"input {spec.name!r} holds NaN or infinity: it has no quantized value")
            if spec.quantization is not None:
                return quantize(a, spec)
            if np.issubdtype(spec.dtype, np.floating):
                return a.astype(spec.dtype)
            raise self._input_error(
                f"input {spec.name!r} is {spec.dtype.name} with unknown quantization: pass {spec.dtype.name} values"
            )
        hint = "" if convert else " (infer_raw converts nothing; use infer for float input)"
        raise self._input_error(f"input {spec.name!r}: dtype {a.dtype.name}, expected {spec.dtype.name}{hint}")

    def _input_error(self, reason: str) -> InputError:
        return InputError(reason, path=str(self.path), backend=self.backend, device=self.device)

    def describe(self) -> dict[str, Any]:
        """Everything ``edge-runtime info`` shows, as plain data."""
        return {
            "path": str(self.path),
            "format": self.format,
            "size_bytes": self.size_bytes,
            "backend": self.backend,
            "device": self.device,
            "device_full_name": self.device_info.full_name,
            "device_kind": self.device_info.kind,
            "execution_devices": list(self.session.execution_devices) if self._session else [],
            "reason": self.reason,
            "passed_over": list(self.attempts),
            "op_count": self.op_count,
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
        }

    def close(self) -> None:
        """Release the backend session. Safe to call twice."""
        session, self._session = self._session, None
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


def load(
    path: str | Path,
    device: str | Sequence[str] = "auto",
    *,
    num_threads: int | None = None,
    performance_hint: str | None = "LATENCY",
    cache_dir: str | Path | None = None,
    openvino_config: dict[str, Any] | None = None,
    openvino_plugins: dict[str, str] | None = None,
    devices: Sequence[Device] | None = None,
) -> Model:
    """Load a ``.tflite``, OpenVINO IR ``.xml`` or ``.onnx`` model on the best requested device.

    A directory holding ``bundle.json`` loads as an early-exit bundle and returns an
    ``EarlyExitModel`` (its ``infer`` returns an ``EarlyExitResult``). The annotation says
    ``Model`` for the common case: call ``edge_runtime.load_bundle`` where a type checker
    should see ``EarlyExitModel``.

    ``device``: one request or a list tried in order (grammar: ``edge_runtime.devices``).
    ``num_threads``: CPU threads for inference (None: the backend's default).
    ``performance_hint``, ``cache_dir``, ``openvino_config``: OpenVINO compile options.
    ``openvino_plugins``: extra OpenVINO plugins, device name -> library path.
    ``devices``: the device table to select from (default: ``probe()`` now).

    Raises ``ModelFileError`` for a bad file, ``DeviceRequestError`` for a request that
    does not parse, ``DeviceUnavailableError`` when no requested device is there, and
    ``ModelLoadError`` when every candidate failed to load (each reason listed).
    """
    requests = [parse_request(r) for r in ([device] if isinstance(device, str) else device)]
    if not requests:
        raise DeviceRequestError("empty device request list", path=str(path))
    if num_threads is not None and (
        not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1
    ):
        raise ValueError(
            f"num_threads must be a whole number >= 1 (or None for the backend's default), got {num_threads!r}"
        )
    if Path(path).is_dir() and (Path(path) / "bundle.json").is_file():
        from .early_exit import load_bundle  # a bundle loads through the same door

        return load_bundle(
            path,
            device,
            num_threads=num_threads,
            performance_hint=performance_hint,  # type: ignore[return-value]
            cache_dir=cache_dir,
            openvino_config=openvino_config,
            openvino_plugins=openvino_plugins,
            devices=devices,
        )
    source = read_model_file(path)
    where = str(source.path)
    readers = READERS[source.format]
    if devices is None:
        wanted = {r.backend for r in requests if r.backend} if all(r.backend for r in requests) else set(readers)
        devices = probe([b for b in readers if b in wanted], openvino_plugins=openvino_plugins)
    elif openvino_plugins:
        get_backend("openvino").core(openvino_plugins)
    selection = select(requests, devices, source.format)
    attempts = [str(p) for p in selection.passed_over]
    if not selection.candidates:
        raise DeviceUnavailableError(
            f"no requested device can run this {source.format} model (asked for {', '.join(r.text for r in requests)})",
            path=where,
            attempts=attempts,
        )
    options = {
        "num_threads": num_threads,
        "performance_hint": performance_hint,
        "cache_dir": str(cache_dir) if cache_dir else None,
        "openvino_config": openvino_config,
    }
    for cand in selection.candidates:
        try:
            session = get_backend(cand.device.backend).open_session(source, cand.device, **options)
        except (ModelLoadError, BackendUnavailableError) as exc:
            attempts.append(f"{cand.device.request}: {exc.reason}")
            log.warning(
                "edge_runtime: %s could not load %s: %s; trying the next device", cand.device.request, where, exc.reason
            )
            continue
        if attempts:
            log.info("edge_runtime: %s loaded on %s after: %s", where, session.device, "; ".join(attempts))
        try:
            return Model(session, source, cand, selection, attempts)
        except BaseException:
            session.close()
            raise
    raise ModelLoadError("no device could load the model", path=where, attempts=attempts)
