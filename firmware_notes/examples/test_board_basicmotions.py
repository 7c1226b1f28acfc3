"""Hardware-in-the-loop test of an IMU board streaming the BasicMotions recording (copy this file).

Without a board, the firmware emulator plays the recording over a pseudo-terminal:

    pytest firmware_notes/examples/test_board_basicmotions.py -p edge_runtime.hil.plugin

With your board (it sends models/basicmotions_recording.csv in the wire protocol, starting
when the port opens, as the emulator does; see firmware_notes/hil_testing.md):

    pytest firmware_notes/examples/test_board_basicmotions.py -p edge_runtime.hil.plugin
        --hil-port /dev/ttyACM0 --hil-baud 921600 --junitxml=hil.xml        (one command line)

After a deliberate change (a new model), rewrite the golden file from a run you trust:

    pytest firmware_notes/examples/test_board_basicmotions.py -p edge_runtime.hil.plugin --hil-golden-update
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import pytest

from edge_runtime.hil.emulator import Faults, load_recording
from edge_runtime.hil.plugin import EmulatorFactory, GoldenCheck, HilLink, HilReport, HilStreams
from edge_runtime.stream.command import host_clock_us

# The model and the recording ship inside the package, so this file runs from any directory.
DATA = Path(str(files("edge_runtime") / "data"))
MODEL = DATA / "basicmotions_int8.tflite"
RECORDING = DATA / "basicmotions_recording.csv"
GOLDEN = "basicmotions_golden.jsonl"  # beside this file: one JSON line per window
WINDOWS = 40  # 4000 samples at 10 Hz, a 100-sample window every 100 samples
EMULATOR_SPEED = 1000.0  # the emulator plays the 400 s recording in 0.4 s; a board keeps its own pace
TIMEOUT_S = 600.0  # a board at real time needs 400 s for 40 windows

pytestmark = pytest.mark.hil


def test_labels_match_the_golden_file(
    hil_link: HilLink, hil_stream: HilStreams, hil_golden: GoldenCheck, hil_report: HilReport
) -> None:
    """Every window the board's data makes is classified as the golden file says."""
    hil_link.play(RECORDING, speed=EMULATOR_SPEED)  # the emulator plays it; a board sends its own
    with hil_stream(MODEL) as run:  # the sidecar's preprocessing; policy "block": no window dropped
        results = run.results.wait_for(WINDOWS, timeout_s=TIMEOUT_S)
    hil_report.stream(run)  # latency percentiles, results/s, frames lost: JUnit properties
    assert run.decoder.crc_errors == run.decoder.malformed == run.decoder.gaps == 0, run.describe()
    hil_golden(GOLDEN, results)  # labels equal, scores within 0.01, window by window


def test_results_carry_board_time_on_the_host_clock(
    hil_link: HilLink, hil_stream: HilStreams, hil_report: HilReport
) -> None:
    """PING the board over the command channel: the link's round-trip time and the board clock's
    offset from the host's go into the report, and each result's window, mapped from board time
    to host time, ended before its result reached the host (within the offset's error bound)."""
    began_us = host_clock_us()  # before the board sends anything (it starts when the port opens)
    hil_link.play(RECORDING, rate=1000.0, speed=1.0, loop=True)  # real time: frame stamps follow the board clock
    with hil_stream(MODEL) as run:
        clock = run.sync_clock(n=8)
        results = run.results.wait_for(5, timeout_s=TIMEOUT_S)
        arrivals_us = [ns / 1000 for ns in run.results.arrivals_ns[:5]]
    hil_report.clock(clock)
    ages = [arrived - run.host_time_us(r) for r, arrived in zip(results, arrivals_us)]
    hil_report.record("sample_to_result_max_us", max(ages))  # sensor sample taken -> result on the host
    # causality both ways: taken after the test began, and before the result arrived
    assert all(run.host_time_us(r) >= began_us - clock.error_us for r in results), (began_us, clock)
    assert all(age >= -clock.error_us for age in ages), (ages, clock)


@pytest.mark.emulator_only
def test_noise_between_frames_changes_no_result(
    hil_emulator: EmulatorFactory, hil_stream: HilStreams, hil_golden: GoldenCheck, hil_report: HilReport
) -> None:
    """Bursts of garbage between frames (a noisy cable) are dropped and counted; no result changes."""
    values, rate = load_recording(RECORDING)
    emu = hil_emulator(values, rate=rate, speed=EMULATOR_SPEED, faults=Faults(garbage_every=4, seed=1))
    with hil_stream(MODEL) as run:
        results = run.results.wait_for(WINDOWS, timeout_s=TIMEOUT_S)
    hil_report.stream(run)
    assert run.decoder.gaps == 0 and emu.stats.garbage_bursts > 0
    assert run.decoder.crc_errors + run.decoder.malformed == emu.stats.garbage_bursts
    hil_golden(GOLDEN, results)


@pytest.mark.board_only
def test_board_sends_the_format_the_model_was_trained_on(hil_stream: HilStreams, hil_report: HilReport) -> None:
    """The board's frames: 6 channels at 10 Hz (the model's 10 s window), in sequence, none corrupt."""
    with hil_stream(MODEL) as run:
        run.results.wait_for(1, timeout_s=TIMEOUT_S)
    hil_report.stream(run)
    assert run.frames, "no frame received"
    assert {f.channels for f in run.frames} == {6}
    assert {f.interval_us for f in run.frames} == {100_000}, "the model expects 10 Hz samples"
    assert run.decoder.gaps == 0, run.describe()
    # A board that was already sending when the port opened: the open may cut its first frame.
    assert run.decoder.crc_errors + run.decoder.malformed <= 1, run.describe()
