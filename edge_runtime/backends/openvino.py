"""OpenVINO backend: IR, ONNX and .tflite on any OpenVINO device or plugin.

One ``openvino.Core`` per process is shared by probing and loading, so plugins
registered for probing (an FPGA or vendor NPU plugin, through ``Core.register_plugin``
or a ``plugins.xml``) are the ones models compile on.

Dynamic batch dimensions are reshaped to 1 (or to ``batch``) before compiling (measured
here: a dynamic ``[?,640]`` input ran ~3x slower than the static one).

``import openvino`` is done without its model converter (``_import_openvino``: ~100 ms ->
~31 ms here), and ``cache_dir`` keeps our own compiled-model cache, so a warm start imports the
compiled model without reading the model at all (``_CompileCache``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..device_info import Device, openvino_kind
from ..errors import ArgumentError, BackendUnavailableError, InferenceError, ModelClosedError, ModelLoadError
from ..futures import Arrays, RequestPool, RunFn, ThreadPool
from ..model_file import ONNX, OPENVINO_IR, ModelSource
from ..tensors import Quantization, TensorSpec
from .base import Capabilities, Session

NAME = "openvino"

_core: Any = None
_registered: dict[str, str] = {}  # device name -> "" if registered, else the failure reason
_import_error: str | None = None

#: Ops that only move or retype data between a model input/output and its (de)quantize step.
_PASS_THROUGH = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Convert"}


#: Set to 1 to leave OpenVINO's usage telemetry as OpenVINO configures it.
TELEMETRY_ENV = "EDGE_RUNTIME_OPENVINO_TELEMETRY"


def _no_telemetry() -> None:
    """Keep OpenVINO's model converter from starting usage telemetry in this process.

    OpenVINO's model converter (``openvino.tools.ovc``, which a plain ``import openvino``
    imports) starts usage telemetry unless it finds a CI environment: it writes a client-id
    file under the user's home and sends events from a worker thread over the network. A
    runtime on a device does not phone home, and on a board without a network (or in a
    sandbox) that sender has been seen hanging a forked child that held the CLI's output
    open. We take the package's own "running in CI" exit, for this process only; nothing on
    disk or in the environment changes. ``EDGE_RUNTIME_OPENVINO_TELEMETRY=1`` leaves it alone.

    Our own import of openvino skips the converter (see ``_ov``), so this runs only when
    something in the process imports ``openvino.tools.ovc`` later (``_OvcHook``).
    """
    if os.environ.get(TELEMETRY_ENV) == "1" or "openvino.tools.ovc" in sys.modules:
        return
    try:
        from openvino_telemetry.utils.opt_in_checker import OptInChecker
    except Exception:  # noqa: BLE001 - absent or reorganised: nothing to turn off here
        return
    OptInChecker._run_in_ci = staticmethod(lambda: True)


_OVC = "openvino.tools.ovc"
_openvino: Any = None  # the imported module, once imported
_import_lock = threading.Lock()


class _OvcHook:
    """A ``sys.meta_path`` entry that turns telemetry off (``_no_telemetry``) just before
    ``openvino.tools.ovc`` is first imported, by anyone, then removes itself. It finds
    nothing itself: the import goes on through the ordinary finders."""

    def __init__(self) -> None:
        self._done = False

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname == _OVC and not self._done:
            self._done = True
            try:
                sys.meta_path.remove(self)
            except ValueError:
                pass
            _no_telemetry()
        return None


def _lazy_convert_model(module: Any) -> Callable[[str], Any]:
    """A PEP 562 ``__getattr__`` for the openvino module imported without its converter:
    ``openvino.convert_model`` imports ``openvino.tools.ovc`` on first use, as a plain
    ``import openvino`` would have at import time."""

    def __getattr__(name: str) -> Any:
        if name == "tools":  # the package a plain import leaves bound (its converter import binds it)
            import importlib

            tools = importlib.import_module("openvino.tools")
            module.tools = tools
            return tools
        if name != "convert_model":
            raise AttributeError(f"module 'openvino' has no attribute {name!r}")
        try:
            from openvino.tools.ovc import convert_model
        except ImportError as exc:  # as a plain import openvino: no converter, no attribute
            raise AttributeError(f"module 'openvino' has no attribute 'convert_model' ({exc})") from exc
        module.convert_model = convert_model
        return convert_model

    return __getattr__


def _import_openvino() -> Any:
    """``import openvino`` without its model converter (called under ``_import_lock``).

    ``openvino/__init__.py`` ends with ``try: from openvino.tools.ovc import convert_model
    except ImportError: pass``; the converter pulls in telemetry and ``urllib.request`` and is
    ~70% of the import (measured: ~115 ms -> ~38 ms here). This runtime never converts a
    model, so a ``None`` in ``sys.modules`` for the converter makes that line raise
    ImportError, which openvino's own ``except`` swallows. The entry is removed right after,
    and ``openvino.convert_model`` is provided lazily (``_lazy_convert_model``), so code in
    the same process that converts models still works.
    """
    if "openvino" in sys.modules or _OVC in sys.modules:  # imported already: nothing to trim
        import openvino

        return openvino
    if os.environ.get(TELEMETRY_ENV) != "1":
        sys.meta_path.insert(0, _OvcHook())
    sys.modules[_OVC] = None  # type: ignore[assignment]
    try:
        import openvino
    finally:
        if sys.modules.get(_OVC, 0) is None:
            del sys.modules[_OVC]
    attrs = vars(openvino)
    if "convert_model" not in attrs and "__getattr__" not in attrs:
        openvino.__getattr__ = _lazy_convert_model(openvino)
    return openvino


def _ov() -> Any:
    global _import_error, _openvino
    if _openvino is not None:
        return _openvino
    with _import_lock:
        if _openvino is not None:
            return _openvino
        if _import_error is not None:
            raise BackendUnavailableError(_import_error, backend=NAME)
        try:
            openvino = _import_openvino()
        except Exception as exc:
            import platform

            machine = platform.machine()
            if sys.maxsize < 2**32:  # a 32-bit system, whatever the kernel reports (Pi 4/5 boot a 64-bit one)
                machine = f"32-bit {machine}"
            if machine in ("x86_64", "AMD64", "aarch64", "arm64"):
                hint = "install it: pip install openvino (the [openvino] extra)"
            else:  # e.g. armv7l (32-bit Raspberry Pi OS): OpenVINO publishes no wheel or source release
                hint = f"OpenVINO publishes no wheel for {machine} (only x86_64 and 64-bit ARM): use the litert backend"
            _import_error = f"cannot import openvino: {type(exc).__name__}: {exc}; {hint}"
            raise BackendUnavailableError(_import_error, backend=NAME) from exc
        _openvino = openvino
        return openvino


def unavailable_reason() -> str | None:
    """Why this backend cannot be used here, or ``None``."""
    try:
        _ov()
    except BackendUnavailableError as exc:
        return exc.reason
    return None


def runtime_info() -> dict[str, str]:
    ov = _ov()
    return {"module": "openvino", "distribution": "openvino", "version": str(ov.get_version())}


def core(plugins: dict[str, str] | None = None) -> Any:
    """The process's ``openvino.Core``, with ``plugins`` registered (once each).

    ``plugins`` maps a device name to a plugin library path; the key ``"xml"`` names a
    ``plugins.xml`` instead. A registration that fails is remembered with its reason
    and reported by ``probe_devices``; it does not raise.
    """
    global _core
    ov = _ov()
    if _core is None:
        _core = ov.Core()
    for name, library in (plugins or {}).items():
        if name in _registered:
            continue
        try:
            if name == "xml":
                _core.register_plugins(library)
            else:
                _core.register_plugin(library, name)
            _registered[name] = ""
        except RuntimeError as exc:
            _registered[name] = f"plugin {library} could not be registered: {_first_line(exc)}"
    return _core


def registration_error(name: str) -> str:
    """Why plugin ``name`` could not be registered ("" if it was, or was never asked for)."""
    return _registered.get(name, "")


def _first_line(exc: BaseException) -> str:
    """OpenVINO's message without its source-location lines, on one line (at most 400 characters)."""
    lines = [
        ln.strip()
        for ln in str(exc).splitlines()
        if ln.strip() and not ln.startswith("Exception from") and not (ln.startswith("Check '") and "failed at" in ln)
    ]
    text = " ".join(lines) or type(exc).__name__
    return text if len(text) <= 400 else text[:397] + "..."


