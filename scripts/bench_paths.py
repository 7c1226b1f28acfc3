#!/usr/bin/env python3
"""The same model through two paths of this machine, timed side by side: the figures behind two
of the runtime's defaults.

* ``onnx``: each MLPerf Tiny ``.tflite`` converted to int8 ONNX (``scripts/tflite_to_onnx.py``,
  into a temporary folder) and run by ``Model.infer_raw`` on ``onnxruntime:CPU`` and on
  ``openvino:CPU``, why ``auto`` tries ONNX Runtime first for ``.onnx``
  (``model_file.READERS``);
* ``litert``: each ``.tflite`` on LiteRT's Interpreter (``litert:cpu``) and through
  ``CompiledModel`` on its CPU accelerator (the class behind ``litert:gpu``/``litert:npu``, with
  the CPU as its accelerator), why the Interpreter stays the CPU path.

One inference thread everywhere; ``--passes`` interleaved passes of ``--runs`` calls after 100
warm-up calls; the median of the passes' p50 and their spread (max - min). Models: the
shipped ``models/*.tflite`` and ``../shared/models/mlperf_tiny/*.tflite`` (or
``EDGE_RUNTIME_MLPERF_DIR``). Usage: ``python scripts/bench_paths.py [--passes 5] [--runs 1000]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import edge_runtime as er  # noqa: E402
from edge_runtime.bench import measure  # noqa: E402
from edge_runtime.device_info import Device  # noqa: E402
from edge_runtime.model_file import read_model_file  # noqa: E402
from edge_runtime.tensors import random_tensor  # noqa: E402

MLPERF = Path(os.environ.get("EDGE_RUNTIME_MLPERF_DIR", ROOT.parent / "shared" / "models" / "mlperf_tiny"))


def timed(fns: dict[str, Callable[[], object]], passes: int, runs: int) -> dict[str, tuple[float, float]]:
    per: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(passes):
        names = list(fns) if i % 2 == 0 else list(reversed(fns))  # neither side always first
        for name in names:
            per[name].append(measure(fns[name], runs, warmup=100).p50_us)
    return {k: (statistics.median(v), max(v) - min(v)) for k, v in per.items()}


def row(model: str, result: dict[str, tuple[float, float]]) -> str:
    (pa, sa), (pb, sb) = result.values()
    return f"| {model} | {pa:.1f} (±{sa:.1f}) | {pb:.1f} (±{sb:.1f}) | {pb / pa:.2f} |"


def onnx_rows(models: list[Path], args: argparse.Namespace) -> list[str]:
    import tflite_to_onnx

    out = [
        "| model | onnxruntime:CPU p50 us | openvino:CPU p50 us | openvino / onnxruntime |",
        "| --- | ---: | ---: | ---: |",
    ]
    print("\n".join(out), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for src in models:
            path = Path(tmp) / (src.stem + ".onnx")
            tflite_to_onnx.convert_file(src, path)
            loaded = {d: er.load_model(path, d, threads=1) for d in ("onnxruntime:CPU", "openvino:CPU")}
            x = random_tensor(loaded["onnxruntime:CPU"].inputs[0], 0)
            fns: dict[str, Callable[[], object]] = {d: (lambda m=m, x=x: m.infer_raw(x)) for d, m in loaded.items()}
            out.append(row(src.stem, timed(fns, args.passes, args.runs)))
            for m in loaded.values():
                m.close()
            print(out[-1], flush=True)
    return out


def litert_rows(models: list[Path], args: argparse.Namespace) -> list[str]:
    from edge_runtime.backends.litert_compiled import CompiledSession

    out = [
        "| model | Interpreter p50 us | CompiledModel (CPU) p50 us | CompiledModel / Interpreter |",
        "| --- | ---: | ---: | ---: |",
    ]
    cpu = Device("litert", "cpu", "cpu", "CPU", True)
    print("\n".join(out), flush=True)
    for src in models:
        interp = er.load_model(src, "litert:cpu", threads=1)
        compiled: Any = CompiledSession(read_model_file(src), cpu, accelerator="cpu", num_threads=1)
        arrays = [random_tensor(s, 0) for s in interp.inputs]
        fns: dict[str, Callable[[], object]] = {
            "interpreter": lambda m=interp, a=arrays: m.infer_raw(a[0]),
            "compiled": lambda c=compiled, a=arrays: c.run(a),
        }
        out.append(row(src.stem, timed(fns, args.passes, args.runs)))
        interp.close()
        compiled.close()
        print(out[-1], flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=5, help="interleaved passes (default 5)")
    parser.add_argument("--runs", type=int, default=1000, help="timed calls per pass (default 1000)")
    parser.add_argument("--only", choices=("onnx", "litert"), help="one of the two comparisons")
    args = parser.parse_args()
    if args.passes < 1 or args.runs < 1:
        parser.error("--passes and --runs must be >= 1")
    models = sorted((ROOT / "models").glob("*.tflite")) + (sorted(MLPERF.glob("*.tflite")) if MLPERF.is_dir() else [])
    load = os.getloadavg()
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, {os.cpu_count()} cores, "
        f"1 thread, {args.passes} passes x {args.runs} calls, load average {load[0]:.2f}",
        flush=True,
    )
    if args.only in (None, "onnx"):
        onnx_rows(models, args)
    if args.only in (None, "litert"):
        litert_rows(models, args)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
