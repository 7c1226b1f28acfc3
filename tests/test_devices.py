"""Device request grammar and the pure selection, over tables of devices this machine lacks."""

from __future__ import annotations

from pathlib import Path

import pytest

import edge_runtime as er
from edge_runtime.device_info import Device
from edge_runtime.devices import parse_request, select

CPU_LITERT = Device("litert", "cpu", "cpu", "XNNPACK", True)
EDGETPU = Device("litert", "edgetpu", "tpu", "Coral Edge TPU", True, options=(("library", "/usr/lib/libedgetpu.so.1"),))
EDGETPU_MISSING = Device("litert", "edgetpu", "tpu", "Coral Edge TPU", True, False, "libedgetpu.so.1 not found")
VX = Device("litert", "vx", "npu", "VX NPU", True, options=(("library", "/usr/lib/libvx_delegate.so"),))
CPU_OV = Device("openvino", "CPU", "cpu", "Intel Xeon", True, capabilities=("FP32", "INT8"))
GPU0_OV = Device("openvino", "GPU.0", "gpu", "Intel Iris Xe", True, capabilities=("FP32", "FP16", "INT8"))
GPU1_OV = Device("openvino", "GPU.1", "gpu", "Intel Arc", True)
GPU_FP_ONLY = Device("openvino", "GPU.0", "gpu", "Old iGPU", False, capabilities=("FP32", "FP16"))
NPU_OV = Device("openvino", "NPU", "npu", "Intel AI Boost", True, capabilities=("FP16", "INT8"))
FPGA_OV = Device("openvino", "FPGA", "fpga", "vendor FPGA plugin", None)
FPGA_BROKEN = Device("openvino", "FPGA", "fpga", "plugin FPGA", None, False, "plugin registered but cannot start: x")
OV_MISSING = Device("openvino", "", "other", "openvino (not importable)", None, False, "cannot import openvino: boom")

X86_NPU_BOX = [CPU_LITERT, EDGETPU_MISSING, CPU_OV, GPU0_OV, NPU_OV]
CORAL_PI = [CPU_LITERT, EDGETPU, OV_MISSING]


def order(sel: er.Selection) -> list[str]:
    return [c.device.request for c in sel.candidates]


def reasons(sel: er.Selection) -> dict[str, str]:
    return {p.device: p.reason for p in sel.passed_over}


