"""litert:gpu and litert:npu through LiteRT's CompiledModel.

The decisions (``gpu_status``, ``npu_status``) run over tables of machines this one is not. The
session runs for real: on this machine's GPU when it has one, and always through the same code
on ``HardwareAccelerator.CPU``, compared bit for bit with bare ``CompiledModel`` calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import MLPERF_MODELS, SHIPPED

import edge_runtime as er
from edge_runtime.backends import litert
from edge_runtime.backends import litert_compiled as lc
from edge_runtime.device_info import Device
from edge_runtime.devices import PassedOver, select
from edge_runtime.model_file import read_model_file

pytest.importorskip("ai_edge_litert.compiled_model")
from ai_edge_litert.compiled_model import CompiledModel

DIGITS = Path(__file__).resolve().parents[1] / "models" / "digits_cnn_int8.tflite"
CPU = Device("litert", "cpu", "cpu", "test CPU")
GPU = Device("litert", "gpu", "gpu", "LiteRT GPU accelerator")
NPU = Device("litert", "npu", "npu", "LiteRT NPU accelerator")
WEBGPU = ("libLiteRtWebGpuAccelerator.so",)
VULKAN = ("libvulkan.so.1",)

GPU_MACHINES: dict[str, tuple[lc.GpuFacts, bool, str]] = {
    "Jetson Orin, NVIDIA Vulkan ICD, trial compiled": (
        lc.GpuFacts(True, WEBGPU, VULKAN, ("nvidia_icd.json",), ""),
        True,
        "a test model compiled on the GPU (libvulkan.so.1; Vulkan drivers: nvidia_icd.json)",
    ),
    "Jetson Orin, not tried yet": (
        lc.GpuFacts(True, WEBGPU, VULKAN, ("nvidia_icd.json",), None),
        True,
        "the GPU itself is checked when a model loads",
    ),
    "Raspberry Pi 5, Mesa v3dv": (
        lc.GpuFacts(True, WEBGPU, VULKAN, ("broadcom_icd.json",), ""),
        True,
        "broadcom_icd.json",
    ),
    "Raspberry Pi 5, v3dv refuses the compile": (
        lc.GpuFacts(True, WEBGPU, VULKAN, ("broadcom_icd.json",), "No adapters found"),
        False,
        "but a test model did not compile on the GPU: No adapters found",
    ),
    "x86 VM without a GPU driver": (
        lc.GpuFacts(True, WEBGPU, (), (), None),
        False,
        "no GPU driver: libvulkan.so.1 not found",
    ),
    "Vulkan loader but no driver": (
        lc.GpuFacts(True, WEBGPU, VULKAN, (), None),
        False,
        "libvulkan.so.1 found but no Vulkan driver (no ICD manifest",
    ),
    "OpenCL build of the accelerator, OpenCL present": (
        lc.GpuFacts(True, ("libLiteRtGpuAccelerator.so",), ("libOpenCL.so.1",), (), ""),
        True,
        "a test model compiled on the GPU (libOpenCL.so.1)",
    ),
    "wheel without a GPU accelerator": (
        lc.GpuFacts(True, (), VULKAN, ("nvidia_icd.json",), None),
        False,
        "has no GPU accelerator library",
    ),
    "tflite-runtime": (lc.GpuFacts(False, WEBGPU, VULKAN, ("nvidia_icd.json",), ""), False, lc.NO_COMPILED_MODEL),
}


@pytest.mark.parametrize("machine", GPU_MACHINES)
def test_gpu_status_over_machines(machine: str) -> None:
    facts, available, reason = GPU_MACHINES[machine]
    ok, why = lc.gpu_status(facts)
    assert ok is available
    assert reason in why


def test_gpu_trial_is_worth_running_only_with_a_driver() -> None:
    assert lc.gpu_prerequisite(GPU_MACHINES["Jetson Orin, not tried yet"][0]) == ""
    assert lc.gpu_prerequisite(GPU_MACHINES["x86 VM without a GPU driver"][0]).startswith("no GPU driver")


NPU_MACHINES: dict[str, tuple[lc.NpuFacts, bool, str]] = {
    "Intel Core Ultra with its NPU": (
        lc.NpuFacts(True, ("intel_openvino",), ("/dev/accel/accel0",), True),
        True,
        "Intel NPU /dev/accel/accel0 with the LiteRT Intel OpenVINO dispatch",
    ),
    "Intel NPU without the SDK": (
        lc.NpuFacts(True, ("intel_openvino",), ("/dev/accel/accel0",), False),
        False,
        "pip install ai-edge-litert-sdk-intel",
    ),
    "x86 VM (Intel dispatch in the wheel, no NPU)": (
        lc.NpuFacts(True, ("intel_openvino",), (), True),
        False,
        "Intel dispatch found but no /dev/accel device",
    ),
    "Pixel with Google Tensor": (
        lc.NpuFacts(True, ("google_tensor",), (), False),
        True,
        "Google Tensor dispatch library found",
    ),
    "Snapdragon with the Qualcomm SDK": (lc.NpuFacts(True, ("qualcomm",)), True, "Qualcomm dispatch library found"),
    "Jetson Orin (no NPU dispatch)": (
        lc.NpuFacts(True, (), (), False),
        False,
        "no NPU dispatch library: install ai-edge-litert-sdk-qualcomm (Qualcomm), ai-edge-litert-sdk-mediatek "
        "(MediaTek), ai-edge-litert-sdk-google-tensor (Google Tensor)",
    ),
    "tflite-runtime": (lc.NpuFacts(False, ("qualcomm",)), False, lc.NO_COMPILED_MODEL),
}


@pytest.mark.parametrize("machine", NPU_MACHINES)
def test_npu_status_over_machines(machine: str) -> None:
    facts, available, reason = NPU_MACHINES[machine]
    ok, why = lc.npu_status(facts)
    assert ok is available
    assert reason in why


def test_probe_here_agrees_with_the_pure_decisions() -> None:
    found = {d.name: d for d in lc.probe_compiled()}
    assert set(found) == {"gpu", "npu"}
    assert (found["gpu"].available, found["gpu"].reason) == lc.gpu_status(lc.gather_gpu_facts())
    assert (found["npu"].available, found["npu"].reason) == lc.npu_status(lc.gather_npu_facts())
    assert all(d.reason for d in found.values())
    assert found["gpu"].kind == "gpu" and found["npu"].kind == "npu"


def test_litert_probe_lists_gpu_and_npu_and_no_gpu_delegate() -> None:
    names = [d.name for d in litert.probe_devices()]
    assert "gpu" in names and "npu" in names and "cpu" in names
    assert "gpu" not in litert.DELEGATES
    assert [d.name for d in litert.probe_devices(names=("vx",))] == ["cpu", "vx"]


def test_tflite_runtime_has_no_compiled_model() -> None:
    rt = litert.Runtime("tflite_runtime.interpreter", "tflite-runtime", object, None)
    records = litert._compiled_devices(["gpu", "npu"], rt)
    assert [(d.name, d.available, d.reason) for d in records] == [
        ("gpu", False, lc.NO_COMPILED_MODEL),
        ("npu", False, lc.NO_COMPILED_MODEL),
    ]


def test_gpu_trial_runs_in_a_child_and_says_why() -> None:
    """The real trial, in a real child, on this machine's GPU stack (whatever it is)."""
    lc.gpu_trial.cache_clear()
    why = lc.gpu_trial()
    assert lc.gpu_trial() is lc.gpu_trial()  # cached per process
    if litert.find_library("libvulkan.so.1") is None and litert.find_library("libOpenCL.so.1") is None:
        assert "Vulkan" in why or "adapter" in why, why


