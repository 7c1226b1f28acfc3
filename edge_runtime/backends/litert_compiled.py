"""LiteRT's CompiledModel API: ``litert:gpu`` and ``litert:npu``.

``ai_edge_litert`` (not ``tflite_runtime``) ships ``CompiledModel``, which compiles a model for
a set of hardware accelerators (``HardwareAccelerator.GPU``, ``.NPU``, ``.CPU``, combined as bit
flags). Its GPU accelerator (``libLiteRtWebGpuAccelerator.so`` in the wheel) runs WebGPU (Dawn)
over Vulkan; its NPU accelerator runs a vendor dispatch library
(``vendors/<vendor>/dispatch/libLiteRtDispatch_<Vendor>.so``, from the wheel or an
``ai-edge-litert-sdk-*`` package).

Probing is split: ``gather_gpu_facts`` / ``gather_npu_facts`` look at files and, for the GPU,
compile a tiny model in a child process (native GPU drivers can abort or hang; the answer is
cached per process); ``gpu_status`` / ``npu_status`` are pure functions of those facts, tested
over tables of machines this one is not.

A session asks for the accelerator with the CPU as fallback (``GPU | CPU``): a model whose
ops are only partly supported still loads, and the session says so (``fully_accelerated``,
``placement``, ``execution_devices``).
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import os
import sys
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..device_info import Device
from ..errors import InferenceError, ModelClosedError, ModelLoadError
from ..model_file import ModelSource
from ..tensors import TensorSpec
from .base import Session
from .edgetpu_probe import model_ops
from .litert import NAME, _import_runtime, _spec, find_library, native_stderr_to_log
from .probe_child import last_json_line, run_probe_child

#: Why gpu/npu are unavailable when the interpreter module is not ai_edge_litert.
NO_COMPILED_MODEL = "needs ai-edge-litert (tflite-runtime has no CompiledModel)"
#: GPU accelerator libraries a wheel may ship -> the driver library each one needs.
GPU_ACCELERATORS: dict[str, tuple[str, ...]] = {
    "libLiteRtWebGpuAccelerator.so": ("libvulkan.so.1",),  # WebGPU (Dawn) over Vulkan on Linux
    "libLiteRtGpuAccelerator.so": ("libOpenCL.so.1", "libOpenCL.so"),  # ML Drift over OpenCL
}
#: Where the Vulkan loader looks for installable client drivers (ICD manifests).
VULKAN_ICD_DIRS = ("/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d", "/usr/local/share/vulkan/icd.d")
#: Seconds the GPU trial child may take (Dawn's first adapter and shader compile included).
GPU_TRIAL_TIMEOUT_S = 30.0
#: NPU vendors LiteRT dispatches to: directory under ``vendors/`` -> (label, SDK distribution).
NPU_VENDORS: dict[str, tuple[str, str]] = {
    "qualcomm": ("Qualcomm", "ai-edge-litert-sdk-qualcomm"),
    "mediatek": ("MediaTek", "ai-edge-litert-sdk-mediatek"),
    "google_tensor": ("Google Tensor", "ai-edge-litert-sdk-google-tensor"),
    "intel_openvino": ("Intel", "ai-edge-litert-sdk-intel"),
}


# --------------------------------------------------------------------------
# Facts and the pure decisions over them
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuFacts:
    """What decides whether ``litert:gpu`` can run, gathered by ``gather_gpu_facts``.

    ``accelerators``: GPU accelerator library names found in the wheel (keys of
    ``GPU_ACCELERATORS``). ``drivers``: driver library names the dynamic loader can find
    (``libvulkan.so.1``, ``libOpenCL.so.1``). ``vulkan_icds``: ICD manifest file names
    (``nvidia_icd.json``). ``trial``: None when no test model was compiled, "" when one
    compiled on the GPU, else why it did not.
    """

    compiled_model_api: bool
    accelerators: tuple[str, ...] = ()
    drivers: tuple[str, ...] = ()
    vulkan_icds: tuple[str, ...] = ()
    trial: str | None = None


def gpu_prerequisite(facts: GpuFacts) -> str:
    """Why the GPU cannot work before anything is tried ("" when a trial is worth running). Pure."""
    if not facts.compiled_model_api:
        return NO_COMPILED_MODEL
    if not facts.accelerators:
        return (
            "this ai-edge-litert wheel has no GPU accelerator library "
            f"({' or '.join(GPU_ACCELERATORS)}) for {sys.platform}"
        )
    usable = [a for a in facts.accelerators if any(d in facts.drivers for d in GPU_ACCELERATORS.get(a, ()))]
    if not usable:
        wanted = sorted({d for a in facts.accelerators for d in GPU_ACCELERATORS.get(a, ())})
        return (
            f"no GPU driver: {' / '.join(wanted)} not found (LiteRT's GPU accelerator "
            f"{facts.accelerators[0]} needs it; install the Vulkan loader libvulkan1 and your GPU's "
            "Vulkan driver: mesa-vulkan-drivers, or the vendor's)"
        )
    if all(a == "libLiteRtWebGpuAccelerator.so" for a in usable) and not facts.vulkan_icds:
        return (
            "libvulkan.so.1 found but no Vulkan driver (no ICD manifest in "
            f"{', '.join(VULKAN_ICD_DIRS)}): install mesa-vulkan-drivers or the GPU vendor's driver"
        )
    return ""


def gpu_status(facts: GpuFacts) -> tuple[bool, str]:
    """(available, reason a person can read) for ``litert:gpu``. Pure."""
    missing = gpu_prerequisite(facts)
    if missing:
        return False, missing
    drivers = ", ".join(facts.drivers)
    icds = f"; Vulkan drivers: {', '.join(facts.vulkan_icds)}" if facts.vulkan_icds else ""
    if facts.trial is None:
        return True, f"{drivers} found{icds}; the GPU itself is checked when a model loads"
    if facts.trial:
        return False, f"{drivers} found{icds}, but a test model did not compile on the GPU: {facts.trial}"
    return True, f"a test model compiled on the GPU ({drivers}{icds})"


@dataclass(frozen=True)
class NpuFacts:
    """What decides whether ``litert:npu`` can run, gathered by ``gather_npu_facts``.

    ``dispatch``: vendor directory names (``intel_openvino``, ``qualcomm``) with a dispatch
    library found. ``accel_nodes``: ``/dev/accel/accel*`` device nodes (Intel NPU driver).
    ``openvino_runtime``: the OpenVINO runtime the Intel dispatch links against is installed
    (``ai-edge-litert-sdk-intel``).
    """

    compiled_model_api: bool
    dispatch: tuple[str, ...] = ()
    accel_nodes: tuple[str, ...] = ()
    openvino_runtime: bool = False


def npu_status(facts: NpuFacts) -> tuple[bool, str]:
    """(available, reason a person can read) for ``litert:npu``. Pure."""
    if not facts.compiled_model_api:
        return False, NO_COMPILED_MODEL
    notes: list[str] = []
    for vendor in facts.dispatch:
        label = NPU_VENDORS.get(vendor, (vendor, ""))[0]
        if vendor == "intel_openvino":
            if not facts.accel_nodes:
                notes.append(
                    "Intel dispatch found but no /dev/accel device (no Intel NPU, or its driver is not loaded)"
                )
                continue
            if not facts.openvino_runtime:
                notes.append(
                    f"Intel NPU {facts.accel_nodes[0]} found but not the OpenVINO runtime its dispatch "
                    "links against: pip install ai-edge-litert-sdk-intel"
                )
                continue
            return True, f"Intel NPU {', '.join(facts.accel_nodes)} with the LiteRT Intel OpenVINO dispatch"
        return True, f"{label} dispatch library found; the NPU itself is checked when a model loads"
    if not facts.dispatch:
        sdks = ", ".join(f"{sdk} ({label})" for v, (label, sdk) in NPU_VENDORS.items() if v != "intel_openvino")
        notes.append(f"no NPU dispatch library: install {sdks}")
    return False, "; ".join(notes)


def _package_dir() -> Path | None:
    spec = importlib.util.find_spec("ai_edge_litert")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _compiled_model_api() -> bool:
    try:
        return _import_runtime().module.startswith("ai_edge_litert")
    except Exception:  # noqa: BLE001 - no runtime at all: no CompiledModel either
        return False


def _vulkan_icds() -> tuple[str, ...]:
    listed = os.environ.get("VK_DRIVER_FILES") or os.environ.get("VK_ICD_FILENAMES") or ""
    found = [Path(p).name for p in listed.split(os.pathsep) if p and Path(p).is_file()]
    for d in VULKAN_ICD_DIRS:
        found.extend(Path(p).name for p in sorted(glob.glob(os.path.join(d, "*.json"))))
    return tuple(dict.fromkeys(found))


def gather_gpu_facts(*, trial: bool = True) -> GpuFacts:
    """Look at the wheel, the driver libraries and the Vulkan ICDs; when they are all there
    and ``trial`` is set, compile a tiny model on the GPU in a child process (cached)."""
    api = _compiled_model_api()
    pkg = _package_dir()
    accels = tuple(a for a in GPU_ACCELERATORS if pkg is not None and (pkg / a).is_file())
    drivers = tuple(d for d in dict.fromkeys(x for a in GPU_ACCELERATORS.values() for x in a) if find_library(d))
    facts = GpuFacts(api, accels, drivers, _vulkan_icds())
    if not trial or gpu_prerequisite(facts):
        return facts
    return GpuFacts(api, accels, drivers, facts.vulkan_icds, gpu_trial())


def gather_npu_facts() -> NpuFacts:
    """Look for vendor dispatch libraries (in the wheel's ``vendors/`` and in installed
    ``ai_edge_litert_sdk_*`` packages), ``/dev/accel`` nodes and the OpenVINO runtime. No
    native code runs."""
    api = _compiled_model_api()
    roots: list[Path] = []
    pkg = _package_dir()
    if pkg is not None:
        roots.append(pkg / "vendors")
    dispatch: list[str] = []
    for vendor in NPU_VENDORS:
        sdk = importlib.util.find_spec(f"ai_edge_litert_sdk_{vendor.split('_')[0]}")
        places = [r / vendor / "dispatch" for r in roots]
        if sdk is not None and sdk.submodule_search_locations:
            places.append(Path(next(iter(sdk.submodule_search_locations))))
        if any(glob.glob(str(p / "**" / "libLiteRtDispatch_*.so"), recursive=True) for p in places):
            dispatch.append(vendor)
    accel = tuple(sorted(glob.glob("/dev/accel/accel*")))
    # The Intel dispatch links against the OpenVINO build this SDK ships (libopenvino.so.<N>); a
    # separately installed openvino package is usually another build.
    openvino = importlib.util.find_spec("ai_edge_litert_sdk_intel") is not None
    return NpuFacts(api, tuple(dispatch), accel, openvino)


#: The GPU trial, run as ``python -c CODE MODEL_HEX``: compile the model (``tiny_add_model``) on
#: the GPU alone, run it once, print {"ok": bool, "error": str, "native": [error lines]} as the last line.
_GPU_TRIAL = r"""
import json, os, sys
import numpy as np
from ai_edge_litert.compiled_model import CompiledModel, HardwareAccelerator
try:
    m = CompiledModel.from_buffer(bytes.fromhex(sys.argv[1]), hardware_accel=HardwareAccelerator.GPU)
    ins, outs = m.create_input_buffers(0), m.create_output_buffers(0)
    for b in ins:
        b.write(np.ones((1, 4), np.float32))
    m.run_by_index(0, ins, outs)
    got = outs[0].read(4, np.float32)
    ok = bool(np.all(got == 2.0))
    print(json.dumps({"ok": ok, "error": "" if ok else f"wrong result {got.tolist()}"}))
