#!/usr/bin/env python3
"""Soak benchmark of the daemon as users run it: the real ``edge-runtime serve --config FILE``.

For each device (``--device litert:cpu``, ``openvino:CPU`` or ``both``) it writes a config into
a temporary directory and runs the daemon as a subprocess (``python -m edge_runtime serve``),
twice:

  one   one pipeline
  two   two pipelines, and ``--reloads`` SIGHUP reloads spread evenly over the phase

Every pipeline: ``synthetic:sine?channels=C&speed=max`` (as fast as it can) through ``--model``
(default: the shipped ``models/basicmotions_int8.tflite``), ``threads = 1``, ``policy = "block"``
(the source waits for the pipeline: nothing is dropped, the pipeline never idles), results to a
JSON lines file of its own; metrics on ``127.0.0.1:<free port>``. Everything else follows from the
model's one input: C = ``shape[-1]`` channels and a window of ``prod(shape) // C`` samples
(basicmotions ``(1,100,6)``: 6 channels, window 100; MLPerf Tiny VWW ``(1,96,96,3)``: 3 channels,
window 9216); ``preprocess = "auto"`` where the model has a JSON sidecar (``MODEL.json``), else
``"none"``. ``--frame-samples`` sets the synthetic frame size (default window // 10: ten frames
per window). A model with more than one input, a missing file, or one that does not load on
litert:cpu is a usage error (exit 2, one line). The MLPerf Tiny reference models live in
``../shared/models/mlperf_tiny`` (outside the repository; never copy them into it).

Before the phases the soak process loads the model once per device (``threads = 1``) and times
bare ``infer`` calls on zeros of the input's dtype (20 warm-up calls, then 5 passes of 50):
"bare inference us" is the median per-call time of the passes (min-max over them), and
"inference share of a result" is bare / (1 / one-pipeline results/s), the fraction of a result's
time spent in inference. Near 1, inference is the bottleneck and two pipelines can approach
twice one; far below 1, the daemon's per-window Python work (which holds the GIL) dominates and
the two/one ratio cannot show inference spreading over cores: use a heavier model.

A phase lasts ``--warmup`` + ``--duration`` seconds from the moment ``/healthz`` answers 200.
Everything is measured from outside the daemon, over the ``--duration`` seconds after warm-up:

  results/s     complete lines in the JSON lines files at warm-up end and at phase end, per
                pipeline and total (and per --sample-s interval: median, min-max)
  two/one       total results/s of phase two over phase one (target >= 1.7 with >= 2 cores);
                beside it the most the cores allow, min(2, cores / the one pipeline's CPU
                cores): a pipeline whose source costs as much as its inference uses more than
                a core alone
  CPU           the daemon's utime+stime (/proc/PID/stat, with its pipeline processes) over
                wall time, in cores; its
                busiest threads; what other processes used meanwhile (/proc/stat)
  dropped       edge_runtime_windows_dropped from /metrics at phase end (target 0)
  lost, dup     after the daemon stopped: each file's window_index must be exactly 0..N-1
                in file order (reloads included; target 0 lost, 0 duplicated, 0 out of order)
  latency       p50/p99 of the records' latency_us and invoke_us written after warm-up
  RSS           VmRSS (/proc/PID/status; pipelines in processes: the sum over the daemon's
                processes), sampled every --sample-s after warm-up. Target: the median of the
                last fifth of the samples within 2 MiB of the median of the first fifth
                (medians: a sample taken while a reload holds the old and the new model at
                once reads 1-2 MiB high for a moment). Also shown: after warm-up and at the
                end (single samples), min/max, "end - midway" (a step early in the phase or
                steady growth?) and a least-squares slope in MiB/hour. The daemon preallocates
                its buffers at start, so growth after warm-up is a leak
  reloads       before each SIGHUP the config is rewritten (deadline_ms 50 <-> 60, so each
                reload is a real change); the next waits until /metrics'
                edge_runtime_reloads_total{result="ok"} has counted it (target: all ok). One
                more reload, in the middle of warm-up, is not among --reloads: the first
                reload allocates what later ones reuse (OpenVINO: +1.5-2 MiB once)
  stop          SIGTERM; the daemon must exit 0 within 30 s; its log must hold no error

Exit status: 0 every target met, 1 one missed (named on the last line), 2 usage error,
130 interrupted by Ctrl-C, 143 by SIGTERM (either stops the daemon first). Progress goes to
stderr every ~10 s. The JSON lines files take about 0.3 MB per 1,000 results (a 10-minute
phase: ~300 MB per pipeline, in $TMPDIR); they are deleted after each phase unless --keep.

  python scripts/soak.py                                  # 10 minutes per phase, litert:cpu
  python scripts/soak.py --device both --duration 20      # a quick check
  python scripts/soak.py --device openvino:CPU --json --reloads 20
  python scripts/soak.py --model ../shared/models/mlperf_tiny/vww_96_int8.tflite --device both
                                                          # a heavier model (MLPerf Tiny VWW:
                                                          # 3 channels, window 9216); see
                                                          # "inference share of a result"
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.metadata
import itertools
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "basicmotions_int8.tflite"
DEVICES = ("litert:cpu", "openvino:CPU")
DEADLINES_MS = (50.0, 60.0)  # alternated between reloads: a harmless, real change

TARGET_RATIO = 1.7  # two pipelines over one, total results/s, with >= 2 usable cores
TARGET_RSS_MIB = 2.0  # |RSS at end - RSS after warm-up|
STOP_TIMEOUT_S = 30.0  # SIGTERM to exit
READY_TIMEOUT_S = 180.0  # start to /healthz 200 (OpenVINO compiles on first use)
RELOAD_TIMEOUT_S = 60.0  # SIGHUP to the reload counted in /metrics
RELOAD_POLL_S = 0.05
PROGRESS_S = 10.0
BARE_WARMUP_CALLS = 20  # bare inference timing: calls not timed, then
BARE_PASSES = 5  # passes of
BARE_CALLS = 50  # calls each

# Metric names, as edge_runtime/daemon/metrics.py declares them (a Counter gets "_total";
# disable_created_metrics() there means no "_created" series).
M_RELOADS = "edge_runtime_reloads_total"
M_DROPPED = "edge_runtime_windows_dropped"

CLK_TCK = os.sysconf("SC_CLK_TCK")


class SoakError(Exception):
    """The daemon did not start, died, or stopped answering: the phase cannot be measured."""


class UsageError(Exception):
    """A model the soak cannot run (missing, unloadable, more than one input): exit 2, one line."""


# -- the model -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelPlan:
    """What the soak runs, all derived from the model's one input."""

    path: Path
    input_shape: tuple[int, ...]
    input_dtype: str
    channels: int  # shape[-1]
    window: int  # prod(shape) // channels
    preprocess: str  # "auto" with a JSON sidecar beside the model, else "none"


