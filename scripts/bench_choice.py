"""How close the measured choice comes to the fastest setting, per model.

For each shipped model (``models/**/*.tflite``) and MLPerf Tiny model
(``../shared/models/mlperf_tiny/*.tflite``):

1. the benchmark: every setting (each ``auto`` candidate x thread counts {1, 2, cores}, OpenVINO
   also at its default threads, LiteRT also at its default) timed thoroughly (``--budget``
   seconds each, ``--rounds`` rounds, the median of the round means; two passes in opposite
   order, the lower p50 kept), giving "the fastest found by the benchmark";
2. ``auto:measure`` with an empty cache: its choice, and how long the measurement took;
3. plain ``auto`` with an empty cache (today's rule: LiteRT, default threads), and plain
   ``auto`` once ``auto:measure`` has cached its decision.

Each choice is scored by its p50 in the benchmark's table against the fastest's p50. Targets:
``auto:measure`` within 10 % of the fastest; plain ``auto`` within 1.1x once cached. Exits 1
when a target is missed. Run it with nothing else heavy on the machine.

    python scripts/bench_choice.py [--budget 1.0] [--rounds 9] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edge_runtime import load_model, measure
from edge_runtime.devices import probe, select
from edge_runtime.measure import Setting, Timing, settings_for
from edge_runtime.model_file import read_model_file

ROOT = Path(__file__).resolve().parents[1]
MLPERF = ROOT.parent / "shared" / "models" / "mlperf_tiny"
TARGET = 1.10


def models() -> list[Path]:
    return sorted((ROOT / "models").rglob("*.tflite")) + sorted(MLPERF.glob("*.tflite"))


def benchmark(path: Path, budget: float, rounds: int) -> list[Timing]:
    """Every setting, thoroughly: two passes in opposite order, the lower p50 of the two kept."""
    source = read_model_file(path)
    cands = select("auto", probe(["litert", "openvino"]), source.format).candidates
    settings = settings_for(cands, measure.default_thread_counts())
    settings += [Setting(c, None) for c in cands if c.device.backend == "litert" and c.device.kind == "cpu"]
    options = {"performance_hint": "LATENCY"}
    one = measure.measure_settings(
        source, settings, runs=rounds, warmup=20, budget_s=budget * len(settings), options=options
    )
    two = measure.measure_settings(
        source, settings[::-1], runs=rounds, warmup=20, budget_s=budget * len(settings), options=options
    )[::-1]
    return [a if (a.error or (b.p50_us <= 0) or a.p50_us <= b.p50_us) else b for a, b in zip(one, two)]


def p50_of(table: list[Timing], request: str, threads: int | None) -> float:
    return next(t.p50_us for t in table if t.request == request and t.threads == threads and t.error is None)


def loaded(path: Path, device: str, cache: Path) -> tuple[str, int | None, float]:
    """(device, threads, seconds to load) as ``load_model`` chose them."""
    t0 = time.perf_counter()
    with load_model(path, device, measure_cache=cache) as m:
        seconds = time.perf_counter() - t0
        got = m.selection.measurement
        threads = got.fastest.threads if got is not None else None
        return m.device, threads, seconds


def label(request: str, threads: int | None) -> str:
    return f"{request} t={'def' if threads is None else threads}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=1.0, help="benchmark seconds per setting per pass (default 1)")
    ap.add_argument("--rounds", type=int, default=9, help="benchmark rounds per setting (default 9)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    rows: list[dict[str, Any]] = []
    for path in models():
        table = benchmark(path, args.budget, args.rounds)
        fastest = min((t for t in table if t.error is None), key=lambda t: t.p50_us)
        with tempfile.TemporaryDirectory() as cold, tempfile.TemporaryDirectory() as warm:
            m_dev, m_thr, m_s = loaded(path, "auto:measure", Path(warm))
            a_dev, a_thr, _ = loaded(path, "auto", Path(cold))
            w_dev, w_thr, _ = loaded(path, "auto", Path(warm))
        row = {
            "model": str(path.relative_to(ROOT.parent)),
            "fastest": label(fastest.request, fastest.threads),
            "fastest_p50_us": round(fastest.p50_us, 1),
            "measure": label(m_dev, m_thr),
            "measure_ratio": round(p50_of(table, m_dev, m_thr) / fastest.p50_us, 3),
            "measure_s": round(m_s, 2),
            "auto_cold": label(a_dev, a_thr),
            "auto_cold_ratio": round(p50_of(table, a_dev, a_thr) / fastest.p50_us, 3),
            "auto_cached": label(w_dev, w_thr),
            "auto_cached_ratio": round(p50_of(table, w_dev, w_thr) / fastest.p50_us, 3),
            "table": {label(t.request, t.threads): round(t.p50_us, 1) for t in table if t.error is None},
        }
        rows.append(row)
        if not args.json:
            print(
                f"{row['model']:48s} fastest {row['fastest']:17s} {row['fastest_p50_us']:8.1f} us | "
                f"auto:measure {row['measure']:17s} x{row['measure_ratio']:.2f} ({row['measure_s']:.1f} s) | "
                f"auto cold {row['auto_cold']:17s} x{row['auto_cold_ratio']:.2f} | "
                f"auto cached {row['auto_cached']:17s} x{row['auto_cached_ratio']:.2f}",
                flush=True,
            )
    ok_measure = all(r["measure_ratio"] <= TARGET for r in rows)
    ok_cached = all(r["auto_cached_ratio"] <= TARGET for r in rows)
    summary = {
        "auto:measure within 10% of the fastest": ok_measure,
        "plain auto within 1.1x once cached": ok_cached,
        "auto cold worst ratio": max(r["auto_cold_ratio"] for r in rows),
    }
    if args.json:
        print(json.dumps({"models": rows, "targets": summary}, indent=2))
    else:
        for k, v in summary.items():
            print(f"{k}: {v}")
    return 0 if ok_measure and ok_cached else 1


if __name__ == "__main__":
    sys.exit(main())