except Exception as exc:
    print(json.dumps({"ok": False, "error": " ".join(
        p for p in str(exc).replace("\u2514", " ").split() if not p.startswith(("ERROR:", "[")))
        or type(exc).__name__}))
"""


@functools.lru_cache(maxsize=1)
def gpu_trial(timeout_s: float = GPU_TRIAL_TIMEOUT_S) -> str:
    """Compile and run a tiny model on the GPU accelerator in a child process: "" when it
    works, else why not (the child's error and LiteRT's own error lines, or its crash).
    Cached per process."""
    done = run_probe_child([sys.executable, "-c", _GPU_TRIAL, tiny_add_model().hex()], timeout_s)
    answer = last_json_line(done.stdout)
    if isinstance(answer, dict) and answer.get("ok"):
        return ""
    native = native_errors(done.stderr)
    if isinstance(answer, dict):
        return "; ".join([str(answer.get("error", "")), *native])
    return "; ".join([f"the trial process failed: {done.failure}", *native])


def litert_message(exc: BaseException) -> str:
    """LiteRT's exception text without its ``ERROR: [file:line]`` / ``└`` frames (the
    exception type's name when nothing else is left). Pure."""
    words = [w for w in str(exc).replace("\u2514", " ").split() if not w.startswith(("ERROR:", "[", "./"))]
    return " ".join(words) or type(exc).__name__


