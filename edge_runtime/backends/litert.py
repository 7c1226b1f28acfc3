"""LiteRT (TFLite) backend: XNNPACK on the CPU, and external delegates.

The interpreter module is found in this order, and the one used is reported by
``runtime_info()`` and ``edge-runtime devices``: ``ai_edge_litert`` (maintained,
NumPy 2), ``tflite_runtime`` (last release 2.14, NumPy < 2), ``tensorflow.lite``.
Set ``EDGE_RUNTIME_TFLITE`` to one of those names to force it.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import platform
import sys
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from ..device_info import Device, cpuinfo_model_name
from ..errors import BackendUnavailableError, InferenceError, ModelClosedError, ModelLoadError
from ..futures import Arrays, RequestPool, RunFn, ThreadPool, default_workers, serial_pool
from ..model_file import ModelSource
from ..tensors import Quantization, TensorSpec
from .base import Capabilities, Session

NAME = "litert"
#: What the TFLite library itself prints (see ``native_stderr_to_log``).
native_log = logging.getLogger("edge_runtime.litert")

#: Interpreter modules in order of preference: (import name, distribution name).
_MODULES = (
    ("ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite_runtime.interpreter", "tflite-runtime"),
    ("tensorflow.lite", "tensorflow"),
)

#: Delegates looked for by ``probe_devices``: name -> (kind, full name, library, install hint).
#: ``litert:gpu`` and ``litert:npu`` are not delegates: they go through LiteRT's CompiledModel
#: (``litert_compiled``); a hand-built TFLite GPU delegate is still ``litert:delegate=PATH``.
DELEGATES: dict[str, tuple[str, str, str, str]] = {
    "edgetpu": ("tpu", "Coral Edge TPU", "libedgetpu.so.1", "install libedgetpu1-std (Coral apt repository)"),
    "vx": ("npu", "VeriSilicon VX NPU delegate", "libvx_delegate.so", "part of NXP's i.MX BSP (tflite-vx-delegate)"),
}
_LIB_DIRS = (
    "/usr/local/lib",
    f"/usr/lib/{platform.machine()}-linux-gnu",
    f"/lib/{platform.machine()}-linux-gnu",
    "/usr/lib",
    "/usr/lib64",
    "/lib",
    "/lib64",
)


@dataclass(frozen=True)
class Runtime:
    """The TFLite interpreter module in use."""

    module: str
    distribution: str
    interpreter: type
    load_delegate: Any

    @property
    def version(self) -> str:
        """The package's version: its ``__version__``, else the installed distribution's metadata
        (``importlib.metadata`` costs ~15 ms to import: kept off the load path)."""
        top = sys.modules.get(self.module.split(".")[0])
        found = getattr(top, "__version__", None)
        return str(found) if found else _version(self.distribution)


_runtime: Runtime | None = None
_runtime_error: str | None = None


def _import_runtime() -> Runtime:
    global _runtime, _runtime_error
    if _runtime is not None:
        return _runtime
    if _runtime_error is not None:
        raise BackendUnavailableError(_runtime_error, backend=NAME)
    forced = os.environ.get("EDGE_RUNTIME_TFLITE", "").strip()
    tried: list[str] = []
    for module_name, dist in _MODULES:
        if forced and forced not in (module_name.split(".")[0], dist):
            continue
        try:
            module: ModuleType = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - any import failure is a reason to try the next
            tried.append(f"{module_name}: {type(exc).__name__}: {exc}")
            continue
        interp = module.Interpreter
        load_delegate = getattr(module, "load_delegate", None)
        if load_delegate is None:  # tensorflow.lite keeps it under experimental
            load_delegate = getattr(getattr(module, "experimental", None), "load_delegate", None)
        _runtime = Runtime(module_name, dist, interp, load_delegate)
        return _runtime
    hint = f" (EDGE_RUNTIME_TFLITE={forced})" if forced else ""
    _runtime_error = (
        "no TFLite interpreter importable"
        + hint
        + ": "
        + "; ".join(tried or ["nothing matched"])
        + ". "
        + _install_hint(forced)
    )
    raise BackendUnavailableError(_runtime_error, backend=NAME)


def _install_hint(forced: str) -> str:
    """Which package (and edge-runtime extra) gives this machine a TFLite interpreter."""
    for module_name, dist in _MODULES:
        if forced and forced in (module_name.split(".")[0], dist):
            return f"Install {dist} (pip install {dist}), or unset EDGE_RUNTIME_TFLITE"
    machine = platform.machine()
    if sys.maxsize < 2**32 and machine in ("aarch64", "arm64"):  # 32-bit system on a 64-bit kernel (Pi 4/5)
        machine = "32-bit ARM"
    if machine.startswith(("armv6", "armv7", "armv8l", "32-bit")):  # 32-bit ARM: no ai-edge-litert wheel
        if sys.version_info < (3, 12):
            return (
                f"On {machine} install tflite-runtime: pip install 'tflite-runtime>=2.14' 'numpy<2' "
                "(the [tflite-runtime] extra; ai-edge-litert has no wheel for 32-bit ARM)"
            )
        return (
            f"On {machine} with Python {sys.version_info.major}.{sys.version_info.minor} no TFLite wheel exists "
            "(ai-edge-litert: no 32-bit ARM wheels; tflite-runtime: Python <= 3.11): use Python 3.11 or a 64-bit OS"
        )
    return "Install ai-edge-litert: pip install ai-edge-litert (the [litert] extra)"


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def unavailable_reason() -> str | None:
    """Why this backend cannot be used here, or ``None``."""
    try:
        _import_runtime()
    except BackendUnavailableError as exc:
        return exc.reason
    return None


def runtime_info() -> dict[str, str]:
    """Which interpreter module is used, and its version."""
    rt = _import_runtime()
    return {"module": rt.module, "distribution": rt.distribution, "version": rt.version}


@functools.lru_cache(maxsize=4)
def _library_dirs(ld_library_path: str) -> tuple[str, ...]:
    """Where the dynamic loader looks, without running ``ldconfig``: ``ld_library_path``, the
    directories listed in ``/etc/ld.so.conf`` (and its ``include``d files), the standard ones.
    Cached: read once per process (per ``LD_LIBRARY_PATH`` value), not once per library."""
    dirs = [d for d in ld_library_path.split(":") if d]
    pending = [Path("/etc/ld.so.conf")]
    seen: set[Path] = set()
    while pending:
        conf = pending.pop()
        if conf in seen:
            continue
        seen.add(conf)
        try:
            lines = conf.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.split("#", 1)[0].strip()
            if line.startswith("include "):
                pattern = line.split(None, 1)[1]
                base = Path(pattern if pattern.startswith("/") else conf.parent / pattern)
                pending.extend(sorted(base.parent.glob(base.name)))
            elif line.startswith("/"):
                dirs.append(line)
    return (*dirs, *_LIB_DIRS)


def find_library(library: str) -> str | None:
    """The path of a delegate library: an existing path, or a file of that name in a directory
    the dynamic loader searches. Spawns no process (``ctypes.util.find_library`` runs
    ``ldconfig`` and ``gcc``: tens of milliseconds on a load path)."""
    if os.sep in library:
        return library if Path(library).is_file() else None
    for d in _library_dirs(os.environ.get("LD_LIBRARY_PATH", "")):
        candidate = Path(d) / library
        if candidate.is_file():
            return str(candidate)
    return None


def _cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (no process spawned), else the machine type."""
    return cpuinfo_model_name() or platform.machine() or "unknown"