def test_tiny_model_is_a_real_model() -> None:
    model = CompiledModel.from_buffer(lc.tiny_add_model(), options=lc.compiled_options("cpu"))
    ins, outs = model.create_input_buffers(0), model.create_output_buffers(0)
    ins[0].write(np.arange(4, dtype=np.float32).reshape(1, 4))
    model.run_by_index(0, ins, outs)
    assert outs[0].read(4, np.float32).tolist() == [0.0, 2.0, 4.0, 6.0]
    assert lc.primary_op_count(lc.tiny_add_model()) == 1


def _random_inputs(specs: tuple[Any, ...], seed: int) -> list[Any]:
    rng = np.random.default_rng(seed)
    out = []
    for s in specs:
        if np.issubdtype(s.dtype, np.integer):
            info = np.iinfo(s.dtype)
            out.append(rng.integers(info.min, int(info.max) + 1, size=s.shape, dtype=s.dtype))
        else:
            out.append(rng.standard_normal(s.shape).astype(s.dtype))
    return out


def _bare_run(content: bytes, accelerator: str, arrays: list[Any]) -> list[Any]:
    """The same model through raw ai_edge_litert calls, nothing of edge_runtime in between."""
    model = CompiledModel.from_buffer(content, options=lc.compiled_options(accelerator))
    ins, outs = model.create_input_buffers(0), model.create_output_buffers(0)
    for buf, arr in zip(ins, arrays):
        buf.write(arr)
    model.run_by_index(0, ins, outs)
    sig = model.get_signature_by_index(0)
    details = model.get_output_tensor_details(sig["key"])
    result = []
    for buf, name in zip(outs, sig["outputs"]):
        d = details[name]
        result.append(buf.read(int(np.prod(d["shape"])), np.dtype(d["dtype"])).reshape(d["shape"]))
    return result


