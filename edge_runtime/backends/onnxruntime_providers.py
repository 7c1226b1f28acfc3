"""ONNX Runtime's execution providers as devices: names, kinds and whether each can run here.

Pure: every function reads only its arguments (plain facts gathered by
``backends.onnxrt.gather_facts``), so the decisions are tested over tables of machines this
one is not (a Jetson Orin with TensorRT and CUDA, an Intel box with an NPU, a Pi).

A provider's *short name* is what a person types after ``onnxruntime:`` (``CUDA``,
``TensorRT``, ``CPU``); the full name (``CUDAExecutionProvider``) is what ONNX Runtime
takes. ``get_available_providers()`` lists the providers *compiled into* the installed
build, not the hardware: ``onnxruntime-gpu`` lists CUDA and TensorRT on a machine with no
GPU. So a GPU provider is available only when the facts show its hardware and libraries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..device_info import Device

NAME = "onnxruntime"

#: full provider name -> (short name, kind, what it is). Kinds follow ``device_info.KINDS``;
#: ``auto`` never picks "other".
PROVIDERS: dict[str, tuple[str, str, str]] = {
    "TensorrtExecutionProvider": ("TensorRT", "gpu", "NVIDIA TensorRT"),
    "NvTensorRTRTXExecutionProvider": ("TensorRTRTX", "gpu", "NVIDIA TensorRT for RTX"),
    "CUDAExecutionProvider": ("CUDA", "gpu", "NVIDIA CUDA (cuDNN)"),
    "MIGraphXExecutionProvider": ("MIGraphX", "gpu", "AMD MIGraphX"),
    "ROCMExecutionProvider": ("ROCm", "gpu", "AMD ROCm"),
    "DmlExecutionProvider": ("DML", "gpu", "DirectML"),
    "WebGpuExecutionProvider": ("WebGPU", "gpu", "WebGPU (Dawn)"),
    "OpenVINOExecutionProvider": ("OpenVINO", "other", "Intel OpenVINO (device chosen by its device_type option)"),
    "QNNExecutionProvider": ("QNN", "npu", "Qualcomm QNN (Hexagon NPU)"),
    "VitisAIExecutionProvider": ("VitisAI", "npu", "AMD Vitis AI (Ryzen AI NPU)"),
    "NnapiExecutionProvider": ("NNAPI", "npu", "Android NNAPI"),
    "CoreMLExecutionProvider": ("CoreML", "npu", "Apple Core ML (Neural Engine)"),
    "RknpuExecutionProvider": ("RKNPU", "npu", "Rockchip NPU"),
    "VSINPUExecutionProvider": ("VSINPU", "npu", "VeriSilicon NPU"),
    "CANNExecutionProvider": ("CANN", "npu", "Huawei Ascend CANN"),
    "ACLExecutionProvider": ("ACL", "cpu", "Arm Compute Library"),
    "XnnpackExecutionProvider": ("XNNPACK", "cpu", "XNNPACK"),
    "DnnlExecutionProvider": ("DNNL", "cpu", "oneDNN"),
    "CPUExecutionProvider": ("CPU", "cpu", "ONNX Runtime's own CPU kernels (MLAS)"),
    "AzureExecutionProvider": ("Azure", "other", "Azure remote endpoint"),
}
#: Providers that are never a local device: not listed by ``provider_devices`` (every PyPI build
#: has Azure; it would only be noise among the devices); named, they are refused with this reason.
REMOTE = {"AzureExecutionProvider": "calls a remote Azure endpoint; it runs nothing on this device"}
_JETSON_INDEX = "pip install onnxruntime-gpu --index-url https://pypi.jetson-ai-lab.io/jp6/cu126"
#: What to install for the providers a user is most likely to ask for.
INSTALL_HINTS = {
    "CUDAExecutionProvider": f"pip install onnxruntime-gpu (x86_64); on a Jetson (JetPack 6): {_JETSON_INDEX}",
    "TensorrtExecutionProvider": "pip install onnxruntime-gpu and TensorRT (x86_64: pip install tensorrt); "
    f"on a Jetson (JetPack 6, which has TensorRT): {_JETSON_INDEX}",
    "OpenVINOExecutionProvider": "pip install onnxruntime-openvino",
    "QNNExecutionProvider": "pip install onnxruntime-qnn",
    "DmlExecutionProvider": "pip install onnxruntime-directml (Windows)",
}
_NVIDIA = ("TensorrtExecutionProvider", "NvTensorRTRTXExecutionProvider", "CUDAExecutionProvider")


@dataclass(frozen=True)
class Facts:
    """What this machine has, as far as the providers' needs go (gathered without side effects
    that could crash the process: library lookups and ``cuDeviceGetCount``).

    ``cuda_devices``: GPUs the CUDA driver reports (None: no driver library, with
    ``cuda_error`` saying why). ``libraries``: library base name (``cudnn``, ``nvinfer``,
    ``cublas``) -> the file found, for those found. ``ep_devices``: provider full name -> the
    hardware ONNX Runtime's own ``get_ep_devices()`` lists for it (``"GPU NVIDIA 0x2335"``).
    """

    available: tuple[str, ...]
    cuda_devices: int | None = None
    cuda_error: str = ""
    libraries: dict[str, str] = field(default_factory=dict)
    ep_devices: dict[str, tuple[str, ...]] = field(default_factory=dict)
    cpu_name: str = "CPU"
    jetson: bool = False


def short_name(provider: str) -> str:
    """``CUDAExecutionProvider`` -> ``CUDA``; an unknown provider loses its suffix."""
    known = PROVIDERS.get(provider)
    if known is not None:
        return known[0]
    return provider[: -len("ExecutionProvider")] if provider.endswith("ExecutionProvider") else provider


def full_name(name: str, available: Sequence[str] = ()) -> str | None:
    """The provider a typed name means (``cuda``, ``TensorRT``, ``CUDAExecutionProvider``),
    matched without case among the known and the ``available`` ones; None when unknown."""
    low = name.lower()
    for provider in (*available, *PROVIDERS):
        if low in (provider.lower(), short_name(provider).lower()):
            return provider
    return None


def provider_status(provider: str, facts: Facts) -> tuple[bool, str]:
    """Whether ``provider`` can run on this machine, and the reason a person reads.

    Only providers in ``facts.available`` (built into the installed ONNX Runtime) can run.
    NVIDIA providers also need a CUDA driver with a GPU; TensorRT also needs ``libnvinfer``;
    CUDA also needs cuDNN (ONNX Runtime loads it when the session is made).
    """
    if provider in REMOTE:
        return False, REMOTE[provider]
    if provider not in facts.available:
        hint = INSTALL_HINTS.get(provider, "")
        return False, f"not in this ONNX Runtime build{': ' + hint if hint else ''}"
    if provider in _NVIDIA:
        if facts.cuda_devices is None:
            return False, f"listed by the build, but no CUDA driver: {facts.cuda_error or 'libcuda.so.1 not found'}"
        if facts.cuda_devices == 0:
            return False, "listed by the build, but the CUDA driver reports no GPU"
        if provider == "TensorrtExecutionProvider" and "nvinfer" not in facts.libraries:
            return (
                False,
                "listed by the build, but TensorRT's libnvinfer is not installed "
                "(pip install tensorrt; JetPack has it)",
            )
        if provider == "CUDAExecutionProvider" and "cudnn" not in facts.libraries:
            return (
                False,
                "listed by the build, but cuDNN (libcudnn.so.9) is not found "
                "(pip install nvidia-cudnn-cu13, or JetPack's)",
            )
        return True, ""
    return True, ""


def provider_devices(facts: Facts) -> list[Device]:
    """One ``Device`` per provider the build lists (and the common GPU ones it lacks, with the
    package to install), in ONNX Runtime's own priority order (TensorRT, CUDA, ..., CPU)."""
    listed = list(facts.available)
    for wanted in _NVIDIA[0], _NVIDIA[2]:
        if wanted not in listed:
            listed.append(wanted)
    found: list[Device] = []
    for provider in listed:
        if provider in REMOTE:
            continue
        short, kind, what = PROVIDERS.get(provider, (short_name(provider), "other", provider))
        ok, reason = provider_status(provider, facts)
        hardware = facts.ep_devices.get(provider, ())
        if provider == "CPUExecutionProvider":
            what = f"{what} on {facts.cpu_name}"
        elif provider in _NVIDIA and facts.cuda_devices:
            what = f"{what}, {facts.cuda_devices} GPU(s){' (Jetson)' if facts.jetson else ''}"
        if hardware:
            what = f"{what} [{', '.join(hardware)}]"
        found.append(
            Device(
                NAME,
                short,
                kind,
                what,
                int8=True if provider in ("CPUExecutionProvider", *_NVIDIA) else None,
                available=ok,
                reason=reason,
                options=(("provider", provider),),
            )
        )
    # ONNX Runtime lists CPU last; keep the NVIDIA ones first (TensorRT, then CUDA) so that a
    # kind request falls back TensorRT -> CUDA -> CPU.
    order = {p: i for i, p in enumerate(_NVIDIA)}
    found.sort(key=lambda d: order.get(dict(d.options)["provider"], len(order)))
    return found