def _device(c: Any, name: str) -> Device:
    """The record of one device OpenVINO can name (unavailable, with OpenVINO's reason, if it fails)."""
    try:
        full = str(c.get_property(name, "FULL_DEVICE_NAME"))
        caps = tuple(str(x) for x in c.get_property(name, "OPTIMIZATION_CAPABILITIES"))
    except RuntimeError as exc:
        return Device(NAME, name, openvino_kind(name), name, None, False, _first_line(exc))
    int8 = "INT8" in caps if caps else None
    return Device(NAME, name, openvino_kind(name), full, int8, True, "", caps)


def probe_devices(plugins: dict[str, str] | None = None, names: Collection[str] | None = None) -> list[Device]:
    """Every device OpenVINO reports, plus registered plugins that report none (with why).

    ``names``: only these devices (``CPU``, ``GPU.0``): each is asked for its properties
    directly, which starts only its own plugin (``available_devices`` starts every plugin:
    ~30 ms here). A name that does not answer falls back to the full listing, so the
    reason can say what was found instead.
    """
    c = core(plugins)
    if names:
        named = [_device(c, n) for n in names]
        if all(d.available for d in named):
            return named
    found: list[Device] = []
    listed = list(c.available_devices)
    for name in listed:
        found.append(_device(c, name))
    for name, reason in _registered.items():
        if name == "xml" or any(n == name or n.split(".")[0] == name for n in listed):
            continue
        if not reason:
            try:
                c.get_property(name, "FULL_DEVICE_NAME")
                reason = "plugin registered but reports no device"
            except RuntimeError as exc:
                reason = f"plugin registered but cannot start: {_first_line(exc)}"
        found.append(Device(NAME, name, openvino_kind(name), f"plugin {name}", None, False, reason))
    return found


