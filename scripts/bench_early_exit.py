#!/usr/bin/env python3
"""Early exit against every stage, side by side, on LiteRT and OpenVINO.

On held-out test data that calibration never saw (models/digits_early_exit/test.npz),
end to end through ``EarlyExitModel.classify`` (Python overhead included), interleaving
the two variants sample by sample so that machine noise hits both alike. Target: >= 2x
lower mean latency at <= 1 percentage point lower accuracy, on both backends.

    python scripts/bench_early_exit.py [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import edge_runtime as er  # noqa: E402

BUNDLE = ROOT / "models" / "digits_early_exit"


def run(device: str, x: np.ndarray, y: np.ndarray, repeat: int, threads: int) -> dict[str, Any]:
    with er.load_bundle(BUNDLE, device, threads=threads) as model:
        shape = model.inputs[0].shape
        lat: dict[bool, list[float]] = {False: [], True: []}
        correct = {False: 0, True: 0}
        exits: list[int] = []
        for _ in range(repeat):
            for sample, label in zip(x, y):
                xi = sample.reshape(shape)
                for force in (False, True):
                    t0 = time.perf_counter_ns()
                    r = model.classify(xi, force_all=force)
                    lat[force].append((time.perf_counter_ns() - t0) / 1e3)
                    correct[force] += int(r.label_index == int(label))
                    if not force:
                        exits.append(r.exit_index)
        n = len(lat[False])
        early, full = float(np.mean(lat[False])), float(np.mean(lat[True]))
        acc_e, acc_f = correct[False] / n, correct[True] / n
        return {
            "device": device,
            "thresholds": list(model.thresholds),
            "early_mean_us": round(early, 1),
            "early_p99_us": round(float(np.percentile(lat[False], 99)), 1),
            "all_mean_us": round(full, 1),
            "all_p99_us": round(float(np.percentile(lat[True], 99)), 1),
            "early_accuracy": round(acc_e, 4),
            "all_accuracy": round(acc_f, 4),
            "speedup": round(full / early, 2),
            "accuracy_drop_pp": round(100 * (acc_f - acc_e), 2),
            "exit_histogram": np.bincount(exits, minlength=3).tolist(),
            "target_met": full / early >= 2 and 100 * (acc_f - acc_e) <= 1,
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="passes over the test set (default 3)")
    ap.add_argument("--threads", type=int, default=1, help="inference threads (default 1)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    data = np.load(BUNDLE / "test.npz")
    x, y = data["x"].astype(np.float32), data["y"]
    rows = [run(d, x, y, args.repeat, args.threads) for d in ("litert:cpu", "openvino:CPU")]
    ok = all(r["target_met"] for r in rows)
    if args.json:
        print(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%d"),
                    "machine": platform.processor() or platform.machine(),
                    "samples": len(y),
                    "repeat": args.repeat,
                    "results": rows,
                    "all_targets_met": ok,
                },
                indent=2,
            )
        )
        return 0 if ok else 1
    print(
        f"early exit vs all stages ({time.strftime('%Y-%m-%d')}, {platform.machine()}, {len(y)} test samples x "
        f"{args.repeat}, {args.threads} thread, end to end through classify)\n"
    )
    print(
        f"{'device':14s} {'early mean':>10s} {'all mean':>9s} {'speedup':>8s} {'early acc':>9s} {'all acc':>8s} "
        f"{'drop pp':>7s}  exits 0/1/2"
    )
    for r in rows:
        print(
            f"{r['device']:14s} {r['early_mean_us']:10.1f} {r['all_mean_us']:9.1f} {r['speedup']:7.2f}x "
            f"{100 * r['early_accuracy']:8.2f}% {100 * r['all_accuracy']:7.2f}% {r['accuracy_drop_pp']:7.2f}  "
            f"{'/'.join(map(str, r['exit_histogram']))}"
        )
    print(f"\ntarget (>= 2x, <= 1 pp lower accuracy, both backends): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
