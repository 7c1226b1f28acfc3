"""Loud fallback on the real backends: a device that fails to load gives way to the next."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, backend_available

import edge_runtime as er

needs_both = pytest.mark.skipif(
    not (backend_available("litert") and backend_available("openvino")), reason="needs both backends"
)


def test_missing_delegate_falls_back_to_cpu_with_reason(digits_model: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        model = er.load_model(digits_model, ["litert:delegate=/nonexistent/libnpu.so", "litert:cpu"])
    with model:
        assert model.device == "litert:cpu"
        assert model.attempts == (
            "litert:delegate=/nonexistent/libnpu.so: delegate library /nonexistent/libnpu.so not found",
        )
        assert [r.levelname for r in caplog.records] == ["WARNING"]
        assert caplog.records[0].getMessage() == (
            f"edge_runtime: litert:delegate=/nonexistent/libnpu.so could not load {digits_model}: "
            "delegate library /nonexistent/libnpu.so not found; fell back to litert:cpu"
        )
        assert model.infer_raw(np.zeros(model.inputs[0].shape, np.int8))[0].shape == model.outputs[0].shape


def test_when_every_device_refuses_the_error_alone_says_why(caplog: pytest.LogCaptureFixture) -> None:
    """No fallback happened: no warning, one ModelLoadError listing every device tried."""
    path = DATA / "custom_op.tflite"
    with caplog.at_level(logging.WARNING, logger="edge_runtime"), pytest.raises(er.ModelLoadError) as info:
        er.load(path, ["litert:delegate=/nonexistent/libnpu.so", "cpu"])
    assert caplog.records == []
    assert info.value.attempts[0].startswith("litert:delegate=/nonexistent/libnpu.so: delegate library")
    assert sum("EdgeRuntimeTestOnlyOp" in a for a in info.value.attempts) == len(
        [b for b in ("litert", "openvino") if backend_available(b)]
    )


def test_a_library_that_is_not_a_delegate_does_not_crash(digits_model: Path, tmp_path: Path) -> None:
    """A real .so without the delegate entry points: dlopen works, the delegate load fails cleanly."""
    import ctypes.util

    libm = ctypes.util.find_library("m")
    lib = next(
        (
            p
            for p in (
                f"/lib/x86_64-linux-gnu/{libm}",
                f"/usr/lib/x86_64-linux-gnu/{libm}",
                f"/lib/aarch64-linux-gnu/{libm}",
                f"/usr/lib/aarch64-linux-gnu/{libm}",
            )
            if libm and Path(p).is_file()
        ),
        None,
    )
    if lib is None:
        pytest.skip("no libm path found")
    with er.load(digits_model, [f"litert:delegate={lib}", "litert:cpu"]) as model:
        assert model.device == "litert:cpu"
        assert model.attempts[0] == (
            f"litert:delegate={lib}: delegate {lib} failed to load: not a TFLite external "
            "delegate (missing tflite_plugin_create_delegate, tflite_plugin_destroy_delegate)"
        )


def test_nothing_usable_raises_device_unavailable(digits_model: Path) -> None:
    with pytest.raises(er.DeviceUnavailableError) as info:
        er.load(digits_model, ["openvino:NPU", "tpu"])
    err = info.value
    assert str(digits_model) in str(err)
    assert any(a.startswith("openvino:NPU: not found") for a in err.attempts), err.attempts
    assert any(a.startswith("litert:edgetpu: libedgetpu.so.1 not found") for a in err.attempts), err.attempts


@needs_both
def test_broken_openvino_plugin_falls_back(digits_model: Path, tmp_path: Path) -> None:
    """A plugin library that exists but is not a plugin: probing reports it, loading falls back."""
    fake = tmp_path / "libfake_fpga_plugin.so"
    fake.write_bytes(b"\x7fELF not really")
    found = er.devices(openvino_plugins={"FAKEFPGA": str(fake)})
    entry = next(d for d in found if d.backend == "openvino" and d.name == "FAKEFPGA")
    assert not entry.available and entry.reason, entry
    with er.load(
        digits_model, ["openvino:FAKEFPGA", "openvino:CPU"], openvino_plugins={"FAKEFPGA": str(fake)}
    ) as model:
        assert model.device == "openvino:CPU"
        assert model.attempts[0].startswith("openvino:FAKEFPGA: ")


@needs_both
def test_auto_on_this_machine_picks_litert_cpu_for_tflite(digits_model: Path) -> None:
    with er.load(digits_model) as model:
        assert model.device == "litert:cpu"
        assert model.reason.startswith("auto -> auto: npu/tpu, then gpu, then cpu")
        assert any(a.startswith("litert:edgetpu:") for a in model.attempts)


def test_devices_lists_cpu_and_explains_the_rest() -> None:
    found = er.devices()
    cpus = [d for d in found if d.kind == "cpu" and d.available]
    assert cpus, found
    for d in found:
        assert d.available or d.reason, d


_BAD_DELEGATE = r"""
#include <stdlib.h>
#include <stdint.h>
typedef struct TfLiteDelegate {
  void* data_;
  int (*Prepare)(void* context, struct TfLiteDelegate* delegate);
  void* CopyFromBufferHandle; void* CopyToBufferHandle; void* FreeBufferHandle;
  int64_t flags; void* opaque_delegate_builder;
} TfLiteDelegate;
static int prepare(void* c, TfLiteDelegate* d) { (void)c; (void)d; return 1; /* kTfLiteError */ }
TfLiteDelegate* tflite_plugin_create_delegate(char** k, char** v, size_t n, void (*report)(const char*)) {
  (void)k; (void)v; (void)n; (void)report;
  TfLiteDelegate* d = calloc(1, sizeof(TfLiteDelegate)); d->Prepare = prepare; return d; }
void tflite_plugin_destroy_delegate(TfLiteDelegate* d) { free(d); }
"""


def test_a_delegate_that_refuses_the_model_falls_back(digits_model: Path, tmp_path: Path) -> None:
    """A real external delegate whose Prepare fails: the interpreter raises, we fall back to the CPU."""
    import shutil
    import subprocess

    if not backend_available("litert"):
        pytest.skip("litert not installed")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the test delegate")
    src = tmp_path / "bad_delegate.c"
    lib = tmp_path / "libbad_delegate.so"
    src.write_text(_BAD_DELEGATE)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True, capture_output=True)
    with er.load(digits_model, [f"litert:delegate={lib}", "litert:cpu"]) as model:
        assert model.device == "litert:cpu"
        assert model.attempts[0].startswith(f"litert:delegate={lib}: the interpreter or its delegate refused")


@needs_both
def test_an_openvino_device_that_compiles_but_cannot_make_a_request_falls_back(
    digits_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device whose infer request cannot be made (a driver that compiles, then fails) is a load
    failure like any other: the next device is tried, and the reason is kept. The fault is
    injected into the real compiled model's ``create_infer_request``: no device here fails so."""
    import openvino as ov

    def lost(self: object) -> object:
        raise RuntimeError("Exception from src/plugin.cpp:1:\ndevice lost\n")

    monkeypatch.setattr(ov.CompiledModel, "create_infer_request", lost)
    with er.load_model(digits_model, ["openvino:CPU", "litert:cpu"]) as model:
        assert model.device == "litert:cpu"
        assert model.attempts == ("openvino:CPU: cannot create an infer request on CPU: device lost",)
        assert model.classify(np.zeros(model.inputs[0].shape, np.float32)).exit_index == 0
