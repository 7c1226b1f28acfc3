"""The ONNX Runtime backend, run for real on its CPU provider (the GPU providers are tables:
tests/test_onnxruntime_providers.py)."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import MLPERF, MODELS, ROOT, backend_available, random_input

import edge_runtime as er
from edge_runtime.device_info import Device
from edge_runtime.errors import InputError, ModelClosedError, ModelLoadError

ort: Any = pytest.importorskip("onnxruntime")

DIGITS_ONNX = MODELS / "digits_cnn_int8.onnx"
needs_openvino = pytest.mark.skipif(not backend_available("openvino"), reason="openvino not installed")


def bare(path: Path, threads: int | None = None) -> Any:
    """A bare ONNX Runtime session with the options the backend uses (the reference)."""
    so = ort.SessionOptions()
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def kws_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The MLPerf Tiny keyword-spotting model converted to ONNX by scripts/tflite_to_onnx.py
    (into a temporary folder: the reference models are never copied into the repository)."""
    src = MLPERF / "kws_ref_model.tflite"
    if not src.is_file():
        pytest.skip(f"MLPerf Tiny reference models not found at {MLPERF}")
    sys.path.insert(0, str(ROOT / "scripts"))
    import tflite_to_onnx  # type: ignore[import-not-found]

    out = tmp_path_factory.mktemp("kws") / "kws.onnx"
    tflite_to_onnx.convert_file(src, out)
    return out


@pytest.mark.parametrize("threads", [None, 1])
def test_shipped_onnx_is_bit_exact_with_bare_onnxruntime(threads: int | None) -> None:
    ref = bare(DIGITS_ONNX, threads)
    with er.load_model(DIGITS_ONNX, "onnxruntime:CPU", threads=threads) as model:
        assert model.backend == "onnxruntime" and model.format == "onnx"
        for seed in range(5):
            x = random_input(model.inputs[0], seed)
            expected = ref.run(None, {ref.get_inputs()[0].name: x})[0]
            np.testing.assert_array_equal(model.infer_raw(x)[0], expected)
            # the in-place path (bound input memory) gives the same bytes

            def fill(buf: np.ndarray[Any, Any], x: np.ndarray[Any, Any] = x) -> None:
                np.copyto(buf, x)

            np.testing.assert_array_equal(model.infer_in_place(fill)[0], expected)


def test_mlperf_kws_onnx_is_bit_exact_with_bare_onnxruntime(kws_onnx: Path) -> None:
    ref = bare(kws_onnx, 1)
    with er.load_model(kws_onnx, "onnxruntime:CPU", threads=1) as model:
        assert model.inputs[0].quantization is not None, "the int8 input's scale is read from the graph"
        for seed in range(3):
            x = random_input(model.inputs[0], seed)
            np.testing.assert_array_equal(model.infer_raw(x)[0], ref.run(None, {ref.get_inputs()[0].name: x})[0])


def test_shipped_onnx_has_the_tflite_specs_labels_and_accuracy() -> None:
    data = np.load(MODELS / "digits_cnn_int8_test.npz")
    with (
        er.load_model(DIGITS_ONNX) as onnx_model,
        er.load_model(MODELS / "digits_cnn_int8.tflite", "litert:cpu") as tfl,
    ):
        assert onnx_model.device == "onnxruntime:CPU", "auto reads .onnx with ONNX Runtime first"
        for a, b in zip(onnx_model.inputs + onnx_model.outputs, tfl.inputs + tfl.outputs):
            assert (a.shape, a.dtype, a.quantization) == (b.shape, b.dtype, b.quantization)
        assert onnx_model.labels == tfl.labels, "the sidecar is shared by stem"
        hits = sum(onnx_model.classify(x[None]).label_index == y for x, y in zip(data["x"], data["y"]))
    readme = (MODELS / "README.md").read_text()
    assert hits == len(data["y"]) and "100.00 %" in readme.split("digits_cnn_int8.onnx")[-1]


def test_placement_is_reported(cli: Any) -> None:
    with er.load_model(DIGITS_ONNX, "onnxruntime:CPU") as model:
        assert model.fully_accelerated is True
        assert model.execution_devices == ("onnxruntime:CPU",)
        assert re.fullmatch(r"all \d+ nodes on CPU", model.placement), model.placement
        assert model.to_dict()["placement"] == model.placement
    out = cli("info", str(DIGITS_ONNX), "-d", "onnxruntime:CPU")
    assert out.returncode == 0, out.stderr
    assert "placement: all" in out.stdout and "nodes on CPU" in out.stdout
    js = json.loads(cli("info", str(DIGITS_ONNX), "-d", "onnxruntime:CPU", "--json").stdout)
    assert js["fully_accelerated"] is True and js["execution_devices"] == ["onnxruntime:CPU"]