def native_errors(text: str, limit: int = 3) -> list[str]:
    """LiteRT's and Dawn's own error lines in ``text`` (what it printed to fd 2), at most
    ``limit``, without their ``ERROR: [file:line]`` prefixes. Pure."""
    out: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("ERROR:") or line.startswith("Warning: Couldn't") or line.startswith("E0000"):
            text_part = line.split("] ", 1)[1] if "] " in line else line
            if text_part not in out:
                out.append(text_part)
    return out[:limit]


def probe_compiled(names: Collection[str] | None = None, *, trial: bool = True) -> list[Device]:
    """Device records (backend ``litert``) for ``gpu`` and ``npu`` among ``names`` (default:
    both), available or not with the reason. The GPU record may cost one child process the
    first time in a process (see ``gpu_trial``); the rest only looks at files."""
    found: list[Device] = []
    if names is None or "gpu" in names:
        ok, why = gpu_status(gather_gpu_facts(trial=trial))
        # int8=False: the GPU accelerator has no int8 kernels; it runs an int8 model in floating
        # point (up to 129 quantization steps from the CPU on ResNet-8, on an H200), and per call it
        # cost 650-740 us against 7-273 us on the CPU there. So ``auto`` passes it over; by name it runs.
        found.append(Device(NAME, "gpu", "gpu", "LiteRT GPU accelerator (CompiledModel, WebGPU)", False, ok, why))
    if names is None or "npu" in names:
        ok, why = npu_status(gather_npu_facts())
        found.append(
            Device(NAME, "npu", "npu", "LiteRT NPU accelerator (CompiledModel, vendor dispatch)", True, ok, why)
        )
    return found