def session_providers(provider: str, options: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
    """The provider list a session is made with: the one asked for (with its options) and the
    CPU provider behind it for the nodes it does not take (ONNX Runtime adds CPU anyway; naming
    it keeps the list honest in ``get_providers()``)."""
    chain: list[tuple[str, dict[str, str]]] = [(provider, dict(options))]
    if provider != "CPUExecutionProvider":
        chain.append(("CPUExecutionProvider", {}))
    return chain


def tensorrt_cache_options(cache_path: str) -> dict[str, str]:
    """TensorRT provider options that keep built engines and kernel timings in ``cache_path``
    (a folder per model and option set): the first load builds them (seconds to minutes on a
    Jetson), later loads read them."""
    return {
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": cache_path,
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": cache_path,
    }


def placement(target: str, assigned: dict[str, int]) -> tuple[bool | None, str]:
    """Whether every node ran on ``target`` (a full provider name) and a line a person reads,
    from the node count per provider ONNX Runtime assigned (``{}``: unknown)."""
    if not assigned:
        return None, ""
    total = sum(assigned.values())
    on = assigned.get(target, 0)
    short = short_name(target)
    if on == total:
        return True, f"all {total} nodes on {short}"
    rest = ", ".join(f"{n} on {short_name(p)}" for p, n in sorted(assigned.items()) if p != target)
    return False, f"{on} of {total} nodes on {short}; {rest}"