def _read(source: ModelSource) -> Any:
    ov = _ov()
    c = core()
    if source.format == OPENVINO_IR:
        weights = ov.Tensor(np.frombuffer(source.weights or b"", dtype=np.uint8).copy())
        return c.read_model(source.content.decode("utf-8", errors="replace"), weights)
    if source.format == ONNX:
        # ONNX may keep weights in files beside the model (external data), found relative
        # to the model's own path: read it where it is.
        return c.read_model(str(source.path))
    # OpenVINO picks the TFLite frontend by file suffix and cannot read it from bytes,
    # so the checked bytes go to a private file (0700 directory) for the read.
    with tempfile.TemporaryDirectory(prefix="edge_runtime_") as tmp:
        private = Path(tmp) / ("model." + source.format)
        private.write_bytes(source.content)
        return c.read_model(str(private))


def _const(node: Any) -> npt.NDArray[np.float64] | None:
    """The values of a Constant (or of a Convert of one), as float64; None for anything else."""
    if node.get_type_name() == "Convert":
        node = node.input(0).get_source_output().get_node()
    if node.get_type_name() != "Constant":
        return None
    return np.asarray(node.get_data(), dtype=np.float64).ravel()


def _single(values: npt.NDArray[np.float64]) -> float | None:
    return float(values[0]) if values.size and np.all(values == values[0]) else None


def _fake_quantize_ranges(node: Any) -> tuple[float, float, float, float] | None:
    """(in_lo, in_hi, out_lo, out_hi) of a per-tensor FakeQuantize; None if not constant or per-channel."""
    values = []
    for port in node.inputs()[1:5]:
        const = _const(port.get_source_output().get_node())
        single = None if const is None else _single(const)
        if single is None:
            return None
        values.append(single)
    in_lo, in_hi, out_lo, out_hi = values
    return (in_lo, in_hi, out_lo, out_hi) if in_hi != in_lo and out_hi != out_lo else None


def _input_quantization(param: Any) -> Quantization | None:
    """Recover (scale, zero point) from the dequantize step after an integer input.

    Patterns: TFLite/IR ``FakeQuantize`` (integer range -> real range) and ONNX
    ``DequantizeLinear`` (``Subtract zp`` then ``Multiply scale``), possibly behind
    layout ops. Per-channel input quantization is not recovered (returns None).
    """
    node = param
    for _ in range(8):
        consumers = [t.get_node() for o in node.outputs() for t in o.get_target_inputs()]
        if len(consumers) != 1:
            return None
        node = consumers[0]
        kind = node.get_type_name()
        if kind in _PASS_THROUGH:
            continue
        if kind == "FakeQuantize":
            ranges = _fake_quantize_ranges(node)
            if ranges is None:
                return None
            in_lo, in_hi, out_lo, out_hi = ranges
            scale = (out_hi - out_lo) / (in_hi - in_lo)
            return Quantization((scale,), (round(in_lo - out_lo / scale),))
        operand = _const(node.input(1).get_source_output().get_node()) if len(node.inputs()) > 1 else None
        value = None if operand is None else _single(operand)
        if value is None:
            return None
        if kind == "Multiply":
            return Quantization((value,), (0,))
        if kind == "Subtract":
            nxt = [t.get_node() for o in node.outputs() for t in o.get_target_inputs()]
            if len(nxt) == 1 and nxt[0].get_type_name() == "Multiply":
                s = _const(nxt[0].input(1).get_source_output().get_node())
                dq_scale = None if s is None else _single(s)
                if dq_scale is not None:
                    return Quantization((dq_scale,), (round(value),))
        return None
    return None


def _output_quantization(result: Any) -> Quantization | None:
    """Recover (scale, zero point) from the ``FakeQuantize`` (real -> integer) before an integer output."""
    node = result
    for _ in range(8):
        node = node.input(0).get_source_output().get_node()
        kind = node.get_type_name()
        if kind in _PASS_THROUGH:
            continue
        ranges = _fake_quantize_ranges(node) if kind == "FakeQuantize" else None
        if ranges is None:
            return None
        in_lo, in_hi, out_lo, out_hi = ranges
        scale = (in_hi - in_lo) / (out_hi - out_lo)
        return Quantization((scale,), (round(out_lo - in_lo / scale),))
    return None


def _is_int(node: Any) -> bool:
    return bool(np.issubdtype(np.dtype(node.get_output_element_type(0).to_dtype()), np.integer))


def _port_name(port: Any, fallback: str) -> str:
    try:
        return str(port.get_any_name())
    except (RuntimeError, UnicodeDecodeError):
        return fallback


def _check_batch(batch: Any) -> int:
    """``batch`` as an int >= 1, else ``ArgumentError``."""
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ArgumentError(f"batch must be an integer >= 1, not {batch!r}", backend=NAME)
    return int(batch)