def probe_devices(names: Collection[str] | None = None, *, gpu_trial: bool = True) -> list[Device]:
    """The CPU (always), the delegates in ``names`` (default: every known one) and the
    CompiledModel accelerators ``gpu`` and ``npu``, found or not (with the reason).

    Delegates: library files are looked for; a found ``libedgetpu.so.1`` is asked for its
    Edge TPUs in a child process (``edgetpu_probe``). ``gpu``: when a Vulkan driver is there,
    a tiny model is compiled on it in a child process, unless ``gpu_trial`` is False (``auto``
    never picks the GPU accelerator: it has no int8 kernels). Both are cached per process."""
    rt = _import_runtime()
    cpu = Device(
        NAME,
        "cpu",
        "cpu",
        f"{platform.machine()} CPU ({_cpu_name()}), {os.cpu_count()} cores, XNNPACK ({rt.module})",
        int8=True,
    )
    found = [cpu]
    for name, (kind, full, lib, hint) in DELEGATES.items():
        if names is not None and name not in names:
            continue
        path = find_library(lib)
        if path is None:
            found.append(Device(NAME, name, kind, full, int8=True, available=False, reason=f"{lib} not found: {hint}"))
        elif name == "edgetpu":
            from .edgetpu_probe import edgetpu_device

            found.append(edgetpu_device(path))
        else:
            found.append(
                Device(
                    NAME,
                    name,
                    kind,
                    f"{full} ({path})",
                    int8=True,
                    options=(("library", path),),
                    reason="library found; the device itself is checked when a model loads",
                )
            )
    wanted = [n for n in ("gpu", "npu") if names is None or n in names]
    if wanted:
        found.extend(_compiled_devices(wanted, rt, gpu_trial))
    return found


