"""Edge TPU enumeration (libedgetpu's own listing, in a child) and Edge TPU compilation checks.

The decisions are pure functions over tables; the child-process handling runs for real (a child
that aborts, one that hangs, a real library without the symbol, and, where a C compiler is
there, a stand-in libedgetpu that lists two TPUs); ``edgetpu_compiled`` reads real model bytes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA

from edge_runtime.backends import edgetpu_probe as ep
from edge_runtime.backends import litert
from edge_runtime.backends.probe_child import ChildResult

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "models" / "digits_cnn_int8.tflite"
CUSTOM_OP = DATA / "custom_op.tflite"
TEST_OP = b"EdgeRuntimeTestOnlyOp"

LISTINGS: dict[str, tuple[ChildResult, ep.Listing]] = {
    "one usb, one pci": (
        ChildResult(0, '[[1, "/sys/bus/usb/devices/2-1"], [0, "/dev/apex_0"]]\n', ""),
        ep.Listing((("usb", "/sys/bus/usb/devices/2-1"), ("pci", "/dev/apex_0"))),
    ),
    "none": (ChildResult(0, "[]\n", ""), ep.Listing(())),
    "unknown type": (ChildResult(0, '[[7, "/dev/x"]]', ""), ep.Listing((("type7", "/dev/x"),))),
    "library output before the listing": (
        ChildResult(0, 'I edgetpu: hello\n[[1, "/sys/bus/usb/devices/1-1"]]\n', ""),
        ep.Listing((("usb", "/sys/bus/usb/devices/1-1"),)),
    ),
    "no symbol": (
        ChildResult(2, '{"error": "undefined symbol: edgetpu_list_devices"}\n', ""),
        ep.Listing(error="cannot call edgetpu_list_devices: undefined symbol: edgetpu_list_devices"),
    ),
    "SIGSEGV": (
        ChildResult(-11, "", "Fatal Python error: Segmentation fault\n"),
        ep.Listing(
            error="edgetpu_list_devices failed in its probe process "
            "(killed by SIGSEGV: Fatal Python error: Segmentation fault)"
        ),
    ),
    "hang": (
        ChildResult(None, "", ""),
        ep.Listing(error="edgetpu_list_devices failed in its probe process (no answer within the timeout (killed))"),
    ),
    "no listing printed": (ChildResult(0, "", ""), ep.Listing(error="edgetpu_list_devices printed no listing")),
}


@pytest.mark.parametrize("case", LISTINGS)
def test_parse_listing(case: str) -> None:
    result, listing = LISTINGS[case]
    assert ep.parse_listing(result) == listing


LIB = "/usr/lib/x86_64-linux-gnu/libedgetpu.so.1"
DECISIONS: dict[str, tuple[str | None, ep.Listing | None, bool, str, str]] = {
    "library absent": (
        None,
        None,
        False,
        "libedgetpu.so.1 not found: install libedgetpu1-std (Coral apt repository)",
        "Coral Edge TPU",
    ),
    "library, no device": (
        LIB,
        ep.Listing(()),
        False,
        "libedgetpu.so.1 found but no Edge TPU attached (edgetpu_list_devices returned 0)",
        f"Coral Edge TPU ({LIB})",
    ),
    "library, one USB TPU": (
        LIB,
        ep.Listing((("usb", "/sys/bus/usb/devices/2-1"),)),
        True,
        "1 Edge TPU attached; litert:edgetpu uses the first (usb:0)",
        f"Coral Edge TPU x1 (usb /sys/bus/usb/devices/2-1) via {LIB}",
    ),
    "library, two TPUs": (
        LIB,
        ep.Listing((("pci", "/dev/apex_0"), ("usb", "/sys/bus/usb/devices/2-1"))),
        True,
        "2 Edge TPUs attached; litert:edgetpu uses the first (pci:0)",
        f"Coral Edge TPU x2 (pci /dev/apex_0, usb /sys/bus/usb/devices/2-1) via {LIB}",
    ),
    "listing crashed": (
        LIB,
        ep.Listing(error="edgetpu_list_devices failed in its probe process (killed by SIGABRT)"),
        False,
        f"libedgetpu.so.1 found ({LIB}) but listing its devices failed: edgetpu_list_devices failed in its "
        "probe process (killed by SIGABRT)",
        "Coral Edge TPU",
    ),
}


@pytest.mark.parametrize("case", DECISIONS)
def test_edgetpu_status(case: str) -> None:
    library, listing, available, reason, full = DECISIONS[case]
    assert ep.edgetpu_status(library, listing) == (available, reason, full)


def test_a_child_that_aborts_is_reported_with_its_signal() -> None:
    listing = ep.list_edgetpus("/nonexistent/libedgetpu.so.1", command=(sys.executable, "-c", "import os; os.abort()"))
    assert listing.devices == ()
    assert "killed by SIGABRT" in listing.error
    ok, reason, _ = ep.edgetpu_status("/x/libedgetpu.so.1", listing)
    assert not ok and "SIGABRT" in reason


def test_a_child_that_hangs_is_killed_at_the_timeout() -> None:
    listing = ep.list_edgetpus("lib", command=(sys.executable, "-c", "import signal; signal.pause()"), timeout_s=1.0)
    assert "no answer within the timeout" in listing.error


def test_a_real_library_without_the_call() -> None:
    import ai_edge_litert

    lib = str(Path(ai_edge_litert.__file__).parent / "libLiteRt.so")
    listing = ep.list_edgetpus(lib)
    assert listing.error.startswith("cannot call edgetpu_list_devices: ")
    assert "edgetpu_list_devices" in listing.error.split(": ", 1)[1]


def test_a_library_that_cannot_be_opened() -> None:
    listing = ep.list_edgetpus("/nonexistent/libedgetpu.so.1")
    assert listing.error.startswith("cannot call edgetpu_list_devices: ")
    assert "/nonexistent/libedgetpu.so.1" in listing.error


FAKE_LIBEDGETPU = r"""
#include <stdlib.h>
enum edgetpu_device_type { EDGETPU_APEX_PCI = 0, EDGETPU_APEX_USB = 1 };
struct edgetpu_device { enum edgetpu_device_type type; const char* path; };
static int n_devices = NDEV;
struct edgetpu_device* edgetpu_list_devices(size_t* num_devices) {
  *num_devices = (size_t)n_devices;
  if (n_devices == 0) return NULL;
  struct edgetpu_device* d = calloc(2, sizeof *d);
  d[0].type = EDGETPU_APEX_USB; d[0].path = "/sys/bus/usb/devices/2-1";
  d[1].type = EDGETPU_APEX_PCI; d[1].path = "/dev/apex_0";
  return d;
}
void edgetpu_free_devices(struct edgetpu_device* d) { free(d); }
"""


@pytest.mark.parametrize("ndev", [0, 2])
def test_the_listing_call_through_ctypes(tmp_path: Path, ndev: int) -> None:
    """A stand-in libedgetpu with the real C signature, so the ctypes code runs for real."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build a stand-in libedgetpu")
    src = tmp_path / "fake_edgetpu.c"
    src.write_text(FAKE_LIBEDGETPU.replace("NDEV", str(ndev)))
    lib = tmp_path / "libedgetpu.so.1"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    listing = ep.list_edgetpus(str(lib))
    if ndev == 0:
        assert listing == ep.Listing(())
        assert ep.edgetpu_status(str(lib), listing)[1] == (
            "libedgetpu.so.1 found but no Edge TPU attached (edgetpu_list_devices returned 0)"
        )
    else:
        assert listing == ep.Listing((("usb", "/sys/bus/usb/devices/2-1"), ("pci", "/dev/apex_0")))
        device = ep.edgetpu_device(str(lib))
        assert device.available and device.request == "litert:edgetpu"
        assert device.options == (("library", str(lib)),)
        assert "x2" in device.full_name


