#!/usr/bin/env python3
"""Per-call overhead of Model.infer_raw / Model.infer against the bare interpreters.

Measures, side by side in one run and interleaved in rounds (so that noise from a
shared machine hits every variant alike), the median latency of:

  litert bare     interpreter.set_tensor; invoke; get_tensor
  litert raw      Model.infer_raw on litert:cpu
  litert infer    Model.infer (float in, quantize; dequantize out)
  openvino bare   request.infer({0: x}); result[0]        (the idiomatic call)
  openvino min    np.copyto(input_tensor.data, x); request.infer(); output.data.copy()
  openvino raw    Model.infer_raw on openvino:CPU
  openvino infer  Model.infer
  onnxruntime bare   onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"]);
                     sess.run(None, {name: x})   (the .onnx converted from the .tflite by
                     scripts/tflite_to_onnx.py into a temporary directory)
  onnxruntime raw    Model.infer_raw on onnxruntime:CPU (what ``edge-runtime bench`` times)
  onnxruntime infer  Model.infer

Target: infer_raw p50 within 1.05x of the bare loop of the same backend on
models whose bare call takes >= 50 us, and at most 3 us more on smaller ones.

    python scripts/bench_overhead.py                  # shipped models + ../shared MLPerf Tiny
    python scripts/bench_overhead.py --json --runs 2000 model.tflite
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import edge_runtime as er  # noqa: E402
from edge_runtime.backends.litert import _import_runtime  # noqa: E402


def default_models() -> list[Path]:
    models = sorted((ROOT / "models").glob("*.tflite"))
    mlperf = ROOT.parent / "shared" / "models" / "mlperf_tiny"
    if mlperf.is_dir():
        models += sorted(mlperf.glob("*.tflite"))
    else:
        print(f"note: {mlperf} absent; MLPerf Tiny models skipped", file=sys.stderr)
    return models


def variants(path: Path, threads: int) -> tuple[dict[str, Callable[[], object]], list[er.Model]]:
    lm = er.load_model(path, "litert:cpu", threads=threads)
    om = er.load_model(path, "openvino:CPU", threads=threads)
    spec = lm.inputs[0]
    xq = er.tensors.random_tensor(spec, 0)
    xf = er.dequantize(xq, spec)

    interp = _import_runtime().interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    i_idx = interp.get_input_details()[0]["index"]
    o_idx = interp.get_output_details()[0]["index"]

    def litert_bare() -> object:
        interp.set_tensor(i_idx, xq)
        interp.invoke()
        return interp.get_tensor(o_idx)

    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape({model.inputs[0]: ov.PartialShape(list(spec.shape))})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
    req = compiled.create_infer_request()
    in_view = req.get_input_tensor(0).data

    def openvino_bare() -> object:
        return req.infer({0: xq})[0]

    def openvino_min() -> object:
        np.copyto(in_view, xq)
        req.infer()
        return req.get_output_tensor(0).data.copy()

    return {
        "litert bare": litert_bare,
        "litert raw": lambda: lm.infer_raw(xq),
        "litert infer": lambda: lm.infer(xf),
        "openvino bare": openvino_bare,
        "openvino min": openvino_min,
        "openvino raw": lambda: om.infer_raw(xq),
        "openvino infer": lambda: om.infer(xf),
    }, [lm, om]


def onnx_variants(onnx_path: Path, threads: int | None) -> tuple[dict[str, Callable[[], object]], list[er.Model]]:
    """ONNX Runtime on the CPU: the bare loop (``InferenceSession(path,
    providers=["CPUExecutionProvider"])`` and ``sess.run(None, {name: x})``), ``Model.infer_raw``
    on ``onnxruntime:CPU`` (the call ``edge-runtime bench`` times) and ``Model.infer``, both
    sessions with the same threads (``None``: ONNX Runtime's defaults for both; ``N``:
    ``intra_op_num_threads = N``, ``inter_op_num_threads = 1`` for both, as the backend sets)."""
    import onnxruntime as ort

    om = er.load_model(onnx_path, "onnxruntime:CPU", threads=threads)
    spec = om.inputs[0]
    xq = er.tensors.random_tensor(spec, 0)
    xf = er.dequantize(xq, spec)
    so = ort.SessionOptions()
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def onnxruntime_bare() -> object:
        return sess.run(None, {name: xq})

    onnxruntime_bare.keep = sess  # type: ignore[attr-defined]
    return {
        "onnxruntime bare": onnxruntime_bare,
        "onnxruntime raw": lambda: om.infer_raw(xq),
        "onnxruntime infer": lambda: om.infer(xf),
    }, [om]


def ort_available() -> bool:
    """ONNX Runtime installed (its backend importable)?"""
    try:
        er.backends.get_backend("onnxruntime")
    except er.errors.BackendUnavailableError as exc:
        print(f"note: ONNX Runtime skipped: {exc.reason}", file=sys.stderr)
        return False
    return True


def to_onnx(path: Path, folder: Path) -> Path | None:
    """``path`` (.tflite) converted by ``scripts/tflite_to_onnx.py`` into ``folder``; ``None``
    (with a line on stderr) when it cannot be converted."""
    import tflite_to_onnx

    try:
        return tflite_to_onnx.convert_file(path, folder / f"{path.stem}.onnx")
    except (ValueError, OSError) as exc:
        print(f"note: {path.name}: no ONNX model ({exc}); ONNX Runtime skipped", file=sys.stderr)
        return None


def measure(fns: dict[str, Callable[[], object]], runs: int, rounds: int) -> dict[str, float]:
    per = max(1, runs // rounds)
    samples: dict[str, list[int]] = {k: [] for k in fns}
    clock = time.perf_counter_ns
    for fn in fns.values():
        for _ in range(50):
            fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            buf = samples[name]
            for _ in range(per):
                t0 = clock()
                fn()
                buf.append(clock() - t0)
    return {k: float(np.median(v)) / 1e3 for k, v in samples.items()}


def verdict(bare: float, raw: float) -> tuple[str, bool]:
    if bare >= 50:
        return f"ratio {raw / bare:.3f} (target <= 1.05)", raw / bare <= 1.05
    return f"{raw - bare:+.2f} us (target <= 3)", raw - bare <= 3.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", type=Path, help="models (default: models/*.tflite and MLPerf Tiny)")
    ap.add_argument("--runs", type=int, default=3000, help="timed calls per variant (default 3000)")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    ap.add_argument("--threads", type=int, default=1, help="inference threads for every variant (default 1)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument(
        "--no-onnxruntime", action="store_true", help="leave out the ONNX Runtime variants (default: in when installed)"
    )
    args = ap.parse_args()

    results: list[dict[str, Any]] = []
    ok_all = True
    onnx_dir = tempfile.TemporaryDirectory(prefix="bench_overhead-")
    with_ort = ort_available() and not args.no_onnxruntime
    for path in args.models or default_models():
        print(f"measuring {path.name} ...", file=sys.stderr, flush=True)
        fns, models = variants(path, args.threads)
        onnx = to_onnx(path, Path(onnx_dir.name)) if with_ort else None
        if onnx is not None:
            ort_fns, ort_models = onnx_variants(onnx, args.threads)
            fns.update(ort_fns)
            models += ort_models
        try:
            med = measure(fns, args.runs, args.rounds)
        finally:
            for m in models:
                m.close()
        row: dict[str, Any] = {"model": path.name, "p50_us": {k: round(v, 2) for k, v in med.items()}}
        for backend in ("litert", "openvino", "onnxruntime"):
            if f"{backend} raw" not in med:
                continue
            text, ok = verdict(med[f"{backend} bare"], med[f"{backend} raw"])
            row[f"{backend}_raw_vs_bare"] = text
            row[f"{backend}_ok"] = ok
            ok_all &= ok
        row["openvino_raw_vs_min"] = round(med["openvino raw"] / med["openvino min"], 3)
        results.append(row)

    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "python": platform.python_version(),
        "threads": args.threads,
        "runs": args.runs,
        "litert": er.backends.get_backend("litert").runtime_info(),
        "openvino": er.backends.get_backend("openvino").runtime_info()["version"],
        "onnxruntime": er.backends.get_backend("onnxruntime").runtime_info()["version"] if with_ort else None,
    }
    onnx_dir.cleanup()
    if args.json:
        print(json.dumps({"meta": meta, "results": results, "all_targets_met": ok_all}, indent=2))
        return 0 if ok_all else 1
    names = list(results[0]["p50_us"]) if results else []
    print(
        f"median latency per call, us ({meta['date']}, {meta['machine']}, python {meta['python']}, "
        f"threads={args.threads}, {args.runs} calls per variant in {args.rounds} interleaved rounds)\n"
    )
    print(f"{'model':32s} " + " ".join(f"{n:>14s}" for n in names))
    for r in results:
        print(f"{r['model']:32s} " + " ".join(f"{r['p50_us'][n]:14.1f}" for n in names))
    print()
    for r in results:
        print(
            f"{r['model']:32s} litert raw vs bare: {r['litert_raw_vs_bare']:28s} "
            f"openvino raw vs bare: {r['openvino_raw_vs_bare']}  (raw/min {r['openvino_raw_vs_min']})"
            + (f"  onnxruntime raw vs bare: {r['onnxruntime_raw_vs_bare']}" if "onnxruntime_ok" in r else "")
        )
    print(f"\nall targets met: {ok_all}")
    return 0 if ok_all else 1


if __name__ == "__main__":
    raise SystemExit(main())
