"""Real pseudo-terminals: the firmware emulator sends, the serial source reads, faults on the way.

The emulator waits for the port to be opened (as a USB CDC device waits for DTR), so
every frame it sends after that is one the reader must get, unless the emulator
damaged it on purpose (it lists those).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.hil.emulator import Emulator, Faults, Pty
from edge_runtime.stream.codec import Frame
from edge_runtime.stream.sources import SerialSource, SourceError, open_source

CH = 6


def recording(n: int) -> np.ndarray:
    """Values that say where they came from: sample i, channel c holds i * CH + c."""
    return np.arange(n * CH, dtype=np.float32).reshape(n, CH)


class Collector:
    def __init__(self) -> None:
        self.frames: list[tuple[int, int, int]] = []  # (seq, first value, samples)
        self.arrivals: list[int] = []  # perf_counter_ns
        self.bad_payload = 0

    def __call__(self, frame: Frame, arrival_ns: int) -> None:
        self.arrivals.append(arrival_ns)
        v = frame.values()
        first = int(v[0, 0]) if frame.samples else -1
        if frame.samples and not np.array_equal(v.ravel(), np.arange(first, first + v.size, dtype=np.float32)):
            self.bad_payload += 1
        self.frames.append((frame.seq, first, frame.samples))


def run_pair(
    emu: Emulator, source: SerialSource, collector: Collector, drain_s: float = 0.3, timeout_s: float = 30
) -> None:
    stop = threading.Event()
    reader = threading.Thread(target=source.run, args=(collector, stop), daemon=True)
    reader.start()
    sender = emu.start()
    sender.join(timeout_s)
    assert not sender.is_alive(), "the emulator did not finish"
    time.sleep(drain_s)
    stop.set()
    reader.join(5)
    assert not reader.is_alive(), "the reader did not stop"
    emu.close()


@pytest.fixture
def link(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "ttyIMU"


def test_faults_lose_only_the_damaged_frames(link: Path) -> None:
    n_frames = 300
    emu = Emulator(
        recording(n_frames * 10),
        rate_hz=20000,
        sample_rate_hz=100,
        frame_samples=10,
        link=link,
        faults=Faults(garbage_every=3, flip_every=7, drop_every=11, seed=5),
    )
    src = SerialSource(str(link))
    got = Collector()
    run_pair(emu, src, got)
    damaged = set(emu.stats.damaged_frames)
    received = [seq for seq, _, _ in got.frames]
    assert received == [s for s in range(n_frames) if s not in damaged], "every good frame, in order"
    assert got.bad_payload == 0
    assert all(first == seq * 10 * CH for seq, first, _ in got.frames)
    dec = src.decoder.stats
    assert emu.stats.flipped and emu.stats.dropped and emu.stats.garbage_bursts
    # one bad frame per garbage burst and per damaged frame (a frame both flipped and cut counts once)
    assert dec.crc_errors + dec.malformed == emu.stats.garbage_bursts + len(damaged)
    assert dec.gaps == len(damaged)
    assert src.stats.connects == 1 and src.stats.disconnects == 0


def test_one_byte_at_a_time_equals_large_writes(tmp_path: Path) -> None:
    results = []
    for one_by_one in (False, True):
        pty = Pty(tmp_path / f"tty{int(one_by_one)}")

        def write(data: bytes, pty: Pty = pty, slow: bool = one_by_one) -> None:
            if slow:
                for i in range(len(data)):
                    pty.write(data[i : i + 1])
            else:
                pty.write(data)

        emu = Emulator(
            recording(400), rate_hz=None, sample_rate_hz=100, frame_samples=8, write=write, wait_for_reader=False
        )
        src = SerialSource(pty.address)
        got = Collector()
        stop = threading.Event()
        reader = threading.Thread(target=src.run, args=(got, stop), daemon=True)
        reader.start()
        assert pty.wait_for_reader(stop, 5)
        time.sleep(0.1)  # past the reader's flush on open
        emu.run()
        time.sleep(0.3)
        stop.set()
        reader.join(5)
        pty.close()
        results.append(got.frames)
    assert results[0] == results[1] and len(results[0]) == 50


def test_silent_device_warns_and_does_not_hang(link: Path, caplog: pytest.LogCaptureFixture) -> None:
    emu = Emulator(
        recording(600),
        rate_hz=3000,
        sample_rate_hz=100,
        frame_samples=10,
        link=link,
        faults=Faults(pause_at=20, pause_s=0.8),
    )
    src = SerialSource(str(link), stale_after_s=0.3)
    got = Collector()
    with caplog.at_level(logging.WARNING, logger="edge_runtime.stream"):
        run_pair(emu, src, got)
    assert src.stats.stale_warnings >= 1
    assert "no frame for" in caplog.text
    assert [s for s, _, _ in got.frames] == list(range(60)), "the stream resumes after the silence"
    gaps = np.diff(got.arrivals) / 1e9
    assert gaps[19] > 0.6, "the pause is a silence"
    assert np.median(gaps[20:30]) > 0.002, "after it the old pace (3.3 ms a frame), not a catch-up burst"


def test_unplug_mid_frame_and_replug(link: Path, caplog: pytest.LogCaptureFixture) -> None:
    emu = Emulator(
        recording(1000),
        rate_hz=5000,
        sample_rate_hz=100,
        frame_samples=10,
        link=link,
        faults=Faults(disconnect_at=40, disconnect_s=0.4),
    )
    src = SerialSource(str(link), backoff_s=(0.02, 0.2))
    got = Collector()
    with caplog.at_level(logging.WARNING, logger="edge_runtime.stream"):
        run_pair(emu, src, got)
    assert src.stats.disconnects == 1 and src.stats.connects == 2
    assert "disconnected" in caplog.text and "reconnected" in caplog.text
    # Frame 40 was cut in half by the unplug; every other frame arrives.
    assert [s for s, _, _ in got.frames] == [s for s in range(100) if s != 40]
    assert got.bad_payload == 0


def test_busy_port_is_reported_then_retried(link: Path, caplog: pytest.LogCaptureFixture) -> None:
    import serial

    emu = Emulator(recording(100), rate_hz=2000, sample_rate_hz=100, frame_samples=10, link=link)
    holder = serial.Serial(emu.pty.path if emu.pty else "", exclusive=True)  # another process holds the port
    src = SerialSource(str(link), backoff_s=(0.02, 0.1))
    got = Collector()
    stop = threading.Event()
    with caplog.at_level(logging.WARNING, logger="edge_runtime.stream"):
        reader = threading.Thread(target=src.run, args=(got, stop), daemon=True)
        reader.start()
        time.sleep(0.3)
        assert src.stats.connects == 0 and src.stats.open_failures >= 2
        assert "port busy" in src.stats.last_error
        holder.close()  # the other process lets go
        sender = emu.start()
        sender.join(10)
        time.sleep(0.3)
        stop.set()
        reader.join(5)
    emu.close()
    assert "port busy" in caplog.text
    assert [s for s, _, _ in got.frames] == list(range(10))


def test_missing_port_without_reconnect_is_a_clear_error(tmp_path: Path) -> None:
    src = SerialSource(str(tmp_path / "ttyNOPE"), reconnect=False)
    with pytest.raises(SourceError, match="cannot open") as info:
        src.run(lambda f, t: None, threading.Event())
    assert str(tmp_path / "ttyNOPE") in str(info.value)


def test_user_error_in_the_callback_is_not_an_io_error(link: Path) -> None:
    emu = Emulator(recording(100), rate_hz=2000, sample_rate_hz=100, frame_samples=10, link=link)
    src = SerialSource(str(link))

    def boom(frame: Frame, arrival_ns: int) -> None:
        raise KeyError("user bug")

    emu.start()
    with pytest.raises(KeyError, match="user bug"):
        src.run(boom, threading.Event())
    emu.close()
    assert src.stats.disconnects == 0, "a user error must not look like an unplug"


def test_socket_url_is_just_another_address() -> None:
    """pyserial's socket:// handler, against a real TCP server on loopback."""
    import socket

    from edge_runtime.stream.codec import encode_frame, make_frame

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]

    frames = [encode_frame(make_frame(recording(100)[i * 10 : (i + 1) * 10], seq=i)) for i in range(10)]

    def serve() -> None:
        conn, _ = server.accept()
        time.sleep(0.2)  # after the reader's flush on open
        conn.sendall(b"\x00")
        for f in frames:  # one frame every 20 ms
            conn.sendall(f)
            time.sleep(0.02)
        time.sleep(0.3)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    src = open_source(f"socket://127.0.0.1:{port}", reconnect=False)
    got = Collector()
    stop = threading.Event()
    reader = threading.Thread(target=lambda: _run_quiet(src, got, stop), daemon=True)
    reader.start()
    deadline = time.monotonic() + 5
    while len(got.frames) < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    reader.join(5)
    server.close()
    assert [s for s, _, _ in got.frames] == list(range(10))
    spacing = np.diff(got.arrivals) / 1e6
    assert np.median(spacing) > 10, f"frames handed on as they arrive, not in 50 ms batches: {spacing}"