def plan_model(path: Path) -> ModelPlan:
    """Load ``path`` once on litert:cpu (then close it) and derive channels, window, preprocess."""
    if not path.is_file():
        raise UsageError(f"no such model file: {path}")
    import edge_runtime

    try:
        with edge_runtime.load(path, "litert:cpu") as model:
            inputs = model.inputs
    except edge_runtime.EdgeRuntimeError as exc:
        raise UsageError(f"cannot load {path} on litert:cpu: {' '.join(str(exc).split())}") from exc
    if len(inputs) != 1:
        raise UsageError(f"{path.name} has {len(inputs)} inputs; the soak feeds one (a synthetic stream)")
    spec = inputs[0]
    shape = tuple(int(d) for d in spec.shape)
    if not shape or any(d < 1 for d in shape):
        raise UsageError(f"{path.name}: input shape {list(shape)} has no static size")
    channels = shape[-1]
    return ModelPlan(
        path=path,
        input_shape=shape,
        input_dtype=spec.dtype.name,
        channels=channels,
        window=int(np.prod(shape, dtype=np.int64)) // channels,
        preprocess="auto" if path.with_suffix(".json").is_file() else "none",
    )


def bare_inference_us(path: Path, device: str) -> dict[str, Any]:
    """Per-call time of ``infer`` on zeros of the input's dtype, ``threads=1``: after
    BARE_WARMUP_CALLS untimed calls, BARE_PASSES passes of BARE_CALLS calls; median and
    min-max over the passes' per-call means. {"error": ...} where the device cannot run it."""
    import edge_runtime

    try:
        with edge_runtime.load(path, device, threads=1) as model:
            spec = model.inputs[0]
            x = np.zeros(spec.shape, dtype=spec.dtype)
            for _ in range(BARE_WARMUP_CALLS):
                model.infer(x)
            per_call = []
            for _ in range(BARE_PASSES):
                t0 = time.perf_counter()
                for _ in range(BARE_CALLS):
                    model.infer(x)
                per_call.append((time.perf_counter() - t0) / BARE_CALLS * 1e6)
    except edge_runtime.EdgeRuntimeError as exc:
        return {"error": " ".join(str(exc).split())}
    return {
        "median": round(float(np.median(per_call)), 1),
        "min": round(min(per_call), 1),
        "max": round(max(per_call), 1),
        "per_pass": [round(v, 1) for v in per_call],
        "error": None,
    }


