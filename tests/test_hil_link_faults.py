"""The link-fault matrix, through the HIL kit: the emulator injects each fault, the real model streams.

Per fault: every frame the emulator sent undamaged arrives, in order (good frames lost == 0),
each bad frame is counted by the decoder, windows are accounted for (none straddles a hole),
and results of windows that lie inside one activity of the recording still name it.
The time the runtime took to recover is recorded as a JUnit property, never asserted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from conftest import MODELS

import edge_runtime as er
from edge_runtime.hil.emulator import Emulator, Faults
from edge_runtime.hil.plugin import EmulatorFactory, FrameRecord, HilLink, HilReport, HilRun, HilStreams
from edge_runtime.runner import Runner
from edge_runtime.stream.codec import FLAG_START
from edge_runtime.stream.sources import FileSource

MODEL = MODELS / "basicmotions_int8.tflite"
RECORDING = MODELS / "basicmotions_recording.csv"
FRAME_SAMPLES = 10
WINDOW = 100  # the model's input: 100 samples, hop 100
N_FRAMES = 120  # 1200 samples of the recording: 12 windows on a clean link
SPEED = 500.0  # 5000 samples/s: the 120 s of recording in 0.24 s
pytestmark = pytest.mark.emulator_only


@pytest.fixture(scope="module")
def model() -> Iterator[Runner]:
    with er.load(MODEL, "litert:cpu") as runner:
        yield runner


@pytest.fixture(scope="module")
def recording() -> FileSource:
    return FileSource(f"file:{RECORDING}")


def wait_until(condition: Callable[[], bool], what: Callable[[], str], timeout_s: float = 30) -> None:
    """Poll ``condition`` until it holds; an AssertionError saying ``what()`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what()
        time.sleep(0.005)


@dataclass(frozen=True)
class Case:
    faults: Faults
    fault_at: int  # the index of the first frame the fault touches (for the recovery time)
    bad_frames: Callable[[Emulator], int]  # frames the decoder must count as bad (CRC or malformed)
    injected: Callable[[Emulator], bool]  # the emulator's word that the fault happened


CASES = {
    "garbage": Case(
        Faults(garbage_every=5, seed=1), 4, lambda e: e.stats.garbage_bursts, lambda e: e.stats.garbage_bursts == 24
    ),
    "bit_flips": Case(Faults(flip_every=23, seed=2), 22, lambda e: e.stats.flipped, lambda e: e.stats.flipped >= 4),
    "dropped_bytes": Case(Faults(drop_every=29, seed=3), 28, lambda e: e.stats.dropped, lambda e: e.stats.dropped == 4),
    # A stall is silence: nothing to count, nothing lost; the recovery time shows it.
    "stall": Case(Faults(pause_at=40, pause_s=0.3), 40, lambda e: 0, lambda e: True),
    # The half frame an unplug cuts is forgotten at the reconnect: lost (a gap), not a bad frame.
    "unplug_replug": Case(
        Faults(disconnect_at=40, disconnect_s=0.3), 40, lambda e: 0, lambda e: e.stats.disconnects == 1
    ),
    "board_reset": Case(Faults(reset_at=60), 60, lambda e: 0, lambda e: e.stats.resets == 1),
}


def expected_frames(faults: Faults, damaged: set[int]) -> list[tuple[int, bool, int]]:
    """(seq, FLAG_START, timestamp_us) of every frame the emulator sent undamaged, in order.

    A board reset (``reset_at``) starts the sequence and the clock at 0 again, with FLAG_START.
    """
    interval = 100_000  # the recording's 10 Hz
    out = []
    for index in range(N_FRAMES):
        if index in damaged:
            continue
        since = index - faults.reset_at if faults.reset_at and index >= faults.reset_at else index
        out.append((since, since == 0, since * FRAME_SAMPLES * interval))
    return out


def expected_windows(frames: list[FrameRecord]) -> int:
    """Windows the stream makes of ``frames``: a hole in the sequence starts a new window."""
    windows = samples = 0
    previous = None
    for f in frames:
        if previous is not None and f.seq != previous + 1:
            samples = 0
        samples += f.samples
        if samples == WINDOW:
            windows += 1
            samples = 0
        previous = f.seq
    return windows


def record_recovery(hil_report: HilReport, run: HilRun, fault_at: int) -> None:
    """Record when frames, then results, came again after the fault: seconds from the last frame before it
    to the first frame after it (``recovery_frames_s``), and to the first result of a window completed
    after it (``recovery_results_s``)."""
    frames = list(run.frames)
    if fault_at >= len(frames):
        return
    before = frames[fault_at - 1].arrival_ns
    hil_report.record("recovery_frames_s", (frames[fault_at].arrival_ns - before) / 1e9)
    arrivals = run.results.arrivals_ns
    k = expected_windows(frames[:fault_at])  # results of windows completed before the fault
    if k < len(arrivals):
        hil_report.record("recovery_results_s", (arrivals[k] - before) / 1e9)


@pytest.mark.parametrize("name", list(CASES))
def test_link_fault(
    name: str,
    model: Runner,
    recording: FileSource,
    hil_link: HilLink,
    hil_emulator: EmulatorFactory,
    hil_stream: HilStreams,
    hil_report: HilReport,
) -> None:
    case = CASES[name]
    emu = hil_emulator(
        recording.values[: N_FRAMES * FRAME_SAMPLES], rate=recording.rate, speed=SPEED, faults=case.faults
    )
    with hil_stream(model, backoff_s=(0.02, 0.2)) as run:
        hil_link.wait_sent()
        damaged = set(emu.stats.damaged_frames)
        want = expected_frames(case.faults, damaged)
        wait_until(lambda: len(run.frames) >= len(want), lambda: f"{len(run.frames)} of {len(want)} good frames")
        windows = expected_windows(list(run.frames))
        results = run.results.wait_for(windows, timeout_s=30)
    hil_report.stream(run)
    record_recovery(hil_report, run, case.fault_at)

    got = [(f.seq, bool(f.flags & FLAG_START), f.timestamp_us) for f in run.frames]
    assert got == want, "every frame sent undamaged arrives, in order: good frames lost == 0"
    dec, st = run.decoder, run.stats
    assert dec.crc_errors + dec.malformed == case.bad_frames(emu), dec
    assert dec.gaps == len(damaged), "each damaged frame is one missing sequence number"
    assert case.injected(emu), emu.stats
    holes = len(damaged) + (1 if case.faults.reset_at else 0)
    assert st.gaps_reset == holes, "each hole (or restart) in the sequence starts a new window"
    assert st.windows == st.results == windows and st.dropped == 0, st
    assert [r.window_index for r in results] == list(range(windows))
    if case.faults.reset_at:
        return  # the board's clock restarted: timestamps no longer index the recording
    assert recording.labels is not None
    aligned = [r for r in results if (r.timestamp_us // 100_000 + 1) % WINDOW == 0]
    assert aligned, "windows before the fault are aligned with the recording's 10 s cases"
    for r in aligned:  # a window that is one case of the recording is classified as that case
        truth = recording.labels[r.timestamp_us // 100_000]
        assert r.label == truth, (r.window_index, r.label, truth)


def test_flood_faster_than_inference_drops_windows_not_frames(
    model: Runner,
    recording: FileSource,
    hil_link: HilLink,
    hil_emulator: EmulatorFactory,
    hil_stream: HilStreams,
    hil_report: HilReport,
) -> None:
    """The emulator sends as fast as the pty takes it, a window every frame: inference cannot keep up.

    The first result is held until the runtime has read everything, so the reader runs ahead
    by the whole recording (no timing decides it): every frame arrives, every window that
    did not fit in the queue is dropped and counted.
    """
    n_frames, slots = 400, 4
    emu = hil_emulator(recording.values[: n_frames * FRAME_SAMPLES], rate=recording.rate, speed=None)
    release = threading.Event()

    def hold_first(result: object) -> None:
        release.wait(30)

    windows = (n_frames * FRAME_SAMPLES - WINDOW) // FRAME_SAMPLES + 1
    with hil_stream(model, hop=FRAME_SAMPLES, policy="drop-oldest", queue_slots=slots, on_result=hold_first) as run:
        hil_link.wait_sent()
        wait_until(
            lambda: run.decoder.bytes == emu.stats.bytes and run.stats.windows == windows,
            lambda: f"read {run.decoder.bytes} of {emu.stats.bytes} bytes, {run.stats.windows} of {windows} windows",
        )
        release.set()
        run.results.wait_for(2, timeout_s=30)
    hil_report.stream(run)
    st = run.stats
    assert [f.seq for f in run.frames] == list(range(n_frames)), "good frames lost == 0"
    assert run.decoder.crc_errors == run.decoder.malformed == run.decoder.gaps == 0
    assert st.windows == windows and st.results + st.dropped == st.windows, st
    assert st.dropped >= windows - (1 + slots + 1), "one held, the queue's slots, one in hand: the rest dropped"
    assert len(run.results) == st.results