def _run_quiet(src: Any, got: Collector, stop: threading.Event) -> None:
    try:
        src.run(got, stop)
    except SourceError:
        pass  # the server hung up after sending: expected at the end


def test_emulator_pty_path_is_a_tty() -> None:
    pty = Pty()
    try:
        assert os.path.exists(pty.path) and pty.path.startswith("/dev/pts/")
        assert not pty.reader_attached()
    finally:
        pty.close()


def test_spy_url_reads_through_pyserials_handler(link: Path, tmp_path: Path) -> None:
    """spy:// wraps the port and logs what it reads: our reader must go through its read()."""
    log_file = tmp_path / "spy.log"
    emu = Emulator(recording(50), rate_hz=2000, sample_rate_hz=100, frame_samples=10, link=link)
    src = SerialSource(f"spy://{link}?file={log_file}")
    got = Collector()
    run_pair(emu, src, got)
    assert [s for s, _, _ in got.frames] == list(range(5))
    assert log_file.read_text().count("RX") > 0, "the spy handler saw the bytes"


def test_npy_recording_replay(tmp_path: Path) -> None:
    path = tmp_path / "rec.npy"
    np.save(path, recording(95))
    src = open_source(f"file:{path}?speed=max&frame=10&rate=50")
    got = Collector()
    src.run(got, threading.Event())
    assert [(s, n) for s, _, n in got.frames] == [(i, 10) for i in range(9)] + [(9, 5)]
    assert got.bad_payload == 0
