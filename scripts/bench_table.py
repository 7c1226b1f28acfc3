#!/usr/bin/env python3
"""One table: our latency and throughput side by side with the bare backends and the field's tools.

For each model (``models/*.tflite`` and ``../shared/models/mlperf_tiny/*.tflite``, skipped with a
line when absent) and each backend (``litert:cpu``, ``openvino:CPU``, ``onnxruntime:CPU`` on the
``.onnx`` that ``scripts/tflite_to_onnx.py`` converts the ``.tflite`` into, in a temporary
directory; ``--backends`` picks some), one inference thread unless stated:

- ``bare``: the bare backend loop, as ``scripts/bench_overhead.py`` builds it (LiteRT:
  ``set_tensor; invoke; get_tensor``; OpenVINO: the lean ``copyto(input); infer(); output.copy()``),
  timed by ``edge_runtime.bench.measure`` exactly as ours; ONNX Runtime:
  ``InferenceSession(path, providers=["CPUExecutionProvider"])`` and ``sess.run(None, {name: x})``,
  with the same threads as ours (``intra_op_num_threads``), at one thread and at ONNX Runtime's
  default (both sessions left to their defaults);
- ``ours``: ``Model.infer_raw``, timed by ``edge_runtime.bench.measure`` (what ``edge-runtime
  bench`` runs). Bare and ours are interleaved: ``--passes`` passes of ``--runs`` calls each, the
  median of the passes' p50 and their spread (max - min, % of the median);
- the field's tool, run as a subprocess: ``litert-benchmark`` (ai-edge-litert's CompiledModel
  benchmark, ``--num_threads 1``; its JSON rounds to 0.01 ms, so it is run through its own
  ``main`` with ``round`` made the identity: same code and timer, full precision) and
  ``benchmark_app`` (``-hint none -nthreads 1 -nstreams 1 -api sync -niter N -shape ...``: one
  thread, one stream, as the LATENCY hint with one thread); median over ``--passes`` runs of
  the tool's median latency; ``ours/tool`` and the issue's target ("within 10 % on models of
  >= 50 us") met or not. ONNX Runtime has no such tool in its wheel: its target ("``edge-runtime
  bench`` within 10 % of a bare ONNX Runtime loop on models of >= 50 us") is ours/bare, printed
  per model and thread setting in a table of its own;
- throughput with 1, 2 and 4 streams: ``measure_stream`` over ``Model.submit`` (the default pool,
  as ``edge-runtime bench --mode throughput --streams N``), samples/s, median of the passes;
- cold and warm start: a fresh process runs ``load(path, device, threads=1[, cache_dir])`` and the
  first ``infer_raw``; timed from before ``load`` (``import edge_runtime`` and NumPy already done,
  the backend's import included), ``--procs`` processes each, median; warm = a cache_dir filled by
  one earlier process;
- the choice of ``device="auto:measure"`` (a temporary ``measure_cache``: measured afresh).

    .venv/bin/python scripts/bench_table.py [--quick] [--models kws,vww] [--backends onnxruntime] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_overhead import onnx_variants, ort_available, to_onnx, variants  # noqa: E402

import edge_runtime as er  # noqa: E402
from edge_runtime.bench import measure, measure_stream  # noqa: E402
from edge_runtime.tensors import random_tensor  # noqa: E402

MLPERF = ROOT.parent / "shared" / "models" / "mlperf_tiny"
BIN = Path(sys.executable).parent
DEVICE = {"litert": "litert:cpu", "openvino": "openvino:CPU", "onnxruntime": "onnxruntime:CPU"}
TOOL = {"litert": "litert-benchmark", "openvino": "benchmark_app", "onnxruntime": "bare sess.run"}
#: ONNX Runtime's thread settings, for bare and ours alike (None: ONNX Runtime's default).
ORT_THREADS: tuple[int | None, ...] = (1, None)
TARGET_RATIO = 1.10
TARGET_MIN_US = 50.0

LITERT_TOOL = (
    "import sys, ai_edge_litert.tools.benchmark_litert_model as b\n"
    "b.round = lambda v, n=None: v  # full precision in the JSON; the timing code is untouched\n"
    "sys.argv = ['litert-benchmark', *sys.argv[1:]]\n"
    "b.main()\n"
)

START = """
import sys, time, numpy
import edge_runtime as er
from edge_runtime.tensors import random_tensor
path, device, cache = sys.argv[1], sys.argv[2], sys.argv[3] or None
t0 = time.perf_counter()
m = er.load(path, device, threads=1, cache_dir=cache)
m.infer_raw(random_tensor(m.inputs[0], 0))
print((time.perf_counter() - t0) * 1e3)
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def spread(values: list[float]) -> float:
    med = statistics.median(values)
    return 100.0 * (max(values) - min(values)) / med if med else 0.0