# --------------------------------------------------------------------------
# A tiny model, built in code (no file to ship): out = a + a, float32 [1, 4]
# --------------------------------------------------------------------------


def tiny_add_model() -> bytes:
    """A valid TFLite flatbuffer with one ADD op (``out = x + x``, float32 ``[1, 4]``), for
    probes. Needs the ``flatbuffers`` package (a dependency of ai-edge-litert)."""
    import flatbuffers  # type: ignore[import-untyped]
    from ai_edge_litert import schema_py_generated as fb

    def tensor(name: str) -> Any:
        t = fb.TensorT()
        t.shape, t.type, t.buffer, t.name = [1, 4], fb.TensorType.FLOAT32, 0, name
        return t

    code = fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = fb.BuiltinOperator.ADD
    code.version = 1
    op = fb.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 0], [1]
    op.builtinOptionsType = fb.BuiltinOptions.AddOptions
    op.builtinOptions = fb.AddOptionsT()
    graph = fb.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs, graph.operators = [tensor("x"), tensor("y")], [0], [1], [op]
    model = fb.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, [code], [graph], [fb.BufferT()]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def primary_op_count(content: bytes) -> int | None:
    """Operators in subgraph 0 of a TFLite flatbuffer (None when it cannot be read). Pure."""
    try:
        return len(model_ops(content))
    except ValueError:
        return None