def _compiled_devices(wanted: list[str], rt: Runtime, gpu_trial: bool = True) -> list[Device]:
    """The ``gpu``/``npu`` records: through CompiledModel when the runtime is ai_edge_litert."""
    if not rt.module.startswith("ai_edge_litert"):
        from .litert_compiled import NO_COMPILED_MODEL

        kinds = {"gpu": "LiteRT GPU accelerator (CompiledModel)", "npu": "LiteRT NPU accelerator (CompiledModel)"}
        return [Device(NAME, n, n, kinds[n], available=False, reason=NO_COMPILED_MODEL) for n in wanted]
    from .litert_compiled import probe_compiled

    return probe_compiled(wanted, trial=gpu_trial)


def _spec(detail: dict[str, Any]) -> TensorSpec:
    dtype = np.dtype(detail["dtype"])
    qp = detail.get("quantization_parameters") or {}
    scales = tuple(float(s) for s in qp.get("scales", ()))
    quant = None
    if scales and np.issubdtype(dtype, np.integer):
        zps = tuple(int(z) for z in qp.get("zero_points", ()))
        axis = int(qp.get("quantized_dimension", 0)) if len(scales) > 1 else None
        quant = Quantization(scales, zps, axis)
    return TensorSpec(str(detail["name"]), tuple(int(d) for d in detail["shape"]), dtype, quant)


def _delegate_for(device: Device, rt: Runtime, where: str) -> Any | None:
    if device.name == "cpu":
        return None
    options = dict(device.options)
    library = options.pop("library", None)
    if library is None:  # a found delegate always carries its library; keep the error clear anyway
        kind = device.name.split(":")[0]
        library = DELEGATES.get(kind, ("", "", kind, ""))[2]
    if rt.load_delegate is None:
        raise ModelLoadError(
            f"{rt.module} cannot load external delegates", path=where, backend=NAME, device=device.request
        )
    # Checked before load_delegate: when it fails, LiteRT's Delegate.__del__ raises again
    # (an "Exception ignored" traceback) on top of the real error.
    if find_library(library) is None:
        raise ModelLoadError(f"delegate library {library} not found", path=where, backend=NAME, device=device.request)
    missing = _missing_delegate_symbols(library)
    if missing:
        raise ModelLoadError(
            f"delegate {library} failed to load: {missing}", path=where, backend=NAME, device=device.request
        )
    try:
        return rt.load_delegate(library, options)
    except Exception as exc:  # vendor code: whatever it raises means "this delegate is unusable"
        raise ModelLoadError(
            f"delegate {library} failed to load: {type(exc).__name__}: {exc}",
            path=where,
            backend=NAME,
            device=device.request,
        ) from exc