def latencies(
    path: Path, onnx: Path | None, shape: tuple[int, ...], backends: list[str], args: argparse.Namespace
) -> dict[str, list[float]]:
    """Per pass: bare and ours on each backend (p50 us, ``edge_runtime.bench.measure``; ONNX
    Runtime at one thread, ``... t1``, and at its default threads, ``... tdefault``), the bare
    OpenVINO ``request.infer()`` under both timers, then one run of each tool; the passes
    interleave all of them (every other pass in the reverse order), so machine noise hits every
    column alike."""
    picked: dict[str, Callable[[], object]] = {}
    models: list[er.Model] = []
    native_call: Callable[[], None] | None = None
    native: list[float] = []
    try:
        if "litert" in backends or "openvino" in backends:
            fns, ms = variants(path, 1)
            models += ms
            for b in ("litert", "openvino"):
                if b in backends:
                    picked[f"{b} bare"] = fns["litert bare" if b == "litert" else "openvino min"]
                    picked[f"{b} ours"] = fns[f"{b} raw"]
        if "openvino" in backends:
            native_call, native = openvino_native(path, shape)
        if onnx is not None and "onnxruntime" in backends:
            for threads in ORT_THREADS:
                fns, ms = onnx_variants(onnx, threads)
                models += ms
                tag = f"t{threads or 'default'}"
                picked[f"onnxruntime bare {tag}"] = fns["onnxruntime bare"]
                picked[f"onnxruntime ours {tag}"] = fns["onnxruntime raw"]
        out: dict[str, list[float]] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for k in range(args.passes):
                order = list(picked.items())
                for name, fn in order if k % 2 == 0 else order[::-1]:
                    out.setdefault(name, []).append(measure(fn, args.runs, warmup=50).p50_us)
                if native_call is not None:
                    native.clear()
                    out.setdefault("ov infer python", []).append(measure(native_call, args.runs, warmup=50).p50_us)
                    out.setdefault("ov infer native", []).append(float(statistics.median(native[50:])) * 1e3)
                tools = {**(litert_tool(path, args, Path(tmp)) if "litert" in backends else {})}
                tools.update(openvino_tool(path, shape, args) if "openvino" in backends else {})
                for key, value in tools.items():
                    out.setdefault(key, []).append(value)
    finally:
        for m in models:
            m.close()
    if onnx is not None and "onnxruntime" in backends:  # the main table's ONNX Runtime row: one thread
        for kind in ("bare", "ours"):
            out[f"onnxruntime {kind}"] = out[f"onnxruntime {kind} t1"]
    return out


def openvino_native(path: Path, shape: tuple[int, ...]) -> tuple[Callable[[], None], list[float]]:
    """benchmark_app's timer on a bare call: ``request.latency`` (measured inside the native
    ``infer``, ms, appended to the list) and the call for ``perf_counter`` to time around it."""
    import numpy as np
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape({model.inputs[0]: ov.PartialShape(list(shape))})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY"})
    req = compiled.create_infer_request()
    tensor = req.get_input_tensor(0)
    tensor.data[...] = np.random.default_rng(0).integers(-128, 127, tensor.data.shape).astype(tensor.data.dtype)
    native: list[float] = []

    def call() -> None:
        req.infer()
        native.append(req.latency)

    call.keep = (core, compiled, req)  # type: ignore[attr-defined]
    return call, native


