"""Real pseudo-terminals: the firmware emulator sends, the serial source reads, faults on the way.

The emulator waits for the port to be opened (as a USB CDC device waits for DTR), so
every frame it sends after that is one the reader must get, unless the emulator
damaged it on purpose (it lists those).

The link comes from the HIL kit (``edge_runtime.hil.plugin``): by default the emulator's
pty; ``pytest tests/test_stream_serial.py --hil-port URL`` runs the ``hil`` tests that make
sense against a board (a clean link, a user error in the callback, spy://) on it, and skips
those marked ``emulator_only`` (fault injection, unplug, a held port, a device appearing late).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.errors import ArgumentError, SourceError
from edge_runtime.hil.emulator import Emulator, Faults, Pty
from edge_runtime.hil.plugin import EmulatorFactory, HilLink
from edge_runtime.stream.codec import Frame
from edge_runtime.stream.sources import SerialSource, open_source

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


def wait_until(condition: Callable[[], bool], timeout_s: float = 10) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def run_expecting_error(source: Any, timeout_s: float = 5) -> BaseException:
    """Run ``source`` on a thread; it must end by itself, with an exception, within ``timeout_s``."""
    raised: list[BaseException] = []
    stop = threading.Event()

    def target() -> None:
        try:
            source.run(lambda frame, arrival_ns: None, stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            raised.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    ended = not thread.is_alive()
    stop.set()  # if it is waiting after all, let it go
    thread.join(5)
    assert ended, "run() kept trying instead of failing at once"
    assert raised, "run() returned without an error"
    return raised[0]


def run_pair(
    link: HilLink,
    source: SerialSource,
    on_frame: Callable[[Frame, int], None],
    until: Callable[[], bool] | None = None,
    timeout_s: float = 30,
) -> None:
    """``source`` (made by ``link.open_source``) reads what the link sends until ``until()`` holds, then stops.

    The emulator starts once the reader has opened the port and flushed its input
    (``link.start()`` waits for the source's connect, which is counted after the flush),
    so none of what it sends is flushed away. By default ``until`` is "the decoder has
    consumed every byte the emulator wrote"; where bytes are lost on the way (an unplug
    drops what the reader had not read yet), or on a board (which sends without end),
    pass a condition on the frames received instead.
    """
    emu = link.emulator
    assert emu is not None or until is not None, "on a board, say until when to read"
    decoded = source.decoder.stats

    def consumed_all() -> bool:
        return emu is not None and decoded.bytes == emu.stats.bytes

    stop = threading.Event()
    reader = threading.Thread(target=source.run, args=(on_frame, stop), daemon=True)
    reader.start()
    try:
        link.start(timeout_s)  # HilError if the reader did not open the port
        if emu is not None:
            link.wait_sent(timeout_s)  # HilError if the emulator did not finish
        sent = f" of the {emu.stats.bytes} bytes sent" if emu is not None else ""
        assert wait_until(until or consumed_all, timeout_s), (
            f"the reader did not get everything: its decoder consumed {decoded.bytes}{sent}, "
            f"{source.stats.frames} frames"
        )
    finally:
        stop.set()
        reader.join(5)
        if emu is not None:
            emu.close()
    assert not reader.is_alive(), "the reader did not stop"


@pytest.fixture
def link(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "ttyIMU"


@pytest.mark.emulator_only
def test_faults_lose_only_the_damaged_frames(hil_link: HilLink, hil_emulator: EmulatorFactory) -> None:
    n_frames = 300
    emu = hil_emulator(
        recording(n_frames * 10),
        rate=100,
        speed=200,
        frame_samples=10,
        faults=Faults(garbage_every=3, flip_every=7, drop_every=11, seed=5),
    )
    src = hil_link.open_source()
    got = Collector()
    run_pair(hil_link, src, got)
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


def _received_through_pty(link: Path, one_by_one: bool) -> list[tuple[int, int, int]]:
    """The frames a reader gets from a recording written to a pty whole, or one byte per write."""
    with Pty(link) as pty:

        def write(data: bytes) -> None:
            if one_by_one:
                for i in range(len(data)):
                    pty.write(data[i : i + 1])
            else:
                pty.write(data)

        emu = Emulator(recording(400), rate=100, speed=None, frame_samples=8, write=write, wait_for_reader=False)
        src = SerialSource(pty.address)
        got = Collector()
        stop = threading.Event()
        reader = threading.Thread(target=src.run, args=(got, stop), daemon=True)
        reader.start()
        try:
            # A connect is counted after the flush on open: from then on, nothing written is lost.
            assert wait_until(lambda: src.stats.connects == 1), "the reader did not open the port"
            emu.run()
            assert wait_until(lambda: src.decoder.stats.bytes == emu.stats.bytes), "the reader did not read it all"
        finally:
            stop.set()
            reader.join(5)
        assert not reader.is_alive()
    return got.frames


@pytest.mark.emulator_only
def test_one_byte_at_a_time_equals_large_writes(tmp_path: Path) -> None:
    whole = _received_through_pty(tmp_path / "tty0", one_by_one=False)
    byte_by_byte = _received_through_pty(tmp_path / "tty1", one_by_one=True)
    assert whole == byte_by_byte and len(whole) == 50


@pytest.mark.emulator_only
def test_silent_device_warns_and_does_not_hang(
    hil_link: HilLink, hil_emulator: EmulatorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    hil_emulator(recording(600), rate=100, speed=30, frame_samples=10, faults=Faults(pause_at=20, pause_s=0.8))
    src = hil_link.open_source(stale_after_s=0.3)
    got = Collector()
    warnings_before: list[int] = []  # the source's stale warnings so far, as each frame arrives

    def on_frame(frame: Frame, arrival_ns: int) -> None:
        warnings_before.append(src.stats.stale_warnings)
        got(frame, arrival_ns)

    with caplog.at_level(logging.WARNING, logger="edge_runtime.stream"):
        run_pair(hil_link, src, on_frame)
    assert src.stats.stale_warnings >= 1
    assert "no frame for" in caplog.text
    assert [s for s, _, _ in got.frames] == list(range(60)), "the stream resumes after the silence"
    assert warnings_before[20] > warnings_before[19], "the reader warned in the pause, between frames 19 and 20"
    # After the pause the old pace (3.3 ms a frame: frames 20..59 over ~130 ms), not a catch-up
    # burst (all 40 at once). Over the 40 frames, not frame by frame: a reader that is late reads
    # several frames in one go (arrival gaps of 0), and lateness only makes the span longer.
    span = (got.arrivals[59] - got.arrivals[20]) / 1e9
    assert span > 0.066, f"frames 20..59 came within {span * 1e3:.1f} ms: a catch-up burst, not the old pace"


@pytest.mark.emulator_only
def test_unplug_mid_frame_and_replug(
    hil_link: HilLink, hil_emulator: EmulatorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    hil_emulator(
        recording(1000), rate=100, speed=50, frame_samples=10, faults=Faults(disconnect_at=40, disconnect_s=0.4)
    )
    src = hil_link.open_source(backoff_s=(0.02, 0.2))
    got = Collector()
    with caplog.at_level(logging.WARNING, logger="edge_runtime.stream"):
        # The unplug drops the half frame if the reader had not read it yet: wait for the frames, not the bytes.
        run_pair(hil_link, src, got, until=lambda: len(got.frames) >= 99)
    assert src.stats.disconnects == 1 and src.stats.connects == 2
    assert "disconnected" in caplog.text and "reconnected" in caplog.text
    # Frame 40 was cut in half by the unplug; every other frame arrives.
    assert [s for s, _, _ in got.frames] == [s for s in range(100) if s != 40]
    assert got.bad_payload == 0


@pytest.mark.emulator_only
def test_busy_port_is_reported_then_retried_with_wait(
    hil_link: HilLink, hil_emulator: EmulatorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    import serial

    emu = hil_emulator(recording(100), rate=100, speed=20, frame_samples=10)  # made, not sending yet
    assert emu.pty is not None
    holder = serial.Serial(emu.pty.path, exclusive=True)  # another process holds the port
    src = hil_link.open_source(wait=True, backoff_s=(0.02, 0.1))
    got = Collector()
    stop = threading.Event()
    with caplog.at_level(logging.WARNING, logger="edge_runtime.stream"):
        reader = threading.Thread(target=src.run, args=(got, stop), daemon=True)
        reader.start()
        assert wait_until(lambda: src.stats.open_failures >= 2), "it keeps trying"
        assert src.stats.connects == 0 and src.stats.last_error == "port busy (another process holds it)"
        holder.close()  # the other process lets go
        hil_link.start(10)  # once the source has the port, the emulator sends
        hil_link.wait_sent(10)
        assert wait_until(lambda: len(got.frames) == 10)
        stop.set()
        reader.join(5)
    emu.close()
    assert "port busy" in caplog.text
    assert [s for s, _, _ in got.frames] == list(range(10))


@pytest.mark.emulator_only
def test_busy_port_without_wait_fails_at_once(link: Path) -> None:
    import serial

    with Pty(link) as pty:
        holder = serial.Serial(pty.path, exclusive=True)
        try:
            err = run_expecting_error(SerialSource(str(link)))
        finally:
            holder.close()
    assert isinstance(err, SourceError)
    assert "port busy (another process holds it)" in str(err) and str(link) in str(err)


def test_missing_port_without_reconnect_is_a_clear_error(tmp_path: Path) -> None:
    src = SerialSource(str(tmp_path / "ttyNOPE"), reconnect=False)
    with pytest.raises(SourceError, match="no such device") as info:
        src.run(lambda f, t: None, threading.Event())
    assert str(tmp_path / "ttyNOPE") in str(info.value)


def test_a_port_that_never_opened_fails_at_once(tmp_path: Path) -> None:
    """A mistyped path is not retried forever: without wait, the first failed open is final."""
    path = tmp_path / "ttyUSB9"
    src = open_source(str(path))
    err = run_expecting_error(src)
    assert isinstance(err, SourceError)
    assert f"no such device: {path} (pass wait=True / --wait to wait for it to appear)" in str(err)
    assert src.stats.open_failures == 1 and src.stats.connects == 0


@pytest.mark.parametrize("name", ["rec.csv", "rec.npy", "notes.txt"])
def test_a_recording_given_as_a_port_says_did_you_mean_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("a,b\n1,2\n")
    expected = f"{path} is a regular file, not a serial port: did you mean file:{path}?"
    for url in (str(path), f"{path}?baud=9600"):
        with pytest.raises(SourceError) as info:  # open_source sees it before anything is opened
            open_source(url)
        assert expected in str(info.value)
    # A SerialSource made directly finds it on the first open; waiting would not fix it.
    err = run_expecting_error(SerialSource(str(path), wait=True))
    assert isinstance(err, SourceError) and expected in str(err)


def test_permission_denied_mentions_the_dialout_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import serial

    path = str(tmp_path / "ttyACM0")

    def refuse(url: str, **options: Any) -> Any:  # as pyserial reports a port the user may not open
        raise serial.SerialException(errno.EACCES, f"could not open port {url}: [Errno 13] Permission denied")

    monkeypatch.setattr(serial, "serial_for_url", refuse)
    err = run_expecting_error(SerialSource(path))
    assert isinstance(err, SourceError)
    assert f"permission denied: {path}" in str(err) and "'dialout' group" in str(err)


@pytest.mark.emulator_only
def test_wait_waits_for_the_device_to_appear(
    hil_link: HilLink, hil_emulator: EmulatorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    link = Path(hil_link.url)  # nothing there yet: the device is not plugged in
    src = hil_link.open_source(wait=True, backoff_s=(0.01, 0.05))
    assert isinstance(src, SerialSource)
    got = Collector()
    stop = threading.Event()
    with caplog.at_level(logging.WARNING, logger="edge_runtime.stream"):
        reader = threading.Thread(target=src.run, args=(got, stop), daemon=True)
        reader.start()
        assert wait_until(lambda: src.stats.open_failures >= 3), "it keeps trying while the device is absent"
        assert reader.is_alive() and src.stats.connects == 0
        assert src.stats.last_error == f"no such device: {link}"
        emu = hil_emulator(recording(100), rate=100, speed=20, frame_samples=10)  # plugged in: the link appears
        hil_link.start(10)  # the source opens it; then the emulator sends
        hil_link.wait_sent(10)
        assert wait_until(lambda: len(got.frames) == 10)
        stop.set()
        reader.join(5)
    emu.close()
    assert not reader.is_alive()
    assert [s for s, _, _ in got.frames] == list(range(10)) and got.bad_payload == 0
    assert src.stats.connects == 1 and src.stats.disconnects == 0
    assert f"{link}: no such device: {link}; retrying" in caplog.text


def test_device_path_query_takes_only_baud(tmp_path: Path) -> None:
    path = tmp_path / "ttyUSB0"
    src = SerialSource(f"{path}?baud=9600")
    assert src.port_url == str(path) and src.baud == 9600
    with pytest.raises(ArgumentError, match=r"unknown key 'parity' .*a device path takes only: baud"):
        open_source(f"{path}?baud=9600&parity=E")
    with pytest.raises(ArgumentError, match="baud='fast'"):
        open_source(f"{path}?baud=fast")
    with pytest.raises(ArgumentError, match="baud='0'"):
        open_source(f"{path}?baud=0")


def test_pyserial_url_options_pass_through_without_baud() -> None:
    src = SerialSource("spy:///dev/ttyUSB0?file=/tmp/x.log&baud=57600&color")
    assert src.port_url == "spy:///dev/ttyUSB0?file=/tmp/x.log&color" and src.baud == 57600
    src = SerialSource("rfc2217://host:2217?ign_set_control&logging=debug")
    assert src.port_url == "rfc2217://host:2217?ign_set_control&logging=debug" and src.baud == 115200


def test_baud_and_its_older_spelling_baudrate(tmp_path: Path) -> None:
    path = str(tmp_path / "ttyUSB0")
    assert SerialSource(path).baud == 115200
    assert SerialSource(path, baud=9600).baud == 9600
    assert SerialSource(path, baudrate=9600).baud == 9600
    assert SerialSource(path, baud=9600, baudrate=9600).baud == 9600
    assert SerialSource(f"{path}?baud=9600", baud=9600).baud == 9600
    src = open_source(path, baudrate=57600)
    assert isinstance(src, SerialSource) and src.baud == 57600
    with pytest.raises(ArgumentError, match=r"conflicting baud rates .*baud=9600, baudrate=115200"):
        SerialSource(path, baud=9600, baudrate=115200)
    with pytest.raises(ArgumentError, match=r"conflicting baud rates .*\?baud=9600, baud=115200"):
        open_source(f"{path}?baud=9600", baud=115200)
    with pytest.raises(ArgumentError, match="baud=0 must be a whole number > 0"):
        SerialSource(path, baud=0)


def test_source_stats_to_dict_includes_the_decoder_counters(tmp_path: Path) -> None:
    src = SerialSource(str(tmp_path / "ttyUSB0"))
    out = src.stats.to_dict()
    assert out["connects"] == 0 and out["decoder"]["frames"] == 0 and out["decoder"]["crc_errors"] == 0


@pytest.mark.hil
def test_user_error_in_the_callback_is_not_an_io_error(hil_link: HilLink) -> None:
    emu = hil_link.play(recording(100), rate=100, speed=20, frame_samples=10)  # a board sends its own frames
    src = hil_link.open_source()

    def boom(frame: Frame, arrival_ns: int) -> None:
        raise KeyError("user bug")

    hil_link.send()  # the emulator sends once the port is open (a board is sending already)
    with pytest.raises(KeyError, match="user bug"):
        src.run(boom, threading.Event())
    if emu is not None:
        emu.close()
    assert src.stats.connects == 1 and src.stats.disconnects == 0, "a user error must not look like an unplug"


def test_socket_url_is_just_another_address() -> None:
    """pyserial's socket:// handler, against a real TCP server on loopback.

    Frames are handed on as they arrive, not when 64 KiB have: the server sends frame
    k + 1 only once the reader has handed frame k on, so a reader that waited for more
    bytes than one frame would stall it.
    """
    import socket

    from edge_runtime.stream.codec import encode_frame, make_frame

    server = socket.socket()
    server.settimeout(10)  # accept() gives up if the reader never connects
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]

    frames = [encode_frame(make_frame(recording(100)[i * 10 : (i + 1) * 10], seq=i)) for i in range(10)]
    src = open_source(f"socket://127.0.0.1:{port}", reconnect=False)
    got = Collector()
    delivered = [threading.Event() for _ in frames]  # set as the reader hands on its k-th frame
    failed: list[str] = []

    def on_frame(frame: Frame, arrival_ns: int) -> None:
        got(frame, arrival_ns)
        if len(got.frames) <= len(delivered):
            delivered[len(got.frames) - 1].set()

    def serve() -> None:
        try:
            conn, _ = server.accept()
        except OSError as exc:
            failed.append(f"no connection: {exc}")
            return
        with conn:
            # A connect is counted after the reader's flush on open: what is sent from then on stays.
            if not wait_until(lambda: src.stats.connects == 1):
                failed.append("the reader did not open the port")
                return
            conn.sendall(b"\x00")
            for k, (wire, done) in enumerate(zip(frames, delivered)):
                conn.sendall(wire)
                if not done.wait(10):
                    failed.append(f"frame {k} was sent whole but not handed on")
                    return

    server_thread = threading.Thread(target=serve, daemon=True)
    server_thread.start()
    stop = threading.Event()
    reader = threading.Thread(target=lambda: _run_quiet(src, on_frame, stop), daemon=True)
    reader.start()
    server_thread.join(60)
    stop.set()
    reader.join(5)
    server.close()
    assert not server_thread.is_alive() and not failed, failed
    assert not reader.is_alive()
    assert [s for s, _, _ in got.frames] == list(range(10)) and got.bad_payload == 0


class _OneFrameAtATimePort:
    """A port without a file descriptor (as socket:// is) on which one frame's bytes arrive at a time.

    The next frame arrives when the reader asks for bytes while none are waiting. A
    pyserial port asked for more bytes than are waiting waits for its read timeout before
    it returns: each read asking for more than ``max(1, in_waiting)`` is recorded.
    """

    def __init__(self, frames: list[bytes], stop: threading.Event) -> None:
        self.arriving = [b"\x00", *frames]
        self.stop = stop
        self.waiting = b""
        self.over_asked: list[tuple[int, int]] = []  # (bytes asked, bytes waiting)

    def open(self) -> None:
        pass

    def reset_input_buffer(self) -> None:
        pass

    def close(self) -> None:
        pass

    @property
    def in_waiting(self) -> int:
        return len(self.waiting)

    def readinto(self, buf: memoryview) -> int:
        if len(buf) > max(1, len(self.waiting)):
            self.over_asked.append((len(buf), len(self.waiting)))
        if not self.waiting:
            if not self.arriving:
                self.stop.set()  # all sent and read: the test is over
                return 0
            self.waiting = self.arriving.pop(0)
        n = min(len(buf), len(self.waiting))
        buf[:n], self.waiting = self.waiting[:n], self.waiting[n:]
        return n


def test_a_port_without_a_file_descriptor_is_asked_only_for_what_is_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """So each frame is handed on once its bytes are in, not after the read timeout, in batches."""
    import serial

    from edge_runtime.stream.codec import encode_frame, make_frame

    frames = [encode_frame(make_frame(recording(30)[i * 10 : (i + 1) * 10], seq=i)) for i in range(3)]
    stop = threading.Event()
    port = _OneFrameAtATimePort(frames, stop)
    monkeypatch.setattr(serial, "serial_for_url", lambda url, **options: port)
    got = Collector()
    SerialSource("socket://127.0.0.1:9").run(got, stop)
    assert [s for s, _, _ in got.frames] == [0, 1, 2] and got.bad_payload == 0
    assert port.over_asked == [], "(asked, waiting): a read asked for more than was waiting"


def _run_quiet(src: Any, on_frame: Callable[[Frame, int], None], stop: threading.Event) -> None:
    try:
        src.run(on_frame, stop)
    except SourceError:
        pass  # the server hung up after sending: expected at the end


def test_emulator_pty_path_is_a_tty() -> None:
    pty = Pty()
    try:
        assert os.path.exists(pty.path) and pty.path.startswith("/dev/pts/")
        assert not pty.reader_attached()
    finally:
        pty.close()


def _take_number(fd: int) -> tuple[int, int, int]:
    """A new pipe whose read end has file descriptor number ``fd`` (free now): (that, read, write)."""
    r, w = os.pipe()
    if fd in (r, w):
        return fd, r, w
    return os.dup2(r, fd), r, w  # the lowest free number went elsewhere: put it there


def test_pty_close_twice_does_not_close_a_reused_fd(tmp_path: Path) -> None:
    link = tmp_path / "tty"
    pty = Pty(link)
    fd = pty.master
    pty.close()
    assert pty.closed and pty.master == -1 and not link.exists(), "closed, and its link removed"
    reused, r, w = _take_number(fd)
    try:
        pty.close()  # must not close the pipe that now has the pty's old number
        assert not pty.reader_attached()
        os.fstat(reused)
        with pytest.raises(OSError):
            pty.write(b"x")
        os.fstat(reused)
        os.write(w, b"ok")
        assert os.read(r, 2) == b"ok"
    finally:
        for n in {reused, r, w}:
            os.close(n)


def test_emulator_close_twice_does_not_linger_or_close_a_reused_fd(link: Path) -> None:
    emu = Emulator(recording(20), rate=100, speed=None, frame_samples=10, link=link)
    assert emu.pty is not None
    fd = emu.pty.master
    emu.close()
    assert emu.pty.closed and not link.exists()
    reused, r, w = _take_number(fd)
    try:
        second = threading.Thread(target=emu.close, kwargs={"linger_s": 60}, daemon=True)
        second.start()
        second.join(10)
        assert not second.is_alive(), "a second close() lingered"
        os.fstat(reused)
        assert emu.run().frames == 0, "a closed emulator sends nothing"
    finally:
        for n in {reused, r, w}:
            os.close(n)


@pytest.mark.emulator_only
def test_close_during_a_simulated_unplug_leaves_no_pty_open(hil_link: HilLink, hil_emulator: EmulatorFactory) -> None:
    emu = hil_emulator(
        recording(1000), rate=100, speed=50, frame_samples=10, faults=Faults(disconnect_at=5, disconnect_s=60)
    )
    src = hil_link.open_source(backoff_s=(0.02, 0.1))
    stop = threading.Event()
    reader = threading.Thread(target=src.run, args=(Collector(), stop), daemon=True)
    reader.start()
    hil_link.start()
    assert wait_until(lambda: emu.stats.disconnects == 1), "the emulator unplugged"
    emu.close()
    hil_link.wait_sent(10)  # HilError if close() did not end the unplugged wait
    stop.set()
    reader.join(5)
    assert not reader.is_alive()
    assert emu.pty is not None and emu.pty.closed and not Path(hil_link.url).exists()


@pytest.mark.hil
def test_spy_url_reads_through_pyserials_handler(hil_link: HilLink, tmp_path: Path) -> None:
    """spy:// wraps the port and logs what it reads: our reader must go through its read()."""
    if "://" in hil_link.url:
        pytest.skip(f"spy:// wraps a device path, and --hil-port {hil_link.url} is a pyserial URL")
    log_file = tmp_path / "spy.log"
    emu = hil_link.play(recording(50), rate=100, speed=20, frame_samples=10)
    src = hil_link.open_source(url=f"spy://{hil_link.url}?file={log_file}")
    got = Collector()
    if emu is not None:
        run_pair(hil_link, src, got)
        assert [s for s, _, _ in got.frames] == list(range(5))
    else:  # a board: five of its frames, in sequence
        run_pair(hil_link, src, got, until=lambda: len(got.frames) >= 5)
        seqs = [s for s, _, _ in got.frames]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert log_file.read_text().count("RX") > 0, "the spy handler saw the bytes"


@pytest.mark.hil
def test_a_clean_link_delivers_every_frame_in_order(hil_link: HilLink) -> None:
    """No fault injected: every frame arrives, in sequence, none bad (the first test to run on a new board)."""
    emu = hil_link.play(recording(300), rate=100, speed=50, frame_samples=10)
    src = hil_link.open_source()
    got = Collector()
    run_pair(hil_link, src, got, until=None if emu is not None else lambda: len(got.frames) >= 30)
    seqs = [s for s, _, _ in got.frames]
    dec = src.decoder.stats
    assert dec.oversize == dec.gaps == 0, dec
    if emu is not None:
        assert dec.crc_errors == dec.malformed == 0, dec
        assert seqs == list(range(30)) and got.bad_payload == 0
        assert all(first == seq * 10 * CH for seq, first, _ in got.frames)
    else:
        # A board that was sending before the port opened: the open may cut its first frame.
        assert dec.crc_errors + dec.malformed <= 1, dec
        assert len(seqs) >= 30 and seqs == list(range(seqs[0], seqs[0] + len(seqs))), "consecutive sequence numbers"
    assert src.stats.connects == 1 and src.stats.disconnects == 0


def test_npy_recording_replay(tmp_path: Path) -> None:
    path = tmp_path / "rec.npy"
    np.save(path, recording(95))
    src = open_source(f"file:{path}?speed=max&frame_samples=10&rate=50")
    got = Collector()
    src.run(got, threading.Event())
    assert [(s, n) for s, _, n in got.frames] == [(i, 10) for i in range(9)] + [(9, 5)]
    assert got.bad_payload == 0
