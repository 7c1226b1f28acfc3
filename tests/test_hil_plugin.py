"""The HIL pytest plugin itself: options, markers, skips, the summary, board mode, cleanup, import cost.

Inner pytest sessions run in this process (``pytester``); the "board" is the firmware
emulator's framing served on a TCP socket, so ``--hil-port socket://...`` is a real
pyserial URL to a device the plugin does not control.
"""

from __future__ import annotations

import importlib.metadata
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import MODELS, ROOT

from edge_runtime.hil.emulator import Emulator
from edge_runtime.hil.plugin import HilWaitError, ResultCollector, percentile

pytest_plugins = ["pytester"]

PLUGIN = "edge_runtime.hil.plugin"


def plugin_args() -> list[str]:
    """``-p`` for the plugin, by its entry point's name once one is installed (pytest refuses to
    register one module under two names), else by module."""
    names = [ep.name for ep in importlib.metadata.entry_points(group="pytest11") if ep.value == PLUGIN]
    return ["-p", names[0] if names else PLUGIN]


def ramp(n: int, channels: int = 6) -> np.ndarray:
    return np.arange(n * channels, dtype=np.float32).reshape(n, channels)


class SocketBoard:
    """A board reached at ``url`` (``socket://127.0.0.1:PORT``): on each connection it boots and
    streams a recording in the wire protocol (looping) until the host hangs up."""

    def __init__(self, values: np.ndarray, rate: float, speed: float) -> None:
        self.values, self.rate, self.speed = values, rate, speed
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.05)
        self.url = f"socket://127.0.0.1:{self.server.getsockname()[1]}"
        self.connections = 0
        self.emulator: Emulator | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="socket-board", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            self.connections += 1
            emu = self.emulator = Emulator(self.values, rate=self.rate, speed=self.speed, loop=True, write=conn.sendall)
            if self.stop.is_set():
                emu.close()
            try:
                emu.run()
            except OSError:
                pass  # the host hung up
            finally:
                emu.close()
                conn.close()

    def close(self) -> None:
        self.stop.set()
        if self.emulator is not None:
            self.emulator.close()  # ends a run still sending (the test's reader is gone)
        self.thread.join(10)
        self.server.close()
        assert not self.thread.is_alive()


@pytest.fixture
def board() -> Iterator[SocketBoard]:
    b = SocketBoard(ramp(1000), rate=100, speed=50)
    try:
        yield b
    finally:
        b.close()


def leftovers() -> tuple[set[int], int]:
    """(idents of HIL threads alive, open pty masters) of this process."""
    names = ("edge_runtime-emulator", "edge_runtime-reader", "edge_runtime-hil-results")
    threads = {t.ident or 0 for t in threading.enumerate() if t.name in names}
    fd_dir = Path("/proc/self/fd")
    ptmx = 0
    for fd in fd_dir.iterdir():
        try:
            ptmx += os.readlink(fd) == "/dev/ptmx"
        except OSError:
            pass
    return threads, ptmx


TESTS = f"""
import pytest
from edge_runtime.hil.emulator import Faults

MODEL = {str(MODELS / "basicmotions_int8.tflite")!r}


def test_plain():
    assert True


@pytest.mark.hil
def test_marked_hil():
    pass


@pytest.mark.board_only
def test_board():
    pass


@pytest.mark.emulator_only
def test_emulator(hil_emulator):
    hil_emulator([[0.0] * 6] * 20, rate=100, faults=Faults(garbage_every=2))


def test_uses_the_link(hil_link):
    assert hil_link.emulator is None  # nothing made yet
    assert hil_link.url.endswith("ttyHIL") if hil_link.is_emulator else hil_link.url.startswith("socket://")
"""


def test_markers_are_registered_and_strict_markers_accepts_them(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_marks=TESTS)
    result = pytester.runpytest_inprocess(*plugin_args(), "--strict-markers", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, skipped=1)
    markers = pytester.runpytest_inprocess(*plugin_args(), "--markers").stdout.str()
    for name in ("hil:", "board_only:", "emulator_only:"):
        assert f"@pytest.mark.{name}" in markers