def litert_tool(path: Path, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    """One run of litert-benchmark (its own main, ``round`` the identity for full precision)."""
    out = tmp / "r.json"
    cmd = [sys.executable, "-c", LITERT_TOOL, "--model", str(path), "--num_threads", "1"]
    cmd += ["--num_runs", str(args.runs), "--warmup_runs", "50", "--result_json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"litert-benchmark failed: {proc.stderr[-500:]}")
    lat = json.loads(out.read_text())["latency"]
    return {"litert tool": lat["median_ms"] * 1e3, "litert tool init": lat["init_ms"],
            "litert tool first": lat["warmup_first_ms"]}  # fmt: skip


def _ms(value: str, unit: str) -> float:
    return float(value) * {"ms": 1.0, "us": 1e-3, "s": 1e3}[unit]


def openvino_tool(path: Path, shape: tuple[int, ...], args: argparse.Namespace) -> dict[str, float]:
    """One run of benchmark_app: one thread, one stream, sync API, its median latency."""
    cmd = [str(BIN / "benchmark_app"), "-m", str(path), "-d", "CPU", "-hint", "none", "-nthreads", "1"]
    cmd += ["-nstreams", "1", "-api", "sync", "-niter", str(args.runs), "-shape", str(list(shape)).replace(" ", "")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    med = re.search(r"Median:\s+([\d.]+) (ms|us|s)\b", text)
    if proc.returncode != 0 or med is None:
        raise RuntimeError(f"benchmark_app failed: {text[-500:]}")
    out = {"openvino tool": _ms(*med.groups()) * 1e3}
    if c := re.search(r"Compile model took ([\d.]+) (ms|us|s)\b", text):
        out["openvino tool init"] = _ms(*c.groups())
    if f := re.search(r"First inference took ([\d.]+) (ms|us|s)\b", text):
        out["openvino tool first"] = _ms(*f.groups())
    return out


def throughput(path: Path, backend: str, args: argparse.Namespace) -> dict[int, tuple[float, float]]:
    """``path``: the .onnx for ONNX Runtime."""
    out: dict[int, tuple[float, float]] = {}
    with er.load(path, DEVICE[backend], threads=1) as m:
        assert isinstance(m, er.Model)
        x = random_tensor(m.inputs[0], 1)
        for n in (1, 2, 4):
            rates = [
                measure_stream(lambda: m.submit(x), n, None, warmup=20, seconds=args.seconds).samples_per_s
                for _ in range(args.passes)
            ]
            out[n] = (statistics.median(rates), spread(rates))
    return out


def start_times(path: Path, backend: str, args: argparse.Namespace) -> dict[str, float]:
    def one(cache: str) -> float:
        proc = subprocess.run(
            [sys.executable, "-c", START, str(path), DEVICE[backend], cache],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"start failed: {proc.stderr[-500:]}")
        return float(proc.stdout.strip().splitlines()[-1])

    with tempfile.TemporaryDirectory() as cache:
        one(cache)  # fills the cache
        cold, warm = [], []
        for _ in range(args.procs):  # interleaved
            cold.append(one(""))
            warm.append(one(cache))
    return {"cold_ms": statistics.median(cold), "warm_ms": statistics.median(warm)}


def measured_choice(path: Path) -> str:
    with tempfile.TemporaryDirectory() as cache, er.load(path, "auto:measure", measure_cache=cache) as m:
        assert isinstance(m, er.Model)
        meas = m.selection.measurement
        threads = "default" if meas is None or meas.fastest.threads is None else meas.fastest.threads
        return f"{m.device} t={threads}"


def default_models(names: list[str] | None) -> list[Path]:
    models = sorted((ROOT / "models").glob("*.tflite"))
    if MLPERF.is_dir():
        models += sorted(MLPERF.glob("*.tflite"))
    else:
        log(f"note: {MLPERF} absent; MLPerf Tiny models skipped")
    if names:
        models = [m for m in models if any(n.lower() in m.stem.lower() for n in names)]
        if not models:
            raise SystemExit(f"bench_table.py: no model matches --models {','.join(names)}")
    return models


def verdict(ours: float, tool: float) -> str:
    if tool < TARGET_MIN_US:
        return "n/a (< 50 us)"
    return "met" if ours / tool <= TARGET_RATIO else "not met"


def ort_rows(model: str, lat: dict[str, list[float]]) -> list[dict[str, Any]]:
    """The ONNX Runtime target's rows: per thread setting, bare and ours (median of the passes'
    p50, spread), ours/bare and the verdict against 1.10 (models whose bare call is >= 50 us)."""
    rows = []
    for threads in ORT_THREADS:
        tag = f"t{threads or 'default'}"
        bare, ours = lat[f"onnxruntime bare {tag}"], lat[f"onnxruntime ours {tag}"]
        b, o = statistics.median(bare), statistics.median(ours)
        rows.append(
            {
                "model": model,
                "threads": threads if threads is not None else "default",
                "bare_p50_us": round(b, 2),
                "bare_spread_pct": round(spread(bare), 1),
                "ours_p50_us": round(o, 2),
                "ours_spread_pct": round(spread(ours), 1),
                "ours_over_bare": round(o / b, 3),
                "target": verdict(o, b),
                "bare_passes_us": [round(v, 2) for v in bare],
                "ours_passes_us": [round(v, 2) for v in ours],
            }
        )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a fast smoke run (few calls, 2 passes, 2 processes)")
    ap.add_argument("--models", default=None, help="comma-separated parts of model names to keep (default: all)")
    ap.add_argument("--runs", type=int, default=2000, help="timed calls per pass and per tool run (default 2000)")
    ap.add_argument("--passes", type=int, default=5, help="passes per figure (default 5)")
    ap.add_argument("--seconds", type=float, default=0.5, help="length of one throughput pass (default 0.5)")
    ap.add_argument("--procs", type=int, default=5, help="fresh processes per cold/warm figure (default 5)")
    ap.add_argument(
        "--backends",
        default=",".join(DEVICE),
        help=f"comma-separated backends to measure (default: {','.join(DEVICE)})",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.passes, args.seconds, args.procs = 200, 2, 0.1, 2
    backends = [b for b in DEVICE if b in args.backends.split(",")]
    if unknown := set(args.backends.split(",")) - set(DEVICE):
        ap.error(f"--backends: unknown {', '.join(sorted(unknown))} (known: {', '.join(DEVICE)})")
    if "onnxruntime" in backends and not ort_available():
        backends.remove("onnxruntime")
    onnx_dir = tempfile.TemporaryDirectory(prefix="bench_table-")

    rows: list[dict[str, Any]] = []
    ort: list[dict[str, Any]] = []
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    load_before = os.getloadavg()
    for path in default_models(args.models.split(",") if args.models else None):
        with er.load(path, "litert:cpu") as m0:
            shape = tuple(m0.inputs[0].shape)
        onnx = to_onnx(path, Path(onnx_dir.name)) if "onnxruntime" in backends else None
        log(f"{path.name}: bare and ours ({', '.join(backends)}) and the tools, {args.passes} interleaved passes ...")
        lat = latencies(path, onnx, shape, backends, args)
        if onnx is not None:
            ort += ort_rows(path.stem, lat)

        def med(key: str, lat: dict[str, list[float]] = lat) -> float:
            return statistics.median(lat[key]) if lat.get(key) else float("nan")

        log(f"{path.name}: auto:measure ...")
        choice = measured_choice(path)
        for backend in backends:
            where = onnx if backend == "onnxruntime" else path
            if where is None:
                continue
            log(f"{path.name} {backend}: throughput ...")
            tput = throughput(where, backend, args)
            log(f"{path.name} {backend}: cold and warm start ...")
            start = start_times(where, backend, args)
            ours, ours_sp = med(f"{backend} ours"), spread(lat[f"{backend} ours"])
            bare, bare_sp = med(f"{backend} bare"), spread(lat[f"{backend} bare"])
            if backend == "onnxruntime":  # no tool in its wheel: the bare loop is the reference
                tool = {"p50_us": bare, "spread": bare_sp, "init_ms": float("nan"), "first_ms": float("nan")}
            else:
                tool = {"p50_us": med(f"{backend} tool"), "spread": spread(lat[f"{backend} tool"]),
                        "init_ms": med(f"{backend} tool init"), "first_ms": med(f"{backend} tool first")}  # fmt: skip
            native = (
                {"python_p50_us": med("ov infer python"), "native_p50_us": med("ov infer native")}
                if backend == "openvino"
                else {}
            )
            rows.append(
                {
                    "model": path.stem,
                    "backend": backend,
                    "threads": 1,
                    "bare_p50_us": round(bare, 2),
                    "bare_spread_pct": round(bare_sp, 1),
                    "ours_p50_us": round(ours, 2),
                    "ours_spread_pct": round(ours_sp, 1),
                    "tool": TOOL[backend],
                    "tool_p50_us": round(tool["p50_us"], 2),
                    "tool_spread_pct": round(tool["spread"], 1),
                    "tool_init_ms": round(tool["init_ms"], 2),
                    "tool_first_ms": round(tool["first_ms"], 3),
                    "ours_over_tool": round(ours / tool["p50_us"], 3),
                    "target": verdict(ours, tool["p50_us"]),
                    "throughput_per_s": {str(n): round(r, 1) for n, (r, _) in tput.items()},
                    "throughput_spread_pct": {str(n): round(s, 1) for n, (_, s) in tput.items()},
                    "cold_ms": round(start["cold_ms"], 1),
                    "warm_ms": round(start["warm_ms"], 1),
                    "auto_measure": choice,
                    **{f"ov_infer_{k}": round(v, 2) for k, v in native.items()},
                }
            )
    onnx_dir.cleanup()
    meta = {
        "date": started,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        **{b: er.backends.get_backend(b).runtime_info().get("version") for b in backends},
        "threads": "1 (ONNX Runtime also at its default)",
        "runs": args.runs,
        "passes": args.passes,
        "load_average_before_after": [[round(v, 2) for v in load_before], [round(v, 2) for v in os.getloadavg()]],
    }
    header = (
        "| model | backend | bare p50 us | ours p50 us | tool p50 us | ours/tool | within 10 % | "
        "1 / 2 / 4 streams, samples/s | cold / warm start ms | auto:measure |"
    )
    print(f"<!-- {json.dumps(meta)} -->")
    print(header)
    print("| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |")
    for r in rows:
        t = r["throughput_per_s"]
        print(
            f"| {r['model']} | {r['backend']} | {r['bare_p50_us']:.1f} | {r['ours_p50_us']:.1f} "
            f"(±{r['ours_spread_pct']:.0f} %) | {r['tool_p50_us']:.1f} ({r['tool']}) | {r['ours_over_tool']:.2f} | "
            f"{r['target']} | {t['1']:.0f} / {t['2']:.0f} / {t['4']:.0f} | {r['cold_ms']:.0f} / {r['warm_ms']:.0f} | "
            f"{r['auto_measure']} |"
        )
    if any(r["backend"] == "openvino" for r in rows):
        print(
            "\nOpenVINO, where the per-call difference to benchmark_app goes (median us, 1 thread):\n\n"
            "| model | benchmark_app | `request.latency` (native timer) | `perf_counter` around `request.infer()` | "
            "bare lean (copy in, infer, copy out) | ours `infer_raw` |\n| --- | ---: | ---: | ---: | ---: | ---: |"
        )
        for r in rows:
            if r["backend"] == "openvino":
                print(
                    f"| {r['model']} | {r['tool_p50_us']:.1f} | {r['ov_infer_native_p50_us']:.1f} | "
                    f"{r['ov_infer_python_p50_us']:.1f} | {r['bare_p50_us']:.1f} | {r['ours_p50_us']:.1f} |"
                )
    if ort:
        print(
            f"\nONNX Runtime (CPU provider), `edge-runtime bench -d onnxruntime:CPU` (`Model.infer_raw`) against "
            f"a bare `InferenceSession.run(None, {{name: x}})` loop, same threads ({meta['date']}, "
            f"{meta['machine']}, onnxruntime {meta.get('onnxruntime')}, {args.passes} interleaved passes of "
            f"{args.runs} calls; median of the passes' p50, spread = max - min in % of the median; target: ours/bare "
            f"<= {TARGET_RATIO:.2f} on models of >= {TARGET_MIN_US:g} us):\n\n"
            "| model | threads | bare p50 us | ours p50 us | ours/bare | within 10 % |\n"
            "| --- | --- | ---: | ---: | ---: | --- |"
        )
        for r in ort:
            print(
                f"| {r['model']} | {r['threads']} | {r['bare_p50_us']:.1f} (±{r['bare_spread_pct']:.0f} %) | "
                f"{r['ours_p50_us']:.1f} (±{r['ours_spread_pct']:.0f} %) | {r['ours_over_bare']:.3f} | {r['target']} |"
            )
    print(f"\n(load average before / after: {meta['load_average_before_after']})")
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows, "onnxruntime": ort}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
