#!/usr/bin/env python3
"""Write edge_runtime/data/basicmotions_recording.csv (packaged for ``edge-runtime demo``; models/ has a
symlink to it): BasicMotions' 40 TEST cases as one IMU recording.

The streaming demo needs a real sensor recording. This one is aeon's bundled BasicMotions
data set (smart-watch IMU, 10 Hz, 100 samples per case), TEST split: the same 40 cases
models/basicmotions_int8.tflite was evaluated on. The cases are concatenated in a seeded
shuffled order into one continuous 10 Hz stream, raw (un-normalised) values as aeon gives
them, written exactly (shortest repr of aeon's float64 values, which reproduces the .ts file).

    timestamp_us,accel_x,accel_y,accel_z,gyro_x,gyro_y,gyro_z,label
    0,...,walking

timestamp_us starts at 0 and steps by 100000 (10 Hz); label is the class of the case the
row belongs to. Each case is exactly 100 rows, so windows of 100 with a hop of 100 line up
with one case each. Nothing is downloaded: aeon ships the data set.

    pip install -r scripts/requirements-train.txt   # aeon
    python scripts/build_recording.py
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# Package data of edge_runtime (the demo runs from any directory); models/ holds symlinks to both.
DEFAULT_OUT = ROOT / "edge_runtime" / "data" / "basicmotions_recording.csv"
DEFAULT_SIDECAR = ROOT / "edge_runtime" / "data" / "basicmotions_int8.json"
DEFAULT_SEED = 20261121
INTERVAL_US = 100_000  # 10 Hz
CASE_LENGTH = 100
TEST_FILE = "BasicMotions_TEST.ts"


def load_test_split(sidecar: dict[str, Any]) -> tuple[np.ndarray, list[str]]:
    """aeon's BasicMotions TEST split as (cases, time, channels) float64 and the class names.

    Refuses data that is not the file the shipped model was evaluated on (sidecar sha256).
    """
    try:
        import aeon
        from aeon.datasets import load_basic_motions
    except ImportError as exc:  # pragma: no cover - reported to the user
        raise SystemExit("aeon is required: pip install -r scripts/requirements-train.txt") from exc

    data_file = Path(aeon.__file__).parent / "datasets" / "data" / "BasicMotions" / TEST_FILE
    expected = sidecar["data_source"]["files_sha256"][TEST_FILE]
    actual = hashlib.sha256(data_file.read_bytes()).hexdigest()
    if actual != expected:
        raise SystemExit(f"{data_file} has sha256 {actual}, the model was evaluated on {expected}")

    x, y = load_basic_motions(split="test")  # bundled .ts file: no network access
    x = np.transpose(np.asarray(x, dtype=np.float64), (0, 2, 1))  # (cases, channels, time) -> (cases, time, channels)
    labels = [str(v) for v in y]
    channels = sidecar["preprocessing"]["channels"]
    if x.shape[1:] != (CASE_LENGTH, len(channels)):
        raise SystemExit(f"expected cases of {CASE_LENGTH} x {len(channels)}, aeon gave {x.shape[1:]}")
    unknown = set(labels) - set(sidecar["labels"])
    if unknown:
        raise SystemExit(f"classes {sorted(unknown)} are not among the model's labels {sidecar['labels']}")
    return x, labels


def write_recording(path: Path, x: np.ndarray, labels: list[str], order: np.ndarray, channels: list[str]) -> int:
    """Write the cases in `order` as one recording; return the number of rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    row = 0
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["timestamp_us", *channels, "label"])
        for case in order:
            for sample in x[case]:
                # repr of a Python float: the shortest text that reads back as the same float64.
                writer.writerow([row * INTERVAL_US, *(repr(float(v)) for v in sample), labels[case]])
                row += 1
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Concatenate the 40 TEST cases of aeon's bundled BasicMotions data set, in a seeded shuffled "
            "order, into one 10 Hz IMU recording (CSV: timestamp_us, accel_x..gyro_z raw, label) for the "
            "streaming demo. Needs aeon (scripts/requirements-train.txt); downloads nothing."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="CSV file to write")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the case order")
    parser.add_argument(
        "--sidecar",
        type=Path,
        default=DEFAULT_SIDECAR,
        help="model JSON sidecar giving the channel order, labels and the data file's sha256",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sidecar = json.loads(args.sidecar.read_text())
    channels: list[str] = sidecar["preprocessing"]["channels"]
    x, labels = load_test_split(sidecar)
    order = np.random.default_rng(args.seed).permutation(len(labels))
    rows = write_recording(args.out, x, labels, order, channels)

    per_class = Counter(labels[i] for i in order)
    print(f"wrote {args.out}")
    print(f"  rows: {rows} ({len(order)} cases x {CASE_LENGTH}, {rows * INTERVAL_US / 1e6:g} s at 10 Hz)")
    print(f"  columns: timestamp_us, {', '.join(channels)}, label")
    print("  cases per class: " + ", ".join(f"{name} {per_class[name]}" for name in sidecar["labels"]))
    print(f"  case order (seed {args.seed}, indices into aeon's TEST split): " + " ".join(map(str, order)))
    print(f"  size: {args.out.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