def _make_static(model: Any, where: str, device: str, batch: int = 1) -> None:
    """Give every input a static shape whose first (batch) dimension is ``batch``.

    A dynamic first dimension, or a fixed 1, becomes ``batch``; any other dynamic dimension,
    or a fixed first dimension other than 1 and ``batch``, is a ``ModelLoadError``. OpenVINO's
    own ``RuntimeError`` from ``reshape`` is left to the caller.
    """
    ov = _ov()
    new_shapes: dict[Any, Any] = {}
    for port in model.inputs:
        ps = port.get_partial_shape()
        if not ps.is_dynamic and batch == 1:
            continue
        dims = list(ps) if ps.rank.is_static else []
        if not dims or any(d.is_dynamic for d in dims[1:]):
            if not ps.is_dynamic:  # a scalar input: nothing to batch
                raise ModelLoadError(
                    f"the model cannot take a batch of {batch}: input {_port_name(port, '?')} is a scalar",
                    path=where,
                    backend=NAME,
                    device=device,
                )
            raise ModelLoadError(
                f"input {_port_name(port, '?')} has dynamic dimensions other than the batch ({ps}); "
                f"only a dynamic batch is reshaped (to {batch})",
                path=where,
                backend=NAME,
                device=device,
            )
        first = dims[0]
        if first.is_static and first.get_length() == batch:
            continue
        if first.is_static and first.get_length() != 1:
            raise ModelLoadError(
                f"the model cannot take a batch of {batch}: input {_port_name(port, '?')} has a fixed "
                f"first dimension of {first.get_length()} ({ps}); only a dynamic or 1 batch is reshaped",
                path=where,
                backend=NAME,
                device=device,
            )
        new_shapes[port] = ov.PartialShape([batch] + [d.get_length() for d in dims[1:]])
    if new_shapes:
        model.reshape(new_shapes)
    if batch == 1:
        return
    for port in model.outputs:
        ps = port.get_partial_shape()
        dims = list(ps) if ps.rank.is_static else []
        if not dims or dims[0].is_dynamic or dims[0].get_length() != batch:
            raise ModelLoadError(
                f"the model cannot take a batch of {batch}: output {_port_name(port, '?')} has shape {ps}, "
                f"whose first dimension is not the batch",
                path=where,
                backend=NAME,
                device=device,
            )


#: The subdirectory of ``cache_dir`` holding our compiled-model entries.
CACHE_SUBDIR = "edge_runtime-ov"
#: Bumped when the entry layout or what the session recovers from the model changes.
_CACHE_SCHEMA = 1
_CACHE_MAGIC = b"edge_runtime openvino compiled model\n"


class _BadEntry(Exception):
    """A cache entry that cannot be used: the reason, for the warning."""


def _spec_to_dict(spec: TensorSpec) -> dict[str, Any]:
    return spec.to_dict()


def _spec_from_dict(d: dict[str, Any]) -> TensorSpec:
    q = d.get("quantization")
    quant = (
        Quantization(tuple(float(x) for x in q["scales"]), tuple(int(x) for x in q["zero_points"]), q.get("axis"))
        if q
        else None
    )
    return TensorSpec(str(d["name"]), tuple(int(x) for x in d["shape"]), np.dtype(d["dtype"]), quant)


class _CompileCache:
    """One entry of our compiled-model cache: ``<cache_dir>/edge_runtime-ov/<key>.blob``.

    OpenVINO's own ``CACHE_DIR`` still reads and converts the model on every load (its key
    is a hash of the converted graph): ~45 ms of ``read_model`` for VWW here, a third of a
    warm start. Our key is computed from the model's bytes without reading the model, so a
    hit goes straight to ``import_model``. The key covers the model bytes (an IR's .xml and
    .bin), the target device, the compile properties, the batch, the OpenVINO and
    edge_runtime versions, this entry schema and the CPU model; an entry holds a JSON header
    (the key, the session's tensor specs with their recovered quantization, op count,
    execution devices, the blob's length and sha256) and the blob from ``export_model``.

    File: the magic line, the JSON on one line, then the blob. Written to a temporary file in
    the same directory, fsync'd, then ``os.replace``'d: a reader sees a whole entry or none.
    An entry that cannot be used (truncated, corrupt, made for another key) is reported with
    ``warnings.warn``, deleted and rebuilt. A device whose compiled models cannot be exported
    gets a ``<key>.noexport`` marker and OpenVINO's own ``CACHE_DIR`` from then on.
    """

    def __init__(self, cache_dir: str, source: ModelSource, target: str, props: dict[str, Any], batch: int) -> None:
        from .. import __version__
        from ..device_info import cpuinfo_model_name

        digest = hashlib.sha256()
        for part in (source.content, source.weights or b""):
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(part)
        self.key: dict[str, Any] = {
            "schema": _CACHE_SCHEMA,
            "model_sha256": digest.hexdigest(),
            "format": source.format,
            "target": target,
            "properties": repr(sorted((str(k), repr(v)) for k, v in props.items())),
            "batch": batch,
            "openvino": str(_ov().get_version()),
            "edge_runtime": __version__,
            "cpu": cpuinfo_model_name() or "",
        }
        name = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:40]
        self.dir = Path(cache_dir) / CACHE_SUBDIR
        self.path = self.dir / f"{name}.blob"
        self.noexport = self.dir / f"{name}.noexport"

    def load(self) -> tuple[dict[str, Any], bytes] | None:
        """The entry's header and blob; None if there is none. Raises ``_BadEntry``."""
        try:
            data = self.path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise _BadEntry(f"cannot read it: {exc.strerror or exc}") from exc
        if not data.startswith(_CACHE_MAGIC):
            raise _BadEntry("not an edge_runtime OpenVINO cache entry")
        end = data.find(b"\n", len(_CACHE_MAGIC))
        if end < 0:
            raise _BadEntry("truncated (no header)")
        try:
            meta = json.loads(data[len(_CACHE_MAGIC) : end])
        except ValueError as exc:
            raise _BadEntry(f"bad header: {exc}") from exc
        if not isinstance(meta, dict):
            raise _BadEntry("bad header: not an object")
        if meta.get("key") != self.key:
            raise _BadEntry(f"made for another model, device, setting or version: {meta.get('key')!r}")
        blob = data[end + 1 :]
        if len(blob) != meta.get("blob_bytes"):
            raise _BadEntry(f"truncated: {len(blob)} of {meta.get('blob_bytes')} blob bytes")
        if hashlib.sha256(blob).hexdigest() != meta.get("blob_sha256"):
            raise _BadEntry("corrupt: the blob's sha256 differs from its header's")
        return meta, blob

    def store(self, meta: dict[str, Any], blob: bytes) -> None:
        """Write the entry atomically; a failure (full disk, read-only directory) is only a warning."""
        header = {**meta, "key": self.key, "blob_bytes": len(blob), "blob_sha256": hashlib.sha256(blob).hexdigest()}
        self._write(self.path, _CACHE_MAGIC + json.dumps(header).encode() + b"\n" + blob)

    def mark_noexport(self, reason: str) -> None:
        self._write(self.noexport, reason.encode() + b"\n")

    def _write(self, path: Path, data: bytes) -> None:
        tmp = None
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-", suffix=path.suffix)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            tmp = None
        except OSError as exc:
            warnings.warn(
                f"edge_runtime: cannot write the OpenVINO compile cache entry {path}: {exc.strerror or exc}",
                RuntimeWarning,
                stacklevel=4,
            )
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def discard(self, reason: str) -> None:
        """Warn about an unusable entry (naming the file and why) and delete it."""
        warnings.warn(
            f"edge_runtime: ignoring OpenVINO compile cache entry {self.path}: {reason}; rebuilding it",
            RuntimeWarning,
            stacklevel=4,
        )
        with contextlib.suppress(OSError):
            self.path.unlink()


