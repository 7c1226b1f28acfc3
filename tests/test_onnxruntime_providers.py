"""ONNX Runtime providers as devices, over tables of machines this one is not.

Pure: ``provider_devices`` and ``select`` read only the facts given, so a Jetson Orin, an
x86 box with ``onnxruntime-gpu`` but no driver, an Intel box with the OpenVINO provider and a
Snapdragon board with QNN are all tested here without their hardware.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edge_runtime.backends.onnxruntime_providers import (
    Facts,
    full_name,
    placement,
    provider_devices,
    provider_status,
    session_providers,
    short_name,
    tensorrt_cache_options,
)
from edge_runtime.device_info import Device
from edge_runtime.devices import parse_request, select
from edge_runtime.errors import DeviceRequestError

GPU_BUILD = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
CUDA_LIBS = {
    "cudnn": "/usr/lib/aarch64-linux-gnu/libcudnn.so.9",
    "nvinfer": "/usr/lib/aarch64-linux-gnu/libnvinfer.so.10",
}


@dataclass(frozen=True)
class Machine:
    name: str
    facts: Facts
    #: provider short name -> expected (available, a phrase of the reason)
    expect: dict[str, tuple[bool, str]] = field(default_factory=dict)
    #: what ``auto`` tries for an .onnx model, in order (only the ONNX Runtime devices)
    auto: tuple[str, ...] = ()


MACHINES = [
    Machine(
        "Jetson Orin, JetPack 6, onnxruntime-gpu from NVIDIA's index",
        Facts(GPU_BUILD, cuda_devices=1, libraries=CUDA_LIBS, jetson=True),
        {"TensorRT": (True, ""), "CUDA": (True, ""), "CPU": (True, "")},
        ("onnxruntime:TensorRT", "onnxruntime:CUDA", "onnxruntime:CPU"),
    ),
    Machine(
        "Jetson without TensorRT's libraries (a slim container)",
        Facts(GPU_BUILD, cuda_devices=1, libraries={"cudnn": CUDA_LIBS["cudnn"]}, jetson=True),
        {"TensorRT": (False, "libnvinfer"), "CUDA": (True, "")},
        ("onnxruntime:CUDA", "onnxruntime:CPU"),
    ),
    Machine(
        "x86 box, onnxruntime-gpu installed, no NVIDIA driver",
        Facts(GPU_BUILD, cuda_devices=None, cuda_error="libcuda.so.1 not found", libraries=CUDA_LIBS),
        {"TensorRT": (False, "no CUDA driver"), "CUDA": (False, "libcuda.so.1")},
        ("onnxruntime:CPU",),
    ),
    Machine(
        "x86 box, driver but no GPU (a container without --gpus)",
        Facts(GPU_BUILD, cuda_devices=0, libraries=CUDA_LIBS),
        {"CUDA": (False, "reports no GPU")},
        ("onnxruntime:CPU",),
    ),
    Machine(
        "x86 box with an H200, onnxruntime-gpu and cuDNN from pip, no TensorRT",
        Facts(GPU_BUILD, cuda_devices=1, libraries={"cudnn": "/site/nvidia/cudnn/lib/libcudnn.so.9"}),
        {"CUDA": (True, ""), "TensorRT": (False, "pip install tensorrt")},
        ("onnxruntime:CUDA", "onnxruntime:CPU"),
    ),
    Machine(
        "Raspberry Pi 5, the plain onnxruntime wheel",
        Facts(("AzureExecutionProvider", "CPUExecutionProvider")),
        {"CPU": (True, ""), "CUDA": (False, "pip install onnxruntime-gpu")},
        ("onnxruntime:CPU",),
    ),
    Machine(
        "Intel box with an NPU, onnxruntime-openvino",
        Facts(("OpenVINOExecutionProvider", "CPUExecutionProvider")),
        {"OpenVINO": (True, "")},
        ("onnxruntime:CPU",),  # kind "other": named only (onnxruntime:OpenVINO;device_type=NPU)
    ),
    Machine(
        "Snapdragon X board, onnxruntime-qnn",
        Facts(("QNNExecutionProvider", "CPUExecutionProvider")),
        {"QNN": (True, "")},
        ("onnxruntime:QNN", "onnxruntime:CPU"),
    ),
]


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.name)
def test_each_machine_lists_its_providers_with_reasons(machine: Machine) -> None:
    devices = {d.name: d for d in provider_devices(machine.facts)}
    for short, (ok, phrase) in machine.expect.items():
        dev = devices[short]
        assert dev.available is ok, (short, dev.reason)
        assert phrase in dev.reason
    # CUDA and TensorRT are listed even when the build lacks them: with the package to install.
    assert "CUDA" in devices and "TensorRT" in devices
    assert "Azure" not in devices, "a remote endpoint is not a device of this machine"


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.name)
def test_auto_order_falls_back_tensorrt_cuda_cpu(machine: Machine) -> None:
    devices = provider_devices(machine.facts)
    openvino_cpu = Device("openvino", "CPU", "cpu", "Intel CPU", int8=True)
    selection = select("auto", [*devices, openvino_cpu], "onnx")
    order = [c.device.request for c in selection.candidates]
    assert tuple(r for r in order if r.startswith("onnxruntime:")) == machine.auto
    # ONNX Runtime reads .onnx first among equal kinds; OpenVINO's CPU is the last resort.
    assert order[-1] == "openvino:CPU"
    passed = {p.device: p.reason for p in selection.passed_over}
    for short, (ok, phrase) in machine.expect.items():
        if not ok:
            assert phrase in passed[f"onnxruntime:{short}"]


def test_kind_request_gpu_on_jetson_and_named_requests() -> None:
    devices = provider_devices(MACHINES[0].facts)
    gpu = select("gpu", devices, "onnx")
    assert [c.device.request for c in gpu.candidates] == ["onnxruntime:TensorRT", "onnxruntime:CUDA"]
    # A full provider name, any case, with options that travel in the device's request.
    named = select("onnxruntime:cudaexecutionprovider;device_id=1", devices, "onnx").candidates[0].device
    assert named.request == "onnxruntime:CUDA;device_id=1"
    assert dict(named.options) == {"provider": "CUDAExecutionProvider", "device_id": "1"}
    assert parse_request(named.request).options == (("device_id", "1"),)
    # ONNX Runtime cannot read .tflite: the request is passed over with that reason.
    tfl = select("onnxruntime:CUDA", devices, "tflite")
    assert not tfl.candidates and "cannot read tflite" in tfl.passed_over[0].reason
    # An absent provider says which ones were found.
    absent = select("onnxruntime:QNN", devices, "onnx")
    assert absent.passed_over[0].reason == (
        "QNNExecutionProvider is not in this ONNX Runtime build (onnxruntime found: TensorRT, CUDA, CPU); "
        "pip install onnxruntime-qnn"
    )
    remote = select("onnxruntime:azure", devices, "onnx")
    assert remote.passed_over[0].reason.startswith("calls a remote Azure endpoint")
    typo = select("onnxruntime:CUDDA", devices, "onnx")
    assert typo.passed_over[0].reason == "not found (onnxruntime found: TensorRT, CUDA, CPU)"


@pytest.mark.parametrize("bad", ["onnxruntime:", "onnxruntime:CU DA", "onnxruntime:CUDA;device_id", "onnxruntime:1x"])
def test_bad_provider_requests_say_what_was_expected(bad: str) -> None:
    with pytest.raises(DeviceRequestError) as err:
        parse_request(bad)
    assert bad in str(err.value)


def test_names_status_chain_and_caches() -> None:
    assert short_name("TensorrtExecutionProvider") == "TensorRT"
    assert short_name("FooExecutionProvider") == "Foo"
    assert full_name("tensorrt") == "TensorrtExecutionProvider"
    assert full_name("Foo", ["FooExecutionProvider"]) == "FooExecutionProvider"
    assert full_name("nothing") is None
    assert provider_status("CUDAExecutionProvider", Facts(("CPUExecutionProvider",)))[1].startswith(
        "not in this ONNX Runtime build"
    )
    assert session_providers("CUDAExecutionProvider", {"device_id": "0"}) == [
        ("CUDAExecutionProvider", {"device_id": "0"}),
        ("CPUExecutionProvider", {}),
    ]
    assert session_providers("CPUExecutionProvider", {}) == [("CPUExecutionProvider", {})]
    opts = tensorrt_cache_options("/var/cache/x")
    assert opts["trt_engine_cache_path"] == opts["trt_timing_cache_path"] == "/var/cache/x"


@pytest.mark.parametrize(
    ("target", "counts", "full", "line"),
    [
        ("CUDAExecutionProvider", {"CUDAExecutionProvider": 42}, True, "all 42 nodes on CUDA"),
        (
            "TensorrtExecutionProvider",
            {"TensorrtExecutionProvider": 40, "CPUExecutionProvider": 2},
            False,
            "40 of 42 nodes on TensorRT; 2 on CPU",
        ),
        ("CUDAExecutionProvider", {"CPUExecutionProvider": 5}, False, "0 of 5 nodes on CUDA; 5 on CPU"),
        ("CUDAExecutionProvider", {}, None, ""),
    ],
)
def test_placement_lines(target: str, counts: dict[str, int], full: bool | None, line: str) -> None:
    assert placement(target, counts) == (full, line)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        (  # seen on ONNX Runtime 1.31.1 here (an IR version it does not read)
            "[ONNXRuntimeError] : 1 : FAIL : /onnxruntime_src/onnxruntime/core/graph/model.cc:256 "
            "onnxruntime::Model::Model(onnx::ModelProto&&, const onnxruntime::PathString&, const "
            "onnxruntime::logging::Logger&, const onnxruntime::ModelOptions&) Unsupported model IR version: 14, "
            "max supported IR version: 13",
            "FAIL: Unsupported model IR version: 14, max supported IR version: 13",
        ),
        (  # seen on an H200 with onnxruntime-gpu 1.31.1 and no TensorRT libraries
            "/onnxruntime_src/onnxruntime/python/onnxruntime_pybind_state.cc:729 void "
            "onnxruntime::python::RegisterTensorRTPluginsAsCustomOps(PySessionOptions&, const "
            "onnxruntime::ProviderOptions&) Please install TensorRT libraries as mentioned in the GPU "
            "requirements page",
            "Please install TensorRT libraries as mentioned in the GPU requirements page",
        ),
        ("plain message\nsecond line", "plain message"),
    ],
)
def test_onnxruntime_errors_lose_their_cxx_location(raw: str, clean: str) -> None:
    from edge_runtime.backends.onnxrt import _first_line

    assert _first_line(RuntimeError(raw)) == clean


def test_tensorrt_cache_folder_per_model_and_options(tmp_path: Path) -> None:
    from edge_runtime.backends.onnxrt import TRT_CACHE, trt_cache_folder, trt_cache_state

    a = trt_cache_folder(tmp_path, b"model-a", {})
    assert a == trt_cache_folder(str(tmp_path), b"model-a", {}), "the same model and options: the same folder"
    assert a.parent == tmp_path / TRT_CACHE
    assert (
        len(
            {
                a,
                trt_cache_folder(tmp_path, b"model-b", {}),
                trt_cache_folder(tmp_path, b"model-a", {"trt_fp16_enable": "1"}),
            }
        )
        == 3
    )
    a.mkdir(parents=True)
    assert trt_cache_state(a) == "miss"
    (a / "TensorrtExecutionProvider_TRTKernel_graph_1_0_sm87.profile").write_bytes(b"x")
    assert trt_cache_state(a) == "miss", "a profile alone is not an engine"
    (a / "TensorrtExecutionProvider_TRTKernel_graph_1_0_sm87.engine").write_bytes(b"x")
    assert trt_cache_state(a) == "hit"
