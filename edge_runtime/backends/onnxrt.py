"""ONNX Runtime backend: ``.onnx`` models on any execution provider the installed build has.

Devices are execution providers (``onnxruntime:CPU``, ``onnxruntime:CUDA``,
``onnxruntime:TensorRT``, any other by its name), with provider options after ``;``
(``onnxruntime:CUDA;device_id=1``). The decisions (which provider can run here, in which
order, what the placement means) are pure functions in ``onnxruntime_providers``; this
module gathers the facts and runs sessions.

A session is made with the provider asked for and the CPU provider behind it: ONNX Runtime
gives each node to the first provider that takes it, so a GPU session can run some nodes
on the CPU. The assignment is read back (ONNX Runtime >= 1.31 records it; on older builds, the
profile of one run at load) and reported (``Session.placement``, ``fully_accelerated``,
``execution_devices``). A
session whose provider ONNX Runtime did not register (its Python wrapper drops an
unavailable provider with a warning, or retries on the CPU after an error) is refused, so
that ``load`` falls back loudly instead.

The ``onnxruntime`` package is optional: ``pip install 'edge-runtime[onnxruntime]'``
(``onnxruntime-gpu`` for CUDA and TensorRT; on a Jetson, NVIDIA's build: README, "Jetson and
NVIDIA GPUs").
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..device_info import Device, cpuinfo_model_name
from ..errors import BackendUnavailableError, InferenceError, ModelClosedError, ModelLoadError
from ..futures import Arrays, RequestPool, RunFn, ThreadPool, default_workers
from ..model_file import ModelSource
from ..onnx_graph import Graph, io_quantization, read_graph
from ..tensors import Quantization, TensorSpec
from .base import Capabilities, Session
from .onnxruntime_providers import (
    NAME,
    Facts,
    full_name,
    placement,
    provider_devices,
    session_providers,
    short_name,
    tensorrt_cache_options,
)

INSTALL_HINT = (
    "pip install onnxruntime (the [onnxruntime] extra: pip install '.[onnxruntime]' in edge_runtime's folder), "
    "or onnxruntime-gpu for CUDA and TensorRT"
)
#: ONNX tensor element types as ONNX Runtime names them -> NumPy dtypes.
_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(uint16)": np.uint16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}
#: Where TensorRT keeps built engines and timings under ``cache_dir``.
TRT_CACHE = "edge_runtime-ort/trt"
_ERROR_SEVERITY = 3  # ONNX Runtime's log level: errors only (placement is reported by us)

_lock = threading.Lock()
_module: Any = None
_import_error: str | None = None
_facts: Facts | None = None


def _ort() -> Any:
    """The ``onnxruntime`` module, imported on first use (~100 ms); raises
    ``BackendUnavailableError`` with what to install."""
    global _module, _import_error
    if _module is not None:
        return _module
    with _lock:
        if _module is not None:
            return _module
        if _import_error is not None:
            raise BackendUnavailableError(_import_error, backend=NAME)
        try:
            import onnxruntime
        except Exception as exc:
            _import_error = f"cannot import onnxruntime: {type(exc).__name__}: {exc}; {INSTALL_HINT}"
            raise BackendUnavailableError(_import_error, backend=NAME) from exc
        # ONNX Runtime's default logger prints warnings (e.g. "Memcpy nodes are added") straight to
        # stderr, past the session's own level; this runtime reports placement itself.
        onnxruntime.set_default_logger_severity(_ERROR_SEVERITY)
        _module = onnxruntime
        return onnxruntime


def unavailable_reason() -> str | None:
    """Why this backend cannot be used here, or ``None``."""
    try:
        _ort()
    except BackendUnavailableError as exc:
        return exc.reason
    return None


def runtime_info() -> dict[str, str]:
    """The ONNX Runtime package in use (``onnxruntime``, ``onnxruntime-gpu``, ...) and its version."""
    ort = _ort()
    package = str(getattr(ort, "package_name", "") or "onnxruntime")
    return {"module": "onnxruntime", "distribution": package, "version": str(ort.__version__)}


# --- facts -------------------------------------------------------------------------------


def _cuda_devices() -> tuple[int | None, str]:
    """GPUs the CUDA driver reports: ``cuInit`` and ``cuDeviceGetCount`` through ctypes.
    (None, why) without a driver. Both calls only query; neither allocates on the GPU."""
    import ctypes

    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        return None, f"libcuda.so.1 not found ({exc})"
    rc = cuda.cuInit(0)
    if rc != 0:
        return None, f"cuInit failed with CUDA error {rc}"
    count = ctypes.c_int(0)
    rc = cuda.cuDeviceGetCount(ctypes.byref(count))
    if rc != 0:
        return None, f"cuDeviceGetCount failed with CUDA error {rc}"
    return int(count.value), ""


def _find_lib(names: tuple[str, ...]) -> str | None:
    """The first of ``names`` the loader would find: the dirs it searches (``litert.find_library``),
    then the NVIDIA wheels' ``lib`` folders (``nvidia-cudnn-cu13``, ``tensorrt``)."""
    from .litert import find_library

    for name in names:
        found = find_library(name)
        if found is not None:
            return found
    for base in sys.path:
        root = Path(base)
        for pattern in ("nvidia/*/lib", "tensorrt_libs", "tensorrt_lib*"):
            for folder in root.glob(pattern) if root.is_dir() else ():
                for name in names:
                    if (folder / name).is_file():
                        return str(folder / name)
    return None


