#!/usr/bin/env python3
"""Run the GPU paths for real on a machine with an NVIDIA GPU (a Jetson, an x86 box) and print
what ran, where, how exactly and how fast, side by side with the CPU paths.

For each ``.onnx`` model (the shipped ``models/digits_cnn_int8.onnx``, and every ``*.onnx`` in
``--onnx-dir``, e.g. the MLPerf Tiny models converted by ``scripts/tflite_to_onnx.py``):

* ``onnxruntime:CUDA`` and ``onnxruntime:CPU`` through ``edge_runtime``: the placement ONNX
  Runtime reports, and bit-exactness against a bare ``InferenceSession`` with the same provider
  (10 random int8 inputs); the largest difference between CUDA and CPU, in quantization steps;
* latency, p50 us over ``--runs`` calls, ``--passes`` interleaved passes of ours and the bare
  loop (the median pass and the spread are printed);
* ``onnxruntime:TensorRT`` as ``load`` sees it, and the fallback chain TensorRT -> CUDA ->
  CPU run for real (TensorRT offered as available even when its libraries are missing, so
  that its real failure and the loud fallback are shown);
* ``auto`` on the model: which device it picks and why.

For each ``.tflite`` model (``models/digits_cnn_int8.tflite`` and ``--tflite-dir``): ``litert:gpu``
(LiteRT's CompiledModel GPU accelerator over Vulkan/OpenCL) when ``devices()`` says it is
available: full or partial acceleration, bit-exactness against a bare ``CompiledModel`` on
the GPU, steps from ``litert:cpu``, and latency against ``litert:cpu``.

Usage: ``python scripts/bench_gpu.py [--onnx-dir DIR] [--tflite-dir DIR] [--json OUT]``. Needs
``onnxruntime-gpu`` (README, Jetson); every part that cannot run says why and the rest goes on.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import edge_runtime as er  # noqa: E402
from edge_runtime.bench import measure  # noqa: E402
from edge_runtime.device_info import Device  # noqa: E402
from edge_runtime.tensors import random_tensor  # noqa: E402

SEEDS = range(10)


def log(msg: str) -> None:
    print(msg, flush=True)


def one_line(text: str) -> str:
    """An error's lines joined into one (``EdgeRuntimeError`` puts each device tried on a line)."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def gpu_name() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return out.stdout.strip() or out.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi unavailable: {exc}"


