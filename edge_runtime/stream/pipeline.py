"""source -> windows -> bounded queue -> preprocess into the input tensor -> model -> result.

Two threads: the reader (the source's ``run``: read, decode, window, copy the window
into a queue slot) and the caller's (take a slot, preprocess it straight into the
model's input tensor, invoke, make a ``StreamResult``). Copies of a window's data, in
order: the sensor bytes into the read buffer (``readv``), COBS decoding into the
decoder's frame buffer, the frame's samples into the ring (written twice, see
``window.py``), the window into a queue slot (so the reader can go on), and the
quantizing write into the input tensor. Nothing per frame allocates memory that grows
with the frame.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InputError
from ..model import Model
from ..tensors import dequantize
from .codec import Frame
from .preprocess import Preprocess, Preprocessor
from .queue import DROP_OLDEST, POLICIES, Slot, WindowQueue
from .sources import Source
from .window import SlidingWindow

log = logging.getLogger("edge_runtime.stream")

_LATENCY_RING = 1 << 16


@dataclass(frozen=True)
class StreamResult:
    """One window's result.

    ``timestamp_us``: sensor time of the window's last sample. ``latency_us``: from the
    moment the bytes completing the window's last frame were read to this result
    (queueing, preprocessing and inference included). ``invoke_us``: preprocessing
    plus the model call alone. ``queue_us``: how long the window waited in the queue.
    """

    stream_id: int
    window: int
    timestamp_us: int
    label_index: int
    label: str
    confidence: float
    scores: tuple[float, ...]
    latency_us: float
    invoke_us: float
    queue_us: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "stream": self.stream_id,
            "window": self.window,
            "timestamp_us": self.timestamp_us,
            "label": self.label,
            "label_index": self.label_index,
            "confidence": round(self.confidence, 4),
            "scores": [round(s, 4) for s in self.scores],
            "latency_us": round(self.latency_us, 1),
            "invoke_us": round(self.invoke_us, 1),
            "queue_us": round(self.queue_us, 1),
        }


@dataclass
class StreamStats:
    """What a stream did. Latencies in microseconds, over the last 65,536 results."""

    frames: int = 0
    windows: int = 0
    results: int = 0
    dropped: int = 0
    gaps_reset: int = 0
    format_mismatch: int = 0
    latency_p50_us: float = 0.0
    latency_p99_us: float = 0.0
    invoke_p50_us: float = 0.0
    source: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in vars(self).items()}


class Stream:
    """Run ``model`` on windows of ``source``.

    ``window``/``hop`` in samples (default: the input's time dimension, hop = window).
    ``preprocess``: what to do before quantization (default: nothing). ``queue_slots``
    and ``policy`` (``drop-oldest`` or ``block``) bound the queue between the threads;
    every drop is counted. ``labels`` name the output classes. ``stream_id``: take only
    that stream (default: every stream, each with its own windows). The first frame fixes
    the sample format (channels, dtype); frames of another format are skipped and counted
    in ``stats.format_mismatch``.
    """

    def __init__(
        self,
        model: Model,
        source: Source,
        *,
        window: int | None = None,
        hop: int | None = None,
        preprocess: Preprocess | None = None,
        queue_slots: int = 8,
        policy: str = DROP_OLDEST,
        labels: Sequence[str] | None = None,
        stream_id: int | None = None,
    ) -> None:
        spec = model.inputs[0]
        if len(model.inputs) != 1:
            raise InputError("streams feed single-input models", path=str(model.path))
        if window is None:
            if len(spec.shape) < 2:
                raise InputError(f"cannot infer a window size from input shape {spec.shape}: pass window=")
            window = spec.shape[1]
        for name, value in (("window", window), ("hop", hop if hop is not None else 1), ("queue", queue_slots)):
            if value < 1:
                raise InputError(f"{name} must be at least 1, got {value}")
        if policy not in POLICIES:
            raise InputError(f"unknown queue policy {policy!r}; expected one of {', '.join(POLICIES)}")
        self.model = model
        self.source = source
        self.window = window
        self.hop = hop if hop is not None else window
        self.preprocess = preprocess or Preprocess()
        self.labels = list(labels) if labels else None
        self.stream_id = stream_id
        self.queue_slots = queue_slots
        self.policy = policy
        self.stats = StreamStats()
        self._out_spec = model.outputs[0]
        self._latency = np.zeros(_LATENCY_RING, dtype=np.float64)
        self._invoke = np.zeros(_LATENCY_RING, dtype=np.float64)
        self._reset()

    def _reset(self) -> None:
        """Per-run state: every ``results()`` call starts from nothing."""
        self.stats = StreamStats()
        self._windows: dict[int, SlidingWindow] = {}
        self._last_seq: dict[int, int] = {}
        self._format: tuple[int, np.dtype[Any]] | None = None  # (channels, dtype), set by the first frame
        self._queue: WindowQueue | None = None
        self._pre: Preprocessor | None = None
        self._slot: Slot | None = None
        self._reader_error: BaseException | None = None

    # -- reader thread -------------------------------------------------------------
    def _on_frame(self, frame: Frame, arrival_ns: int) -> None:
        sid = frame.stream_id
        if self.stream_id is not None and sid != self.stream_id:
            return
        self.stats.frames += 1
        if self._format is None:
            self._start(frame)
        elif frame.channels != self._format[0] or frame.dtype != self._format[1]:
            # One model input, one preprocessing: a frame of another shape or type cannot join.
            if not self.stats.format_mismatch:
                log.warning(
                    "edge_runtime: stream %d sends %d x %s, the stream started as %d x %s: skipped",
                    sid,
                    frame.channels,
                    frame.dtype,
                    self._format[0],
                    self._format[1],
                )
            self.stats.format_mismatch += 1
            return
        win = self._windows.get(sid)
        if win is None:
            win = self._windows[sid] = SlidingWindow(self.window, self.hop, frame.channels, frame.dtype)
        last = self._last_seq.get(sid)
        if last is not None and frame.seq != (last + 1) & 0xFFFFFFFF:
            self.stats.gaps_reset += 1  # samples are missing: a window must not straddle the hole
            win.reset()
        self._last_seq[sid] = frame.seq
        queue = self._queue
        assert queue is not None
        for view, ts in win.push(frame.values(), frame.timestamp_us, frame.interval_us):
            self.stats.windows += 1
            while not queue.put(view, sid, win.windows - 1, ts, arrival_ns, timeout=0.1):
                if self._stop.is_set() or queue.closed:
                    return
            # Hand the GIL to the inference thread now, rather than when this thread next
            # blocks (sched_yield releases it; time.sleep(0) would also, but costs ~65 us of
            # timer slack here). Measured by scripts/bench_stream.py.
            os.sched_yield()

    def _start(self, frame: Frame) -> None:
        """The first frame fixes the format: make the preprocessor and the queue for it."""
        self._pre = Preprocessor(self.preprocess, self.window, frame.channels, self.model.inputs[0], frame.dtype)
        self._format = (frame.channels, frame.dtype)
        self._queue = WindowQueue(self.queue_slots, self.window, frame.channels, frame.dtype, self.policy)
        self._ready.set()

    def _reader(self) -> None:
        try:
            self.source.run(self._on_frame, self._stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread and re-raised there
            self._reader_error = exc
        finally:
            self._reader_done.set()
            self._ready.set()
            if self._queue is not None:
                self._queue.close()

    # -- caller's thread -----------------------------------------------------------
    def _fill(self, dst: npt.NDArray[Any]) -> None:
        slot, pre = self._slot, self._pre
        assert slot is not None and pre is not None
        pre(slot.data, dst)

    def _infer(self, slot: Slot) -> StreamResult:
        self._slot = slot
        t0 = time.perf_counter_ns()
        raw = self.model.infer_in_place(self._fill)[0]
        t1 = time.perf_counter_ns()
        scores = dequantize(raw, self._out_spec).reshape(-1)
        idx = int(np.argmax(scores))
        label = self.labels[idx] if self.labels and idx < len(self.labels) else str(idx)
        latency = (t1 - slot.arrival_ns) / 1e3
        invoke = (t1 - t0) / 1e3
        self.stats.dropped = self._queue.dropped if self._queue is not None else 0
        n = self.stats.results % _LATENCY_RING
        self._latency[n] = latency
        self._invoke[n] = invoke
        self.stats.results += 1
        return StreamResult(
            slot.stream_id,
            slot.seq,
            slot.timestamp_us,
            idx,
            label,
            float(scores[idx]),
            tuple(float(s) for s in scores),
            latency,
            invoke,
            (t0 - slot.queued_ns) / 1e3,
        )

    def results(
        self,
        *,
        max_results: int | None = None,
        duration_s: float | None = None,
        stop: threading.Event | None = None,
    ) -> Generator[StreamResult, None, None]:
        """Start the reader and yield results until the source ends, a limit is reached, ``stop`` is set,
        or the caller stops iterating. Windows still queued when ``stop`` is set are delivered first."""
        self._reset()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._reader_done = threading.Event()
        reader = threading.Thread(target=self._reader, name="edge_runtime-reader", daemon=True)
        deadline = None if duration_s is None else time.monotonic() + duration_s
        reader.start()
        try:
            while self._queue is None and not self._reader_done.is_set():
                self._ready.wait(0.1)
                if (deadline is not None and time.monotonic() > deadline) or (stop is not None and stop.is_set()):
                    return
            while self._queue is not None:
                if deadline is not None and time.monotonic() > deadline:
                    return
                if stop is not None and stop.is_set() and not self._stop.is_set():
                    self._stop.set()  # the reader ends; what is queued is still delivered
                slot = self._queue.get(timeout=0.1)
                if slot is None:
                    if self._reader_done.is_set() and not len(self._queue):
                        break
                    continue
                try:
                    result = self._infer(slot)
                finally:
                    self._queue.release(slot)
                yield result
                if max_results is not None and self.stats.results >= max_results:
                    return
        finally:
            self._stop.set()
            if self._queue is not None:
                self._queue.close()
            reader.join(timeout=5)
            self._finish_stats()
        if self._reader_error is not None:
            raise self._reader_error

    def run(self, on_result: Callable[[StreamResult], None] | None = None, **limits: Any) -> StreamStats:
        """Run to the end (see ``results``), calling ``on_result`` for each; return the stats."""
        for result in self.results(**limits):
            if on_result is not None:
                on_result(result)
        return self.stats

    def _finish_stats(self) -> None:
        st = self.stats
        st.dropped = self._queue.dropped if self._queue is not None else 0
        n = min(st.results, _LATENCY_RING)
        if n:
            st.latency_p50_us, st.latency_p99_us = (float(v) for v in np.percentile(self._latency[:n], [50, 99]))
            st.invoke_p50_us = float(np.median(self._invoke[:n]))
        st.source = self.source.stats.as_dict()
