"""Reading and checking a model file before any backend sees it.

The bytes are read once; backends load from these bytes (LiteRT ``model_content=``,
OpenVINO IR from memory), so the file cannot change between the check and the load,
and LiteRT's flatbuffer verifier runs on exactly what was checked.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelFileError
from .tflite_check import check_tflite

TFLITE = "tflite"
OPENVINO_IR = "ir"
ONNX = "onnx"

#: Which backends can read each format, in the order ``auto`` tries them on a CPU.
#: LiteRT comes first for .tflite: it runs TFLite's own kernels, and on this kind of
#: model its Python call costs about half of OpenVINO's (see README, Performance). ONNX Runtime
#: comes first for .onnx: on the MLPerf Tiny models converted to int8 ONNX it ran KWS in 78 us,
#: ResNet-8 in 170 and VWW in 298 against OpenVINO's 212, 274 and 704 on the same files (one
#: thread, p50, 2026-11-30; AD01, fully connected only: 58 against 34). See README, Performance.
READERS: dict[str, tuple[str, ...]] = {
    TFLITE: ("litert", "openvino"),
    OPENVINO_IR: ("openvino",),
    ONNX: ("onnxruntime", "openvino"),
}

#: The largest model file read (bytes, 1 GiB): checked on the file's size before it is read,
#: so a wrong path to a disk image or a runaway download is refused, not read into memory.
MAX_MODEL_BYTES = 1 << 30

_TFLITE_IDENTIFIER = b"TFL3"
_MIN_TFLITE_BYTES = 16  # root offset (4) + identifier (4) + the smallest table


@dataclass(frozen=True)
class ModelSource:
    """A checked model: its format and the bytes every backend loads from.

    ``weights`` holds the ``.bin`` of an OpenVINO IR (``None`` otherwise). Both byte
    strings are owned by this record and never modified. ``graph``: for ONNX, the
    ``onnx_graph.Graph`` read while checking the file (ONNX Runtime reads the quantization
    from it), so the protobuf is walked once.
    """

    path: Path
    format: str
    content: bytes
    weights: bytes | None = None
    graph: Any = field(default=None, compare=False, repr=False)

    @property
    def size(self) -> int:
        return len(self.content) + (len(self.weights) if self.weights else 0)


def read_model_file(path: str | Path) -> ModelSource:
    """Read and check ``path``; raise ``ModelFileError`` naming the path and the reason."""
    p = Path(path)
    where = str(p)
    if p.is_dir():
        raise ModelFileError(
            "is a directory without bundle.json: not a model file, nor an early-exit bundle", path=where
        )
    try:
        size = p.stat().st_size
        if size > MAX_MODEL_BYTES:
            raise ModelFileError(
                f"{size:,} bytes, more than the {MAX_MODEL_BYTES:,}-byte limit for a model file", path=where
            )
        content = p.read_bytes()
    except FileNotFoundError:
        raise ModelFileError("no such file", path=where) from None
    except OSError as exc:
        raise ModelFileError(f"cannot read: {exc.strerror or exc}", path=where) from exc
    if not content:
        raise ModelFileError("empty file (0 bytes)", path=where)

    suffix = p.suffix.lower()
    if suffix == ".xml":
        return _read_ir(p, content)
    if suffix == ".onnx":
        return _check_onnx(p, content)
    if suffix == ".tflite" or content[4:8] == _TFLITE_IDENTIFIER:
        _check_tflite(where, content)
        return ModelSource(p, TFLITE, content)
    if suffix == ".bin":
        raise ModelFileError("this is the weights file of an OpenVINO IR; load the .xml beside it", path=where)
    raise ModelFileError(
        f"unknown model format (suffix {suffix or 'none'!r}; expected .tflite, .xml (OpenVINO IR) or .onnx)",
        path=where,
    )


def _check_tflite(where: str, content: bytes) -> None:
    if len(content) < 8 or content[4:8] != _TFLITE_IDENTIFIER:
        raise ModelFileError(
            f"not a TFLite flatbuffer: file identifier is {content[4:8]!r}, expected {_TFLITE_IDENTIFIER!r}"
            f" ({len(content)} bytes)",
            path=where,
        )
    if len(content) < _MIN_TFLITE_BYTES:
        raise ModelFileError(f"truncated TFLite model: only {len(content)} bytes", path=where)
    (root,) = struct.unpack_from("<I", content, 0)
    if root + 4 > len(content):
        raise ModelFileError(
            f"truncated TFLite model: root table offset {root} lies beyond the {len(content)}-byte file",
            path=where,
        )
    check_tflite(content, where)


def _read_ir(p: Path, content: bytes) -> ModelSource:
    head = content.lstrip()[:512]
    if not (head.startswith(b"<?xml") or head.startswith(b"<net")):
        raise ModelFileError("not an OpenVINO IR: the .xml does not start with an XML declaration", path=str(p))
    bin_path = p.with_suffix(".bin")
    try:
        weights = bin_path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(
            f"OpenVINO IR weights file {bin_path.name} is missing beside the .xml", path=str(p)
        ) from None
    except OSError as exc:
        raise ModelFileError(f"cannot read weights {bin_path}: {exc.strerror or exc}", path=str(p)) from exc
    needed = _ir_weights_needed(content)
    if needed > len(weights):
        raise ModelFileError(
            f"OpenVINO IR weights {bin_path.name} hold {len(weights):,} bytes, the .xml reads up to byte {needed:,}"
            " (a truncated or mismatched .bin)",
            path=str(p),
        )
    return ModelSource(p, OPENVINO_IR, content, weights)


_IR_DATA = re.compile(rb"<data\b([^>]*)>")
_IR_OFFSET = re.compile(rb'\boffset="(\d+)"')
_IR_SIZE = re.compile(rb'\bsize="(\d+)"')


def _ir_weights_needed(xml: bytes) -> int:
    """The end of the furthest weights slice the IR's layers read (``<data offset= size=>`` of
    its Const layers), in bytes of the .bin; 0 when none. A scan, not an XML parse: nothing in
    the file is expanded or resolved."""
    needed = 0
    for m in _IR_DATA.finditer(xml):
        off, size = _IR_OFFSET.search(m.group(1)), _IR_SIZE.search(m.group(1))
        if off is not None and size is not None:
            needed = max(needed, int(off.group(1)) + int(size.group(1)))
    return needed


def _check_onnx(p: Path, content: bytes) -> ModelSource:
    # An ONNX ModelProto starts with a protobuf field tag; field 1 (ir_version,
    # varint) is tag 0x08. Exporters always write it first.
    if content[0] != 0x08:
        raise ModelFileError(
            f"not an ONNX model: first byte 0x{content[0]:02x} is not the ir_version field tag 0x08",
            path=str(p),
        )
    # The whole protobuf structure, walked once (weights skipped by length): a truncated or
    # damaged file is a ModelFileError here, before any backend is tried.
    from .onnx_graph import read_graph

    return ModelSource(p, ONNX, content, graph=read_graph(content, str(p)))