def test_devices_lists_the_providers_with_reasons(cli: Any) -> None:
    devices = {d.request: d for d in er.devices() if d.backend == "onnxruntime"}
    assert devices["onnxruntime:CPU"].available
    cuda = devices["onnxruntime:CUDA"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert not cuda.available and "onnxruntime-gpu" in cuda.reason
    out = cli("devices")
    assert out.returncode == 0 and "onnxruntime:CPU" in out.stdout and "onnxruntime:TensorRT" in out.stdout


def test_dynamic_batch_is_fixed_and_rows_match(onnx_model: tuple[Path, Any]) -> None:
    path, _ = onnx_model
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, size=(4, 4)).astype(np.int8)
    with er.load_model(path, "onnxruntime:CPU", batch=4) as batched, er.load_model(path, "onnxruntime:CPU") as single:
        assert batched.inputs[0].shape == (4, 4) and batched.outputs[0].shape == (4, 3)
        assert single.inputs[0].shape == (1, 4)
        out = batched.infer_raw(x)[0]
        for i in range(4):
            np.testing.assert_array_equal(out[i : i + 1], single.infer_raw(x[i : i + 1])[0])


def test_fixed_batch_model_refuses_a_batch_with_the_reason() -> None:
    with pytest.raises(ModelLoadError) as err:
        er.load_model(DIGITS_ONNX, "onnxruntime:CPU", batch=2)
    text = str(err.value)
    assert "fixed first dimension of 1" in text and str(DIGITS_ONNX) in text and "onnxruntime:CPU" in text


def test_submit_runs_in_parallel_and_matches() -> None:
    with er.load_model(DIGITS_ONNX, "onnxruntime:CPU", threads=1) as model:
        xs = [random_input(model.inputs[0], s) for s in range(16)]
        expected = [model.infer(x)[0] for x in xs]
        pool = model.start_workers(2)
        assert pool.parallel
        got = [f.result(timeout=30)[0] for f in [model.submit(x) for x in xs]]
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


def test_bad_input_closed_model_and_output_ownership() -> None:
    model = er.load_model(DIGITS_ONNX, "onnxruntime:CPU")
    with pytest.raises(InputError):
        model.infer_raw(np.zeros((1, 8, 8), np.int8))
    x = random_input(model.inputs[0], 1)
    first = model.infer_raw(x)[0]
    keep = first.copy()
    model.infer_raw(random_input(model.inputs[0], 2))
    np.testing.assert_array_equal(first, keep)  # a returned output is the caller's, not a view
    view = model.session.output_view(0)
    assert not view.flags.writeable
    model.close()
    with pytest.raises(ModelClosedError):
        model.infer_raw(x)