# --------------------------------------------------------------------------
# The session
# --------------------------------------------------------------------------


def _flags(accelerator: str) -> Any:
    from ai_edge_litert.hardware_accelerator import HardwareAccelerator

    table = {
        "gpu": HardwareAccelerator.GPU | HardwareAccelerator.CPU,
        "npu": HardwareAccelerator.NPU | HardwareAccelerator.CPU,
        "cpu": HardwareAccelerator.CPU,  # for tests: the same class on hardware every machine has
    }
    return table[accelerator]


def compiled_options(accelerator: str, num_threads: int | None = None) -> Any:
    """The ``ai_edge_litert`` ``Options`` a ``CompiledSession`` compiles with: the accelerator
    plus the CPU as fallback (``GPU | CPU``), CPU threads ``num_threads`` (0: LiteRT decides)."""
    from ai_edge_litert.options import CpuOptions, Options

    return Options(hardware_accelerators=_flags(accelerator), cpu_options=CpuOptions(num_threads=num_threads or 0))


def partial_reason(request: str, fully: bool | None, op_count: int | None) -> str:
    """What a person reads when a model is not fully on ``request``'s accelerator ("" when it
    is, or when LiteRT does not say). LiteRT reports only a yes/no, not the op split. Pure."""
    if fully is not False:
        return ""
    ops = f"of its {op_count} ops " if op_count else ""
    return (
        f"{request} runs the model only partly: some or all {ops}run on the CPU "
        "(is_fully_accelerated() is False; LiteRT does not report the split)"
    )