def _compile_props(
    target: str, num_threads: int | None, performance_hint: str | None, config: dict[str, Any] | None
) -> dict[str, Any]:
    """The compile properties for ``target`` (``CACHE_DIR`` is added by the caller)."""
    props: dict[str, Any] = {}
    if num_threads is not None:
        props["INFERENCE_NUM_THREADS"] = int(num_threads)
    if performance_hint:
        props["PERFORMANCE_HINT"] = performance_hint
    props.update(config or {})
    if performance_hint == "THROUGHPUT":
        # Pinned streams of several models in one process all land on the same cores
        # (measured: two one-thread models on core 0); unpinned, they share every core.
        props.setdefault("ENABLE_CPU_PINNING", False)
    if target.split(".")[0] != "CPU":
        # CPU-plugin-only keys (the daemon turns pinning off for every model it loads) would
        # make another plugin refuse the whole compile.
        for key in CPU_ONLY_KEYS:
            props.pop(key, None)
    return props


@functools.cache
def ov_placement(target: str, execution_devices: tuple[str, ...]) -> tuple[bool | None, str]:
    """Whether one device runs the whole model, and a line a person reads, from OpenVINO's
    ``EXECUTION_DEVICES`` for a compile on ``target`` (pure). OpenVINO splits a model over
    devices only under HETERO (by op support) or MULTI (by request); AUTO may run on the CPU
    while the device it chose is still compiling."""
    if not execution_devices:
        return None, ""
    devices = ", ".join(execution_devices)
    if len(execution_devices) == 1:
        return True, f"all ops on {devices} (OpenVINO EXECUTION_DEVICES)"
    meta = target.split(":")[0]
    how = {"HETERO": "split by op support", "MULTI": "requests spread", "AUTO": "AUTO is using"}.get(meta, "on")
    return False, f"{how} over {devices} (OpenVINO EXECUTION_DEVICES)"


def infer_call() -> Callable[[Any], object]:
    """How to run an infer request on the inputs already in its tensors (GIL released).

    ``InferRequest.infer()`` (openvino/_ov_api.py) wraps the binding: it dispatches its
    ``inputs`` argument and wraps the outputs in an ``OVDict`` of new arrays, work this runtime
    does not use (it writes the input tensors itself and reads the output tensors after).
    Calling the binding with no inputs and shared outputs saved 5-15 us per call here
    (2026-11-29, 2 cores, OpenVINO 2026.4.1, MLPerf Tiny models: ad01 36.5 -> 28.7 us, KWS
    99.8 -> 93.7, ResNet-8 84.6 -> 79.0, VWW 251 -> 236; medians of 7 x 500 calls, interleaved).
    Used when the binding has the signature relied on; else the public ``infer()`` (a later
    release may change the private binding)."""
    binding = getattr(getattr(_ov(), "_pyopenvino", None), "InferRequest", None)
    fn = getattr(binding, "infer", None)
    if fn is None or "inputs: dict, share_outputs: bool, decode_strings: bool" not in (fn.__doc__ or ""):
        return lambda request: request.infer()
    return functools.partial(_call_binding, fn)


def _call_binding(fn: Callable[..., object], request: Any) -> object:
    return fn(request, {}, True, False)