@needs_openvino
def test_a_model_onnxruntime_refuses_falls_back_to_openvino_loudly(
    onnx_model: tuple[Path, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An IR version far newer than any ONNX Runtime reads (99; 1.31 stops at 13) is refused by
    ONNX Runtime and read by OpenVINO: the fallback crosses backends and says why."""
    onnx = pytest.importorskip("onnx")
    path, _ = onnx_model
    model_proto = onnx.load(str(path))
    model_proto.ir_version = 99
    newer = tmp_path / "ir99.onnx"
    onnx.save(model_proto, str(newer))
    with caplog.at_level(logging.WARNING, logger="edge_runtime"), er.load_model(newer) as model:
        assert model.device == "openvino:CPU"
    assert (
        "onnxruntime:CPU: ONNX Runtime could not make a session: FAIL: Unsupported model IR version: 99"
        in (model.attempts[-1])
    )
    (record,) = caplog.records
    assert "fell back to openvino:CPU" in record.getMessage()


def test_a_gpu_provider_the_build_lacks_falls_back_to_the_cpu(caplog: pytest.LogCaptureFixture) -> None:
    """A device table from another machine says CUDA is there; the installed build has no CUDA
    provider: the session is refused with that reason (not silently made on the CPU by ONNX
    Runtime's own fallback) and ``load`` falls back loudly."""
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this build has the CUDA provider")
    table = [
        Device("onnxruntime", "CUDA", "gpu", "NVIDIA CUDA", True, options=(("provider", "CUDAExecutionProvider"),)),
        Device("onnxruntime", "CPU", "cpu", "CPU", True, options=(("provider", "CPUExecutionProvider"),)),
    ]
    with (
        caplog.at_level(logging.WARNING, logger="edge_runtime"),
        er.load_model(DIGITS_ONNX, "auto", devices=table) as m,
    ):
        assert m.device == "onnxruntime:CPU"
    assert m.attempts[0].startswith("onnxruntime:CUDA: CUDAExecutionProvider is not in this ONNX Runtime build")
    assert "fell back to onnxruntime:CPU" in caplog.records[0].getMessage()


def test_missing_onnxruntime_names_the_package(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        "import edge_runtime as er\n"
        "try:\n"
        f"    er.load_model({str(DIGITS_ONNX)!r}, 'onnxruntime:CPU')\n"
        "except er.EdgeRuntimeError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert "pip install onnxruntime" in out.stdout and "'.[onnxruntime]'" in out.stdout, out.stdout + out.stderr


def test_isolated_load_reports_the_same_placement() -> None:
    with er.load_model(DIGITS_ONNX, "onnxruntime:CPU", isolate=True) as model:
        assert model.placement.endswith("nodes on CPU") and model.fully_accelerated is True
        x = random_input(model.inputs[0], 0)
        with er.load_model(DIGITS_ONNX, "onnxruntime:CPU") as plain:
            np.testing.assert_array_equal(model.infer_raw(x)[0], plain.infer_raw(x)[0])


def test_placement_from_a_real_profile(tmp_path: Path) -> None:
    """Older builds (no graph assignment record) report placement from one run's profile:
    ``profile_placement`` over a profile ONNX Runtime really wrote, and over a GPU table."""
    from edge_runtime.backends.onnxrt import profile_placement

    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp_path / "p")
    sess = ort.InferenceSession(str(DIGITS_ONNX), so, providers=["CPUExecutionProvider"])
    for _ in range(2):  # the same node twice counts once
        sess.run(None, {sess.get_inputs()[0].name: np.zeros((1, 8, 8, 1), np.int8)})
    events = json.loads(Path(sess.end_profiling()).read_text())
    counts = profile_placement(events)
    assert set(counts) == {"CPUExecutionProvider"} and counts["CPUExecutionProvider"] >= 3
    gpu = [
        {"cat": "Node", "name": "conv_kernel_time", "args": {"provider": "CUDAExecutionProvider"}},
        {"cat": "Node", "name": "conv_fence_before", "args": {"provider": "CUDAExecutionProvider"}},
        {"cat": "Node", "name": "q_kernel_time", "args": {"provider": "CPUExecutionProvider"}},
        {"cat": "Session", "name": "model_run"},
    ]
    assert profile_placement(gpu) == {"CUDAExecutionProvider": 1, "CPUExecutionProvider": 1}
    assert profile_placement({"not": "a list"}) == {}


@needs_openvino
def test_auto_measure_times_onnxruntime_and_openvino(tmp_path: Path) -> None:
    with er.load_model(DIGITS_ONNX, "auto:measure", measure_cache=tmp_path) as model:
        measured = model.selection.measurement
        assert measured is not None
        requests = {t.request for t in measured.table if t.error is None}
        assert {"onnxruntime:CPU", "openvino:CPU"} <= requests
        assert model.device == measured.fastest.request


def test_qoperator_model_runs_with_its_quantization_read(tmp_path: Path) -> None:
    """QOperator form (QLinearMatMul reading the int8 input directly): the input's and output's
    scale and zero point are read from the op, and the result matches the arithmetic."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = np.array([[1, -2, 3], [4, 5, -6], [7, -8, 9], [-10, 11, 12]], np.int8)
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.array(0.05, np.float32), "xs"),
        numpy_helper.from_array(np.array(3, np.int8), "xz"),
        numpy_helper.from_array(np.array(0.02, np.float32), "ws"),
        numpy_helper.from_array(np.array(0, np.int8), "wz"),
        numpy_helper.from_array(np.array(0.1, np.float32), "ys"),
        numpy_helper.from_array(np.array(-5, np.int8), "yz"),
    ]
    node = helper.make_node("QLinearMatMul", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"])
    graph = helper.make_graph(
        [node],
        "qop",
        [helper.make_tensor_value_info("x", TensorProto.INT8, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.INT8, [1, 3])],
        inits,
    )
    model_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model_proto.ir_version = 8
    path = tmp_path / "qop.onnx"
    onnx.save(model_proto, str(path))
    with er.load_model(path, "onnxruntime:CPU") as model:
        assert model.inputs[0].quantization == er.Quantization((pytest.approx(0.05),), (3,))  # type: ignore[arg-type]
        assert model.outputs[0].quantization == er.Quantization((pytest.approx(0.1),), (-5,))  # type: ignore[arg-type]
        x = np.array([[10, -20, 30, 100]], np.int8)
        real = ((x.astype(np.float32) - 3) * 0.05) @ (w.astype(np.float32) * 0.02)
        expected = np.clip(np.rint(real / np.float32(0.1)) - 5, -128, 127).astype(np.int8)
        got = model.infer_raw(x)[0]
        assert np.max(np.abs(got.astype(int) - expected.astype(int))) <= 1  # requantization rounding
        np.testing.assert_allclose(model.infer(x.astype(np.float32) * 0.05 - 0.15)[0], real, atol=0.1)


def test_an_option_the_provider_does_not_have_is_refused() -> None:
    """ONNX Runtime would ignore a misspelt provider option; the load refuses it, naming it."""
    with pytest.raises(ModelLoadError) as err:
        er.load_model(DIGITS_ONNX, "onnxruntime:CPU;devce_id=1")
    assert "CPUExecutionProvider has no option 'devce_id' (it takes: none)" in str(err.value)