def _missing_delegate_symbols(library: str) -> str:
    """Why ``library`` is not a TFLite external delegate ("" when it has the entry points)."""
    import ctypes  # only for delegates: ~5 ms to import, kept off the CPU load path

    try:
        lib = ctypes.CDLL(library)
    except OSError as exc:
        return f"cannot open the library: {exc}"
    absent = [s for s in ("tflite_plugin_create_delegate", "tflite_plugin_destroy_delegate") if not hasattr(lib, s)]
    return f"not a TFLite external delegate (missing {', '.join(absent)})" if absent else ""


@contextmanager
def native_stderr_to_log() -> Iterator[list[str]]:
    """Route what the TFLite library writes to file descriptor 2 into the ``edge_runtime.litert`` log.

    The library prints ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` on the
    first ``allocate_tensors`` of a process, and no setting silences it; its ``INFO:``
    lines become INFO records (shown with ``edge-runtime -v``), anything else a WARNING.
    While this runs (one ``allocate_tensors``), other writes to fd 2 from this process are
    held back and logged the same way.

    Yields a list that, once the block has exited (normally or by an exception), holds the
    lines captured, so a caller can put the library's own error lines into its message.
    """
    captured: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (closed, or a sandbox): leave it alone
        yield captured
        return
    try:
        held = _held_file()
        try:
            os.dup2(held, 2)
            try:
                yield captured
            finally:
                os.dup2(saved, 2)
                os.lseek(held, 0, os.SEEK_SET)
                chunks = []
                while chunk := os.read(held, 65536):
                    chunks.append(chunk)
                captured.extend(b"".join(chunks).decode("utf-8", errors="replace").splitlines())
                for line in captured:
                    if line.startswith("INFO: "):
                        native_log.info("%s", line[6:])
                    elif line.strip():
                        native_log.warning("%s", line)
        finally:
            os.close(held)
    finally:
        os.close(saved)