class OpenVINOSession(Session):
    """A compiled model and one infer request whose input tensors are reused."""

    backend = NAME
    capabilities = Capabilities(writable_inputs=True, parallel_submit=True)

    #: Our compiled-model cache on this load (see ``_CompileCache``): ``"hit"`` (imported from
    #: ``cache_dir``, the model was not read), ``"miss"`` (compiled and written there),
    #: ``"openvino"`` (``cache_dir`` handed to OpenVINO's own ``CACHE_DIR``: an ONNX model, or a
    #: device that cannot export), ``"off"`` (no ``cache_dir``).
    compile_cache: str = "off"
    _compiled: Any = None
    _request: Any = None

    def __init__(
        self,
        source: ModelSource,
        device: Device,
        *,
        num_threads: int | None = None,
        performance_hint: str | None = "LATENCY",
        cache_dir: str | None = None,
        config: dict[str, Any] | None = None,
        batch: int = 1,
    ) -> None:
        where = str(source.path)
        self.device = device.request
        self._where = where
        batch = _check_batch(batch)
        self.batch = batch
        c = core()
        target = device.name
        props = _compile_props(target, num_threads, performance_hint, config)
        entry: _CompileCache | None = None
        if cache_dir:
            # ONNX may keep its weights in other files (external data) that the key would not
            # cover: left to OpenVINO's CACHE_DIR, whose key is computed from the read model.
            if source.format != ONNX:
                entry = _CompileCache(str(cache_dir), source, target, props, batch)
                if entry.noexport.exists():
                    entry = None
            if entry is None:
                props["CACHE_DIR"] = str(cache_dir)
                self.compile_cache = "openvino"
            # With our entry, OpenVINO's CACHE_DIR is not passed: a warm load imports our blob
            # without reading the model, so OpenVINO's cache would never be read, only written
            # (a second copy of the same compiled model per model, and its write time on a miss).
        meta = self._import(c, entry, target, props) if entry is not None else None
        if meta is not None:
            self.compile_cache = "hit"
            in_q = [s.quantization for s in meta[0]]
            out_q = [s.quantization for s in meta[1]]
        else:
            in_q, out_q = self._compile(c, source, target, props, batch)
            if entry is not None:
                self.compile_cache = "miss"
                self._store(entry, target, in_q, out_q)
        if meta is None or not self.execution_devices:
            try:
                self.execution_devices = tuple(str(d) for d in self._compiled.get_property("EXECUTION_DEVICES"))
            except RuntimeError:
                self.execution_devices = (target,)
        self.fully_accelerated, self.placement = ov_placement(target, self.execution_devices)
        try:
            self._request = self._compiled.create_infer_request()
            self._infer = infer_call()
            self.inputs = tuple(
                TensorSpec(
                    _port_name(p, f"input{i}"), tuple(p.get_shape()), np.dtype(p.get_element_type().to_dtype()), q
                )
                for i, (p, q) in enumerate(zip(self._compiled.inputs, in_q))
            )
            self.outputs = tuple(
                TensorSpec(
                    _port_name(p, f"output{i}"), tuple(p.get_shape()), np.dtype(p.get_element_type().to_dtype()), q
                )
                for i, (p, q) in enumerate(zip(self._compiled.outputs, out_q))
            )
            # Views of the request's own input memory: valid as long as the request lives.
            self._in_views = [self._request.get_input_tensor(i).data for i in range(len(self.inputs))]
            self._n_out = len(self.outputs)
            # On the CPU plugin a static-shape request keeps its output tensors, so their views
            # are cached (saves ~0.8 us per output per call); other devices fetch them per call.
            self._out_views = (
                [self._request.get_output_tensor(i).data for i in range(self._n_out)] if target == "CPU" else None
            )
        except (RuntimeError, TypeError, ValueError) as exc:  # a device that compiles but cannot run
            self.close()
            raise ModelLoadError(
                f"cannot create an infer request on {target}: {_first_line(exc)}",
                path=where,
                backend=NAME,
                device=self.device,
            ) from exc

    def _import(
        self, c: Any, entry: _CompileCache, target: str, props: dict[str, Any]
    ) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]] | None:
        """A warm start: the compiled model imported from ``entry`` (no ``read_model``), and the
        tensor specs it recorded; None on a miss or an unusable entry (warned about, deleted)."""
        try:
            found = entry.load()
            if found is None:
                return None
            meta, blob = found
            try:
                inputs = tuple(_spec_from_dict(d) for d in meta["inputs"])
                outputs = tuple(_spec_from_dict(d) for d in meta["outputs"])
                op_count = meta["op_count"]
                devices = tuple(str(d) for d in meta["execution_devices"])
            except (KeyError, TypeError, ValueError) as exc:
                raise _BadEntry(f"bad header: {type(exc).__name__}: {exc}") from exc
            try:
                compiled = c.import_model(io.BytesIO(blob), target, props)
            except RuntimeError as exc:
                raise _BadEntry(f"OpenVINO cannot import it: {_first_line(exc)}") from exc
            # The quantization read from the header must describe the very tensors imported.
            try:
                ports = [
                    (_port_name(p, f"{kind}{i}"), tuple(p.get_shape()), np.dtype(p.get_element_type().to_dtype()))
                    for kind, group in (("input", compiled.inputs), ("output", compiled.outputs))
                    for i, p in enumerate(group)
                ]
            except (RuntimeError, TypeError, ValueError) as exc:
                raise _BadEntry(f"its compiled model has unusable tensors: {_first_line(exc)}") from exc
            if ports != [(s.name, s.shape, s.dtype) for s in inputs + outputs] or len(compiled.inputs) != len(inputs):
                raise _BadEntry("its header does not describe the tensors of its compiled model")
        except _BadEntry as exc:
            entry.discard(str(exc))
            return None
        self._compiled = compiled
        self.op_count = op_count if isinstance(op_count, int) else None
        self.execution_devices = devices
        return inputs, outputs

    def _compile(
        self, c: Any, source: ModelSource, target: str, props: dict[str, Any], batch: int
    ) -> tuple[list[Quantization | None], list[Quantization | None]]:
        """The cold path: read, reshape, recover quantization, compile. Returns the recovered
        (input, output) quantizations."""
        where = self._where
        try:
            model = _read(source)
        except RuntimeError as exc:
            raise ModelLoadError(
                f"OpenVINO cannot read the model: {_first_line(exc)}", path=where, backend=NAME, device=self.device
            ) from exc
        try:
            _make_static(model, where, self.device, batch)
        except RuntimeError as exc:
            reason = (
                f"cannot reshape the batch dimension to 1: {_first_line(exc)}"
                if batch == 1
                else f"the model cannot take a batch of {batch}: {_first_line(exc)}"
            )
            raise ModelLoadError(reason, path=where, backend=NAME, device=self.device) from exc
        # Quantization is recovered for integer tensors only: a float model's own
        # normalisation (x * c, (x - m) * s) is not a quantization of its input.
        in_q = [_input_quantization(p) if _is_int(p) else None for p in model.get_parameters()]
        out_q = [_output_quantization(r) if _is_int(r) else None for r in model.get_results()]
        self.op_count = len(model.get_ordered_ops())
        if target.split(":")[0].split(".")[0] not in ("CPU", "AUTO", "MULTI", "HETERO", "BATCH"):
            self._check_ops(c, model, target)
        try:
            self._compiled = c.compile_model(model, target, props)
        except RuntimeError as exc:
            reason = f"compile failed on {target}: {_first_line(exc)}"
            if batch != 1:
                reason = f"the model cannot take a batch of {batch}: {reason}"
            raise ModelLoadError(reason, path=where, backend=NAME, device=self.device) from exc
        return in_q, out_q

    def _store(
        self, entry: _CompileCache, target: str, in_q: list[Quantization | None], out_q: list[Quantization | None]
    ) -> None:
        """Export the freshly compiled model into ``entry``; a device that cannot export gets
        the ``noexport`` marker (later loads use OpenVINO's CACHE_DIR)."""
        compiled = self._compiled
        try:
            exported = compiled.export_model()
        except (RuntimeError, NotImplementedError, TypeError) as exc:
            entry.mark_noexport(f"export_model failed on {target}: {_first_line(exc)}")
            return
        blob = exported.getvalue() if hasattr(exported, "getvalue") else bytes(exported)
        try:
            devices = [str(d) for d in compiled.get_property("EXECUTION_DEVICES")]
        except RuntimeError:
            devices = [target]

        def spec(p: Any, q: Quantization | None, fallback: str) -> dict[str, Any]:
            return _spec_to_dict(
                TensorSpec(_port_name(p, fallback), tuple(p.get_shape()), np.dtype(p.get_element_type().to_dtype()), q)
            )

        try:
            meta = {
                "inputs": [spec(p, q, f"input{i}") for i, (p, q) in enumerate(zip(compiled.inputs, in_q))],
                "outputs": [spec(p, q, f"output{i}") for i, (p, q) in enumerate(zip(compiled.outputs, out_q))],
                "op_count": self.op_count,
                "execution_devices": devices,
            }
        except (RuntimeError, TypeError, ValueError):
            return  # a dynamic shape or odd type: the request below reports it; nothing cached
        entry.store(meta, blob)

    def _check_ops(self, c: Any, model: Any, target: str) -> None:
        try:
            supported = c.query_model(model, target)
        except RuntimeError as exc:
            raise ModelLoadError(
                f"cannot query {target} for op support: {_first_line(exc)}",
                path=self._where,
                backend=NAME,
                device=self.device,
            ) from exc
        skip = {"Parameter", "Result", "Constant"}
        missing = sorted(
            {
                op.get_type_name()
                for op in model.get_ordered_ops()
                if op.get_type_name() not in skip and op.get_friendly_name() not in supported
            }
        )
        if missing:
            raise ModelLoadError(
                f"ops not supported on {target}: {', '.join(missing)}",
                path=self._where,
                backend=NAME,
                device=self.device,
            )

    def _closed(self) -> ModelClosedError:
        return ModelClosedError("model is closed", path=self._where, backend=NAME, device=self.device)

    def input_buffer(self, index: int) -> npt.NDArray[Any]:
        """The request's input memory: write into it, then call ``run_prepared``."""
        if self._request is None:
            raise self._closed()
        view: npt.NDArray[Any] = self._in_views[index]
        return view

    def run(self, arrays: list[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        if self._request is None:
            raise self._closed()
        for view, arr in zip(self._in_views, arrays):
            np.copyto(view, arr)  # the one copy in: into the request's own tensor
        return self.run_prepared()

    def invoke(self) -> None:
        request = self._request
        if request is None:
            raise self._closed()
        try:
            self._infer(request)
        except RuntimeError as exc:
            raise InferenceError(
                f"infer failed: {_first_line(exc)}", path=self._where, backend=NAME, device=self.device
            ) from exc

    def output_view(self, index: int) -> npt.NDArray[Any]:
        if self._request is None:
            raise self._closed()
        if self._out_views is not None:
            view: npt.NDArray[Any] = self._out_views[index]
            return view
        fresh: npt.NDArray[Any] = self._request.get_output_tensor(index).data
        return fresh

    def run_prepared(self) -> list[npt.NDArray[Any]]:
        self.invoke()
        if self._out_views is not None:
            return [v.copy() for v in self._out_views]
        if self._request is None:
            raise self._closed()
        return [self._request.get_output_tensor(i).data.copy() for i in range(self._n_out)]

    def open_pool(self, workers: int | None = None) -> RequestPool:
        """``workers`` threads (default: the ``OPTIMAL_NUMBER_OF_INFER_REQUESTS`` the compiled model
        reports), each with an infer request of its own on this compiled model, calling its
        synchronous ``infer`` (which releases the GIL). Requests run in parallel only on a model
        compiled for several streams: load with ``performance_hint="THROUGHPUT"`` (the default
        ``LATENCY`` hint compiles one stream: one request at a time). This session's own request
        is not used, so ``infer`` may run while requests are pending.

        Not ``AsyncInferQueue``: its completion callback runs on an OpenVINO thread that must take
        the GIL for every request; measured side by side here (``scripts/bench_throughput.py``'s
        history in the README), worker threads on their own requests gave 1.2-2.3x its
        throughput with 4 requests in flight on a ``THROUGHPUT`` model."""
        compiled = self._compiled
        if compiled is None:
            raise self._closed()
        jobs = workers
        if jobs is None:
            try:
                jobs = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            except (RuntimeError, TypeError, ValueError):
                jobs = 1
        jobs = max(1, jobs)
        try:
            streams = int(compiled.get_property("NUM_STREAMS"))
        except (RuntimeError, TypeError, ValueError):
            streams = jobs
        runners = [self._worker_runner(compiled) for _ in range(jobs)]
        return ThreadPool(
            runners,
            parallel=jobs > 1 and streams > 1,
            path=self._where,
            backend=NAME,
            device=self.device,
            name="edge_runtime-openvino",
        )

    def _worker_runner(self, compiled: Any) -> RunFn:
        """A new infer request for one pool worker, as a function: arrays in, new output arrays out."""
        where, device, n_out = self._where, self.device, len(self.outputs)
        infer = infer_call()
        try:
            request = compiled.create_infer_request()
            in_views = [request.get_input_tensor(i).data for i in range(len(self.inputs))]
        except RuntimeError as exc:
            raise ModelLoadError(
                f"cannot create an infer request for a pool worker: {_first_line(exc)}",
                path=where,
                backend=NAME,
                device=device,
            ) from exc

        def run(arrays: Arrays) -> list[npt.NDArray[Any]]:
            for view, arr in zip(in_views, arrays):
                np.copyto(view, arr)  # the one copy in: into the request's own tensor
            try:
                infer(request)  # releases the GIL
            except RuntimeError as exc:
                raise InferenceError(
                    f"infer failed: {_first_line(exc)}", path=where, backend=NAME, device=device
                ) from exc
            return [request.get_output_tensor(i).data.copy() for i in range(n_out)]  # owned by the request

        return run

    def close(self) -> None:
        """Release the request and the compiled model. Safe to call twice."""
        self._in_views = []
        self._out_views = None
        self._request = None
        self._compiled = None


#: Compile options only the CPU plugin takes: left out when compiling for another device.
#: ``ENABLE_CPU_PINNING`` is process-wide: two models pinned in one process share cores.
CPU_ONLY_KEYS = ("ENABLE_CPU_PINNING",)


def open_session(
    source: ModelSource,
    device: Device,
    *,
    num_threads: int | None = None,
    performance_hint: str | None = "LATENCY",
    cache_dir: str | None = None,
    openvino_config: dict[str, Any] | None = None,
    batch: int = 1,
    **_: Any,
) -> Session:
    """Read, reshape, compile ``source`` on ``device``; raise ``ModelLoadError`` on failure.

    ``batch``: the first dimension of every input and output (a dynamic or 1 batch is
    reshaped to it); ``ArgumentError`` if it is not an integer >= 1, ``ModelLoadError`` if
    the model cannot take it. ``cache_dir``: see ``OpenVINOSession.compile_cache``."""
    return OpenVINOSession(
        source,
        device,
        num_threads=num_threads,
        performance_hint=performance_hint,
        cache_dir=cache_dir,
        config=openvino_config,
        batch=batch,
    )


__all__ = ["NAME", "OpenVINOSession", "core", "open_session", "probe_devices", "runtime_info", "unavailable_reason"]
