"""Latency and throughput measurement shared by ``edge-runtime bench`` and the scripts under ``scripts/``.

- ``measure(fn, runs, seconds=...)``: latency mode, one call at a time, each call timed
  with ``time.perf_counter_ns`` around ``fn()`` alone (``Model.infer_raw`` in the CLI).
- ``measure_stream(submit, streams, ...)``: throughput mode, ``streams`` requests kept in
  flight from one submitting thread; per-request latency from ``submit`` to the result.
- ``timed(fn)``: one call and its wall time (the CLI's init time: ``load``; first
  inference: the first ``infer_raw``, before warm-up), as ``benchmark_model`` reports them.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

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


#: ``progress(done, elapsed_s)``: called about once a second during a timed loop.
Progress = Callable[[int, float], None]

_CHUNK = 1 << 16  # samples per buffer when the number of runs is not known (``seconds``)


def measure(
    fn: Callable[[], object],
    runs: int | None,
    warmup: int = 10,
    progress: Progress | None = None,
    *,
    partial: bool = False,
    seconds: float | None = None,
) -> LatencyStats:
    """Call ``fn`` ``warmup`` times untimed, then time each call until ``runs`` calls or
    ``seconds`` of timed loop, whichever comes first (at least one of them must be given).

    ``progress(done, elapsed_s)`` is called about once a second during the timed loop.
    Sample buffers are allocated before the loop (in chunks of 65536 when only ``seconds``
    bounds it), so timing adds no allocation per call.
    ``partial``: on Ctrl-C (``KeyboardInterrupt``) return the statistics of the calls
    timed so far, marked ``interrupted``, instead of raising.
    """
    if runs is None and seconds is None:
        raise ArgumentError("give runs or seconds")
    if runs is not None and runs < 1:
        raise ArgumentError(f"runs must be at least 1, got {runs}")
    if seconds is not None and not seconds > 0:
        raise ArgumentError(f"seconds must be > 0, got {seconds}")
    try:
        return _measure(fn, runs, seconds, warmup, progress)
    except _Interrupted as stop:
        if not partial:
            raise KeyboardInterrupt from None
        return stats(stop.samples, stop.total_s, interrupted=True)


class _Interrupted(Exception):
    def __init__(self, samples: np.ndarray[Any, np.dtype[np.int64]], total_s: float) -> None:
        self.samples, self.total_s = samples, total_s


def _measure(
    fn: Callable[[], object],
    runs: int | None,
    seconds: float | None,
    warmup: int,
    progress: Progress | None,
) -> LatencyStats:
    clock = time.perf_counter_ns
    full: list[np.ndarray[Any, np.dtype[np.int64]]] = []
    buf = np.empty(runs if runs is not None else _CHUNK, dtype=np.int64)
    limit = runs if runs is not None else -1
    n = done = 0
    start = clock()
    try:
        for _ in range(warmup):
            fn()
        start = clock()
        end = start + int(seconds * 1e9) if seconds is not None else None
        next_report = start + 1_000_000_000
        while done != limit:
            t0 = clock()
            fn()
            t1 = clock()
            if n == len(buf):
                full.append(buf)
                buf, n = np.empty(_CHUNK, dtype=np.int64), 0
            buf[n] = t1 - t0
            n += 1
            done += 1
            if progress is not None and t1 >= next_report:
                progress(done, (t1 - start) / 1e9)
                next_report = t1 + 1_000_000_000
            if end is not None and t1 >= end:
                break
    except KeyboardInterrupt:
        raise _Interrupted(_joined(full, buf, n), (clock() - start) / 1e9) from None
    return stats(_joined(full, buf, n), (clock() - start) / 1e9)


def _joined(
    full: list[np.ndarray[Any, np.dtype[np.int64]]], buf: np.ndarray[Any, np.dtype[np.int64]], n: int
) -> np.ndarray[Any, np.dtype[np.int64]]:
    return np.concatenate([*full, buf[:n]]) if full else buf[:n]


T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()`` and its wall time in milliseconds."""
    t0 = time.perf_counter_ns()
    out = fn()
    return out, (time.perf_counter_ns() - t0) / 1e6