def test_probe_here() -> None:
    tpu = next(d for d in litert.probe_devices(names=("edgetpu",)) if d.name == "edgetpu")
    assert tpu.reason
    if litert.find_library("libedgetpu.so.1") is None:
        assert not tpu.available and tpu.reason.startswith("libedgetpu.so.1 not found")


# --------------------------------------------------------------------------
# Compiled for the Edge TPU or not
# --------------------------------------------------------------------------


def renamed_custom_op(content: bytes, new: bytes) -> bytes:
    """``content`` with its custom op code renamed in place: the string's length prefix is set to
    ``len(new)`` and the bytes rewritten (zero-terminated); ``new`` must not be longer."""
    at = content.index(TEST_OP)
    assert int.from_bytes(content[at - 4 : at], "little") == len(TEST_OP) and len(new) <= len(TEST_OP)
    out = bytearray(content)
    out[at - 4 : at] = len(new).to_bytes(4, "little")
    out[at : at + len(TEST_OP)] = new.ljust(len(TEST_OP), b"\0")
    return bytes(out)


def all_on_tpu_model() -> bytes:
    """What edgetpu_compiler makes of a model it maps entirely: one edgetpu-custom-op."""
    import flatbuffers  # type: ignore[import-untyped]
    from ai_edge_litert import schema_py_generated as fb

    code = fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = fb.BuiltinOperator.CUSTOM
    code.customCode = ep.EDGETPU_CUSTOM_OP
    tensors = []
    for name in ("in", "out"):
        t = fb.TensorT()
        t.shape, t.type, t.buffer, t.name = [1, 4], fb.TensorType.UINT8, 0, name
        tensors.append(t)
    op = fb.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0], [1]
    graph = fb.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs, graph.operators = tensors, [0], [1], [op]
    model = fb.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, [code], [graph], [fb.BufferT()]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def test_shipped_model_is_not_compiled() -> None:
    content = DIGITS.read_bytes()
    assert not ep.edgetpu_compiled(content)
    assert ep.edgetpu_ops(content) == ep.EdgeTpuOps(11, 0)
    assert ep.edgetpu_placement(content, "litert:edgetpu") == (
        ("litert:cpu",),
        "not compiled for the Edge TPU (no edgetpu-custom-op; run edgetpu_compiler): runs on the CPU",
    )


