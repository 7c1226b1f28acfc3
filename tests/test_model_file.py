"""Bad model files: each raises the package's own error naming the path and the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import DATA, MLPERF_MODELS, MODELS, SHIPPED, backend_available

import edge_runtime as er


def _write(tmp_path: Path, name: str, content: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(content)
    return p


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(er.ModelFileError, match="no such file") as info:
        er.load(tmp_path / "absent.tflite")
    assert str(tmp_path / "absent.tflite") in str(info.value)


def test_empty_file(tmp_path: Path) -> None:
    p = _write(tmp_path, "empty.tflite", b"")
    with pytest.raises(er.ModelFileError, match=r"empty file \(0 bytes\)") as info:
        er.load(p)
    assert info.value.path == str(p)


def test_random_bytes(tmp_path: Path) -> None:
    p = _write(tmp_path, "noise.tflite", bytes(range(256)) * 8)
    with pytest.raises(er.ModelFileError, match="not a TFLite flatbuffer: file identifier"):
        er.load(p)


def test_eight_byte_fake_header(tmp_path: Path) -> None:
    p = _write(tmp_path, "fake.tflite", b"\x10\x00\x00\x00TFL3")
    with pytest.raises(er.ModelFileError, match="truncated TFLite model"):
        er.load(p)


def test_root_offset_beyond_file(tmp_path: Path) -> None:
    p = _write(tmp_path, "bad_root.tflite", b"\xff\xff\x00\x00TFL3" + b"\x00" * 24)
    with pytest.raises(er.ModelFileError, match="root table offset 65535 lies beyond"):
        er.load(p)


@pytest.mark.parametrize("keep", [0.02, 0.25, 0.5, 0.9, 0.999])
def test_truncated_model_is_caught_before_any_interpreter(tmp_path: Path, digits_model: Path, keep: float) -> None:
    content = digits_model.read_bytes()
    p = _write(tmp_path, "truncated.tflite", content[: int(len(content) * keep)])
    with pytest.raises(er.ModelFileError, match=r"truncated or corrupt TFLite model: .* lies outside the") as info:
        er.load(p)
    assert info.value.path == str(p)


def test_every_shipped_and_reference_model_passes_the_structure_check(digits_model: Path) -> None:
    from edge_runtime.tflite_check import check_tflite

    for path in [*SHIPPED, *MLPERF_MODELS, DATA / "custom_op.tflite"]:
        check_tflite(path.read_bytes(), str(path))


def test_bad_indices_are_caught(tmp_path: Path, digits_model: Path) -> None:
    """A subgraph input index rewritten to point past the tensor list."""
    from edge_runtime.tflite_check import check_tflite

    content = bytearray(digits_model.read_bytes())
    check_tflite(bytes(content), "ok")
    caught = 0
    for pos in range(0, len(content) - 4, 4):  # try every aligned word: some are indices
        original = content[pos : pos + 4]
        content[pos : pos + 4] = (10_000).to_bytes(4, "little")
        try:
            check_tflite(bytes(content), "x")
        except er.ModelFileError as exc:
            caught += "names tensor 10000" in exc.reason or "names buffer 10000" in exc.reason
        content[pos : pos + 4] = original
    assert caught >= 3


_CHILD = """
import random, sys
import numpy as np
import edge_runtime as er
content = open(sys.argv[1], "rb").read()
rng = random.Random(int(sys.argv[2]))
outcomes = {"loaded": 0, "refused": 0}
for _ in range(int(sys.argv[3])):
    b = bytearray(content)
    for _ in range(rng.choice([1, 2, 4])):
        b[rng.randrange(min(len(b), 4096)) if rng.random() < 0.5 else rng.randrange(len(b))] = rng.randrange(256)
    path = sys.argv[4]
    open(path, "wb").write(b)
    try:
        with er.load_model(path, sys.argv[5]) as m:
            m.infer_raw(np.zeros(m.inputs[0].shape, m.inputs[0].dtype))
        outcomes["loaded"] += 1
    except er.EdgeRuntimeError:
        outcomes["refused"] += 1
    # anything else (UnicodeDecodeError, RuntimeError, ...) escapes: the test fails on it