@pytest.mark.parametrize(
    ("text", "backend", "kind", "target", "options", "members"),
    [
        ("auto", None, None, None, (), ()),
        (" AUTO ", None, None, None, (), ()),
        ("cpu", None, "cpu", None, (), ()),
        ("npu", None, "npu", None, (), ()),
        ("fpga", None, "fpga", None, (), ()),
        ("litert:cpu", "litert", None, "cpu", (), ()),
        ("litert:xnnpack", "litert", None, "cpu", (), ()),
        ("edgetpu", "litert", None, "edgetpu", (), ()),
        ("litert:edgetpu:usb:0", "litert", None, "edgetpu", (("device", "usb:0"),), ()),
        ("litert:edgetpu:pci", "litert", None, "edgetpu", (("device", "pci"),), ()),
        ("litert:gpu", "litert", None, "gpu", (), ()),
        ("litert:npu", "litert", None, "npu", (), ()),
        ("litert:vx", "litert", None, "vx", (), ()),
        ("litert:delegate=/opt/x/libd.so", "litert", None, "delegate", (("library", "/opt/x/libd.so"),), ()),
        (
            "litert:delegate=/l.so;cache=/tmp;n=2",
            "litert",
            None,
            "delegate",
            (("library", "/l.so"), ("cache", "/tmp"), ("n", "2")),
            (),
        ),
        ("openvino:CPU", "openvino", None, "CPU", (), ()),
        ("openvino:npu", "openvino", None, "NPU", (), ()),
        ("openvino:GPU.1", "openvino", None, "GPU.1", (), ()),
        ("openvino:AUTO:NPU,CPU", "openvino", None, "AUTO:NPU,CPU", (), ("NPU", "CPU")),
        ("openvino:HETERO:FPGA,CPU", "openvino", None, "HETERO:FPGA,CPU", (), ("FPGA", "CPU")),
        ("openvino:AUTO", "openvino", None, "AUTO", (), ()),
    ],
)
def test_parse_request(
    text: str,
    backend: str | None,
    kind: str | None,
    target: str | None,
    options: tuple[tuple[str, str], ...],
    members: tuple[str, ...],
) -> None:
    r = parse_request(text)
    assert (r.backend, r.kind, r.target, r.options, r.members) == (backend, kind, target, options, members)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "cannot parse device request ''"),
        ("tpu0", "expected 'auto', a kind"),
        ("cuda:0", "expected 'auto', a kind"),
        ("litert:", "unknown LiteRT device ''"),
        ("litert:tpu", "unknown LiteRT device 'tpu'"),
        ("litert:edgetpu:wifi", "cannot parse Edge TPU request"),
        ("litert:edgetpu:usb:x", "cannot parse Edge TPU request"),
        ("litert:delegate=", "names no library path"),
        ("litert:delegate=/l.so;oops", "is not KEY=VALUE"),
        ("openvino:", "bad OpenVINO device name ''"),
        ("openvino:GPU-0", "bad OpenVINO device name 'GPU-0'"),
        ("openvino:FOO:CPU", "unknown OpenVINO virtual device 'FOO'"),
        ("openvino:AUTO:NPU,,CPU", "bad OpenVINO device name ''"),
        ("openvino:HETERO", "needs its devices listed"),
        ("openvino:batch", "needs its devices listed"),
    ],
)
def test_parse_request_errors(text: str, message: str) -> None:
    with pytest.raises(er.DeviceRequestError, match=message.replace("(", r"\(")) as info:
        parse_request(text)
    assert info.value.device == text


def test_bad_request_fails_before_touching_the_model(tmp_path: Path) -> None:
    never_read = tmp_path / "absent.tflite"  # the request is checked first: no "no such file"
    with pytest.raises(er.DeviceRequestError, match="cannot parse device request 'gpu0'"):
        er.load(never_read, "gpu0")
    with pytest.raises(er.DeviceRequestError, match="cannot parse device request 'gpu0'"):
        er.load(never_read, ["cpu", "gpu0"])


@pytest.mark.parametrize(
    ("table", "fmt", "expected"),
    [
        # NPU first, then GPU, then CPU; for .tflite LiteRT before OpenVINO among equals.
        (X86_NPU_BOX, "tflite", ["openvino:NPU", "openvino:GPU.0", "litert:cpu", "openvino:CPU"]),
        (X86_NPU_BOX, "ir", ["openvino:NPU", "openvino:GPU.0", "openvino:CPU"]),
        (CORAL_PI, "tflite", ["litert:edgetpu", "litert:cpu"]),
        ([CPU_LITERT, VX, CPU_OV], "tflite", ["litert:vx", "litert:cpu", "openvino:CPU"]),
        (
            [CPU_OV, GPU1_OV, GPU0_OV, CPU_LITERT],
            "tflite",
            ["openvino:GPU.1", "openvino:GPU.0", "litert:cpu", "openvino:CPU"],
        ),
        ([CPU_LITERT, CPU_OV, FPGA_OV], "tflite", ["litert:cpu", "openvino:CPU"]),
    ],
)
def test_auto_order(table: list[Device], fmt: str, expected: list[str]) -> None:
    assert order(select("auto", table, fmt)) == expected


def test_auto_explains_every_device_left_out() -> None:
    table = [CPU_LITERT, EDGETPU_MISSING, GPU_FP_ONLY, FPGA_OV, CPU_OV, OV_MISSING]
    sel = select("auto", table, "tflite")
    assert order(sel) == ["litert:cpu", "openvino:CPU"]
    assert reasons(sel) == {
        "litert:edgetpu": "libedgetpu.so.1 not found",
        "openvino:GPU.0": "no int8 support (it would run an int8 model in floating point): name it to use it",
        "openvino:FPGA": "auto never picks a fpga device: request it by name",
        "openvino": "cannot import openvino: boom",
    }