def gather_facts(ort: Any | None = None) -> Facts:
    """What ``provider_status`` decides on, read from this machine (once per process).
    The CUDA driver is asked only when the build has an NVIDIA provider."""
    global _facts
    if _facts is not None:
        return _facts
    ort = ort or _ort()
    available = tuple(str(p) for p in ort.get_available_providers())
    cuda: int | None = None
    cuda_error = ""
    libraries: dict[str, str] = {}
    if any(p in available for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")):
        cuda, cuda_error = _cuda_devices()
        for key, names in (
            ("cudnn", ("libcudnn.so.9", "libcudnn.so.8")),
            ("nvinfer", ("libnvinfer.so.10", "libnvinfer.so.8")),
        ):
            path = _find_lib(names)
            if path is not None:
                libraries[key] = path
    ep_devices: dict[str, list[str]] = {}
    for dev in getattr(ort, "get_ep_devices", list)():
        hw = dev.device
        kind = str(hw.type).rsplit(".", 1)[-1]
        ep_devices.setdefault(str(dev.ep_name), []).append(f"{kind} {hw.vendor or hex(hw.vendor_id)}".strip())
    _facts = Facts(
        available=available,
        cuda_devices=cuda,
        cuda_error=cuda_error,
        libraries=libraries,
        ep_devices={k: tuple(v) for k, v in ep_devices.items()},
        cpu_name=f"{platform.machine()} {cpuinfo_model_name() or 'CPU'}, {os.cpu_count()} cores",
        jetson=Path("/etc/nv_tegra_release").is_file(),
    )
    return _facts


def trt_cache_folder(cache_dir: str | Path, content: bytes, options: dict[str, str]) -> Path:
    """Where TensorRT keeps the engines of one model under one set of provider options:
    ``<cache_dir>/edge_runtime-ort/trt/<sha256 of the bytes and options, 16 hex>``. Pure."""
    key = hashlib.sha256(content + repr(sorted(options.items())).encode()).hexdigest()[:16]
    return Path(cache_dir) / TRT_CACHE / key


def trt_cache_state(folder: Path) -> str:
    """``hit`` when TensorRT left an engine in ``folder`` on an earlier load, else ``miss``."""
    return "hit" if any(folder.glob("*.engine")) else "miss"


_preloaded = False


def _preload_cuda(ort: Any) -> None:
    """Load CUDA and cuDNN from the ``nvidia-*`` pip packages when they are installed that way
    (``onnxruntime.preload_dlls``, ONNX Runtime >= 1.21); system libraries (JetPack) need nothing.
    Once per process; a failure leaves the provider to report its own error."""
    global _preloaded
    if _preloaded:
        return
    _preloaded = True
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload(directory="")
        except Exception:  # noqa: BLE001 - best effort: the session says what is missing
            pass


def probe_devices(names: Collection[str] | None = None) -> list[Device]:
    """One record per execution provider (available or not, with the reason); ``names``:
    only those short names (case-insensitive). Spawns no process."""
    found = provider_devices(gather_facts())
    if names is None:
        return found
    wanted = {n.lower() for n in names}
    return [d for d in found if d.name.lower() in wanted or dict(d.options)["provider"].lower() in wanted]


# --- sessions ------------------------------------------------------------------------------


class OnnxRuntimeSession(Session):
    """One ``onnxruntime.InferenceSession`` on one provider (CPU behind it), with its inputs
    bound to memory this session owns (``input_buffer``: filled in place, no copy on the CPU
    provider) and outputs read through an ``IOBinding``."""

    backend = NAME

    def __init__(
        self,
        source: ModelSource,
        device: Device,
        *,
        num_threads: int | None = None,
        cache_dir: str | None = None,
        batch: int = 1,
    ) -> None:
        ort = _ort()
        where = str(source.path)
        self._where = where
        options = dict(device.options)
        available = tuple(ort.get_available_providers())
        provider = options.pop("provider", None) or full_name(device.name, available)
        self.device = device.request
        if provider is None:
            raise self._load_error(f"unknown execution provider {device.name!r}")
        if provider not in available:
            raise self._load_error(f"{provider} is not in this ONNX Runtime build (it has {', '.join(available)})")
        asked = dict(options)  # the request's own provider options, checked once the session exists
        graph = source.graph if isinstance(source.graph, Graph) else read_graph(source.content, where)
        self.op_count = len(graph.nodes)
        so = ort.SessionOptions()
        so.log_severity_level = _ERROR_SEVERITY
        so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
        profile = None
        if provider != "CPUExecutionProvider" and not hasattr(
            ort.InferenceSession, "get_provider_graph_assignment_info"
        ):
            profile = tempfile.mkdtemp(prefix="edge_runtime-ort-profile-")  # older builds: read one run's profile
            so.enable_profiling = True
            so.profile_file_prefix = str(Path(profile) / "placement")
        # Loaded from the checked bytes, not the path: external weights are found beside the file.
        so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(source.path.parent))
        if num_threads is not None:
            so.intra_op_num_threads = num_threads
            so.inter_op_num_threads = 1
        self.compile_cache = "off"
        if provider == "TensorrtExecutionProvider" and cache_dir:
            folder = trt_cache_folder(cache_dir, source.content, options)
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise self._load_error(
                    f"cannot create the TensorRT cache folder {folder}: {exc.strerror or exc}"
                ) from exc
            self.compile_cache = trt_cache_state(folder)
            options = {**tensorrt_cache_options(str(folder)), **options}
        chain = session_providers(provider, options)
        if provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
            _preload_cuda(ort)
        self._batch = batch
        self._free_dims(so, graph, batch)
        try:
            self._sess = ort.InferenceSession(
                source.content,
                so,
                providers=[p for p, _ in chain],
                provider_options=[o for _, o in chain],
                enable_fallback=0,
            )
        except Exception as exc:  # vendor code: whatever it raises means "this provider cannot take it"
            raise self._load_error(f"ONNX Runtime could not make a session: {_first_line(exc)}") from exc
        registered = list(self._sess.get_providers())
        if provider not in registered:
            self._sess = None
            raise self._load_error(f"ONNX Runtime did not register {provider} (registered: {', '.join(registered)})")
        try:
            self._check_options(provider, asked)
            self._setup_io(graph)
        except ModelLoadError:
            self._sess = None
            raise
        try:
            self._placement(provider, profile)
        finally:
            if profile is not None:
                shutil.rmtree(profile, ignore_errors=True)
        self._num_threads = num_threads
        self.capabilities = Capabilities(writable_inputs=True, parallel_submit=True)

    def _load_error(self, reason: str) -> ModelLoadError:
        return ModelLoadError(reason, path=self._where, backend=NAME, device=self.device)

    def _check_options(self, provider: str, asked: dict[str, str]) -> None:
        """Refuse provider options the provider does not have: ONNX Runtime ignores a misspelt
        one (``devce_id=1`` would run on GPU 0); the options it reports back are those it took."""
        if not asked:
            return
        known = dict(self._sess.get_provider_options()).get(provider, {})
        unknown = [k for k in asked if k not in known]
        if unknown:
            raise self._load_error(
                f"{provider} has no option {', '.join(map(repr, unknown))} "
                f"(it takes: {', '.join(sorted(known)) or 'none'})"
            )

    def _free_dims(self, so: Any, graph: Graph, batch: int) -> None:
        """Fix symbolic first dimensions to ``batch`` (static shapes: no per-call shape work)."""
        for name in graph.real_inputs:
            dims = graph.input_shapes.get(name)
            if not dims:
                continue
            first = dims[0]
            if isinstance(first, str):
                so.add_free_dimension_override_by_name(first, batch)
            elif first is None:
                raise self._load_error(
                    f"input {name!r} has an unnamed dynamic first dimension; export it with a named one"
                )
            elif batch != 1 and first != batch:
                raise self._load_error(
                    f"cannot take a batch of {batch}: input {name!r} has a fixed first dimension of {first}; "
                    "export the model with a dynamic batch dimension"
                )
            if any(not isinstance(d, int) for d in dims[1:]):
                raise self._load_error(
                    f"input {name!r} has dynamic dimensions beyond the batch ({dims}); this runtime runs static shapes"
                )

    def _setup_io(self, graph: Graph) -> None:
        qin, qout = io_quantization(graph)
        ins, outs = self._sess.get_inputs(), self._sess.get_outputs()
        self._in_names = [a.name for a in ins]
        self._out_names = [a.name for a in outs]
        specs = []
        for arg in ins:
            known = _DTYPES.get(arg.type)
            if known is None:
                raise self._load_error(f"input {arg.name!r} is {arg.type}: not a tensor type this runtime feeds")
            dtype = np.dtype(known)
            shape = tuple(d if isinstance(d, int) else self._batch for d in arg.shape)
            specs.append(TensorSpec(arg.name, shape, dtype, self._int_quant(qin.get(arg.name), dtype)))
        self.inputs = tuple(specs)
        self._in_buffers: list[npt.NDArray[Any]] = [np.zeros(s.shape, s.dtype) for s in self.inputs]
        # Output shapes: read them from one run when the model leaves any dimension open.
        out_shapes: list[tuple[int, ...]] = []
        if all(all(isinstance(d, int) for d in a.shape) for a in outs):
            out_shapes = [tuple(int(d) for d in a.shape) for a in outs]
        else:
            try:
                results = self._sess.run(None, dict(zip(self._in_names, self._in_buffers)))
            except Exception as exc:
                raise self._load_error(f"a first run to learn the output shapes failed: {_first_line(exc)}") from exc
            out_shapes = [tuple(np.asarray(r).shape) for r in results]
        out_specs = []
        for arg, shape in zip(outs, out_shapes):
            if arg.type not in _DTYPES:
                raise self._load_error(f"output {arg.name!r} is {arg.type}: not a tensor type this runtime reads")
            dtype = np.dtype(_DTYPES[arg.type])
            out_specs.append(TensorSpec(arg.name, shape, dtype, self._int_quant(qout.get(arg.name), dtype)))
        self.outputs = tuple(out_specs)
        self._out_buffers: list[npt.NDArray[Any]] = [np.zeros(s.shape, s.dtype) for s in self.outputs]
        binding = self._sess.io_binding()
        for name, buf in zip(self._in_names, self._in_buffers):
            binding.bind_cpu_input(name, buf)
        for name, buf in zip(self._out_names, self._out_buffers):
            binding.bind_output(name, "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)
        self._binding = binding

    @staticmethod
    def _int_quant(q: Quantization | None, dtype: np.dtype[Any]) -> Quantization | None:
        return q if q is not None and np.issubdtype(dtype, np.integer) else None

    def _placement(self, provider: str, profile: str | None) -> None:
        """Where ONNX Runtime put the nodes: its graph assignment record (>= 1.31), else, for a
        provider other than the CPU, the profile of one run on zeros (``profile``: the folder the
        session profiles into; older builds)."""
        counts: dict[str, int] = {}
        reader = getattr(self._sess, "get_provider_graph_assignment_info", None)
        try:
            for sub in reader() if reader is not None else ():
                counts[str(sub.ep_name)] = counts.get(str(sub.ep_name), 0) + len(sub.get_nodes())
        except Exception:  # noqa: BLE001 - a build that cannot record it: the profile, or unknown
            counts = {}
        if counts:  # the nodes ONNX Runtime runs, after its graph optimizations
            self.op_count = sum(counts.values())
        if not counts and profile is not None:
            counts = self._profiled_placement()
        full, line = placement(provider, counts)
        if not counts and provider == "CPUExecutionProvider":
            full, line = True, f"all {self.op_count} nodes on CPU"  # the only provider: nothing to record
        self.fully_accelerated = full
        self.placement = line
        used = [p for p in dict.fromkeys((provider, *counts)) if counts.get(p, 0) or (not counts and p == provider)]
        self.execution_devices = tuple(f"{NAME}:{short_name(p)}" for p in used)

    def _profiled_placement(self) -> dict[str, int]:
        """Nodes per provider from ONNX Runtime's profile of one run (its ``Node`` events carry
        the provider); {} when the run or the profile fails. Profiling stops at ``end_profiling``;
        the profile file is removed."""
        try:
            self._sess.run(None, dict(zip(self._in_names, self._in_buffers)))
        except Exception:  # noqa: BLE001 - placement is a report: unknown rather than a failed load
            return {}
        finally:
            path = Path(self._sess.end_profiling())
        try:
            return profile_placement(json.loads(path.read_text()))
        except (OSError, ValueError):
            return {}
        finally:
            path.unlink(missing_ok=True)

    def _closed(self) -> ModelClosedError:
        return ModelClosedError("model is closed", path=self._where, backend=NAME, device=self.device)

    def _failed(self, exc: Exception) -> InferenceError:
        return InferenceError(
            f"inference failed: {_first_line(exc)}", path=self._where, backend=NAME, device=self.device
        )

    def run(self, arrays: list[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        """Run on ``arrays`` (passed to ONNX Runtime as they are: no copy on our side; ONNX
        Runtime reads them during the call). Returns new arrays owned by the caller."""
        sess = self._sess
        if sess is None:
            raise self._closed()
        try:
            return list(sess._sess.run(self._out_names, dict(zip(self._in_names, arrays)), None))
        except Exception as exc:
            raise self._failed(exc) from exc

    def input_buffer(self, index: int) -> npt.NDArray[Any]:
        """Input ``index``'s bound memory: what is written here is what the next ``invoke`` reads
        (owned by this session; on the CPU provider ONNX Runtime reads it without a copy)."""
        if self._sess is None:
            raise self._closed()
        return self._in_buffers[index]

    def invoke(self) -> None:
        sess = self._sess
        if sess is None:
            raise self._closed()
        try:
            sess._sess.run_with_iobinding(self._binding._iobinding, None)
        except Exception as exc:
            raise self._failed(exc) from exc

    def output_view(self, index: int) -> npt.NDArray[Any]:
        """Output ``index`` after ``invoke``: a read-only view of the bound output memory, valid
        until the next run overwrites it."""
        if self._sess is None:
            raise self._closed()
        view: npt.NDArray[Any] = self._out_buffers[index].view()
        view.flags.writeable = False
        return view

    def run_prepared(self) -> list[npt.NDArray[Any]]:
        self.invoke()
        return [b.copy() for b in self._out_buffers]

    def open_pool(self, workers: int | None = None) -> RequestPool:
        """Requests in parallel: ONNX Runtime's ``run`` is thread-safe on one session and
        releases the GIL, so each worker thread calls it on this session's own."""
        sess = self._sess
        if sess is None:
            raise self._closed()
        n = workers if workers is not None else default_workers(self._num_threads)
        return ThreadPool(
            [self._worker_runner() for _ in range(n)],
            parallel=n > 1,
            path=self._where,
            backend=NAME,
            device=self.device,
            name="edge_runtime-onnxruntime",
        )

    def _worker_runner(self) -> RunFn:
        def run(arrays: Arrays) -> list[npt.NDArray[Any]]:
            return self.run(list(arrays))

        return run

    def close(self) -> None:
        self._sess = None
        self._binding = None


_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : (\w+) : ")
_CXX_WHERE = re.compile(r"^\S+\.(?:cc|cpp|h):\d+ .*?\) (?=\S)")


_PROFILE_SUFFIX = re.compile(r"_(kernel_time|fence_before|fence_after)$")


def profile_placement(events: Any) -> dict[str, int]:
    """Distinct nodes per provider in an ONNX Runtime profile (the JSON list ``end_profiling``
    writes: ``Node`` events name the node and, in ``args.provider``, where it ran). Pure."""
    seen: dict[str, str] = {}
    for event in events if isinstance(events, list) else ():
        if not isinstance(event, dict) or event.get("cat") != "Node":
            continue
        args = event.get("args")
        provider = args.get("provider") if isinstance(args, dict) else None
        name = _PROFILE_SUFFIX.sub("", str(event.get("name", "")))
        if provider and name:
            seen[name] = str(provider)
    counts: dict[str, int] = {}
    for provider in seen.values():
        counts[provider] = counts.get(provider, 0) + 1
    return counts


def _first_line(exc: BaseException) -> str:
    """ONNX Runtime's message without its ``[ONNXRuntimeError] : 1 : FAIL :`` prefix and the C++
    file and function it came from: ``FAIL: Unsupported model IR version: 14, ...``."""
    text = str(exc).strip() or type(exc).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = lines[0] if lines else type(exc).__name__
    m = _ORT_PREFIX.match(line)
    if m is None:
        return _CXX_WHERE.sub("", line, count=1)
    rest = _CXX_WHERE.sub("", line[m.end() :], count=1)
    return f"{m.group(1)}: {rest}"


def open_session(
    source: ModelSource,
    device: Device,
    *,
    num_threads: int | None = None,
    cache_dir: str | None = None,
    batch: int = 1,
    **_: Any,
) -> Session:
    """Load ``source`` (an ``.onnx`` model) on ``device`` (an ONNX Runtime ``Device``); raise
    ``ModelLoadError`` with the provider's reason on failure."""
    return OnnxRuntimeSession(source, device, num_threads=num_threads, cache_dir=cache_dir, batch=batch)


__all__ = [
    "NAME",
    "OnnxRuntimeSession",
    "gather_facts",
    "open_session",
    "probe_devices",
    "runtime_info",
    "unavailable_reason",
]
