"""firmware_notes/reference_sender.c, compiled with the system C compiler, writes the spec's test vectors."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT

from edge_runtime.stream.codec import FrameDecoder

SOURCE = ROOT / "firmware_notes" / "reference_sender.c"
SPEC = (ROOT / "firmware_notes" / "serial_protocol.md").read_text()
NAMES = ("V1", "V2", "V3", "V4")
CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-DEDGE_RUNTIME_SENDER_SELFTEST"]


def wire_of(name: str) -> bytes:
    block = re.search(rf"\*\*{name}\*\*.*?```\n(.*?)```", SPEC, re.S)
    assert block, f"{name} missing from the spec"
    text = block.group(1).split("wire", 1)[1]
    return bytes.fromhex("".join(text.split()))


@pytest.fixture
def sender_output(tmp_path: Path) -> bytes:
    """The self-test's stdout (compiling takes about 50 ms, so each test builds its own)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler (cc or gcc) on PATH to build firmware_notes/reference_sender.c")
    binary = tmp_path / "reference_sender"
    build = subprocess.run(
        [compiler, *CFLAGS, str(SOURCE), "-o", str(binary)], capture_output=True, text=True, timeout=120
    )
    assert build.returncode == 0, f"{compiler} {' '.join(CFLAGS)} failed:\n{build.stderr}"
    run = subprocess.run([str(binary)], capture_output=True, timeout=30)
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    return run.stdout


def test_sender_writes_the_spec_vectors(sender_output: bytes) -> None:
    expected = b"".join(wire_of(name) for name in NAMES)
    assert len(expected) > 0
    assert sender_output == expected


def test_decoder_reads_four_frames_from_the_sender(sender_output: bytes) -> None:
    decoder = FrameDecoder()
    frames = [(f.stream_id, f.seq, f.samples, f.channels) for f in decoder.decode_all(sender_output)]
    assert frames == [(0, 0, 2, 1), (3, 0x01020304, 1, 2), (1, 7, 0, 1), (0, 1, 100, 3)]
    stats = decoder.stats
    assert (stats.frames, stats.crc_errors, stats.malformed, stats.oversize) == (4, 0, 0, 0)
