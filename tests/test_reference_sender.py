"""firmware_notes/reference_sender.c, compiled with the system C compiler, writes the spec's test vectors,
and as a device answers the command vectors (C1..C7 -> R1..R7) and whatever else the emulator answers."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.hil.emulator import CommandHandler
from edge_runtime.stream.codec import FLAG_START, Frame, FrameDecoder
from edge_runtime.stream.command import Command, decode_reply, encode_command, encode_reply, parse_reply

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
    binary = compile_sender(tmp_path)
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


# ---- the C device: commands in, replies out (spec: "Commands and replies") ----------

COMMANDS = tuple(f"C{i}" for i in range(1, 8))
REPLIES = tuple(f"R{i}" for i in range(1, 8))
T1_US = 2_000_000_000  # the self-test's clock at each frame's 0x00; 250 us later at the reply


def compile_sender(directory: Path) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler (cc or gcc) on PATH to build firmware_notes/reference_sender.c")
    binary = directory / "reference_sender"
    build = subprocess.run(
        [compiler, *CFLAGS, str(SOURCE), "-o", str(binary)], capture_output=True, text=True, timeout=120
    )
    assert build.returncode == 0, f"{compiler} {' '.join(CFLAGS)} failed:\n{build.stderr}"
    return binary


@pytest.fixture(scope="module")
def device_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The self-test built once for this module's device tests (each run is a fresh device)."""
    return compile_sender(tmp_path_factory.mktemp("device"))


@dataclass
class DeviceRun:
    out: bytes  # everything written to the UART (replies, then the end's heartbeats)
    state: dict[str, int]  # stream 0's state and the counters, from the last line on stderr


def device(binary: Path, received: bytes) -> DeviceRun:
    """Run ``./reference_sender device`` on ``received`` (the bytes its UART gets, one at a time)."""
    run = subprocess.run([str(binary), "device"], input=received, capture_output=True, timeout=30)
    err = run.stderr.decode(errors="replace")
    assert run.returncode == 0, err
    state = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", err.splitlines()[-1])}
    return DeviceRun(run.stdout, state)


def split(out: bytes) -> tuple[list[bytes], list[Frame]]:
    """(reply bodies, data frames) in what the device wrote, as a host's decoder sees them."""
    bodies: list[bytes] = []
    decoder = FrameDecoder(on_reply=bodies.append)
    frames = decoder.decode_all(out)
    assert (decoder.stats.crc_errors, decoder.stats.malformed, decoder.stats.oversize) == (0, 0, 0)
    return bodies, frames


def test_device_answers_the_spec_vectors(device_binary: Path) -> None:
    got = device(device_binary, b"".join(wire_of(n) for n in COMMANDS))
    assert got.out == b"".join(wire_of(n) for n in REPLIES)  # stopped by C2: no heartbeat at the end
    assert got.state == {
        "running": 0,
        "interval_us": 5000,
        "seq": 0,
        "commands": 7,
        "executed": 4,
        "duplicates": 0,
        "nacks": 3,
        "rx_errors": 0,
    }


def test_device_state_shows_in_its_frames(device_binary: Path) -> None:
    """SET_RATE, STOP, START: the heartbeat at the end runs at the new interval, seq from 0 with FLAG_START."""
    got = device(device_binary, wire_of("C3") + wire_of("C2") + wire_of("C1"))
    bodies, frames = split(got.out)
    assert [parse_reply(b) for b in bodies] == [decode_reply(wire_of(n)) for n in ("R3", "R2", "R1")]
    (beat,) = frames
    assert (beat.stream_id, beat.seq, beat.interval_us, beat.flags, beat.samples) == (0, 0, 5000, FLAG_START, 0)
    assert beat.timestamp_us == T1_US  # the board clock, as t1 and t2 are
    assert got.state["running"] == 1 and got.state["seq"] == 1


def test_device_answers_a_retry_from_memory(device_binary: Path) -> None:
    """The same command twice (a lost reply, retried): the same reply twice, executed once."""
    got = device(device_binary, wire_of("C2") + wire_of("C2") + wire_of("C4") + wire_of("C4"))
    assert got.out == wire_of("R2") * 2 + wire_of("R4") * 2
    assert (got.state["commands"], got.state["executed"], got.state["duplicates"]) == (4, 2, 2)
    # Only the last command is remembered: C2 after C4 is a new command (same effect, executed).
    got = device(device_binary, wire_of("C2") + wire_of("C4") + wire_of("C2"))
    assert got.out == wire_of("R2") + wire_of("R4") + wire_of("R2")
    assert (got.state["executed"], got.state["duplicates"]) == (3, 0)


def test_device_drops_what_it_cannot_trust_and_resynchronises(device_binary: Path) -> None:
    bad_crc = bytearray(wire_of("C1"))
    bad_crc[-3] ^= 0x01  # a CRC byte: still no 0x00 in it
    received = (
        b"\x00"  # a boot delimiter: an empty frame, ignored
        + bytes(bad_crc)
        + wire_of("V1")  # a data frame: not a command
        + wire_of("R1")  # a reply: not a command
        + bytes(range(1, 101))
        + b"\x00"  # longer than the receive buffer
        + b"\x05\x81\x01\x00"  # COBS running past the end
        + wire_of("C2")  # and then a good command
    )
    got = device(device_binary, received)
    assert got.out == wire_of("R2")
    assert got.state["rx_errors"] == 5 and got.state["commands"] == 1


command_lists = st.lists(
    st.tuples(
        st.sampled_from([1, 2, 3, 4, 0, 5, 0x7E, 0xFF]),
        st.integers(0, 3),  # few tokens: the same command comes again often
        st.sampled_from([0, 0, 1, 9]),
        st.one_of(
            st.sampled_from([0, 9, 10, 5000, 60_000_000, 60_000_001, 2**32 - 1, 2**32, 2**64 - 1]),
            st.integers(0, 2**64 - 1),
        ),
        st.booleans(),  # send it twice in a row (a retry)
    ),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(command_lists)
def test_c_device_and_the_emulators_handler_answer_alike(device_binary: Path, commands: list[Any]) -> None:
    """The same commands to reference_sender.c and to the emulator's CommandHandler: the same reply bytes."""
    sent: list[Command] = []
    for opcode, token, stream, arg, twice in commands:
        cmd = Command(opcode, token, stream, arg)
        sent += [cmd, cmd] if twice else [cmd]
    handler = CommandHandler(0, 10_000, clock_us=lambda: T1_US + 250)
    expected = [encode_reply(handler.handle(cmd, T1_US)[0]) for cmd in sent]
    got = device(device_binary, b"".join(encode_command(cmd) for cmd in sent))
    bodies, frames = split(got.out)
    assert [encode_reply(parse_reply(b)) for b in bodies] == expected
    assert got.out.startswith(b"".join(expected))
    assert (got.state["running"], got.state["interval_us"]) == (int(handler.running), handler.interval_us)
    assert [(f.interval_us, f.seq) for f in frames] == ([(handler.interval_us, 0)] if handler.running else [])
