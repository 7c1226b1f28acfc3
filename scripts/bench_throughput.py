"""Throughput of ``submit`` against sequential calls, on LiteRT, OpenVINO and ONNX Runtime (CPU).

For each model (the shipped ``models/*.tflite`` and the MLPerf Tiny models in
``../shared/models/mlperf_tiny``, skipped when absent) and each backend (``litert:cpu``,
``openvino:CPU``, ``onnxruntime:CPU``; ONNX Runtime runs the ``.onnx`` that
``scripts/tflite_to_onnx.py`` converts the ``.tflite`` into, in a temporary directory) it
measures, in inferences per second:

- ``seq``: sequential ``infer_raw`` calls on a one-thread model (the single-stream rate);
- ``submit xN``: ``submit`` with N requests in flight (LiteRT: the default pool, cores //
  threads interpreters of one thread; ONNX Runtime: the default pool, cores // threads worker
  threads calling one one-thread session; OpenVINO: N worker threads on infer requests of their
  own); on OpenVINO, with the
  ``LATENCY`` hint and with the ``THROUGHPUT`` hint (and CPU pinning off, as that hint sets it);
- ``batched bB wW tT dD``: four stream threads, each sending one sample at a time and keeping
  ``D`` pending (replacing each result, in order, by a new sample) to one ``DynamicBatcher`` with
  ``max_batch=B``, ``workers=W`` models per size and ``T`` threads each (``max_wait_us=2000``;
  a model with a fixed batch of 1, as the converted ``.onnx`` files are, says so in one row);
- ``ceiling``: no ``submit``: one thread per core, each looping ``infer_raw`` on a model of its
  own (what the hardware and the GIL allow; the gap to ``submit`` is the hand-off's cost).

Each case runs in a fresh process (OpenVINO's pinning and thread arenas, once set up by one
case, change the next case's figures). Each case: warm-up, then ``--passes`` passes of
``--seconds`` each; the median rate and the spread (max - min of the passes, as a % of the
median). The ratio is against ``seq``. The target, "4 streams >= 1.8x the single-stream
sequential rate on models of >= 50 us per inference, on both backends", is checked on the
best 4-stream case of each backend and printed as met or not met (the ``batched`` cases say
how many windows each stream keeps pending: ``dD``).

    .venv/bin/python scripts/bench_throughput.py [--passes 5] [--seconds 1.0] [--backend onnxruntime] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import edge_runtime as er  # noqa: E402
from edge_runtime.batching import DynamicBatcher  # noqa: E402
from edge_runtime.futures import available_cores  # noqa: E402
from edge_runtime.tensors import random_tensor  # noqa: E402

MLPERF = ROOT.parent / "shared" / "models" / "mlperf_tiny"
DEVICE = {"litert": "litert:cpu", "openvino": "openvino:CPU", "onnxruntime": "onnxruntime:CPU"}
TARGET_RATIO = 1.8
TARGET_MIN_US = 50.0
TARGET_IN_FLIGHT = 4
#: (max_batch, workers, threads per model, windows pending per stream) tried with four streams.
BATCHED = ((4, 1, 2, 1), (4, 2, 1, 2), (8, 1, 2, 2), (8, 2, 1, 4), (16, 1, 2, 4), (32, 1, 2, 8))


def rate(run_for: Callable[[float], int], seconds: float, passes: int) -> tuple[float, float]:
    """Median inferences/s over ``passes`` passes, and the spread (max - min) in % of it."""
    run_for(min(0.3, seconds))  # warm-up
    rates = []
    for _ in range(passes):
        t0 = time.perf_counter()
        n = run_for(seconds)
        rates.append(n / (time.perf_counter() - t0))
    med = statistics.median(rates)
    return med, 100.0 * (max(rates) - min(rates)) / med


def sequential(model: er.Model, x: Any) -> Callable[[float], int]:
    def run_for(seconds: float) -> int:
        end = time.perf_counter() + seconds
        n = 0
        while time.perf_counter() < end:
            for _ in range(8):
                model.infer_raw(x)
            n += 8
        return n

    return run_for


def keep_pending(submit: Callable[[], Future[Any]], pending: int, end: float) -> int:
    """Keep ``pending`` requests in flight until ``end`` (perf_counter seconds), replacing each
    completion (in order) by a new request; return how many completed."""
    window: deque[Future[Any]] = deque(submit() for _ in range(pending))
    n = 0
    while time.perf_counter() < end:
        window.popleft().result()
        n += 1
        window.append(submit())
    while window:
        window.popleft().result()
        n += 1
    return n


def in_threads(n: int, loop: Callable[[int], int]) -> int:
    """Run ``loop(k)`` on ``n`` threads at once; the sum of what they return."""
    counts = [0] * n

    def run(k: int) -> None:
        counts[k] = loop(k)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts)


def submitting(model: er.Model, x: Any, in_flight: int) -> Callable[[float], int]:
    """Keeps ``in_flight`` requests pending; each completion (in order) is replaced by a new one."""
    return lambda seconds: keep_pending(lambda: model.submit(x), in_flight, time.perf_counter() + seconds)


def streams_into(b: DynamicBatcher, x: Any, streams: int, depth: int) -> Callable[[float], int]:
    """``streams`` threads, each keeping ``depth`` samples pending in the batcher (replacing each
    result, in order, by a new sample): several sensor streams feeding one model."""

    def run_for(seconds: float) -> int:
        end = time.perf_counter() + seconds
        return in_threads(streams, lambda _k: keep_pending(lambda: b.submit_raw(x), depth, end))

    return run_for


def free_threads(models: list[er.Model], x: Any) -> Callable[[float], int]:
    """The ceiling without ``submit``: one thread per model, each looping ``infer_raw``."""

    def run_for(seconds: float) -> int:
        end = time.perf_counter() + seconds
        return in_threads(len(models), lambda k: sequential(models[k], x)(end - time.perf_counter()))

    return run_for


def ov_threads(model: er.Model) -> str:
    compiled = getattr(model.session, "_compiled", None)  # bench-only peek at OpenVINO's choice
    if compiled is None:
        return ""
    try:
        return (
            f"streams={compiled.get_property('NUM_STREAMS')} "
            f"threads={compiled.get_property('INFERENCE_NUM_THREADS')} "
            f"pinning={compiled.get_property('ENABLE_CPU_PINNING')}"
        )
    except RuntimeError:
        return ""


def case_names(backend: str) -> list[str]:
    """Every case for one model on ``backend``, in the order they run (each in its own process)."""
    names = ["seq"]
    hints = ("LATENCY", "THROUGHPUT") if backend == "openvino" else ("",)
    names += [f"submit:{hint}:{n}" for hint in hints for n in (1, 2, 4)]
    names += [f"batched:{b}:{w}:{t}:{d}" for b, w, t, d in BATCHED]
    names.append("ceiling")
    return names


def run_case(path: Path, backend: str, case: str, args: argparse.Namespace) -> dict[str, Any]:
    """One case, in this process: its row (rate in inferences/s, spread in %)."""
    kind, *params = case.split(":")
    probe = er.load_model(path, DEVICE[backend], threads=1, sidecar=False)
    x = random_tensor(probe.inputs[0], seed=1)
    if kind == "seq":
        with probe as m:
            r, spread = rate(sequential(m, x), args.seconds, args.passes)
            threads = f"1 ({ov_threads(m)})" if backend == "openvino" else "1"
        return {"case": "seq infer_raw", "in_flight": 1, "rate": r, "spread": spread, "threads": threads}
    probe.close()
    if kind == "submit":
        hint, n = params[0], int(params[1])
        opts: dict[str, Any] = {"sidecar": False}
        if backend != "openvino":
            opts["threads"] = 1
        else:  # THROUGHPUT picks its own streams and threads; LATENCY gets one thread, as seq
            opts["performance_hint"] = hint
            if hint == "LATENCY":
                opts["threads"] = 1
        with er.load_model(path, DEVICE[backend], **opts) as m:
            # LiteRT / ONNX Runtime: the default pool (cores // threads workers), n requests in flight;
            # OpenVINO: n worker threads on infer requests of their own (its streams bound the parallelism).
            pool = m.start_workers(None if backend != "openvino" else n)
            r, spread = rate(submitting(m, x, n), args.seconds, args.passes)
            threads = f"{pool.workers} x 1" if backend != "openvino" else ov_threads(m)
        return {
            "case": f"submit {hint}".strip(),
            "in_flight": n,
            "rate": r,
            "spread": spread,
            "threads": threads,
            "parallel": pool.parallel,
        }
    if kind == "batched":
        max_batch, workers, threads_each, depth = (int(p) for p in params)
        try:
            b = DynamicBatcher(
                path,
                DEVICE[backend],
                max_batch=max_batch,
                max_wait_us=2000,
                workers=workers,
                threads=threads_each,
                sidecar=False,
            )
        except er.errors.ModelLoadError as exc:  # e.g. a fixed batch of 1 (the converted .onnx files)
            case = f"batched b{max_batch} w{workers} t{threads_each} d{depth}"
            why = exc.reason.split("; tried: ")[-1]
            return {"case": case, "in_flight": 0, "rate": 0.0, "spread": 0.0, "threads": f"not loadable: {why}"}
        with b:
            r, spread = rate(streams_into(b, x, TARGET_IN_FLIGHT, depth), args.seconds, args.passes)
        return {
            "case": f"batched b{max_batch} w{workers} t{threads_each} d{depth}",
            "in_flight": TARGET_IN_FLIGHT,
            "depth": depth,
            "rate": r,
            "spread": spread,
            "threads": f"{workers} x {threads_each}, mean batch {b.stats.mean_batch:.2f}",
        }
    # The ceiling: N independent one-thread models on N threads, no submit (what the hand-off costs).
    n = min(TARGET_IN_FLIGHT, available_cores())
    cfg: dict[str, Any] = {"openvino_config": {"ENABLE_CPU_PINNING": False}} if backend == "openvino" else {}
    ms = [er.load_model(path, DEVICE[backend], threads=1, sidecar=False, **cfg) for _ in range(n)]
    try:
        r, spread = rate(free_threads(ms, x), args.seconds, args.passes)
    finally:
        for m in ms:
            m.close()
    return {"case": "ceiling (no submit)", "in_flight": n, "rate": r, "spread": spread, "threads": f"{n} x 1"}


def bench_model(path: Path, backend: str, args: argparse.Namespace, onnx_dir: Path) -> list[dict[str, Any]]:
    """Every case of one model on ``backend``, each in a fresh process (OpenVINO's thread pinning
    and arenas, once set up by one case, would change the next case's figures). ONNX Runtime:
    the ``.onnx`` converted from ``path`` into ``onnx_dir``."""
    rows: list[dict[str, Any]] = []
    where = path
    if backend == "onnxruntime":
        import tflite_to_onnx

        try:
            where = tflite_to_onnx.convert_file(path, onnx_dir / f"{path.stem}.onnx")
        except (ValueError, OSError) as exc:
            raise er.errors.ModelLoadError(f"no ONNX model: {exc}", path=str(path), backend=backend) from exc
    for case in case_names(backend):
        cmd = [sys.executable, __file__, "--one", str(where), backend, case]
        cmd += ["--passes", str(args.passes), "--seconds", str(args.seconds)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
            rows.append({"case": f"{case}: failed: {tail}", "in_flight": 0, "rate": 0.0, "spread": 0.0, "threads": ""})
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    seq = rows[0]["rate"] if rows and rows[0]["case"].startswith("seq") and rows[0]["rate"] > 0 else float("nan")
    for row in rows:
        row.update(model=path.name, backend=backend, seq_us=1e6 / seq, ratio=row["rate"] / seq)
    return rows


def version(backend: str) -> str:
    try:
        return str(er.backends.get_backend(backend).runtime_info().get("version"))
    except er.errors.BackendUnavailableError as exc:
        return f"(unavailable: {exc.reason})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passes", type=int, default=5, help="timed passes per case; the median is reported (default 5)")
    ap.add_argument("--seconds", type=float, default=1.0, help="length of one pass, seconds")
    ap.add_argument("--backend", action="append", choices=sorted(DEVICE), help="repeatable (default: all three)")
    ap.add_argument("--json", type=Path, help="also write every row here")
    ap.add_argument("--models", nargs="+", metavar="NAME", help="only models whose file name holds one of these")
    ap.add_argument("--one", nargs=3, metavar=("MODEL", "BACKEND", "CASE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:  # a child: one case, its row as JSON on the last line
        path, backend, case = args.one
        print(json.dumps(run_case(Path(path), backend, case, args)))
        return 0
    models = sorted((ROOT / "models").glob("*.tflite"))
    models += sorted(MLPERF.glob("*.tflite")) if MLPERF.is_dir() else []
    if not MLPERF.is_dir():
        print(f"# {MLPERF} absent: MLPerf Tiny models skipped")
    if args.models:
        models = [m for m in models if any(k in m.name for k in args.models)]
        if not models:
            ap.error(f"no model matches --models {' '.join(args.models)}")
    backends = args.backend or sorted(DEVICE)
    onnx_dir = tempfile.TemporaryDirectory(prefix="bench_throughput-")
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {platform.machine()}, {available_cores()} cores "
        f"(os.cpu_count()={os.cpu_count()}), loadavg {os.getloadavg()[0]:.2f}, "
        f"passes={args.passes} x {args.seconds:g} s, numpy {np.__version__}, edge_runtime {er.__version__}"
        + "".join(f", {b} {version(b)}" for b in backends)
        + ", threads per model as each case says"
    )
    print(f"{'model':28} {'backend':11} {'case':22} {'fly':>3} {'inf/s':>9} {'spread':>7} {'ratio':>6}  threads")
    rows: list[dict[str, Any]] = []
    for path in models:
        for backend in backends:
            try:
                got = bench_model(path, backend, args, Path(onnx_dir.name))
            except er.errors.EdgeRuntimeError as exc:
                print(f"{path.name:28} {backend:11} skipped: {exc.reason}")
                continue
            for r in got:
                print(
                    f"{r['model'][:28]:28} {r['backend']:11} {r['case']:22} {r['in_flight']:>3} "
                    f"{r['rate']:9.0f} {r['spread']:6.1f}% {r['ratio']:5.2f}x  {r['threads']}"
                    + (f"  (seq {r['seq_us']:.0f} us)" if r["case"].startswith("seq") else "")
                )
            rows.extend(got)
    onnx_dir.cleanup()
    print()
    print(
        f"# target: {TARGET_IN_FLIGHT} in flight >= {TARGET_RATIO}x the single-stream sequential rate, "
        f"models of >= {TARGET_MIN_US:g} us per inference"
    )
    all_met = True
    for backend in backends:
        eligible = sorted({r["model"] for r in rows if r["backend"] == backend and r["seq_us"] >= TARGET_MIN_US})
        for name in eligible:
            best = max(
                (
                    r
                    for r in rows
                    if r["backend"] == backend
                    and r["model"] == name
                    and r["in_flight"] == TARGET_IN_FLIGHT
                    and not r["case"].startswith("ceiling")
                ),
                key=lambda r: r["ratio"],
            )
            met = best["ratio"] >= TARGET_RATIO
            all_met &= met
            verdict = "met" if met else "NOT MET"
            print(f"{backend:11} {name:28} best x4: {best['ratio']:.2f}x ({best['case']}) {verdict}")
    print(f"# target {'met' if all_met else 'NOT MET'} overall")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
