"""Cold start, measured in fresh processes: import, load, first result; ours beside the bare runtimes.

Each sample is a new Python process (so nothing is cached in memory) that imports NumPy
first (both sides need it; it is not part of either figure), then times:

- ours:  ``import edge_runtime`` + ``edge_runtime.load(MODEL, DEVICE, threads=1)`` + the first
  ``infer_raw``;
- bare LiteRT: ``import ai_edge_litert.interpreter`` + ``Interpreter(model_content=..., num_threads=1)``
  + ``allocate_tensors`` + ``set_tensor``/``invoke``/``get_tensor``;
- bare OpenVINO: ``import openvino`` + ``Core()`` + ``read_model`` (+ ``reshape`` of a dynamic batch
  to 1, as edge_runtime does) + ``compile_model(..., "CPU",
  {INFERENCE_NUM_THREADS: 1, PERFORMANCE_HINT: LATENCY})`` + ``create_infer_request`` + ``infer``;
- OpenVINO again with ``cache_dir`` (ours) / ``CACHE_DIR`` (bare), the cache warmed first;
- ours on OpenVINO with the backend already imported (``edge_runtime.backends.openvino`` and its
  ``Core``, before the clock starts: a daemon reloading a model), without and with the cache.

Warm start, OpenVINO, ours: time to the first result with our compiled-model cache present
(``cache_dir``: a hit imports the compiled blob, no ``read_model``) over the same without a
cache; target <= 0.5x. Reported twice: for a fresh process's total (``import edge_runtime`` +
``load``, which imports the backend, + first result) and from ``load()`` with the backend already
imported. This target is reported, not part of the exit status.

Also ``import edge_runtime`` alone, and which backend modules it imported (target: none).
Target, per backend: our ``load`` + first result within 1.2x the bare runtime's time plus
5 ms. ``import edge_runtime`` imports no backend, so our ``load`` includes importing the
backend library; the bare side is therefore timed from its import of that library to its
first result. ``import edge_runtime`` itself (~20 ms, NumPy already imported) is reported
beside it, and the ratio of the totals too. The script exits non-zero when a target is
missed. Figures: median and spread (min-max) over ``--runs`` processes per variant,
variants interleaved. Children run with compiled bytecode, as a pip install leaves it.

    python scripts/bench_cold_start.py [--runs 9] [--json] [--models digits,vww]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODELS = [ROOT / "models" / "digits_cnn_int8.tflite", ROOT / "models" / "basicmotions_int8.tflite"]
MLPERF = Path(os.environ.get("EDGE_RUNTIME_MLPERF_DIR", ROOT.parent / "shared" / "models" / "mlperf_tiny"))

PRELUDE = """
import sys, time, json
import numpy as np
clock = time.perf_counter
"""


def ours(preload: str = "") -> str:
    """Our side as a child's code: ``import edge_runtime`` (and ``preload``, counted with the
    import), then ``load`` and the first ``infer_raw``; prints the times and the compile cache."""
    return (
        PRELUDE
        + f"""
t0 = clock()
import edge_runtime as er
{preload}
t1 = clock()
m = er.load(sys.argv[1], sys.argv[2], threads=1, cache_dir=(sys.argv[3] or None))
t2 = clock()
m.infer_raw(np.zeros(m.inputs[0].shape, m.inputs[0].dtype))
t3 = clock()
print(json.dumps({{"import": t1 - t0, "load": t2 - t1, "first": t3 - t2, "total": t3 - t0, "cache": m.compile_cache}}))
"""
    )


OURS = ours()
#: Ours with the OpenVINO backend and its Core already there (a daemon's reload): "import" is
#: that import, and "load" starts after it.
OURS_IMPORTED = ours("from edge_runtime.backends import openvino as backend\nbackend.core()")

#: Warm (our cache present) over cold (no cache), OpenVINO, ours: at most this.
WARM_TARGET = 0.5

BARE_LITERT = (
    PRELUDE
    + """
t0 = clock()
from ai_edge_litert.interpreter import Interpreter
t1 = clock()
content = open(sys.argv[1], "rb").read()
it = Interpreter(model_content=content, num_threads=1)
it.allocate_tensors()
d = it.get_input_details()[0]
t2 = clock()
it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
it.invoke()
it.get_tensor(it.get_output_details()[0]["index"])
t3 = clock()
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "first": t3 - t2, "total": t3 - t0}))
"""
)

BARE_OPENVINO = (
    PRELUDE
    + """
t0 = clock()
import openvino as ov
t1 = clock()
core = ov.Core()
config = {"INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY"}
if sys.argv[3]:
    config["CACHE_DIR"] = sys.argv[3]