def bare_inference_in_child(path: Path, device: str) -> dict[str, Any]:
    """``bare_inference_us`` in a process of its own: this script then holds no interpreter (and
    none of its threads) while it measures the daemon. Seen otherwise: this script's loop stalled
    for 20-40 s at a time in phases where the daemon kept both cores busy."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import soak; "
        "print(json.dumps(soak.bare_inference_us(soak.Path(sys.argv[2]), sys.argv[3])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).resolve().parent), str(path), device],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["the timing process failed"])[-1]}
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


class Terminated(KeyboardInterrupt):
    """SIGTERM to the soak script: stop the daemon as for Ctrl-C."""


# -- /proc -----------------------------------------------------------------------------
def _stat_fields(path: str) -> list[str]:
    """The fields of a /proc/.../stat line after the command name (field 3, the state, first)."""
    with open(path) as fh:
        text = fh.read()
    return text[text.rindex(")") + 2 :].split()


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the daemon runs 2+ pipelines in processes of their own), from
    ``/proc/PID/task/*/children``: only this tree is read, never every process of the machine."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.scandir(f"/proc/{p}/task"):
                with open(f"{task.path}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def cpu_ticks(pid: int) -> int:
    """utime + stime of process ``pid`` and its descendants, all threads, in clock ticks."""
    total = 0
    for p in tree(pid):
        try:
            f = _stat_fields(f"/proc/{p}/stat")
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(f[11]) + int(f[12])
    return total


def thread_ticks(pid: int) -> dict[int, tuple[str, int]]:
    """{thread id: (name, utime + stime in ticks)} for every thread of ``pid`` and its descendants."""
    out: dict[int, tuple[str, int]] = {}
    entries: list[os.DirEntry[str]] = []
    for p in tree(pid):
        try:
            entries.extend(os.scandir(f"/proc/{p}/task"))
        except (FileNotFoundError, ProcessLookupError):
            continue
    for entry in entries:
        try:
            f = _stat_fields(f"{entry.path}/stat")
            with open(f"{entry.path}/comm") as fh:
                name = fh.read().strip()
        except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
            continue
        out[int(entry.name)] = (name, int(f[11]) + int(f[12]))
    return out


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot, all cores (/proc/stat)."""
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (v + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` plus that of its descendants, in KiB (shared pages counted per process)."""
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as fh:
                total += next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    if not total:
        raise SoakError(f"no VmRSS in /proc/{pid}/status")
    return total


# -- HTTP: /healthz and /metrics ---------------------------------------------------------
def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of GET http://127.0.0.1:port/path; OSError if nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


_SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the first sample of ``name`` whose labels include ``labels``, or None."""
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is None or m.group(1) != name:
            continue
        got = dict(_LABEL.findall(m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the daemon ----------------------------------------------------------------------------
def _find_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Looked up here, not in the child: the bare-inference timing leaves backend threads (OpenVINO's
# thread pool) in this process, and between fork and exec the child must not dlopen.
_PRCTL = _find_prctl()


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if the soak script dies (even by SIGKILL); a process
    group of its own (a Ctrl-C in the terminal reaches only this script, which stops it) but
    this script's session; and a lower priority (nice 5) than this script.

    Why the same session: with the daemon in a session of its own (``start_new_session``), Linux
    puts it in an autogroup of its own (``/proc/sys/kernel/sched_autogroup_enabled``), and nice
    only ranks processes inside one group. Measured on Linux 6.18 (2 cores): while the daemon's
    two pipeline processes kept both cores busy, this script's 0.25 s sleep returned after
    43-61 s (``/proc/PID/schedstat``: runnable, waiting for a CPU, all that time), so reloads
    were sent late or not at all. In one session, the longest wait measured was 0.06 s. The
    systemd unit guards the rest of a device the same way with ``CPUWeight=50``."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    os.setpgid(0, 0)
    os.nice(5)


class Daemon:
    """``python -m edge_runtime serve --config CONFIG`` in a process group of its own (so a
    Ctrl-C in the terminal reaches only the soak script, which stops it), its output in ``log``.
    Leaving the ``with`` block stops it if it still runs (SIGTERM, then SIGKILL after 30 s)."""

    def __init__(self, config: Path, log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        env["PYTHONWARNINGS"] = "ignore"
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge_runtime", "serve", "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=env,
                preexec_fn=_die_with_parent,
            )
        self.pid = self.proc.pid

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def alive(self) -> None:
        """Raise SoakError if the daemon has exited."""
        rc = self.proc.poll()
        if rc is not None:
            raise SoakError(f"the daemon exited with status {rc}: {self.last_lines(1) or '(no output)'}")

    def stop(self) -> tuple[int | None, float]:
        """SIGTERM; (exit status or None if still running after 30 s, seconds to exit)."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc: int | None = self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            rc = None
            self.proc.kill()
            self.proc.wait()
        return rc, time.monotonic() - t0

    def close(self) -> None:
        if self.proc.poll() is not None:
            return
        try:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(STOP_TIMEOUT_S)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            self.proc.kill()
            self.proc.wait()

    def last_lines(self, n: int) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-n:])

    def log_problems(self) -> list[str]:
        """Lines of its log at error level, and tracebacks."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [ln for ln in text.splitlines() if ln.startswith(("edge-runtime: error", "Traceback"))]


def wait_ready(daemon: Daemon, port: int) -> None:
    """Until ``/healthz`` answers 200 (every pipeline loaded, warmed and running)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        daemon.alive()
        try:
            code, body = http_get(port, "/healthz", timeout=2)
        except OSError as exc:
            last = str(exc)
        else:
            if code == 200:
                return
            last = f"{code} {body[:200]}"
        time.sleep(0.1)
    raise SoakError(f"/healthz did not answer 200 within {READY_TIMEOUT_S:g} s (last: {last})")


# -- the config ----------------------------------------------------------------------------
def _q(value: object) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(str(value))


def source_url(index: int, channels: int, frame_samples: int) -> str:
    return f"synthetic:sine?channels={channels}&speed=max&frame_samples={frame_samples}&stream_id={index}"


def write_config(
    path: Path,
    port: int,
    device: str,
    outputs: list[Path],
    deadline_ms: float,
    frame_samples: int,
    plan: ModelPlan,
    pipelines_in: str = "auto",
) -> None:
    """The daemon's config, written whole then renamed over ``path`` (a reload never reads half)."""
    parts = [
        f'[daemon]\nstate_dir = {_q(path.parent / "state")}\nlog_level = "info"\npipelines_in = "{pipelines_in}"\n',
        f'[metrics]\nenabled = true\nlisten = "127.0.0.1:{port}"\n',
    ]
    for i, out in enumerate(outputs, 1):
        parts.append(
            f"[pipelines.p{i}]\n"
            f"source = {_q(source_url(i, plan.channels, frame_samples))}\n"
            f"model = {_q(plan.path)}\n"
            f"device = {_q(device)}\n"
            "threads = 1\n"
            f"window = {plan.window}\n"
            f"preprocess = {_q(plan.preprocess)}\n"
            'policy = "block"\n'
            f"deadline_ms = {deadline_ms}\n"
            f"sinks = [{_q(f'jsonl:{out}')}]\n"
        )
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(parts))
    os.replace(tmp, path)


# -- the JSON lines files --------------------------------------------------------------------
class LineCounter:
    """Complete lines of a file another process appends to, counted as they come (not parsed).
    ``offset``: the byte just after the last complete line counted."""

    CHUNK = 1 << 20

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lines = 0

    def update(self) -> int:
        try:
            fh = self.path.open("rb")
        except FileNotFoundError:
            return self.lines
        with fh:
            size = os.fstat(fh.fileno()).st_size  # up to here: never chase a tail that keeps growing
            fh.seek(self.offset)
            while self.offset < size and (chunk := fh.read(min(self.CHUNK, size - self.offset))):
                end = chunk.rfind(b"\n") + 1
                if end == 0:  # only a partial line so far
                    break
                self.lines += chunk.count(b"\n", 0, end)
                self.offset += end
                if end < len(chunk):
                    fh.seek(self.offset)
        return self.lines


@dataclass
class FileCheck:
    """One pipeline's JSON lines file, read after the daemon stopped."""

    lines: int = 0
    bad_lines: int = 0  # not JSON (a torn or interleaved line)
    lost: int = 0  # window_index values missing from 0..max
    duplicated: int = 0  # window_index values seen more than once (extra copies)
    out_of_order: int = 0  # lines whose window_index is not the previous one + 1
    devices: list[str] = field(default_factory=list)
    latency_us: Any = None  # numpy arrays over the records written after warm-up
    invoke_us: Any = None


def check_file(path: Path, start: int, end: int) -> FileCheck:
    """window_index over the whole file; latency_us/invoke_us of the lines in bytes [start, end)."""
    fc = FileCheck()
    indices = array("q")
    lat = array("d")
    inv = array("d")
    devices: set[str] = set()
    pos = 0
    with path.open("rb") as fh:
        for line in fh:
            here, pos = pos, pos + len(line)
            fc.lines += 1
            try:
                rec = json.loads(line)
                indices.append(int(rec["window_index"]))
            except (ValueError, KeyError, TypeError):
                fc.bad_lines += 1
                continue
            devices.add(str(rec.get("device")))
            if start <= here < end:
                lat.append(float(rec["latency_us"]))
                inv.append(float(rec["invoke_us"]))
    idx = np.frombuffer(indices, dtype=np.int64) if len(indices) else np.zeros(0, np.int64)
    if idx.size:
        counts = np.bincount(idx)
        fc.lost = int(np.count_nonzero(counts == 0))
        fc.duplicated = int((counts[counts > 1] - 1).sum())
        fc.out_of_order = int(np.count_nonzero(np.diff(idx) != 1)) + int(idx[0] != 0)
    fc.devices = sorted(devices)
    fc.latency_us = np.frombuffer(lat, dtype=np.float64) if len(lat) else np.zeros(0)
    fc.invoke_us = np.frombuffer(inv, dtype=np.float64) if len(inv) else np.zeros(0)
    return fc


def _pcts(values: Any) -> list[float] | None:
    if values is None or len(values) == 0:
        return None
    return [round(float(v), 1) for v in np.percentile(values, [50, 99])]


# -- one phase -------------------------------------------------------------------------------
@dataclass
class Snapshot:
    t: float
    lines: list[int]
    offsets: list[int]
    cpu: int
    threads: dict[int, tuple[str, int]]
    machine: tuple[int, int]
    self_cpu: float
    rss_kib: int


def snapshot(daemon: Daemon, counters: list[LineCounter]) -> Snapshot:
    lines = [c.update() for c in counters]
    return Snapshot(
        t=time.monotonic(),
        lines=lines,
        offsets=[c.offset for c in counters],
        cpu=cpu_ticks(daemon.pid),
        threads=thread_ticks(daemon.pid),
        machine=machine_ticks(),
        self_cpu=time.process_time(),
        rss_kib=rss_kib(daemon.pid),
    )


def busiest_threads(a: Snapshot, b: Snapshot, wall: float, n: int = 6) -> list[list[Any]]:
    """[[name, cores], ...] of the daemon's threads that used the most CPU between a and b."""
    used = []
    for tid, (name, ticks) in b.threads.items():
        before = a.threads.get(tid, (name, 0))[1]
        used.append((name, (ticks - before) / CLK_TCK / wall))
    used.sort(key=lambda x: -x[1])
    return [[name, round(c, 2)] for name, c in used[:n] if c >= 0.005]


def progress(
    device: str, kind: str, t0: float, warm_at: float, end_at: float, lines: int, rss: int, extra: str
) -> None:
    now = time.monotonic()
    state = " (warm-up)" if now < warm_at else ""
    print(
        f"soak: {device} {kind}: {now - t0:.0f} s of {end_at - t0:.0f} s{state}, {lines} results, "
        f"RSS {rss / 1024:.1f} MiB{extra}",
        file=sys.stderr,
        flush=True,
    )


def run_phase(args: argparse.Namespace, plan: ModelPlan, device: str, kind: str, workdir: Path) -> dict[str, Any]:
    """Start the daemon with one or two pipelines on ``device``, measure, stop it, check the files."""
    n_pipes = 1 if kind == "one" else 2
    n_reloads = args.reloads if kind == "two" else 0
    pdir = workdir / f"{device.replace(':', '-')}-{kind}"
    pdir.mkdir(parents=True)
    outputs = [pdir / f"p{i}.jsonl" for i in range(1, n_pipes + 1)]
    port = free_port()
    cfg = pdir / "edge-runtime.toml"
    write_config(cfg, port, device, outputs, DEADLINES_MS[0], args.frame_samples, plan, args.pipelines_in)
    res: dict[str, Any] = {
        "device": device,
        "phase": kind,
        "pipelines": n_pipes,
        "error": None,
        "reloads_asked": n_reloads,
        "dir": str(pdir),
    }
    print(f"soak: {device} {kind}: starting the daemon ({cfg})", file=sys.stderr, flush=True)
    counters = [LineCounter(p) for p in outputs]
    with Daemon(cfg, pdir / "daemon.log") as d:
        try:
            wait_ready(d, port)
            t0 = time.monotonic()
            warm_at, end_at = t0 + args.warmup, t0 + args.warmup + args.duration
            due = [warm_at + (i + 0.5) * args.duration / n_reloads for i in range(n_reloads)]
            # One reload in the middle of warm-up, not counted among --reloads: the first reload
            # allocates what every later one reuses (measured, OpenVINO in two pipeline
            # processes: +1.5-2 MiB at the first reload, flat over the next 29).
            warmup_reloads = 1 if n_reloads and args.warmup > 0 else 0
            due[:0] = [t0 + args.warmup / 2] * warmup_reloads
            reload_s: list[float] = []
            ok = failed = 0
            pending: float | None = None  # when the SIGHUP in flight was sent
            warm: Snapshot | None = None
            samples: list[tuple[float, int, int]] = []  # (t, total lines, RSS KiB) after warm-up
            next_sample = warm_at
            next_progress = t0 + PROGRESS_S
            last_turn, longest_gap = time.monotonic(), 0.0  # this loop's own turns (<= ~0.3 s apart)
            while True:
                d.alive()
                now = time.monotonic()
                longest_gap, last_turn = max(longest_gap, now - last_turn), now
                if warm is None and now >= warm_at:
                    warm = snapshot(d, counters)
                    samples.append((warm.t, sum(warm.lines), warm.rss_kib))
                    next_sample = warm.t + args.sample_s
                if now >= end_at and pending is None:
                    break
                if pending is None and due and now >= due[0] and now < end_at:
                    due.pop(0)
                    deadline = DEADLINES_MS[(ok + failed + 1) % 2]
                    write_config(cfg, port, device, outputs, deadline, args.frame_samples, plan, args.pipelines_in)
                    d.proc.send_signal(signal.SIGHUP)
                    pending = time.monotonic()
                if pending is not None:
                    try:
                        _, text = http_get(port, "/metrics")
                    except OSError:
                        text = ""
                    got_ok = metric(text, M_RELOADS, result="ok") or 0
                    got_failed = metric(text, M_RELOADS, result="failed") or 0
                    if got_ok > ok:
                        ok = int(got_ok)
                        reload_s.append(time.monotonic() - pending)
                        pending = None
                    elif got_failed > failed:
                        failed = int(got_failed)
                        pending = None
                    elif time.monotonic() - pending > RELOAD_TIMEOUT_S:
                        raise SoakError(
                            f"reload {ok + failed + 1} not counted in /metrics after {RELOAD_TIMEOUT_S:g} s"
                        )
                if warm is not None and now >= next_sample and now < end_at:
                    total = sum(c.update() for c in counters)
                    samples.append((time.monotonic(), total, rss_kib(d.pid)))
                    while next_sample <= now:
                        next_sample += args.sample_s
                if now >= next_progress:
                    total = sum(c.update() for c in counters)
                    extra = (
                        f", reloads {ok}/{n_reloads + warmup_reloads}" + (f" ({failed} failed)" if failed else "")
                        if n_reloads
                        else ""
                    )
                    progress(device, kind, t0, warm_at, end_at, total, rss_kib(d.pid), extra)
                    next_progress += PROGRESS_S
                wake = min(next_sample, next_progress, end_at, *(due[:1] or [end_at]))
                time.sleep(RELOAD_POLL_S if pending is not None else max(0.0, min(0.25, wake - time.monotonic())))
            assert warm is not None
            end = snapshot(d, counters)
            samples.append((end.t, sum(end.lines), end.rss_kib))
            try:
                _, text = http_get(port, "/metrics")
            except OSError as exc:
                raise SoakError(f"/metrics did not answer at the end of the phase: {exc}") from exc
            dropped = [metric(text, M_DROPPED, pipeline=f"p{i}") for i in range(1, n_pipes + 1)]
            rc, stop_s = d.stop()
            problems = d.log_problems()
        except (SoakError, OSError) as exc:  # OSError: /proc/PID of a daemon that just died
            res["error"] = str(exc) if isinstance(exc, SoakError) else f"reading /proc/{d.pid}: {exc}"
            if d.proc.poll() is not None:
                res["error"] += f" (the daemon exited with status {d.proc.returncode})"
            tail = d.last_lines(15)
            print(f"soak: {device} {kind}: {exc}\n  daemon log {d.log}, last lines:\n{tail}", file=sys.stderr)
            return res

    wall = end.t - warm.t
    rates = [(b - a) / wall for a, b in zip(warm.lines, end.lines)]
    interval_rates = [
        (n1 - n0) / (t1 - t0_) for (t0_, n0, _), (t1, n1, _) in itertools.pairwise(samples) if t1 - t0_ > 0.2
    ]
    rss = [r for _, _, r in samples]
    # Steady state: the median of the first and of the last fifth of the samples. A single sample
    # can land while a reload holds the old and the new model at once (+1-2 MiB for a moment).
    fifth = max(1, len(samples) // 5)
    rss_first = float(np.median(rss[:fifth]))
    rss_last = float(np.median(rss[-fifth:]))
    t_rel = np.array([t - warm.t for t, _, _ in samples])
    slope = float(np.polyfit(t_rel, np.array(rss, dtype=np.float64), 1)[0]) if len(samples) >= 3 else 0.0
    midway = min(samples, key=lambda x: abs(x[0] - (warm.t + wall / 2)))[2]  # a step, or steady growth?
    machine_busy = (end.machine[0] - warm.machine[0]) / CLK_TCK / wall
    daemon_cores = (end.cpu - warm.cpu) / CLK_TCK / wall
    self_cores = (end.self_cpu - warm.self_cpu) / wall
    checks = [check_file(p, a, b) for p, a, b in zip(outputs, warm.offsets, end.offsets)]
    lat = np.concatenate([c.latency_us for c in checks])
    inv = np.concatenate([c.invoke_us for c in checks])
    res.update(
        {
            "measured_s": round(wall, 2),
            "results_measured": [b - a for a, b in zip(warm.lines, end.lines)],
            "results_per_s": [round(r, 1) for r in rates],
            "results_per_s_total": round(sum(rates), 1),
            "interval_results_per_s": {
                "median": round(float(np.median(interval_rates)), 1) if interval_rates else None,
                "min": round(min(interval_rates), 1) if interval_rates else None,
                "max": round(max(interval_rates), 1) if interval_rates else None,
                "intervals": len(interval_rates),
            },
            "cpu_cores": round(daemon_cores, 2),
            "busiest_threads": busiest_threads(warm, end, wall),
            "other_processes_cores": round(max(0.0, machine_busy - daemon_cores - self_cores), 2),
            "soak_script_cores": round(self_cores, 3),
            "dropped": [None if v is None else int(v) for v in dropped],
            "results_in_files": [c.lines for c in checks],
            "bad_lines": sum(c.bad_lines for c in checks),
            "lost": sum(c.lost for c in checks),
            "duplicated": sum(c.duplicated for c in checks),
            "out_of_order": sum(c.out_of_order for c in checks),
            "devices_in_records": sorted({dev for c in checks for dev in c.devices}),
            "latency_us_p50_p99": _pcts(lat),
            "invoke_us_p50_p99": _pcts(inv),
            "rss_mib_warm": round(warm.rss_kib / 1024, 2),
            "rss_mib_end": round(end.rss_kib / 1024, 2),
            "rss_mib_diff": round((end.rss_kib - warm.rss_kib) / 1024, 2),
            "rss_mib_end_minus_midway": round((end.rss_kib - midway) / 1024, 2),
            "rss_mib_first_fifth_median": round(rss_first / 1024, 2),
            "rss_mib_last_fifth_median": round(rss_last / 1024, 2),
            "rss_mib_steady_diff": round((rss_last - rss_first) / 1024, 2),
            "rss_mib_per_hour_fit": round(slope * 3600 / 1024, 2),
            "rss_mib_min": round(min(rss) / 1024, 2),
            "rss_mib_max": round(max(rss) / 1024, 2),
            "rss_samples": len(rss),
            "rss_mib_series": [[round(t - warm.t, 1), round(r / 1024, 2)] for t, _, r in samples],
            "reloads_ok": ok,
            "reloads_warmup": warmup_reloads,
            "reloads_failed": failed,
            "reload_ms_p50_max": (
                [round(float(np.median(reload_s)) * 1e3), round(max(reload_s) * 1e3)] if reload_s else None
            ),
            "soak_loop_longest_gap_s": round(longest_gap, 2),
            "daemon_exit": rc,
            "daemon_stop_s": round(stop_s, 2),
            "daemon_log_problems": problems[:10],
        }
    )
    if not args.keep:
        for p in outputs:
            p.unlink(missing_ok=True)
    return res


# -- targets and report ------------------------------------------------------------------------
def inference_shares(bare: dict[str, dict[str, Any]], phases: list[dict[str, Any]]) -> dict[str, float | None]:
    """{device: bare inference s x one-pipeline results/s}, i.e. bare / (1 / results/s): the
    fraction of one result's time that is inference (None without both figures)."""
    shares: dict[str, float | None] = {}
    for dev, b in bare.items():
        one = [p for p in phases if p["device"] == dev and p["phase"] == "one" and p["error"] is None]
        if b.get("error") is None and one:
            shares[dev] = round(b["median"] * 1e-6 * one[0]["results_per_s_total"], 3)
        else:
            shares[dev] = None
    return shares


def ratio_caps(phases: list[dict[str, Any]], cores: int) -> dict[str, float | None]:
    """{device: the most two/one can be when the cores are the limit}: min(2, usable cores / CPU
    cores used by the one pipeline). A pipeline whose source costs as much CPU as its inference
    (a full-rate synthetic source of large windows) uses more than one core alone, and two of
    them then cannot reach twice one on two cores however well they are spread."""
    caps: dict[str, float | None] = {}
    for p in phases:
        if p["phase"] == "one" and p["error"] is None and p["cpu_cores"] > 0:
            caps[p["device"]] = round(min(2.0, cores / p["cpu_cores"]), 2)
    return caps


def targets(phases: list[dict[str, Any]], cores: int) -> tuple[dict[str, bool], dict[str, float | None]]:
    """{target: met} and {device: two/one ratio}."""
    t: dict[str, bool] = {}
    ratios: dict[str, float | None] = {}
    for p in phases:
        name = f"{p['device']} {p['phase']}"
        t[f"{name}: the daemon served and was measured"] = p["error"] is None
        if p["error"] is not None:
            continue
        t[f"{name}: results after warm-up"] = all(n > 0 for n in p["results_measured"])
        t[f"{name}: nothing dropped"] = all(v == 0 for v in p["dropped"])
        t[f"{name}: window_index exactly 0..N-1 (no loss, duplicate, disorder or torn line)"] = (
            p["lost"] == 0 and p["duplicated"] == 0 and p["out_of_order"] == 0 and p["bad_lines"] == 0
        )
        t[f"{name}: records from {p['device']}"] = p["devices_in_records"] == [p["device"]]
        t[f"{name}: RSS flat (|last fifth - first fifth after warm-up|, medians, <= {TARGET_RSS_MIB:g} MiB)"] = (
            abs(p["rss_mib_steady_diff"]) <= TARGET_RSS_MIB
        )
        if p["reloads_asked"]:
            t[f"{name}: {p['reloads_asked']} reloads ok (+{p['reloads_warmup']} in warm-up)"] = (
                p["reloads_ok"] == p["reloads_asked"] + p["reloads_warmup"] and p["reloads_failed"] == 0
            )
        t[f"{name}: daemon exit 0 within {STOP_TIMEOUT_S:g} s of SIGTERM"] = p["daemon_exit"] == 0
        t[f"{name}: no error or traceback in the daemon's log"] = not p["daemon_log_problems"]
    for dev in dict.fromkeys(p["device"] for p in phases):
        by = {p["phase"]: p for p in phases if p["device"] == dev and p["error"] is None}
        ratios[dev] = None
        if "one" in by and "two" in by and by["one"]["results_per_s_total"] > 0:
            ratio = round(by["two"]["results_per_s_total"] / by["one"]["results_per_s_total"], 3)
            ratios[dev] = ratio
            if cores >= 2:  # one core cannot run two pipelines side by side: no target
                t[f"{dev}: two/one total results/s >= {TARGET_RATIO:g}"] = ratio >= TARGET_RATIO
    return t, ratios


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "edge_runtime": _version("edge_runtime"),
        "ai_edge_litert": _version("ai_edge_litert"),
        "openvino": _version("openvino"),
    }


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return " / ".join(_fmt(v, spec) for v in value)
    return format(value, spec)


def _bare_cell(b: dict[str, Any] | None) -> str:
    if b is None or b.get("error") is not None:
        return "-"
    return "{median:.1f} ({min:.1f}-{max:.1f})".format(**b)


def print_report(
    meta: dict[str, Any],
    phases: list[dict[str, Any]],
    t: dict[str, bool],
    ratios: dict[str, Any],
    shares: dict[str, float | None],
    caps: dict[str, float | None] | None = None,
) -> None:
    caps = caps or {}
    print(
        f"edge-runtime serve soak ({meta['date']}; {meta['cpu']}, {meta['cores']} cores, {meta['usable_cores']} "
        f"usable; {meta['kernel']}; Python {meta['python']}; edge_runtime {meta['edge_runtime']}, "
        f"ai_edge_litert {meta['ai_edge_litert']}, openvino {meta['openvino']})"
    )
    shape = "x".join(str(d) for d in meta["input_shape"])
    print(
        f"model {meta['model']} (input {shape} {meta['input_dtype']}), window {meta['window']}, "
        f"preprocess {meta['preprocess']}, {meta['source']}, policy block, threads 1 per pipeline, "
        f"pipelines_in {meta['pipelines_in']}; "
        f"{meta['duration_s']:g} s measured per phase after {meta['warmup_s']:g} s warm-up; "
        f"{meta['reloads']} SIGHUP reloads in phase two\n"
    )
    ok = [p for p in phases if p["error"] is None]
    first_of_device = {id(next(p for p in ok if p["device"] == dev)) for dev in dict.fromkeys(p["device"] for p in ok)}
    rows: list[tuple[str, Any]] = [
        ("results/s per pipeline", lambda p: ", ".join(f"{r:.0f}" for r in p["results_per_s"])),
        ("results/s total", lambda p: f"{p['results_per_s_total']:.0f}"),
        (
            f"  per {meta['sample_s']:g}-s interval: median (min-max)",
            lambda p: (
                "{median:.0f} ({min:.0f}-{max:.0f})".format(**p["interval_results_per_s"])
                if p["interval_results_per_s"]["median"] is not None
                else "-"
            ),
        ),
        ("two/one total results/s", lambda p: _fmt(ratios.get(p["device"]), ".2f") if p["phase"] == "two" else ""),
        (
            "  at most, with these cores (cores / one's CPU cores)",
            lambda p: _fmt(caps.get(p["device"]), ".2f") if p["phase"] == "two" else "",
        ),
        (  # one figure per device, in its first column
            "bare inference us (median, min-max)",
            lambda p: _bare_cell(meta["bare_inference_us"].get(p["device"])) if id(p) in first_of_device else "",
        ),
        (
            "inference share of a result (bare / (1 / one-pipeline results/s))",
            lambda p: _fmt(shares.get(p["device"]), ".2f") if p["phase"] == "one" else "",
        ),
        ("CPU cores used by the daemon", lambda p: f"{p['cpu_cores']:.2f}"),
        ("  busiest threads (cores)", lambda p: " ".join(f"{c:.2f}" for _, c in p["busiest_threads"][:4])),
        ("  other processes (cores)", lambda p: f"{p['other_processes_cores']:.2f}"),
        ("windows dropped (/metrics)", lambda p: ", ".join(_fmt(v) for v in p["dropped"])),
        ("lost / duplicated / disorder", lambda p: f"{p['lost']} / {p['duplicated']} / {p['out_of_order']}"),
        ("latency_us p50 / p99", lambda p: _fmt(p["latency_us_p50_p99"], ".0f")),
        ("invoke_us p50 / p99", lambda p: _fmt(p["invoke_us_p50_p99"], ".0f")),
        ("RSS MiB after warm-up / end", lambda p: f"{p['rss_mib_warm']:.1f} / {p['rss_mib_end']:.1f}"),
        ("RSS MiB end - after warm-up", lambda p: f"{p['rss_mib_diff']:+.2f}"),
        ("RSS MiB end - midway", lambda p: f"{p['rss_mib_end_minus_midway']:+.2f}"),
        (
            "RSS MiB first / last fifth (medians)",
            lambda p: f"{p['rss_mib_first_fifth_median']:.1f} / {p['rss_mib_last_fifth_median']:.1f}",
        ),
        ("RSS MiB last - first fifth", lambda p: f"{p['rss_mib_steady_diff']:+.2f}"),
        ("RSS MiB/hour (least-squares fit)", lambda p: f"{p['rss_mib_per_hour_fit']:+.2f}"),
        (
            "RSS MiB min / max (samples)",
            lambda p: f"{p['rss_mib_min']:.1f} / {p['rss_mib_max']:.1f} ({p['rss_samples']})",
        ),
        (
            "reloads ok / asked (failed)",
            lambda p: (
                f"{p['reloads_ok'] - p['reloads_warmup']} / {p['reloads_asked']} ({p['reloads_failed']})"
                if p["reloads_asked"]
                else ""
            ),
        ),
        ("reload ms p50 / max", lambda p: _fmt(p["reload_ms_p50_max"]) if p["reloads_asked"] else ""),
        ("soak script's longest turn, s", lambda p: f"{p['soak_loop_longest_gap_s']:.2f}"),
        ("daemon exit (s after SIGTERM)", lambda p: f"{_fmt(p['daemon_exit'])} ({p['daemon_stop_s']:.1f} s)"),
        ("results measured / in files", lambda p: f"{sum(p['results_measured'])} / {sum(p['results_in_files'])}"),
    ]
    width = max(36, *(len(label) + 2 for label, _ in rows))
    col = 22
    print(f"{'':{width}s}" + "".join(f"{p['device'] + ' ' + p['phase']:>{col}s}" for p in ok))
    for label, cell in rows:
        print(f"{label:{width}s}" + "".join(f"{cell(p):>{col}s}" for p in ok))
    for dev, b in meta["bare_inference_us"].items():
        if b.get("error") is not None:
            print(f"\n{dev}: bare inference not measured: {b['error']}")
    for p in phases:
        if p["error"] is not None:
            print(f"\n{p['device']} {p['phase']}: not measured: {p['error']}")
        elif p["daemon_log_problems"]:
            print(f"\n{p['device']} {p['phase']}: the daemon's log ({p['dir']}/daemon.log):")
            for line in p["daemon_log_problems"]:
                print(f"  {line}")
    print("\ntargets:")
    for name, met in t.items():
        print(f"  {'met    ' if met else 'NOT met'}  {name}")
    missed = [k for k, v in t.items() if not v]
    print("\nall targets met" if not missed else "\nmissed: " + "; ".join(missed))


# -- main ----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=(*DEVICES, "both"), default="litert:cpu", help="backend (default litert:cpu)")
    ap.add_argument(
        "--duration", type=float, default=600.0, help="seconds measured per phase, after warm-up (default 600)"
    )
    ap.add_argument(
        "--model",
        type=Path,
        default=MODEL,
        help="the .tflite model every pipeline runs; channels, window and preprocess follow from its one "
        "input and its JSON sidecar (default: the shipped models/basicmotions_int8.tflite)",
    )
    ap.add_argument(
        "--warmup",
        type=float,
        default=5.0,
        help="seconds not counted at the start of a phase (default 5). The daemon preallocates its buffers "
        "(latency buffers included) at start, so the RSS target (flat within 2 MiB from the end of warm-up) "
        "holds after a short warm-up; growth after it is a leak, not buffers filling",
    )
    ap.add_argument("--reloads", type=int, default=100, help="SIGHUP reloads in phase two (default 100)")
    ap.add_argument("--sample-s", type=float, default=2.0, help="seconds between RSS/rate samples (default 2)")
    ap.add_argument(
        "--frame-samples",
        type=int,
        default=None,
        help="samples per synthetic frame (default: window // 10, at least 1: ten frames per window)",
    )
    ap.add_argument(
        "--phases",
        choices=("one,two", "one", "two"),
        default="one,two",
        metavar="one,two|one|two",
        help="phases to run (default one,two; the two/one target needs both)",
    )
    ap.add_argument(
        "--pipelines-in",
        choices=("auto", "threads", "processes"),
        default="auto",
        help="the daemon's [daemon] pipelines_in (default auto: phase one on a thread, phase two in processes)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs, JSON lines)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    if not args.duration > 0:
        ap.error(f"--duration must be > 0, got {args.duration:g}")
    if not args.warmup >= 0:
        ap.error(f"--warmup must be >= 0, got {args.warmup:g}")
    if args.reloads < 0:
        ap.error(f"--reloads must be >= 0, got {args.reloads}")
    if not args.sample_s > 0:
        ap.error(f"--sample-s must be > 0, got {args.sample_s:g}")
    if args.frame_samples is not None and args.frame_samples < 1:
        ap.error(f"--frame-samples must be >= 1, got {args.frame_samples}")
    if not Path("/proc/self/stat").exists():
        ap.error("this benchmark reads /proc: Linux only")
    return args


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    devices = list(DEVICES) if args.device == "both" else [args.device]
    try:
        plan = plan_model(args.model.expanduser().resolve())
    except UsageError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    if args.frame_samples is None:
        args.frame_samples = max(1, plan.window // 10)
    bare: dict[str, dict[str, Any]] = {}
    try:
        for device in devices:
            print(f"soak: {device}: timing bare inference of {plan.path.name}", file=sys.stderr, flush=True)
            bare[device] = bare_inference_in_child(plan.path, device)
    except KeyboardInterrupt as exc:
        what = "SIGTERM" if isinstance(exc, Terminated) else "Ctrl-C"
        print(f"soak: interrupted ({what}) while timing bare inference; nothing reported", file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(exc, Terminated) else 130
    meta = {
        **machine_info(),
        "model": plan.path.name,
        "model_path": str(plan.path),
        "input_shape": list(plan.input_shape),
        "input_dtype": plan.input_dtype,
        "channels": plan.channels,
        "window": plan.window,
        "preprocess": plan.preprocess,
        "source": source_url(1, plan.channels, args.frame_samples).replace("&stream_id=1", ""),
        "bare_inference_us": bare,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "reloads": args.reloads,
        "sample_s": args.sample_s,
        "devices": devices,
        "frame_samples": args.frame_samples,
        "pipelines_in": args.pipelines_in,
    }
    workdir = Path(tempfile.mkdtemp(prefix="edge-runtime-soak-"))
    phases: list[dict[str, Any]] = []
    try:
        for device in devices:
            for kind in args.phases.split(","):
                phases.append(run_phase(args, plan, device, kind, workdir))
    except KeyboardInterrupt as exc:
        what = "SIGTERM" if isinstance(exc, Terminated) else "Ctrl-C"
        kept = f"; files kept in {workdir}" if args.keep else ""
        print(f"soak: interrupted ({what}): the daemon was stopped; nothing reported{kept}", file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(exc, Terminated) else 130
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.keep:
        print(f"soak: files kept in {workdir}", file=sys.stderr)
    t, ratios = targets(phases, meta["usable_cores"])
    shares = inference_shares(bare, phases)
    caps = ratio_caps(phases, meta["usable_cores"])
    missed = [k for k, v in t.items() if not v]
    if args.json:
        doc = {
            "meta": meta,
            "phases": phases,
            "ratios_two_over_one": ratios,
            "ratio_caps_from_cores": caps,
            "inference_share_of_a_result": shares,
            "targets": t,
            "missed": missed,
        }
        print(json.dumps(doc, indent=2))
    else:
        print_report(meta, phases, t, ratios, shares, caps)
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
