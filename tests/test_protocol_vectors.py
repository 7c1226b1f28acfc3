"""The test vectors written in firmware_notes/serial_protocol.md (data V1..V4, commands C1..C7, replies
R1..R7) are what the code does."""

from __future__ import annotations

import re
import zlib

import numpy as np
import pytest
from conftest import ROOT

from edge_runtime.stream import codec
from edge_runtime.stream.codec import FrameDecoder, encode_frame, make_frame
from edge_runtime.stream.command import (
    Command,
    Opcode,
    Reason,
    Reply,
    Status,
    decode_command,
    decode_reply,
    encode_command,
    encode_reply,
)

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


# ---- commands and replies (spec: "Commands and replies") ----------------------------

T0, T1, T2 = 12_345_678_901, 2_000_000_000, 2_000_000_250

COMMAND_VECTORS = {
    "C1": Command.start(0, token=1),
    "C2": Command.stop(0, token=2),
    "C3": Command.set_rate(5000, 0, token=3),
    "C4": Command.ping(T0, token=4),
    "C5": Command.set_rate(0, 0, token=5),
    "C6": Command(0x7E, 6),
    "C7": Command.start(9, token=7),
}
REPLY_VECTORS = {
    "R1": Reply(Opcode.START, 1, 0),
    "R2": Reply(Opcode.STOP, 2, 0),
    "R3": Reply(Opcode.SET_RATE, 3, 0, arg=5000),
    "R4": Reply(Opcode.PING, 4, 0, arg=T0, t1_us=T1, t2_us=T2),
    "R5": Reply(Opcode.SET_RATE, 5, 0, Status.NACK, Reason.BAD_ARGUMENT, 0),
    "R6": Reply(0x7E, 6, 0, Status.NACK, Reason.UNKNOWN_OPCODE),
    "R7": Reply(Opcode.START, 7, 9, Status.NACK, Reason.UNKNOWN_STREAM),
}


def control_vector(name: str) -> tuple[bytes, int, bytes]:
    """(body, CRC-32, wire) of a command or reply vector, as written in the spec."""
    block = re.search(rf"\*\*{name}\*\*.*?```\n(.*?)```", SPEC, re.S)
    assert block, f"{name} missing from the spec"
    text = block.group(1)
    body = re.search(r"body\s+([0-9a-f ]+)\n", text)
    crc = re.search(r"crc32\s+([0-9a-f ]+?)\s+\(0x([0-9A-F]{8})\)", text)
    assert body and crc, f"{name}: body and crc32 lines"
    assert bytes.fromhex(crc.group(1)) == int(crc.group(2), 16).to_bytes(4, "little"), f"{name}: the CRC, two ways"
    wire = bytes.fromhex("".join(text.split("wire", 1)[1].split()))
    return bytes.fromhex(body.group(1)), int(crc.group(2), 16), wire


@pytest.mark.parametrize("name", sorted(COMMAND_VECTORS))
def test_command_vector(name: str) -> None:
    body, crc, wire = control_vector(name)
    cmd = COMMAND_VECTORS[name]
    assert zlib.crc32(body) == crc and len(body) == 16 and body[0] == 0x81
    assert encode_command(cmd) == wire
    assert wire.count(0) == 1 and wire.endswith(b"\x00") and len(wire) <= 22
    assert decode_command(wire) == cmd
    # A host's receiver never takes a command for data: it is not version 1.
    decoder = FrameDecoder(on_reply=lambda b: pytest.fail("a command is not a reply"))
    assert decoder.decode_all(wire) == [] and decoder.stats.malformed == 1 and decoder.stats.replies == 0


@pytest.mark.parametrize("name", sorted(REPLY_VECTORS))
def test_reply_vector(name: str) -> None:
    body, crc, wire = control_vector(name)
    reply = REPLY_VECTORS[name]
    assert zlib.crc32(body) == crc and len(body) == 32 and body[0] == 0x82
    assert encode_reply(reply) == wire
    assert wire.count(0) == 1 and wire.endswith(b"\x00") and len(wire) <= 38
    assert decode_reply(wire) == reply
    # The data decoder hands the reply's body on instead of counting it malformed.
    bodies: list[bytes] = []
    decoder = FrameDecoder(on_reply=bodies.append)
    assert decoder.decode_all(wire) == []
    assert bodies == [body]
    assert (decoder.stats.replies, decoder.stats.malformed, decoder.stats.crc_errors) == (1, 0, 0)


def test_r4_times_are_the_documented_ones() -> None:
    reply = decode_reply(control_vector("R4")[2])
    assert (reply.t0_us, reply.t1_us, reply.t2_us) == (12_345_678_901, 2_000_000_000, 2_000_000_250)
    assert "t0 = 12,345,678,901" in SPEC and "t1 = 2,000,000,000, t2 = 2,000,000,250" in SPEC