def test_ir_passes_over_litert_devices_with_reason() -> None:
    sel = select("auto", [CPU_LITERT, EDGETPU, CPU_OV], "ir")
    assert order(sel) == ["openvino:CPU"]
    assert reasons(sel)["litert:edgetpu"] == "litert cannot read ir models"


@pytest.mark.parametrize(
    ("requests", "table", "expected", "left_out"),
    [
        ("npu", X86_NPU_BOX, ["openvino:NPU"], {}),
        ("tpu", CORAL_PI, ["litert:edgetpu"], {}),
        ("tpu", X86_NPU_BOX, [], {"litert:edgetpu": "libedgetpu.so.1 not found"}),
        ("gpu", [CPU_LITERT, CPU_OV], [], {"gpu": "no gpu device found"}),
        ("litert:edgetpu:usb:0", CORAL_PI, ["litert:edgetpu:usb:0"], {}),
        ("openvino:NPU", [CPU_LITERT, CPU_OV], [], {"openvino:NPU": "not found (openvino found: CPU)"}),
        ("openvino:GPU", X86_NPU_BOX, ["openvino:GPU.0"], {}),
        ("openvino:CPU", CORAL_PI, [], {"openvino:CPU": "cannot import openvino: boom"}),
        ("openvino:FPGA", [CPU_OV, FPGA_BROKEN], [], {"openvino:FPGA": "plugin registered but cannot start: x"}),
        ("openvino:FPGA", [CPU_OV, FPGA_OV], ["openvino:FPGA"], {}),
        # a named device lacking INT8 is still tried: the person asked for it
        ("openvino:GPU.0", [CPU_OV, GPU_FP_ONLY], ["openvino:GPU.0"], {}),
        (
            ["openvino:NPU", "litert:edgetpu", "cpu"],
            [CPU_LITERT, EDGETPU_MISSING, CPU_OV],
            ["litert:cpu", "openvino:CPU"],
            {"openvino:NPU": "not found (openvino found: CPU)", "litert:edgetpu": "libedgetpu.so.1 not found"},
        ),
        (["litert:cpu", "cpu", "auto"], [CPU_LITERT, CPU_OV], ["litert:cpu", "openvino:CPU"], {}),
    ],
)
def test_named_requests(
    requests: str | list[str], table: list[Device], expected: list[str], left_out: dict[str, str]
) -> None:
    sel = select(requests, table, "tflite")
    assert order(sel) == expected
    assert reasons(sel) == left_out


def test_openvino_virtual_devices() -> None:
    sel = select("openvino:AUTO:NPU,CPU", [CPU_LITERT, CPU_OV], "tflite")
    (cand,) = sel.candidates
    # OpenVINO fails a whole AUTO compile when a listed plugin cannot load: compile over what is there.
    assert cand.device.name == "AUTO:CPU" and cand.device.kind == "cpu"
    assert "not found: NPU (left out)" in cand.why

    sel = select("openvino:AUTO:NPU,CPU", X86_NPU_BOX, "tflite")
    assert sel.candidates[0].device.kind == "npu"

    sel = select("openvino:HETERO:FPGA,CPU", [CPU_OV], "tflite")
    assert order(sel) == [] and reasons(sel) == {
        "openvino:HETERO:FPGA,CPU": "HETERO needs every listed device; missing: FPGA"
    }

    sel = select("openvino:HETERO:FPGA,CPU", [CPU_OV, FPGA_OV], "ir")
    assert order(sel) == ["openvino:HETERO:FPGA,CPU"] and sel.candidates[0].device.kind == "fpga"

    sel = select("openvino:MULTI:GPU.7", [CPU_OV], "tflite")
    assert reasons(sel) == {"openvino:MULTI:GPU.7": "none of GPU.7 found"}


def test_delegate_request_needs_no_table_entry() -> None:
    sel = select("litert:delegate=/opt/vendor/libnpu.so;core=1", [CPU_LITERT], "tflite")
    (cand,) = sel.candidates
    assert cand.device.request == "litert:delegate=/opt/vendor/libnpu.so;core=1", "the request selects it again"
    assert dict(cand.device.options) == {"library": "/opt/vendor/libnpu.so", "core": "1"}