model = core.read_model(sys.argv[1])
shape = model.input(0).get_partial_shape()
if shape.is_dynamic:  # a dynamic batch, as TFLite files often have: static 1, as edge_runtime does
    shape[0] = 1
    model.reshape(shape)
compiled = core.compile_model(model, "CPU", config)
request = compiled.create_infer_request()
t2 = clock()
port = compiled.inputs[0]
request.infer({0: np.zeros(tuple(port.get_shape()), port.get_element_type().to_dtype())})
t3 = clock()
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "first": t3 - t2, "total": t3 - t0}))
"""
)

IMPORT_ONLY = """
import sys, time, json
import numpy as np
t0 = time.perf_counter()
import edge_runtime
t1 = time.perf_counter()
backends = sorted(m for m in sys.modules if m.split(".")[0] in ("openvino", "ai_edge_litert", "tflite_runtime"))
print(json.dumps({"import": t1 - t0, "backends_imported": backends}))
"""


#: Compiled bytecode for every child, as a pip install leaves it (this environment may set
#: PYTHONDONTWRITEBYTECODE, and then every process would compile our sources again).
PYCACHE = tempfile.mkdtemp(prefix="edge_runtime_pycache_")


def run(code: str, *args: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(PYTHONWARNINGS="ignore", PYTHONPYCACHEPREFIX=PYCACHE)
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )
    if out.returncode != 0:
        raise SystemExit(f"bench_cold_start: a child failed:\n{out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def summary(samples: list[float]) -> dict[str, float]:
    ms = [1e3 * s for s in samples]
    return {"median_ms": round(statistics.median(ms), 2), "min_ms": round(min(ms), 2), "max_ms": round(max(ms), 2)}


def _ms(got: list[dict[str, Any]], key: str | None) -> list[float]:
    """Per-sample ms: ``key`` ("total"), or load + first result (None)."""
    return [1e3 * (g[key] if key else g["load"] + g["first"]) for g in got]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=9, help="fresh processes per variant (default 9)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--models", default="", help="comma-separated substrings of model names (default: all)")
    args = parser.parse_args()

    models = [m for m in MODELS if m.is_file()]
    for code, device in ((OURS, "litert:cpu"), (OURS, "openvino:CPU"), (BARE_LITERT, ""), (BARE_OPENVINO, "")):
        run(code, str(models[0]), device, "")  # writes the bytecode every later child reads
    if MLPERF.is_dir():
        models += sorted(MLPERF.glob("*.tflite"))
    if args.models:
        wanted = [w for w in args.models.split(",") if w]
        models = [m for m in models if any(w in m.name for w in wanted)]
    imports = [run(IMPORT_ONLY) for _ in range(args.runs)]
    report: dict[str, Any] = {
        "python": sys.version.split()[0],
        "runs": args.runs,
        "import_edge_runtime": summary([r["import"] for r in imports]),
        "backends_imported_by_import": imports[0]["backends_imported"],
        "models": [],
    }
    ok = not imports[0]["backends_imported"]
    with tempfile.TemporaryDirectory(prefix="edge_runtime_cold_") as tmp:
        for model in models:
            cache_ours, cache_bare = str(Path(tmp) / f"{model.stem}-ours"), str(Path(tmp) / f"{model.stem}-bare")
            variants = {
                "litert ours": (OURS, str(model), "litert:cpu", ""),
                "litert bare": (BARE_LITERT, str(model), "", ""),
                "openvino ours": (OURS, str(model), "openvino:CPU", ""),
                "openvino bare": (BARE_OPENVINO, str(model), "", ""),
                "openvino ours, cache_dir": (OURS, str(model), "openvino:CPU", cache_ours),
                "openvino bare, CACHE_DIR": (BARE_OPENVINO, str(model), "", cache_bare),
                "openvino ours, imported": (OURS_IMPORTED, str(model), "openvino:CPU", ""),
                "openvino ours, imported, cache_dir": (OURS_IMPORTED, str(model), "openvino:CPU", cache_ours),
            }
            run(OURS, str(model), "openvino:CPU", cache_ours)  # warm the caches
            run(BARE_OPENVINO, str(model), "", cache_bare)
            samples: dict[str, list[dict[str, Any]]] = {k: [] for k in variants}
            for _ in range(args.runs):  # interleaved: a slow spell hits every variant alike
                for name, (code, *argv) in variants.items():
                    samples[name].append(run(code, *argv))
                print(f"bench_cold_start: {model.name}: {len(samples['litert ours'])}/{args.runs}", file=sys.stderr)
            row: dict[str, Any] = {"model": model.name, "variants": {}}
            for name, got in samples.items():
                row["variants"][name] = {k: summary([g[k] for g in got]) for k in ("import", "load", "first", "total")}
            for backend, bare_name, ours_name in (
                ("litert", "litert bare", "litert ours"),
                ("openvino", "openvino bare", "openvino ours"),
                ("openvino cached", "openvino bare, CACHE_DIR", "openvino ours, cache_dir"),
            ):
                bare_t = [g["total"] for g in samples[bare_name]]
                ours_t = [g["load"] + g["first"] for g in samples[ours_name]]
                bare = 1e3 * statistics.median(bare_t)
                ours = 1e3 * statistics.median(ours_t)
                limit = 1.2 * bare + 5
                row[f"{backend}: ours load+first ms"] = round(ours, 2)
                row[f"{backend}: bare import+load+first ms"] = round(bare, 2)
                row[f"{backend}: limit ms"] = round(limit, 2)
                row[f"{backend}: total ours / bare"] = round(
                    row["variants"][ours_name]["total"]["median_ms"] / row["variants"][bare_name]["total"]["median_ms"],
                    3,
                )
                row[f"{backend}: target met"] = ours <= limit
                ok &= ours <= limit
            warm = [name for name in variants if "ours" in name and "cache_dir" in name]
            caches = {g.get("cache") for name in warm for g in samples[name]}
            if caches - {"hit", None}:
                raise SystemExit(f"bench_cold_start: {model.name}: a warm run was not a cache hit: {caches}")
            for case, cold_name, warm_name, key in (
                ("fresh process", "openvino ours", "openvino ours, cache_dir", "total"),
                ("backend imported", "openvino ours, imported", "openvino ours, imported, cache_dir", None),
            ):
                cold_t = statistics.median(_ms(samples[cold_name], key))
                warm_t = statistics.median(_ms(samples[warm_name], key))
                row[f"warm/cold {case}"] = {
                    "cold_ms": round(cold_t, 2),
                    "warm_ms": round(warm_t, 2),
                    "ratio": round(warm_t / cold_t, 3),
                    "target_met": warm_t <= WARM_TARGET * cold_t,
                }
            report["models"].append(row)

    if args.json:
        print(json.dumps(report, indent=2))
    else:
        imp = report["import_edge_runtime"]
        print(
            f"import edge_runtime (after numpy): {imp['median_ms']} ms median ({imp['min_ms']}-{imp['max_ms']}); "
            f"backend modules imported: {report['backends_imported_by_import'] or 'none'}"
        )
        print(f"{args.runs} fresh processes per variant, interleaved; ms, median (min-max); 1 inference thread\n")
        header = f"{'model':28s} {'variant':28s} {'import':>16s} {'load':>16s} {'first':>14s} {'total':>18s}"
        print(header)
        print("-" * len(header))
        for row in report["models"]:
            for name, v in row["variants"].items():
                cells = [
                    f"{v[k]['median_ms']:.1f} ({v[k]['min_ms']:.0f}-{v[k]['max_ms']:.0f})"
                    for k in ("import", "load", "first", "total")
                ]
                print(f"{row['model']:28s} {name:28s} {cells[0]:>16s} {cells[1]:>16s} {cells[2]:>14s} {cells[3]:>18s}")
            for backend in ("litert", "openvino", "openvino cached"):
                verdict = "met" if row[f"{backend}: target met"] else "MISSED"
                print(
                    f"{'':28s} {backend}: our load+first {row[f'{backend}: ours load+first ms']} ms vs bare "
                    f"import+load+first {row[f'{backend}: bare import+load+first ms']} ms: limit "
                    f"{row[f'{backend}: limit ms']} ms -> {verdict}; totals incl. import edge_runtime "
                    f"{row[f'{backend}: total ours / bare']}x"
                )
            for case, what in (
                ("fresh process", "import edge_runtime + load + first"),
                ("backend imported", "load + first"),
            ):
                w = row[f"warm/cold {case}"]
                print(
                    f"{'':28s} openvino warm/cold, {case} ({what}): {w['warm_ms']} / {w['cold_ms']} ms = "
                    f"{w['ratio']}x -> target <= {WARM_TARGET}x {'met' if w['target_met'] else 'MISSED'}"
                )
            print()
        print(
            "target: our load + first result <= 1.2 x (bare: import of the backend library + load + first result)"
            " + 5 ms, per backend; OpenVINO warm (our cache present) / cold (no cache) <= "
            f"{WARM_TARGET}x (reported only)"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
