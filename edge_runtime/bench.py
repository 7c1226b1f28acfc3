"""Latency measurement shared by ``edge-runtime bench`` and the scripts under ``scripts/``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ArgumentError


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency in microseconds over ``runs`` timed calls."""

    runs: int
    min_us: float
    p50_us: float
    p90_us: float
    p99_us: float
    mean_us: float
    total_s: float
    #: True when the timed loop was stopped by Ctrl-C: the figures cover ``runs`` calls only.
    interrupted: bool = False

    @property
    def throughput(self) -> float:
        """Calls per second over the timed loop (back to back, one at a time)."""
        return self.runs / self.total_s if self.total_s > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "min_us": round(self.min_us, 2),
            "p50_us": round(self.p50_us, 2),
            "p90_us": round(self.p90_us, 2),
            "p99_us": round(self.p99_us, 2),
            "mean_us": round(self.mean_us, 2),
            "throughput_per_s": round(self.throughput, 1),
        }


def stats(samples_ns: np.ndarray[Any, np.dtype[np.int64]], total_s: float, interrupted: bool = False) -> LatencyStats:
    """Latency statistics of ``samples_ns`` (one per call, nanoseconds); all zero when empty."""
    if not len(samples_ns):
        return LatencyStats(0, 0.0, 0.0, 0.0, 0.0, 0.0, total_s, interrupted)
    us = samples_ns.astype(np.float64) / 1e3
    p50, p90, p99 = np.percentile(us, [50, 90, 99])
    return LatencyStats(
        len(us), float(us.min()), float(p50), float(p90), float(p99), float(us.mean()), total_s, interrupted
    )


def measure(
    fn: Callable[[], object],
    runs: int,
    warmup: int = 10,
    progress: Callable[[int, int], None] | None = None,
    *,
    partial: bool = False,
) -> LatencyStats:
    """Call ``fn`` ``warmup`` times untimed, then ``runs`` times, timing each call.

    ``progress(done, runs)`` is called about once a second during the timed loop.
    The sample buffer is allocated before the loop, so timing adds no allocation.
    ``partial``: on Ctrl-C (``KeyboardInterrupt``) return the statistics of the calls
    timed so far, marked ``interrupted``, instead of raising.
    """
    if runs < 1:
        raise ArgumentError(f"runs must be at least 1, got {runs}")
    try:
        return _measure(fn, runs, warmup, progress)
    except _Interrupted as stop:
        if not partial:
            raise KeyboardInterrupt from None
        return stats(stop.samples, stop.total_s, interrupted=True)


class _Interrupted(Exception):
    def __init__(self, samples: np.ndarray[Any, np.dtype[np.int64]], total_s: float) -> None:
        self.samples, self.total_s = samples, total_s


def _measure(
    fn: Callable[[], object], runs: int, warmup: int, progress: Callable[[int, int], None] | None
) -> LatencyStats:
    samples = np.empty(runs, dtype=np.int64)
    clock = time.perf_counter_ns
    start = clock()
    done = 0
    try:
        for _ in range(warmup):
            fn()
        start = clock()
        next_report = start + 1_000_000_000
        for i in range(runs):
            t0 = clock()
            fn()
            t1 = clock()
            samples[i] = t1 - t0
            done = i + 1
            if progress is not None and t1 >= next_report:
                progress(i + 1, runs)
                next_report = t1 + 1_000_000_000
    except KeyboardInterrupt:
        raise _Interrupted(samples[:done], (clock() - start) / 1e9) from None
    return stats(samples, (clock() - start) / 1e9)