@dataclass(frozen=True)
class StreamStats:
    """Throughput mode: ``streams`` requests kept in flight for the timed loop.

    ``latency``: per-request latency, from ``submit`` to the result being set (its ``runs``:
    requests completed); ``samples_per_request``: samples each request carries.
    """

    streams: int
    latency: LatencyStats
    samples_per_request: int = 1

    @property
    def requests_per_s(self) -> float:
        return self.latency.throughput

    @property
    def samples_per_s(self) -> float:
        return self.requests_per_s * self.samples_per_request

    @property
    def interrupted(self) -> bool:
        return self.latency.interrupted

    def to_dict(self) -> dict[str, Any]:
        d = self.latency.to_dict()
        del d["throughput_per_s"]
        return {
            "streams": self.streams,
            "requests": self.latency.runs,
            "samples": self.latency.runs * self.samples_per_request,
            "requests_per_s": round(self.requests_per_s, 1),
            "samples_per_s": round(self.samples_per_s, 1),
            "throughput_per_s": round(self.samples_per_s, 1),
            "total_s": round(self.latency.total_s, 4),
            **d,
        }


def measure_stream(
    submit: Callable[[], Future[Any]],
    streams: int,
    runs: int | None,
    warmup: int = 10,
    progress: Progress | None = None,
    *,
    partial: bool = False,
    seconds: float | None = None,
    samples_per_request: int = 1,
) -> StreamStats:
    """Keep ``streams`` requests in flight (``submit()`` returns a future), replacing each one
    as it completes (in submission order), until ``runs`` requests or ``seconds`` of timed loop,
    whichever first. ``warmup`` requests run first, untimed. Each request's latency is taken
    from just before ``submit`` to the moment its future is settled (a done-callback stamps it,
    so a request that finishes while the loop waits on an older one is not charged the wait).
    The rate is completed requests over the wall time from the first timed submit to the last
    result. ``partial``: on Ctrl-C, the requests completed so far (those in flight are waited
    for, not counted).
    """
    if runs is None and seconds is None:
        raise ArgumentError("give runs or seconds")
    if streams < 1:
        raise ArgumentError(f"streams must be at least 1, got {streams}")
    clock = time.perf_counter_ns
    window: deque[tuple[Future[Any], int, list[int]]] = deque()

    def send() -> None:
        stamp = [0]
        t0 = clock()
        fut = submit()
        fut.add_done_callback(lambda _f: stamp.__setitem__(0, clock()))
        window.append((fut, t0, stamp))

    def drain() -> None:
        while window:
            fut, _, _ = window.popleft()
            try:
                fut.result()
            except BaseException:  # noqa: BLE001 - settling only; a failure was already reported
                pass

    full: list[np.ndarray[Any, np.dtype[np.int64]]] = []
    buf = np.empty(runs if runs is not None else _CHUNK, dtype=np.int64)
    n = done = 0
    start = clock()
    try:
        for _ in range(warmup):
            send()
            if len(window) >= streams:
                window.popleft()[0].result()
        while window:
            window.popleft()[0].result()
        start = clock()
        end = start + int(seconds * 1e9) if seconds is not None else None
        next_report = start + 1_000_000_000
        sent = 0
        while sent < streams and (runs is None or sent < runs):
            send()
            sent += 1
        while window:
            fut, t0, stamp = window.popleft()
            fut.result()
            t1 = stamp[0] or clock()
            if n == len(buf):
                full.append(buf)
                buf, n = np.empty(_CHUNK, dtype=np.int64), 0
            buf[n] = t1 - t0
            n += 1
            done += 1
            now = clock()
            if progress is not None and now >= next_report:
                progress(done, (now - start) / 1e9)
                next_report = now + 1_000_000_000
            if (runs is None or sent < runs) and (end is None or now < end):
                send()
                sent += 1
        total_s = (clock() - start) / 1e9
    except KeyboardInterrupt:
        total_s = (clock() - start) / 1e9
        drain()
        if not partial:
            raise
        return StreamStats(streams, stats(_joined(full, buf, n), total_s, interrupted=True), samples_per_request)
    return StreamStats(streams, stats(_joined(full, buf, n), total_s), samples_per_request)