def test_select_is_pure() -> None:
    table = list(X86_NPU_BOX)
    first = select(["npu", "auto"], table, "tflite")
    assert select(["npu", "auto"], table, "tflite") == first
    assert table == X86_NPU_BOX


def test_empty_request_list() -> None:
    with pytest.raises(er.DeviceRequestError, match="empty device request list"):
        select([], [CPU_LITERT], "tflite")


# Whole machines this one is not, every backend at once: what `auto` tries for each format.
LITERT_GPU = Device("litert", "gpu", "gpu", "LiteRT GPU accelerator (Vulkan)", False)
LITERT_GPU_NO_VULKAN = Device(
    "litert", "gpu", "gpu", "LiteRT GPU", None, False, "no GPU driver: libvulkan.so.1 not found"
)
LITERT_NPU = Device("litert", "npu", "npu", "LiteRT NPU (Intel dispatch)", True)
LITERT_NPU_MISSING = Device("litert", "npu", "npu", "LiteRT NPU", True, False, "no NPU dispatch library")
ORT_TRT = Device(
    "onnxruntime", "TensorRT", "gpu", "TensorRT", True, options=(("provider", "TensorrtExecutionProvider"),)
)
ORT_CUDA = Device("onnxruntime", "CUDA", "gpu", "CUDA", True, options=(("provider", "CUDAExecutionProvider"),))
ORT_CPU = Device("onnxruntime", "CPU", "cpu", "MLAS", True, options=(("provider", "CPUExecutionProvider"),))
OV_ARM = Device("openvino", "CPU", "cpu", "ARM CPU", True, capabilities=("FP32", "INT8"))

WHOLE_MACHINES = {
    "Jetson Orin (JetPack 6, onnxruntime-gpu, Vulkan)": (
        [CPU_LITERT, EDGETPU_MISSING, LITERT_GPU, LITERT_NPU_MISSING, OV_ARM, ORT_TRT, ORT_CUDA, ORT_CPU],
        ["litert:cpu", "openvino:CPU"],  # litert:gpu has no int8 kernels: named only
        ["onnxruntime:TensorRT", "onnxruntime:CUDA", "onnxruntime:CPU", "openvino:CPU"],
    ),
    "Raspberry Pi 5 (Mesa v3dv Vulkan, plain onnxruntime)": (
        [CPU_LITERT, EDGETPU_MISSING, LITERT_GPU, LITERT_NPU_MISSING, OV_ARM, ORT_CPU],
        ["litert:cpu", "openvino:CPU"],
        ["onnxruntime:CPU", "openvino:CPU"],
    ),
    "Raspberry Pi 4 with a Coral USB (no Vulkan driver)": (
        [CPU_LITERT, EDGETPU, LITERT_GPU_NO_VULKAN, LITERT_NPU_MISSING, OV_ARM],
        ["litert:edgetpu", "litert:cpu", "openvino:CPU"],
        ["openvino:CPU"],
    ),
    "Intel Core Ultra box (NPU, Arc iGPU, onnxruntime CPU)": (
        [CPU_LITERT, LITERT_GPU_NO_VULKAN, LITERT_NPU, NPU_OV, GPU0_OV, CPU_OV, ORT_CPU],
        ["litert:npu", "openvino:NPU", "openvino:GPU.0", "litert:cpu", "openvino:CPU"],
        ["openvino:NPU", "openvino:GPU.0", "onnxruntime:CPU", "openvino:CPU"],
    ),
}


@pytest.mark.parametrize("name", list(WHOLE_MACHINES))
def test_auto_on_whole_machines(name: str) -> None:
    table, tflite, onnx = WHOLE_MACHINES[name]
    assert [c.device.request for c in select("auto", table, "tflite").candidates] == tflite
    assert [c.device.request for c in select("auto", table, "onnx").candidates] == onnx
    # every device left out has its reason
    for passed in select("auto", table, "onnx").passed_over:
        assert passed.reason
