#!/usr/bin/env python3
"""Per-stage cost of an early-exit bundle, measured robustly, with a physics check.

For each stage's ``.tflite``: a bare LiteRT interpreter (``num_threads``, default 1) on a
random int8 input; ``--warmup`` untimed invokes, then ``--passes`` passes of ``--runs``
timed invokes; the median of each pass, then the median and the spread (min-max) of the
pass medians. CPU time per invoke (``time.process_time``) is measured beside wall time: on
one thread they must agree, else the interpreter used more threads than asked. MAC/s is
checked against what the core's int8 units can do: the CPU flags say which (VNNI: 64 MACs
per 512-bit instruction; AMX-INT8: tile multiplies with a far higher peak), and the
script prints them so a reader can judge.

    python scripts/stage_costs.py [models/digits_early_exit] [--threads 1] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_runtime.backends.litert import native_stderr_to_log  # noqa: E402

#: Multiply-accumulates per stage of the shipped bundle (models/digits_early_exit/README.md).
SHIPPED_MACS = {"stage0": 2_509_312, "stage1": 14_160_896, "stage2": 273_679_616}


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f.startswith(("amx", "avx512_vnni", "avx_vnni", "avx512f")))


def amx_permitted() -> bool | None:
    """Whether this process holds Linux's permission to use AMX tiles (XTILEDATA): XNNPACK asks
    for it when it sets up AMX int8 kernels. None where the question cannot be asked."""
    import ctypes
    import platform

    if platform.machine() != "x86_64":
        return None
    try:
        libc = ctypes.CDLL(None)
        perm = ctypes.c_uint64(0)
        if libc.syscall(158, 0x1022, ctypes.byref(perm)) != 0:  # arch_prctl(ARCH_GET_XCOMP_PERM)
            return None
    except (OSError, AttributeError):
        return None
    return bool(perm.value & (1 << 18))


def measure(path: Path, threads: int, warmup: int, passes: int, runs: int) -> dict[str, float]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=path.read_bytes(), num_threads=threads)
    with native_stderr_to_log():
        it.allocate_tensors()
    (inp,) = it.get_input_details()
    rng = np.random.default_rng(0)
    it.set_tensor(inp["index"], rng.integers(-128, 128, size=inp["shape"], dtype=np.int8))
    for _ in range(warmup):
        it.invoke()
    medians, cpu = [], []
    for _ in range(passes):
        times = []
        c0 = time.process_time()
        for _ in range(runs):
            t0 = time.perf_counter_ns()
            it.invoke()
            times.append(time.perf_counter_ns() - t0)
        cpu.append((time.process_time() - c0) / runs * 1e6)
        medians.append(statistics.median(times) / 1e3)
    return {
        "median_us": statistics.median(medians),
        "min_us": min(medians),
        "max_us": max(medians),
        "cpu_us": statistics.median(cpu),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", nargs="?", default=str(ROOT / "models" / "digits_early_exit"))
    ap.add_argument("--threads", type=int, default=1, help="interpreter threads (default 1)")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--passes", type=int, default=7)
    ap.add_argument("--runs", type=int, default=200, help="timed invokes per pass (default 200)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    bundle = Path(args.bundle)
    manifest = json.loads((bundle / "bundle.json").read_text())
    rows = []
    for k, stage in enumerate(manifest["stages"]):
        path = bundle / stage["tflite"]
        m = measure(path, args.threads, args.warmup, args.passes, args.runs)
        macs = SHIPPED_MACS.get(path.stem)
        m["gmac_per_s"] = macs / m["median_us"] / 1e3 if macs else float("nan")
        rows.append({"stage": k, "file": path.name, "macs": macs, **{a: round(b, 1) for a, b in m.items()}})
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "threads": args.threads,
        "passes": args.passes,
        "runs_per_pass": args.runs,
        "cpu_flags": cpu_flags(),
        "amx_permission_after_setup": amx_permitted(),
        "stages": rows,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"bare LiteRT invoke per stage ({report['date']}, {args.threads} thread(s), {args.warmup} warm-up, "
        f"median of {args.passes} pass medians of {args.runs}); CPU flags: {' '.join(report['cpu_flags']) or '?'}\n"
    )
    print("| stage | file | MACs | median us | spread (min-max) us | CPU us per invoke | GMAC/s |")
    print("| --- | --- | ---: | ---: | --- | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['stage']} | {r['file']} | {r['macs'] or '?'} | {r['median_us']:.1f} | "
            f"{r['min_us']:.1f}-{r['max_us']:.1f} | {r['cpu_us']:.1f} | {r['gmac_per_s']:.0f} |"
        )
    amx = report["amx_permission_after_setup"]
    if amx is not None:
        print(f"\nAMX tile permission held after the interpreters were set up (XNNPACK asks for it): {amx}")
    over = [r for r in rows if r["cpu_us"] > 1.3 * r["median_us"] * args.threads]
    if over:
        print("\nwarning: CPU time exceeds wall time x threads: the interpreter used more threads than asked")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
