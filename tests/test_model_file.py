"""Bad model files: each raises the package's own error naming the path and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import DATA, backend_available

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


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_model_is_rejected_by_every_backend(tmp_path: Path, digits_model: Path, keep: float) -> None:
    content = digits_model.read_bytes()
    p = _write(tmp_path, "truncated.tflite", content[: int(len(content) * keep)])
    with pytest.raises((er.ModelLoadError, er.ModelFileError)) as info:
        er.load(p)
    assert str(p) in str(info.value)
    if isinstance(info.value, er.ModelLoadError) and backend_available("litert"):
        assert any("verifier" in a for a in info.value.attempts), info.value.attempts


def test_truncated_model_on_litert_names_the_verifier(tmp_path: Path, digits_model: Path) -> None:
    if not backend_available("litert"):
        pytest.skip("litert not installed")
    content = digits_model.read_bytes()
    p = _write(tmp_path, "truncated.tflite", content[: len(content) // 2])
    with pytest.raises(er.ModelLoadError) as info:
        er.load(p, "litert:cpu")
    assert "litert:cpu: the TFLite flatbuffer verifier rejected the model" in str(info.value)


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


def test_model_bytes_are_read_once(tmp_path: Path, digits_model: Path) -> None:
    """The backend loads the checked bytes: changing the file afterwards changes nothing."""
    from edge_runtime.model_file import read_model_file

    p = _write(tmp_path, "m.tflite", digits_model.read_bytes())

    source = read_model_file(p)
    p.write_bytes(b"")
    assert source.content == digits_model.read_bytes()