class CompiledSession(Session):
    """One model compiled by ``CompiledModel`` for ``litert:gpu`` or ``litert:npu`` (the CPU
    as fallback for ops the accelerator lacks).

    ``accelerator`` is ``"gpu"`` or ``"npu"``; ``"cpu"`` compiles for the CPU alone through
    the same API, so the class is exercised on machines without either.
    """

    backend = NAME

    def __init__(
        self, source: ModelSource, device: Device, *, accelerator: str | None = None, num_threads: int | None = None
    ) -> None:
        from ai_edge_litert.compiled_model import CompiledModel

        accel = accelerator or device.name
        if accel not in ("gpu", "npu", "cpu"):
            raise ModelLoadError(
                f"CompiledModel serves gpu and npu, not {accel!r}", path=str(source.path), backend=NAME
            )
        self.device = device.request
        self._where = str(source.path)
        self._model: Any = None
        self.op_count = primary_op_count(source.content)
        try:
            with native_stderr_to_log() as native:
                model = CompiledModel.from_buffer(source.content, options=compiled_options(accel, num_threads))
        except (RuntimeError, ValueError) as exc:
            detail = "; ".join([litert_message(exc), *native_errors("\n".join(native))])
            raise ModelLoadError(
                f"CompiledModel could not compile the model for {accel}: {detail}",
                path=self._where,
                backend=NAME,
                device=self.device,
            ) from exc
        try:
            self._model = model
            self._in_bufs = model.create_input_buffers(0)
            self._out_bufs = model.create_output_buffers(0)
            sig = model.get_signature_by_index(0)
            key = str(sig["key"])
            in_details = model.get_input_tensor_details(key)
            out_details = model.get_output_tensor_details(key)
            self._in_order = [in_details[n] for n in sig["inputs"]]
            self._out_order = [out_details[n] for n in sig["outputs"]]
            quant = _interpreter_details(source.content)
            self.inputs = tuple(_spec_of(d, quant) for d in self._in_order)
            self.outputs = tuple(_spec_of(d, quant) for d in self._out_order)
            self.fully_accelerated = model.is_fully_accelerated()
        except (RuntimeError, ValueError, KeyError) as exc:
            self.close()
            raise ModelLoadError(
                f"cannot prepare the compiled model: {str(exc).strip() or type(exc).__name__}",
                path=self._where,
                backend=NAME,
                device=self.device,
            ) from exc
        self._sizes = [int(np.prod(s.shape)) for s in self.outputs]
        # ``fully_accelerated`` is CompiledModel.is_fully_accelerated(); a partly accelerated model
        # still loads, and ``placement`` says so in words.
        if accel == "cpu":
            self.execution_devices = (self.device,)
            self.placement = f"all {self.op_count} ops on the CPU (CompiledModel)"
        elif self.fully_accelerated:
            self.execution_devices = (self.device,)
            self.placement = f"all {self.op_count} ops on {self.device}"
        else:
            self.execution_devices = (self.device, f"{NAME}:cpu")
            self.placement = partial_reason(self.device, self.fully_accelerated, self.op_count)
        # One run at load, on zeros: LiteRT sets up its environment and accelerators on the first
        # run (its INFO lines go to the edge_runtime.litert log, not the terminal), and a model
        # that compiles but cannot run on the accelerator is refused here, so that ``load`` falls back.
        try:
            with native_stderr_to_log():
                self.run([np.zeros(s.shape, s.dtype) for s in self.inputs])
        except InferenceError as exc:
            self.close()
            raise ModelLoadError(
                f"the compiled model failed its first run: {exc.reason}",
                path=self._where,
                backend=NAME,
                device=self.device,
            ) from exc

    def _closed(self) -> ModelClosedError:
        return ModelClosedError("model is closed", path=self._where, backend=NAME, device=self.device)

    def run(self, arrays: list[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        """Copy ``arrays`` into the model's input buffers, run, and copy each output out into a
        new array owned by the caller."""
        model = self._model
        if model is None:
            raise self._closed()
        try:
            for buf, arr in zip(self._in_bufs, arrays):
                buf.write(arr)  # copies
            model.run_by_index(0, self._in_bufs, self._out_bufs)
            return [
                buf.read(n, spec.dtype).reshape(spec.shape)
                for buf, n, spec in zip(self._out_bufs, self._sizes, self.outputs)
            ]
        except (RuntimeError, ValueError) as exc:
            raise InferenceError(
                f"CompiledModel run failed: {str(exc).strip()}", path=self._where, backend=NAME, device=self.device
            ) from exc

    def close(self) -> None:
        """Release the buffers and the compiled model. Safe to call twice."""
        for buf in (*getattr(self, "_in_bufs", ()), *getattr(self, "_out_bufs", ())):
            if buf._capsule is not None:
                buf.destroy()
        self._in_bufs, self._out_bufs = [], []
        if self._model is not None:
            with native_stderr_to_log():  # LiteRT says what it destroys, at INFO
                self._model.close()
        self._model = None


def _interpreter_details(content: bytes) -> dict[str, dict[str, Any]]:
    """Tensor name -> the Interpreter's details (for quantization, which CompiledModel does
    not report), from a throwaway interpreter on the same bytes (no tensors allocated)."""
    try:
        interp = _import_runtime().interpreter(model_content=content)
        details: Iterable[dict[str, Any]] = [*interp.get_input_details(), *interp.get_output_details()]
    except (RuntimeError, ValueError):
        return {}
    return {str(d["name"]): d for d in details}


def _spec_of(detail: dict[str, Any], quant: dict[str, dict[str, Any]]) -> TensorSpec:
    known = quant.get(str(detail["name"]))
    if known is not None:
        return _spec(known)
    return TensorSpec(str(detail["name"]), tuple(int(n) for n in detail["shape"]), np.dtype(detail["dtype"]))


def open_compiled(
    source: ModelSource, device: Device, *, num_threads: int | None = None, batch: int = 1
) -> CompiledSession:
    """Load ``source`` on ``litert:gpu`` / ``litert:npu``; ``ModelLoadError`` on failure.
    ``batch`` other than 1 is refused (CompiledModel resizing is not wired here)."""
    if batch != 1:
        raise ModelLoadError(
            f"{device.request} takes a batch of 1 only (got {batch}): use litert:cpu for batches",
            path=str(source.path),
            backend=NAME,
            device=device.request,
        )
    return CompiledSession(source, device, num_threads=num_threads)