def _accelerators_here() -> list[str]:
    gpu = next(d for d in lc.probe_compiled(("gpu",)))
    return ["cpu", "gpu"] if gpu.available else ["cpu"]


@pytest.mark.parametrize("accelerator", _accelerators_here())
@pytest.mark.parametrize("model", [*SHIPPED, *MLPERF_MODELS], ids=lambda p: p.name)
def test_session_is_bit_exact_with_bare_compiled_model(model: Path, accelerator: str) -> None:
    source = read_model_file(model)
    device = GPU if accelerator == "gpu" else CPU
    with lc.CompiledSession(source, device, accelerator=accelerator) as session:
        for seed in range(3):
            arrays = _random_inputs(session.inputs, seed)
            got = session.run(arrays)
            want = _bare_run(source.content, accelerator, arrays)
            assert len(got) == len(want) == len(session.outputs)
            for g, w, spec in zip(got, want, session.outputs):
                assert g.dtype == spec.dtype and g.shape == spec.shape
                np.testing.assert_array_equal(g, w)


def test_session_specs_match_the_interpreter_session() -> None:
    source = read_model_file(DIGITS)
    with lc.CompiledSession(source, CPU, accelerator="cpu") as compiled, litert.LiteRTSession(source, CPU) as interp:
        assert compiled.inputs == interp.inputs
        assert compiled.outputs == interp.outputs
        assert compiled.inputs[0].quantization is not None
        assert compiled.op_count == 11  # the model's own ops (the Interpreter adds its DELEGATE nodes)
        assert compiled.execution_devices == ("litert:cpu",)
        assert isinstance(compiled.fully_accelerated, bool)
        x = _random_inputs(compiled.inputs, 7)
        out = compiled.run(x)
        out[0][...] = 0  # the caller owns its outputs: the next run is unaffected
        assert compiled.run(x)[0].tolist() == _bare_run(source.content, "cpu", x)[0].tolist()


def test_close_is_idempotent_and_final() -> None:
    session = lc.CompiledSession(read_model_file(DIGITS), CPU, accelerator="cpu")
    x = _random_inputs(session.inputs, 0)
    session.close()
    session.close()
    with pytest.raises(er.ModelClosedError) as info:
        session.run(x)
    assert info.value.backend == "litert" and info.value.device == "litert:cpu"