def test_board_only_is_skipped_with_the_reason_on_the_emulator(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_marks=TESTS)
    result = pytester.runpytest_inprocess(*plugin_args(), "-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "hil link: the firmware emulator, 1 emulator(s) on pseudo-terminals (/dev/pts/*); *",
            "SKIPPED * board_only: needs a real board; this session runs on the firmware emulator "
            "(pass --hil-port URL, or set $EDGE_RUNTIME_HIL_PORT)",
        ]
    )


def test_m_hil_selects_the_tests_that_use_the_link_or_its_markers(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_marks=TESTS)
    result = pytester.runpytest_inprocess(*plugin_args(), "-m", "hil", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, skipped=1, deselected=1)  # all but test_plain
    result = pytester.runpytest_inprocess(*plugin_args(), "-m", "not hil", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, deselected=4)


def test_a_session_without_hil_tests_is_unchanged(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_plain="""
        import pytest


        def test_a():
            pass


        @pytest.mark.skip(reason="x")
        def test_b():
            pass
        """
    )

    def lines(*args: str) -> list[str]:
        # in subprocesses: in process, an installed entry point re-imports the plugin module and
        # pytest warns that it cannot rewrite it, a difference of the test harness, not the plugin
        out = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", *args).stdout.lines
        return [line for line in out if " in " not in line and not line.startswith(("platform", "rootdir", "plugins"))]

    installed = [ep.name for ep in importlib.metadata.entry_points(group="pytest11") if ep.value == PLUGIN]
    without = lines(*(["-p", f"no:{installed[0]}"] if installed else []))
    with_plugin = lines(*plugin_args())
    assert with_plugin == without
    assert not any("hil" in line for line in with_plugin)


def test_board_mode_runs_hil_tests_on_the_port_and_skips_emulator_only(
    pytester: pytest.Pytester, board: SocketBoard
) -> None:
    pytester.makepyfile(test_marks=TESTS)
    pytester.makepyfile(
        test_board_stream=f"""
        from edge_runtime.hil.plugin import HilLink, HilReport, HilStreams

        MODEL = {str(MODELS / "basicmotions_int8.tflite")!r}


        def test_streams_from_the_board(hil_link: HilLink, hil_stream: HilStreams, hil_report: HilReport) -> None:
            assert not hil_link.is_emulator and hil_link.play("unused.csv") is None
            with hil_stream(MODEL) as run:
                results = run.results.wait_for(3, timeout_s=30)
            hil_report.stream(run)
            assert [r.window_index for r in results] == [0, 1, 2]
            seqs = [f.seq for f in run.frames]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        """
    )
    xml = pytester.path / "out.xml"
    result = pytester.runpytest_inprocess(
        *plugin_args(), "--hil-port", board.url, "-rs", "-p", "no:cacheprovider", f"--junitxml={xml}"
    )
    result.assert_outcomes(passed=5, skipped=1)
    result.stdout.fnmatch_lines(
        [
            f"hil link: the board at {board.url} (from --hil-port)",
            "test_board_stream.py::test_streams_from_the_board: latency_p50_us=*, frames_lost=0, *",
            f"SKIPPED * emulator_only: needs the firmware emulator (fault injection, unplug, a held port); "
            f"--hil-port points at the board {board.url}",
        ]
    )
    assert f'<property name="hil_link" value="{board.url}" />' in xml.read_text()
    assert board.connections == 1, "only the stream opened the port"


def test_the_port_can_come_from_the_environment(
    pytester: pytest.Pytester, board: SocketBoard, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_RUNTIME_HIL_PORT", board.url)
    pytester.makepyfile(test_marks=TESTS)
    result = pytester.runpytest_inprocess(*plugin_args(), "-p", "no:cacheprovider", "--hil-baud", "921600")
    result.assert_outcomes(passed=4, skipped=1)  # board_only ran, emulator_only was skipped
    result.stdout.fnmatch_lines([f"hil link: the board at {board.url} (from $EDGE_RUNTIME_HIL_PORT, 921600 baud)"])


def test_hil_emulator_on_a_board_without_emulator_only_is_an_error_that_says_so(
    pytester: pytest.Pytester, board: SocketBoard
) -> None:
    pytester.makepyfile("def test_x(hil_emulator):\n    pass\n")
    result = pytester.runpytest_inprocess(*plugin_args(), "--hil-port", board.url, "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*uses hil_emulator, but --hil-port points at the board*mark it*emulator_only*"])


@pytest.mark.parametrize(("args", "message"), [(["--hil-baud", "0"], "must be > 0"), (["--hil-port", ""], "empty")])
def test_bad_options_are_usage_errors(pytester: pytest.Pytester, args: list[str], message: str) -> None:
    result = pytester.runpytest_inprocess(*plugin_args(), *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def test_nothing_is_left_behind_when_a_test_fails_mid_stream(pytester: pytest.Pytester) -> None:
    """A test that fails inside ``with hil_stream``: the stream stops, the emulator's thread ends,
    its pty closes; the fixtures' own checks pass (no error at teardown)."""
    pytester.makepyfile(
        f"""
        import numpy as np

        MODEL = {str(MODELS / "basicmotions_int8.tflite")!r}


        def test_fails(hil_link, hil_stream):
            hil_link.play(np.zeros((100_000, 6), np.float32), rate=10, speed=100)
            with hil_stream(MODEL) as run:
                run.results.wait_for(1, timeout_s=30)
                raise RuntimeError("boom")
        """
    )
    before = leftovers()
    result = pytester.runpytest_inprocess(*plugin_args(), "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*RuntimeError: boom"])
    threads, ptys = leftovers()
    assert threads <= before[0] and ptys <= before[1], (threads, ptys, before)


def test_golden_update_writes_and_a_missing_file_says_how_to_make_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        f"""
        MODEL = {str(MODELS / "basicmotions_int8.tflite")!r}
        REC = {str(MODELS / "basicmotions_recording.csv")!r}


        def test_golden(hil_link, hil_stream, hil_golden):
            hil_link.play(REC, speed=2000)
            with hil_stream(MODEL) as run:
                results = run.results.wait_for(5, timeout_s=30)
            hil_golden("sub.jsonl", results)
        """
    )
    missing = pytester.runpytest_inprocess(*plugin_args(), "-p", "no:cacheprovider")
    missing.assert_outcomes(failed=1)
    missing.stdout.fnmatch_lines(["*golden file *sub.jsonl not found: run once with --hil-golden-update to write it"])
    update = pytester.runpytest_inprocess(*plugin_args(), "-p", "no:cacheprovider", "--hil-golden-update")
    update.assert_outcomes(passed=1)
    update.stdout.fnmatch_lines(["golden file rewritten (--hil-golden-update): *sub.jsonl"])
    assert len((pytester.path / "sub.jsonl").read_text().splitlines()) == 5
    pytester.runpytest_inprocess(*plugin_args(), "-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_the_project_serial_tests_run_against_a_board(pytester: pytest.Pytester, board: SocketBoard) -> None:
    """``pytest tests/test_stream_serial.py --hil-port URL``: the hil tests that make sense on a
    device run there; those needing the emulator are skipped, saying why."""
    result = pytester.runpytest_inprocess(
        *plugin_args(),
        str(ROOT / "tests" / "test_stream_serial.py"),
        "--hil-port",
        board.url,
        "-m",
        "hil",
        "-rs",
        "-p",
        "no:cacheprovider",
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("errors", 0) == 0, result.stdout.str()[-3000:]
    assert outcomes["passed"] >= 2, outcomes  # the clean link and the user error, at least
    result.stdout.fnmatch_lines(["SKIPPED * emulator_only: * --hil-port points at the board socket://*"])


def test_importing_the_plugin_imports_nothing_heavy() -> None:
    """It is loaded into every pytest session: nothing beyond what ``import edge_runtime`` already costs."""
    code = (
        "import sys, edge_runtime; before = set(sys.modules); import edge_runtime.hil.plugin; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    new = out.stdout.split()
    assert "edge_runtime.hil.plugin" in new
    heavy = [
        m
        for m in new
        if m.split(".")[0] in ("serial", "openvino", "ai_edge_litert", "tflite_runtime", "numpy")
        or m.startswith(("edge_runtime.stream", "edge_runtime.hil.emulator", "edge_runtime.hil.golden"))
    ]
    assert heavy == []


def test_result_collector_waits_without_sleeping_and_says_why_it_stopped(hil_results: ResultCollector) -> None:
    from edge_runtime.stream.pipeline import StreamResult

    def result(i: int) -> StreamResult:
        return StreamResult(0, i, i * 10, 0, "a", 1.0, (1.0,), 100.0 + i, 50.0)

    def feed() -> None:
        for i in range(5):
            hil_results(result(i))

    feeder = threading.Thread(target=feed)
    feeder.start()
    assert [r.window_index for r in hil_results.wait_for(3, timeout_s=30)] == [0, 1, 2]
    feeder.join()
    assert len(hil_results) == 5 and len(hil_results.arrivals_ns) == 5
    with pytest.raises(HilWaitError, match=r"^5 of 6 results within 0.01 s"):
        hil_results.wait_for(6, timeout_s=0.01)
    ended = ResultCollector(describe=lambda: "counters")
    ended(result(0))
    ended.close()
    with pytest.raises(HilWaitError, match=r"the stream ended after 1 of 2 results \(counters\)"):
        ended.wait_for(2, timeout_s=600)  # at once: nothing more can come
    failed = ResultCollector()
    failed.fail(OSError("port gone"))
    with pytest.raises(HilWaitError, match="the stream failed after 0 of 1 results: OSError: port gone"):
        failed.wait_for(1, timeout_s=600)
    assert failed.error_reported


def test_percentile_is_numpys_linear_interpolation() -> None:
    values = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0]
    for q in (0, 10, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