def steps(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> int:
    return int(np.max(np.abs(a.astype(np.int64) - b.astype(np.int64)))) if a.size else 0


def timed(fns: dict[str, Callable[[], object]], passes: int, runs: int) -> dict[str, dict[str, float]]:
    """p50 us of each function per pass, passes interleaved; the median pass and the spread."""
    per: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(passes):
        for name, fn in fns.items():
            per[name].append(measure(fn, runs, warmup=max(20, runs // 10)).p50_us)
    return {
        k: {"p50_us": round(statistics.median(v), 1), "spread_us": round(max(v) - min(v), 1)} for k, v in per.items()
    }


def bare_onnx(ort: Any, path: Path, provider: str) -> Any:
    chain = [provider, "CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [provider]
    return ort.InferenceSession(str(path), providers=chain, enable_fallback=0)


def onnx_model_report(ort: Any, path: Path, args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"model": path.name}
    outputs: dict[str, list[np.ndarray[Any, Any]]] = {}
    fns: dict[str, Callable[[], object]] = {}
    keep: list[Any] = []
    for short, provider in (("CUDA", "CUDAExecutionProvider"), ("CPU", "CPUExecutionProvider")):
        entry: dict[str, Any] = {}
        report[short] = entry
        t0 = time.perf_counter()
        try:
            model = er.load_model(path, f"onnxruntime:{short}")
        except er.EdgeRuntimeError as exc:
            entry["error"] = str(exc)
            log(f"  {path.name} onnxruntime:{short}: {one_line(str(exc))}")
            continue
        entry["load_ms"] = round((time.perf_counter() - t0) * 1e3, 1)
        keep.append(model)
        bare = bare_onnx(ort, path, provider)
        keep.append(bare)
        name = bare.get_inputs()[0].name
        xs = [random_tensor(model.inputs[0], s) for s in SEEDS]
        ours = [model.infer_raw(x)[0] for x in xs]
        ref = [bare.run(None, {name: x})[0] for x in xs]
        entry.update(
            placement=model.placement,
            fully_accelerated=model.fully_accelerated,
            execution_devices=list(model.execution_devices),
            bit_exact_vs_bare=all(np.array_equal(a, b) for a, b in zip(ours, ref)),
        )
        outputs[short] = ours
        x0 = xs[0]
        fns[f"{short} ours"] = lambda m=model, x=x0: m.infer_raw(x)
        fns[f"{short} bare"] = lambda s=bare, n=name, x=x0: s.run(None, {n: x})
        log(
            f"  {path.name} onnxruntime:{short}: {model.placement}; bit-exact vs bare: {entry['bit_exact_vs_bare']}; "
            f"load {entry['load_ms']} ms"
        )
    if "CUDA" in outputs and "CPU" in outputs:
        report["cuda_vs_cpu_max_steps"] = max(steps(a, b) for a, b in zip(outputs["CUDA"], outputs["CPU"]))
        report["cuda_vs_cpu_argmax_agree"] = sum(
            int(np.argmax(a) == np.argmax(b)) for a, b in zip(outputs["CUDA"], outputs["CPU"])
        )
    if fns:
        report["latency"] = timed(fns, args.passes, args.runs)
        for k, v in report["latency"].items():
            log(f"    {k:10s} p50 {v['p50_us']:8.1f} us (spread {v['spread_us']} us over {args.passes} passes)")
    for obj in keep:
        if hasattr(obj, "close"):
            obj.close()
    return report


def tensorrt_report(path: Path) -> dict[str, Any]:
    """TensorRT as ``load`` sees it, then the chain TensorRT -> CUDA -> CPU run for real with
    TensorRT offered as available (its real failure, if any, and the loud fallback)."""
    out: dict[str, Any] = {}
    try:
        with er.load_model(path, "onnxruntime:TensorRT", cache_dir=str(Path.home() / ".cache" / "edge_runtime")) as m:
            out["named"] = {"device": m.device, "placement": m.placement, "compile_cache": m.compile_cache}
    except er.EdgeRuntimeError as exc:
        out["named"] = {"error": str(exc)}
    table = []
    for d in er.devices():
        if d.backend == "onnxruntime" and d.name == "TensorRT" and not d.available:
            d = Device(d.backend, d.name, d.kind, d.full_name, d.int8, True, "", d.capabilities, d.options)
        table.append(d)
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Keep(logging.WARNING)
    logging.getLogger("edge_runtime").addHandler(handler)
    try:
        with er.load_model(path, ["onnxruntime:TensorRT", "onnxruntime:CUDA", "onnxruntime:CPU"], devices=table) as m:
            out["chain"] = {"device": m.device, "attempts": list(m.attempts), "warnings": records}
    except er.EdgeRuntimeError as exc:
        out["chain"] = {"error": str(exc), "warnings": records}
    finally:
        logging.getLogger("edge_runtime").removeHandler(handler)
    return out


def litert_gpu_report(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    from ai_edge_litert.compiled_model import CompiledModel

    from edge_runtime.backends import litert_compiled as lc

    report: dict[str, Any] = {"model": path.name}
    try:
        gpu = er.load_model(path, "litert:gpu")
    except er.EdgeRuntimeError as exc:
        report["error"] = str(exc)
        log(f"  {path.name} litert:gpu: {one_line(str(exc))}")
        return report
    cpu = er.load_model(path, "litert:cpu")
    bare = CompiledModel.from_buffer(path.read_bytes(), options=lc.compiled_options("gpu"))
    ins, outs = bare.create_input_buffers(0), bare.create_output_buffers(0)
    spec = gpu.outputs[0]

    def bare_run(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        ins[0].write(x)
        bare.run_by_index(0, ins, outs)
        result: np.ndarray[Any, Any] = outs[0].read(int(np.prod(spec.shape)), spec.dtype).reshape(spec.shape)
        return result

    xs = [random_tensor(gpu.inputs[0], s) for s in SEEDS]
    g = [gpu.infer_raw(x)[0] for x in xs]
    report.update(
        placement=gpu.placement,
        fully_accelerated=gpu.fully_accelerated,
        bit_exact_vs_bare=all(np.array_equal(a, bare_run(x)) for a, x in zip(g, xs)),
        gpu_vs_cpu_max_steps=max(steps(a, cpu.infer_raw(x)[0]) for a, x in zip(g, xs)),
    )
    x0 = xs[0]
    report["latency"] = timed(
        {
            "gpu ours": lambda: gpu.infer_raw(x0),
            "gpu bare": lambda: bare_run(x0),
            "cpu ours": lambda: cpu.infer_raw(x0),
        },
        args.passes,
        args.runs,
    )
    log(f"  {path.name} litert:gpu: {gpu.placement}; bit-exact vs bare: {report['bit_exact_vs_bare']}")
    for k, v in report["latency"].items():
        log(f"    {k:10s} p50 {v['p50_us']:8.1f} us (spread {v['spread_us']} us)")
    gpu.close()
    cpu.close()
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx-dir", type=Path, help="more .onnx models (e.g. MLPerf Tiny, converted)")
    parser.add_argument("--tflite-dir", type=Path, help="more .tflite models for litert:gpu")
    parser.add_argument("--passes", type=int, default=5, help="interleaved timing passes (default 5)")
    parser.add_argument("--runs", type=int, default=300, help="timed calls per pass (default 300)")
    parser.add_argument("--json", type=Path, help="write every figure here as JSON")
    args = parser.parse_args()
    if args.passes < 1 or args.runs < 1:
        parser.error("--passes and --runs must be >= 1")
    for d in (args.onnx_dir, args.tflite_dir):
        if d is not None and not d.is_dir():
            parser.error(f"no such folder: {d}")
    result: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {gpu_name()}",
        "python": platform.python_version(),
    }
    log(f"{result['when']}: {result['machine']}, Python {result['python']}")
    devs = er.devices()
    result["devices"] = [d.to_dict() for d in devs]
    for d in devs:
        name = d.request if d.name else d.backend
        log(f"  {name:28s} {'yes' if d.available else 'no ':3s}  {d.reason or d.full_name}")
    try:
        import onnxruntime as ort
    except ImportError as exc:
        log(f"onnxruntime not importable ({exc}): the ONNX Runtime part is skipped")
        ort = None
    if ort is not None:
        result["onnxruntime"] = {"version": ort.__version__, "providers": ort.get_available_providers()}
        onnx_models = [ROOT / "models" / "digits_cnn_int8.onnx"]
        if args.onnx_dir:
            onnx_models += sorted(args.onnx_dir.glob("*.onnx"))
        result["onnx"] = [onnx_model_report(ort, p, args) for p in onnx_models]
        result["tensorrt"] = tensorrt_report(onnx_models[0])
        trt = result["tensorrt"]
        named, chain = trt["named"], trt["chain"]
        log(f"  onnxruntime:TensorRT by name: {named.get('device') or one_line(named.get('error', ''))}")
        log(f"  chain TensorRT -> CUDA -> CPU (TensorRT offered as available): {chain.get('device', 'none loaded')}")
        for attempt in chain.get("attempts", []):
            log(f"    tried {one_line(attempt)}")
        with er.load_model(onnx_models[0]) as auto:
            result["auto_onnx"] = {"device": auto.device, "reason": auto.reason, "placement": auto.placement}
            log(f"  auto on {onnx_models[0].name}: {auto.device} ({auto.reason}); {auto.placement}")
    tflite_models = [ROOT / "models" / "digits_cnn_int8.tflite"]
    if args.tflite_dir:
        tflite_models += sorted(args.tflite_dir.glob("*.tflite"))
    result["litert_gpu"] = [litert_gpu_report(p, args) for p in tflite_models]
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