print(outcomes)
"""


@pytest.mark.parametrize("device", ["litert:cpu", "openvino:CPU"])
def test_corrupted_models_never_crash_the_process(tmp_path: Path, digits_model: Path, device: str) -> None:
    """Random byte corruption: every model either loads or raises our error; the process survives.

    Runs in a child process so that a crash is a failed test, not a dead test run.
    """
    import subprocess
    import sys

    if not backend_available(device.split(":")[0]):
        pytest.skip(f"{device} not installed")
    import ast

    models = [digits_model, *(p for p in MLPERF_MODELS if p.name == "kws_ref_model.tflite")]
    for model, seed in [(m, s) for m in models for s in (7, 21)]:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, str(model), str(seed), "25", str(tmp_path / "c.tflite"), device],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, (
            f"{model.name} seed {seed}: child died with {proc.returncode}: {proc.stderr[-2000:]}"
        )
        outcomes = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
        assert outcomes["loaded"] + outcomes["refused"] == 25
        assert outcomes["refused"] > 0, "random corruption was never noticed: the check checks nothing"


def test_ir_without_bin(tmp_path: Path, ir_model: Path) -> None:
    p = _write(tmp_path, "lonely.xml", ir_model.read_bytes())
    with pytest.raises(er.ModelFileError, match=r"weights file lonely.bin is missing") as info:
        er.load(p)
    assert info.value.path == str(p)


def test_xml_that_is_not_ir(tmp_path: Path) -> None:
    p = _write(tmp_path, "notes.xml", b"hello, not xml")
    with pytest.raises(er.ModelFileError, match="not an OpenVINO IR"):
        er.load(p)


def test_onnx_garbage(tmp_path: Path) -> None:
    p = _write(tmp_path, "junk.onnx", b"\x00garbage")
    with pytest.raises(er.ModelFileError, match="not an ONNX model"):
        er.load(p)


def test_unknown_suffix_and_directory(tmp_path: Path) -> None:
    p = _write(tmp_path, "model.pt", b"PK\x03\x04")
    with pytest.raises(er.ModelFileError, match="unknown model format"):
        er.load(p)
    with pytest.raises(er.ModelFileError, match="is a directory"):
        er.load(tmp_path)
    with pytest.raises(er.ModelFileError, match="weights file of an OpenVINO IR"):
        er.load(_write(tmp_path, "w.bin", b"\x01\x02"))


def test_unresolved_custom_op() -> None:
    if not backend_available("litert"):
        pytest.skip("litert not installed")
    path = DATA / "custom_op.tflite"
    with pytest.raises(er.ModelLoadError) as info:
        er.load(path, "litert:cpu")
    msg = str(info.value)
    assert "EdgeRuntimeTestOnlyOp" in msg and str(path) in msg and "litert:cpu" in msg


def test_unresolved_custom_op_on_auto_lists_every_backend_tried() -> None:
    path = DATA / "custom_op.tflite"
    with pytest.raises(er.ModelLoadError, match="no device could load the model") as info:
        er.load(path)
    tried = {a.split(":")[0] for a in info.value.attempts if "EdgeRuntimeTestOnlyOp" in a}
    expected = {b for b in ("litert", "openvino") if backend_available(b)}
    assert tried == expected, info.value.attempts


DIGITS = MODELS / "digits_cnn_int8.tflite"


def _first_tensor(content: bytes) -> Any:
    """Subgraph 0's first tensor, as the structural check reads it."""
    from edge_runtime.tflite_check import _Reader

    r = _Reader(content)
    return r.table(r.u32(0, "root"), "model").tables(2, "subgraphs")[0].tables(0, "tensors")[0]


def _with_dimension(content: bytes, value: int) -> bytes:
    """``content`` with the second dimension of subgraph 0's first tensor set to ``value``."""
    import struct

    start, n = _first_tensor(content).vector(0, 4, "shape")
    assert n >= 2
    out = bytearray(content)
    struct.pack_into("<i", out, start + 4, value)
    return bytes(out)


def test_a_huge_declared_dimension_is_refused_before_any_interpreter(tmp_path: Path) -> None:
    content = DIGITS.read_bytes()
    p = _write(tmp_path, "huge.tflite", _with_dimension(content, 1 << 30))  # a flipped high bit
    with pytest.raises(er.ModelFileError, match="more than the memory budget") as info:
        er.load(p, "litert:cpu")
    assert info.value.path == str(p) and "declare" in str(info.value)
    # the same file with a sane dimension loads: the budget is what refused it
    sane = _write(tmp_path, "sane.tflite", _with_dimension(content, _dimension(content)))
    with er.load(sane, "litert:cpu") as model:
        assert model.inputs


def _dimension(content: bytes) -> int:
    return int(_first_tensor(content).ints(0, "shape")[1])


def test_a_model_file_over_the_size_limit_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_runtime import model_file

    monkeypatch.setattr(model_file, "MAX_MODEL_BYTES", 1000)
    with pytest.raises(er.ModelFileError, match=r"bytes, more than the 1,000-byte limit") as info:
        er.load(DIGITS)
    assert info.value.path == str(DIGITS)


def test_ir_with_a_truncated_bin_is_refused(tmp_path: Path, ir_model: Path) -> None:
    xml = _write(tmp_path, "cut.xml", ir_model.read_bytes())
    weights = ir_model.with_suffix(".bin").read_bytes()
    _write(tmp_path, "cut.bin", weights[: len(weights) // 2])
    with pytest.raises(er.ModelFileError, match=r"the .xml reads up to byte") as info:
        er.load(xml, "openvino:CPU")
    assert info.value.path == str(xml) and f"hold {len(weights) // 2:,} bytes" in str(info.value)
    _write(tmp_path, "cut.bin", weights)  # whole again: it loads
    with er.load(xml, "openvino:CPU") as model:
        assert model.inputs