def test_another_custom_op_is_not_the_edge_tpu() -> None:
    content = CUSTOM_OP.read_bytes()
    assert TEST_OP.decode() in ep.model_ops(content)
    assert not ep.edgetpu_compiled(content)


def test_partly_compiled_model() -> None:
    content = renamed_custom_op(CUSTOM_OP.read_bytes(), ep.EDGETPU_CUSTOM_OP.encode())
    assert ep.edgetpu_compiled(content)
    assert ep.edgetpu_ops(content) == ep.EdgeTpuOps(11, 1)
    devices, reason = ep.edgetpu_placement(content, "litert:edgetpu:usb:0")
    assert devices == ("litert:edgetpu:usb:0", "litert:cpu")
    assert reason.startswith("partly on the Edge TPU: 1 edgetpu-custom-op of 11 ops; the other 10")


def test_fully_compiled_model() -> None:
    content = all_on_tpu_model()
    assert ep.edgetpu_ops(content) == ep.EdgeTpuOps(1, 1)
    assert ep.edgetpu_placement(content, "litert:edgetpu") == (("litert:edgetpu",), "")


@pytest.mark.parametrize("junk", [b"", b"\x00" * 3, b"\xff" * 64, DIGITS.read_bytes()[:200]])
def test_unreadable_bytes(junk: bytes) -> None:
    assert not ep.edgetpu_compiled(junk)
    with pytest.raises(ValueError, match="not a readable TFLite flatbuffer"):
        ep.model_ops(junk)
    assert ep.edgetpu_placement(junk, "litert:edgetpu") == ((), "")