def test_wrong_input_is_an_inference_error() -> None:
    with lc.CompiledSession(read_model_file(DIGITS), CPU, accelerator="cpu") as session:
        with pytest.raises(er.InferenceError) as info:
            session.run([np.zeros((1, 8, 8, 1), dtype=np.complex64)])
    assert info.value.path == str(DIGITS)


def test_partial_reason_in_words() -> None:
    assert lc.partial_reason("litert:gpu", True, 15) == ""
    assert lc.partial_reason("litert:gpu", None, 15) == ""
    why = lc.partial_reason("litert:gpu", False, 15)
    assert why.startswith("litert:gpu runs the model only partly: some or all of its 15 ops run on the CPU")
    assert "is_fully_accelerated() is False" in why


def test_gpu_load_here() -> None:
    """On a machine with a usable GPU the digits model loads there; elsewhere the load fails with
    LiteRT's own reason and every field set."""
    source = read_model_file(DIGITS)
    gpu = next(iter(lc.probe_compiled(("gpu",))))
    if gpu.available:
        session = litert.open_session(source, gpu)
        assert isinstance(session, lc.CompiledSession)
        with session:
            assert session.execution_devices[0] == "litert:gpu"
            assert session.placement.startswith("all ") is bool(session.fully_accelerated)
        return
    with pytest.raises(er.ModelLoadError) as info:
        litert.open_session(source, GPU)
    err = info.value
    assert (err.path, err.backend, err.device) == (str(DIGITS), "litert", "litert:gpu")
    assert err.reason.startswith("CompiledModel could not compile the model for gpu: ")
    assert len(err.reason) > len("CompiledModel could not compile the model for gpu: ") + 10


def test_npu_without_an_npu_loads_on_the_cpu_and_says_so() -> None:
    if lc.npu_status(lc.gather_npu_facts())[0]:
        pytest.skip("this machine has an NPU")
    try:
        session = litert.open_session(read_model_file(DIGITS), NPU)
    except er.ModelLoadError as exc:  # LiteRT builds that refuse NPU|CPU without a dispatch
        assert exc.device == "litert:npu"
        return
    assert isinstance(session, lc.CompiledSession)
    with session:
        assert session.fully_accelerated is False
        assert session.execution_devices == ("litert:npu", "litert:cpu")
        assert "runs the model only partly" in session.placement


def test_batch_is_refused_with_the_device() -> None:
    with pytest.raises(er.ModelLoadError, match="takes a batch of 1 only") as info:
        litert.open_session(read_model_file(DIGITS), GPU, batch=4)
    assert info.value.device == "litert:gpu"


def test_selection_passes_over_an_unavailable_gpu_with_its_reason() -> None:
    devices = litert.probe_devices(names=("gpu",))
    gpu = next(d for d in devices if d.name == "gpu")
    selection = select("litert:gpu", devices, "tflite")
    if gpu.available:
        assert selection.candidates[0].device.request == "litert:gpu"
    else:
        assert selection.passed_over == (PassedOver("litert:gpu", "litert:gpu", gpu.reason),)


def test_native_error_lines() -> None:
    text = (
        "INFO: [environment.cc:36] Creating LiteRT environment with options\n"
        "Warning: Couldn't load Vulkan: libvulkan.so.1: cannot open shared object file\n"
        "ERROR: [delegate_webgpu.cc:359] Failed to initialize WebGPU environment: INTERNAL: No adapters found\n"
    )
    assert lc.native_errors(text) == [
        "Warning: Couldn't load Vulkan: libvulkan.so.1: cannot open shared object file",
        "Failed to initialize WebGPU environment: INTERNAL: No adapters found",
    ]
    exc = RuntimeError("ERROR: [./litert/cc/litert_compiled_model.h:1961]\n\u2514 Some ops are not accelerated.")
    assert lc.litert_message(exc) == "Some ops are not accelerated."
    assert lc.litert_message(RuntimeError("ERROR: [x.cc:1]\n\u2514 ERROR: [y.cc:2]")) == "RuntimeError"
