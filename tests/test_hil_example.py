"""The HIL example a user copies (firmware_notes/examples/test_board_basicmotions.py), run as a user runs it.

Each run is ``python -m pytest <example> -p edge_runtime.hil.plugin --junitxml=...`` in a child
process, against the firmware emulator: as shipped it passes and its JUnit XML carries the
figures; with a corrupted golden file it fails and says which window differs; its
``board_only`` test is reported skipped, with the reason.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from conftest import MODELS, ROOT

from edge_runtime.stream.sources import FileSource

EXAMPLES = ROOT / "firmware_notes" / "examples"
EXAMPLE = EXAMPLES / "test_board_basicmotions.py"
GOLDEN = EXAMPLES / "basicmotions_golden.jsonl"
PLUGIN = "edge_runtime.hil.plugin"


def plugin_args() -> list[str]:
    """``-p`` for the plugin, by its entry point's name once one is installed (pytest refuses to
    register one module under two names), else by module."""
    names = [ep.name for ep in importlib.metadata.entry_points(group="pytest11") if ep.value == PLUGIN]
    return ["-p", names[0] if names else PLUGIN]


def start(test_file: Path, xml: Path, cwd: Path) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "pytest", str(test_file), *plugin_args(), "-p", "no:cacheprovider", "-rs"]
    env = {k: v for k, v in os.environ.items() if k != "EDGE_RUNTIME_HIL_PORT"}  # the emulator, whatever the CI says
    return subprocess.Popen(
        [*argv, f"--junitxml={xml}"],
        cwd=cwd,
        env={**env, "PYTHONWARNINGS": "ignore"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def properties(node: ET.Element) -> dict[str, str]:
    return {p.attrib["name"]: p.attrib["value"] for p in node.iterfind("properties/property")}


def test_the_example_passes_records_its_figures_fails_on_a_bad_golden_file_and_skips_board_only(
    tmp_path: Path,
) -> None:
    # A copy of the example beside a golden file whose window 7 says another label (as a user's
    # copy would be: the example finds its golden file beside itself, and the model in the package).
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(EXAMPLE, copy / EXAMPLE.name)
    lines = GOLDEN.read_text().splitlines()
    window = json.loads(lines[7])
    expected_label = window["label"]
    window["label"] = "running" if expected_label != "running" else "walking"
    lines[7] = json.dumps(window)
    (copy / GOLDEN.name).write_text("\n".join(lines) + "\n")

    # Both runs at once: each waits mostly on its own pty and model.
    good = start(EXAMPLE, tmp_path / "good.xml", ROOT)
    bad = start(copy / EXAMPLE.name, tmp_path / "bad.xml", copy)
    good_out, _ = good.communicate(timeout=120)
    bad_out, _ = bad.communicate(timeout=120)

    assert good.returncode == 0, good_out[-4000:]
    assert "3 passed, 1 skipped" in good_out, good_out[-2000:]
    assert "hil link: the firmware emulator" in good_out
    skip_line = [line for line in good_out.splitlines() if line.startswith("SKIPPED [1] ")]
    assert len(skip_line) == 1 and "test_board_basicmotions.py" in skip_line[0], good_out[-2000:]
    assert (
        "board_only: needs a real board; this session runs on the firmware emulator (pass --hil-port URL"
        in (skip_line[0])
    )

    suite = ET.parse(tmp_path / "good.xml").getroot().find("testsuite")
    assert suite is not None
    assert properties(suite)["hil_link"] == "emulator"
    cases = {case.attrib["name"]: case for case in suite.iter("testcase")}
    figures = properties(cases["test_labels_match_the_golden_file"])
    for name in ("latency_p50_us", "latency_p90_us", "latency_p99_us", "results_per_s", "invoke_p50_us"):
        assert float(figures[f"hil_{name}"]) > 0, name
    assert figures["hil_results"] == "40" and figures["hil_frames_lost"] == "0"
    assert figures["hil_golden_windows"] == "40" and figures["hil_golden_differing"] == "0"
    assert int(properties(cases["test_noise_between_frames_changes_no_result"])["hil_malformed"]) > 0
    clock = properties(cases["test_results_carry_board_time_on_the_host_clock"])
    assert float(clock["hil_link_rtt_us"]) > 0 and float(clock["hil_clock_error_us"]) > 0
    assert float(clock["hil_sample_to_result_max_us"]) >= 0 and "hil_clock_offset_us" in clock
    skipped = cases["test_board_sends_the_format_the_model_was_trained_on"].find("skipped")
    assert skipped is not None and "board_only: needs a real board" in skipped.attrib["message"]
    assert "--hil-port URL" in skipped.attrib["message"]

    assert bad.returncode == 1, bad_out[-4000:]
    assert "2 failed, 1 passed, 1 skipped" in bad_out, bad_out[-2000:]
    assert "1 of 40 windows differ (allowed: 0)" in bad_out
    assert "first differing window: window_index 7 (label)" in bad_out
    assert f"expected: label '{window['label']}'" in bad_out and f"got:      label '{expected_label}'" in bad_out
    assert "tolerance: label must match, scores within ±0.01 absolute" in bad_out
    assert "windows: 40 expected, 40 got, 39 match; differing: 0 missing, 0 extra, 1 label" in bad_out
    bad_cases = {c.attrib["name"]: c for c in ET.parse(tmp_path / "bad.xml").getroot().iter("testcase")}
    failure = bad_cases["test_labels_match_the_golden_file"].find("failure")
    assert failure is not None and "window_index 7" in (failure.text or "")


def test_the_shipped_golden_file_agrees_with_the_recordings_own_labels() -> None:
    """The golden file is not just what the model said once: each label is the recording's truth."""
    truth = FileSource(f"file:{MODELS / 'basicmotions_recording.csv'}")
    assert truth.labels is not None
    windows = [json.loads(line) for line in GOLDEN.read_text().splitlines()]
    assert [w["window_index"] for w in windows] == list(range(40))
    assert [w["timestamp_us"] for w in windows] == [(k * 100 + 99) * 100_000 for k in range(40)]
    assert [w["label"] for w in windows] == [truth.labels[k * 100 + 99] for k in range(40)]
