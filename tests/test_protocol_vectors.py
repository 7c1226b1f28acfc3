"""The test vectors written in firmware_notes/serial_protocol.md are what the code does."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import ROOT

from edge_runtime.stream import codec
from edge_runtime.stream.codec import FrameDecoder, encode_frame, make_frame

SPEC = (ROOT / "firmware_notes" / "serial_protocol.md").read_text()

VECTORS = {
    "V1": (make_frame(np.array([1, -1], np.int16), interval_us=10000, flags=1), [[1], [-1]]),
    "V2": (
        make_frame(
            np.array([[1.0, -2.5]], np.float32),
            stream_id=3,
            seq=0x01020304,
            interval_us=1000,
            timestamp_us=1_700_000_000_000_000,
        ),
        [[1.0, -2.5]],
    ),
    "V3": (make_frame(np.zeros((0, 1), np.uint8), stream_id=1, seq=7, timestamp_us=42), np.zeros((0, 1))),
    "V4": (
        make_frame(np.zeros((100, 3), np.int8), seq=1, interval_us=5000, timestamp_us=5_000_000),
        np.zeros((100, 3)),
    ),
}


def wire_of(name: str) -> bytes:
    block = re.search(rf"\*\*{name}\*\*.*?```\n(.*?)```", SPEC, re.S)
    assert block, f"{name} missing from the spec"
    text = block.group(1).split("wire", 1)[1]
    return bytes.fromhex("".join(text.split()))


@pytest.mark.parametrize("decoder", ["default", "vectorised"])
@pytest.mark.parametrize("name", sorted(VECTORS))
def test_vector(name: str, decoder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if decoder == "vectorised":  # the NumPy COBS path from the second block on, whatever the density
        monkeypatch.setattr(codec, "_ROUND", 1)
        monkeypatch.setattr(codec, "_DENSE", 1 << 20)
        monkeypatch.setattr(codec, "_MIN_REST", 1)
    frame, values = VECTORS[name]
    wire = wire_of(name)
    assert encode_frame(frame) == wire
    assert wire.count(0) == 1 and wire.endswith(b"\x00")
    (got,) = FrameDecoder().decode_all(wire)
    assert (got.stream_id, got.seq, got.timestamp_us, got.interval_us, got.flags) == (
        frame.stream_id,
        frame.seq,
        frame.timestamp_us,
        frame.interval_us,
        frame.flags,
    )
    assert got.dtype == frame.dtype and got.values().shape == np.asarray(values).shape
    np.testing.assert_array_equal(got.values(), values)


def test_v1_header_bytes_match_the_table() -> None:
    header = re.search(r"\*\*V1\*\*.*?header\s+([0-9a-f ]+)\n", SPEC, re.S)
    assert header
    frame, _ = VECTORS["V1"]
    from edge_runtime.stream.codec import HEADER

    assert bytes.fromhex(header.group(1)) == HEADER.pack(1, 0, 2, 1, 2, 1, 0, 10000, 0)
    assert frame.payload == bytes.fromhex("0100ffff")
