#!/usr/bin/env python3
"""What model isolation costs per inference: the same model in process and in a child process.

For each model and backend, side by side in one run and interleaved in rounds (so that noise
from a shared machine hits both alike), the median latency of ``Model.infer_raw`` (copy the
input in, run, copy the outputs out):

  in-process   edge_runtime.load(model, device)
  isolated     edge_runtime.load(model, device, isolate=True): inputs and outputs through
               shared memory, one byte each way over a Unix socket per call

Printed per model: both medians, the spread (the median of each round, min..max), the
added microseconds and the ratio. Warm-up: 50 calls per variant before timing.

    python scripts/bench_isolation.py                   # shipped models + ../shared MLPerf Tiny
    python scripts/bench_isolation.py --json --runs 2000 --device litert:cpu model.tflite
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_overhead import default_models  # noqa: E402  (this folder is on sys.path: run as a script)

import edge_runtime as er  # noqa: E402

DEVICES = ("litert:cpu", "openvino:CPU")


def measure(fns: dict[str, Callable[[], object]], runs: int, rounds: int) -> dict[str, dict[str, float]]:
    """Median us per variant over ``runs`` calls in ``rounds`` interleaved rounds, with the spread of round medians."""
    per = max(1, runs // rounds)
    samples: dict[str, list[int]] = {k: [] for k in fns}
    round_medians: dict[str, list[float]] = {k: [] for k in fns}
    clock = time.perf_counter_ns
    for fn in fns.values():
        for _ in range(50):
            fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            buf: list[int] = []
            for _ in range(per):
                t0 = clock()
                fn()
                buf.append(clock() - t0)
            samples[name] += buf
            round_medians[name].append(float(np.median(buf)) / 1e3)
    return {
        k: {
            "p50_us": round(float(np.median(v)) / 1e3, 2),
            "round_min_us": round(min(round_medians[k]), 2),
            "round_max_us": round(max(round_medians[k]), 2),
        }
        for k, v in samples.items()
    }


def bench(path: Path, device: str, threads: int, runs: int, rounds: int) -> dict[str, Any]:
    inproc = er.load_model(path, device, threads=threads)
    isolated = er.load_model(path, device, threads=threads, isolate=True)
    try:
        x = er.tensors.random_tensor(inproc.inputs[0], 0)
        same = all(np.array_equal(a, b) for a, b in zip(inproc.infer_raw(x), isolated.infer_raw(x)))
        med = measure(
            {"in-process": lambda: inproc.infer_raw(x), "isolated": lambda: isolated.infer_raw(x)}, runs, rounds
        )
    finally:
        inproc.close()
        isolated.close()
    a, b = med["in-process"]["p50_us"], med["isolated"]["p50_us"]
    return {
        "model": path.name,
        "device": device,
        **{f"{k}_{m}": v for k, d in med.items() for m, v in d.items()},
        "added_us": round(b - a, 2),
        "ratio": round(b / a, 3),
        "outputs_identical": same,
    }


class Terminated(KeyboardInterrupt):
    """SIGTERM: stop as for Ctrl-C."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", type=Path, help="models (default: models/*.tflite and MLPerf Tiny)")
    ap.add_argument("--device", action="append", choices=DEVICES, help="device (repeatable; default both)")
    ap.add_argument("--runs", type=int, default=2000, help="timed calls per variant (default 2000)")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    ap.add_argument("--threads", type=int, default=1, help="inference threads (default 1)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    for p in args.models:
        if not p.is_file():
            ap.error(f"{p}: no such model file")
    if args.runs < args.rounds or args.rounds < 1:
        ap.error("--runs must be >= --rounds >= 1")
    signal.signal(signal.SIGTERM, _on_sigterm)
    rows: list[dict[str, Any]] = []
    try:
        for path in args.models or default_models():
            for device in args.device or DEVICES:
                print(f"measuring {path.name} on {device} ...", file=sys.stderr, flush=True)
                rows.append(bench(path, device, args.threads, args.runs, args.rounds))
    except KeyboardInterrupt:
        print("interrupted: the figures so far follow", file=sys.stderr)
    except er.EdgeRuntimeError as exc:
        print(f"bench_isolation: {exc}", file=sys.stderr)
        return 1
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "cpus": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "threads": args.threads,
        "runs": args.runs,
        "rounds": args.rounds,
    }
    if args.json:
        print(json.dumps({"meta": meta, "results": rows}, indent=2))
        return 0
    print(
        f"median latency per infer_raw call, us ({meta['date']}, {meta['machine']}, {meta['cpus']} cpus, "
        f"python {meta['python']}, threads={args.threads}, {args.runs} calls per variant in {args.rounds} rounds)\n"
    )
    print(f"{'model':32s} {'device':13s} {'in-process':>22s} {'isolated':>22s} {'added':>8s} {'ratio':>6s}")
    for r in rows:
        a = f"{r['in-process_p50_us']:.1f} ({r['in-process_round_min_us']:.0f}..{r['in-process_round_max_us']:.0f})"
        b = f"{r['isolated_p50_us']:.1f} ({r['isolated_round_min_us']:.0f}..{r['isolated_round_max_us']:.0f})"
        same = "" if r["outputs_identical"] else "  OUTPUTS DIFFER"
        print(f"{r['model']:32s} {r['device']:13s} {a:>22s} {b:>22s} {r['added_us']:+8.1f} {r['ratio']:6.2f}{same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