def _held_file() -> int:
    """An anonymous file descriptor to hold native output: a memfd (no ``tempfile`` import, no disk)."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("edge_runtime_litert_stderr", os.MFD_CLOEXEC)
    import tempfile

    return os.dup(tempfile.TemporaryFile().fileno())


class LiteRTSession(Session):
    """A TFLite interpreter holding one model, tensors allocated."""

    backend = NAME
    capabilities = Capabilities(writable_inputs=True)

    def __init__(self, source: ModelSource, device: Device, *, num_threads: int | None = None, batch: int = 1) -> None:
        rt = _import_runtime()
        where = str(source.path)
        self.device = device.request
        delegate = _delegate_for(device, rt, where)
        kwargs: dict[str, Any] = {"model_content": source.content}
        if num_threads is not None:
            kwargs["num_threads"] = num_threads
        if delegate is not None:
            kwargs["experimental_delegates"] = [delegate]
        try:
            self._interp = rt.interpreter(**kwargs)
        except ValueError as exc:
            raise ModelLoadError(
                f"the TFLite interpreter refused the model: {exc}", path=where, backend=NAME, device=self.device
            ) from exc
        except RuntimeError as exc:  # e.g. a delegate whose Prepare fails (ModifyGraphWithDelegate)
            raise ModelLoadError(
                f"the interpreter or its delegate refused the model: {str(exc).strip() or type(exc).__name__}",
                path=where,
                backend=NAME,
                device=self.device,
            ) from exc
        try:
            if batch != 1:
                _resize_batch(self._interp, batch, where, self.device)
            with native_stderr_to_log():
                self._interp.allocate_tensors()
            if batch != 1:
                _check_batch_out(self._interp, batch, where, self.device)
            ins = self._interp.get_input_details()
            outs = self._interp.get_output_details()
            ops = getattr(self._interp, "_get_ops_details", None)
            self.op_count = len(ops()) if ops is not None else None
        except (RuntimeError, ValueError, UnicodeDecodeError) as exc:
            self._interp = None
            what = "cannot prepare the model" if batch == 1 else f"cannot take a batch of {batch}"
            raise ModelLoadError(f"{what}: {str(exc).strip()}", path=where, backend=NAME, device=self.device) from exc
        self.inputs = tuple(_spec(d) for d in ins)
        self.outputs = tuple(_spec(d) for d in outs)
        self._in_idx = [int(d["index"]) for d in ins]
        self._out_idx = [int(d["index"]) for d in outs]
        self._where = where
        self.execution_devices = (self.device,)
        if device.name == "cpu":
            self.fully_accelerated, self.placement = True, f"every op on the CPU ({rt.module})"
        elif device.name.split(":")[0] == "edgetpu":  # a model not compiled for it runs on the CPU
            from .edgetpu_probe import edgetpu_placement

            placed, why = edgetpu_placement(source.content, self.device)
            if placed:  # () when the model's operators could not be read: placement unknown
                self.execution_devices = placed
                self.fully_accelerated = not why
                self.placement = why or "every op inside the Edge TPU's custom op (compiled by edgetpu_compiler)"
        else:  # an external delegate: TFLite does not say which ops it took
            self.placement = f"delegate {device.name}: TFLite does not report which ops it took"
        # Kept for ``open_pool``: each worker's interpreter is made from the same bytes and options.
        self._content = source.content
        self._num_threads = num_threads
        self._batch = batch
        if device.name == "cpu":
            self.capabilities = Capabilities(writable_inputs=True, parallel_submit=True)

    def input_buffer(self, index: int) -> npt.NDArray[Any]:
        """A view of input ``index``'s tensor memory, made fresh on every call.

        LiteRT refuses to invoke while such a view is alive: drop it (``del``) before
        ``run_prepared``.
        """
        if self._interp is None:
            raise self._closed()
        view: npt.NDArray[Any] = self._interp.tensor(self._in_idx[index])()
        return view

    def invoke(self) -> None:
        interp = self._interp
        if interp is None:
            raise self._closed()
        try:
            interp.invoke()
        except (RuntimeError, ValueError) as exc:
            raise InferenceError(f"invoke failed: {exc}", path=self._where, backend=NAME, device=self.device) from exc

    def output_view(self, index: int) -> npt.NDArray[Any]:
        if self._interp is None:
            raise self._closed()
        view: npt.NDArray[Any] = self._interp.tensor(self._out_idx[index])()
        return view

    def run_prepared(self) -> list[npt.NDArray[Any]]:
        self.invoke()
        interp = self._interp
        if interp is None:
            raise self._closed()
        return [interp.get_tensor(idx) for idx in self._out_idx]

    def _closed(self) -> ModelClosedError:
        return ModelClosedError("model is closed", path=self._where, backend=NAME, device=self.device)

    def run(self, arrays: list[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        interp = self._interp
        if interp is None:
            raise self._closed()
        try:
            for idx, arr in zip(self._in_idx, arrays):
                interp.set_tensor(idx, arr)  # copies into the interpreter's tensor
        except ValueError as exc:
            raise InferenceError(
                f"set_tensor failed: {exc}", path=self._where, backend=NAME, device=self.device
            ) from exc
        return self.run_prepared()  # get_tensor returns copies

    def open_pool(self, workers: int | None = None) -> RequestPool:
        """A pool of ``workers`` new interpreters (default: the cores divided by this session's
        thread count), each with this session's thread count and driven by its own thread;
        ``invoke`` releases the GIL, so they run in parallel. Made now, on the caller's thread: a
        failure raises ``ModelLoadError`` here. This session's own interpreter is not used, so
        ``infer`` may run while requests are pending. On a delegate (not ``cpu``): one worker
        on this session's own interpreter (a delegate's device is not opened twice)."""
        if self._interp is None:
            raise self._closed()
        if not self.capabilities.parallel_submit:
            return serial_pool(self.run, path=self._where, backend=NAME, device=self.device)
        n = workers if workers is not None else default_workers(self._num_threads)
        runners = [self._worker_runner() for _ in range(n)]
        return ThreadPool(
            runners,
            parallel=n > 1,
            path=self._where,
            backend=NAME,
            device=self.device,
            name="edge_runtime-litert",
        )

    def _worker_runner(self) -> RunFn:
        """A new interpreter for one pool worker, as a function: arrays in, new output arrays out."""
        rt = _import_runtime()
        kwargs: dict[str, Any] = {"model_content": self._content}
        if self._num_threads is not None:
            kwargs["num_threads"] = self._num_threads
        try:
            interp = rt.interpreter(**kwargs)
            if self._batch != 1:
                _resize_batch(interp, self._batch, self._where, self.device)
            with native_stderr_to_log():
                interp.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            raise ModelLoadError(
                f"cannot make a worker interpreter: {str(exc).strip()}",
                path=self._where,
                backend=NAME,
                device=self.device,
            ) from exc
        in_idx, out_idx = list(self._in_idx), list(self._out_idx)

        def run(arrays: Arrays) -> list[npt.NDArray[Any]]:
            for idx, arr in zip(in_idx, arrays):
                interp.set_tensor(idx, arr)  # the one copy in
            interp.invoke()  # releases the GIL
            return [interp.get_tensor(idx) for idx in out_idx]  # copies, owned by the request

        return run

    def close(self) -> None:
        self._interp = None


def _resize_batch(interp: Any, batch: int, where: str, device: str) -> None:
    """Give every input a first dimension of ``batch`` (before ``allocate_tensors``)."""
    for d in interp.get_input_details():
        shape = [int(n) for n in d["shape"]]
        if not shape or shape[0] not in (1, batch):
            raise ModelLoadError(
                f"cannot take a batch of {batch}: input {d['name']} has shape {tuple(shape)} "
                "(its first dimension is not a batch of 1)",
                path=where,
                backend=NAME,
                device=device,
            )
        if shape[0] != batch:
            try:
                interp.resize_tensor_input(int(d["index"]), [batch, *shape[1:]], strict=False)
            except (RuntimeError, ValueError) as exc:
                raise ModelLoadError(
                    f"cannot take a batch of {batch}: {str(exc).strip()}", path=where, backend=NAME, device=device
                ) from exc


def _check_batch_out(interp: Any, batch: int, where: str, device: str) -> None:
    """After resizing: every output must carry the batch (a model whose Reshape hard-codes 1 can
    allocate fine and fold the batch into another dimension)."""
    for d in interp.get_output_details():
        shape = tuple(int(n) for n in d["shape"])
        if not shape or shape[0] != batch:
            raise ModelLoadError(
                f"cannot take a batch of {batch}: output {d['name']} has shape {shape} with the inputs "
                f"resized (the model does not carry a batch dimension through)",
                path=where,
                backend=NAME,
                device=device,
            )


def open_session(
    source: ModelSource, device: Device, *, num_threads: int | None = None, batch: int = 1, **_: Any
) -> Session:
    """Load ``source`` on ``device`` (a LiteRT ``Device``); raise ``ModelLoadError`` on failure.
    ``batch``: samples per call (every input's first dimension resized to it). ``gpu`` and
    ``npu`` go through CompiledModel (``litert_compiled.CompiledSession``), the rest through
    the Interpreter."""
    if device.name in ("gpu", "npu"):
        from .litert_compiled import open_compiled

        return open_compiled(source, device, num_threads=num_threads, batch=batch)
    return LiteRTSession(source, device, num_threads=num_threads, batch=batch)
