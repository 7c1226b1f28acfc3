"""source -> windows -> bounded queue -> preprocess into the input tensor -> runner -> result.

Two threads: the reader (the source's ``run``: read, decode, window, copy the window
into a queue slot) and the caller's (take a slot, preprocess it straight into the
runner's input tensor, run, make a ``StreamResult``). Copies of a window's data, in
order: the sensor bytes into the read buffer (``readv``), COBS decoding into the
decoder's frame buffer, the frame's samples into the ring (written twice, see
``window.py``), the window into a queue slot (so the reader can go on), and the
quantizing write into the input tensor (for a bundle: stage 0's input tensor, then one
copy of the carried tensor per further stage that runs). Only the first output is read
back (dequantized into the result's scores). Nothing per frame allocates memory that
grows with the frame.
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

from ..errors import ArgumentError, InputError, StreamError
from ..result import Classification, label_for
from ..runner import Runner
from .codec import Frame
from .preprocess import Preprocess, Preprocessor
from .queue import DROP_OLDEST, POLICIES, Slot, WindowQueue
from .sources import Source
from .window import SlidingWindow

log = logging.getLogger("edge_runtime.stream")

_LATENCY_RING = 1 << 16


#: How long ``results()`` waits for the reader thread to stop when a run ends (seconds).
READER_STOP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class StreamResult:
    """One window's result.

    ``window_index``: the window's number in its stream (from 0). ``timestamp_us``: sensor
    time of the window's last sample. ``label``/``label_index``/``scores``/``confidence``/
    ``exit_index``/``cut_by_deadline``: the runner's ``Classification`` (``exit_index`` 0 for
    a plain model; ``confidence`` by the exit's own measure). ``latency_us``: from the moment
    the bytes completing the window's last frame were read to this result (queueing,
    preprocessing and inference included). ``invoke_us``: preprocessing plus the runner call
    alone. ``queue_us``: how long the window waited in the queue.
    """

    stream_id: int
    window_index: int
    timestamp_us: int
    label_index: int
    label: str
    confidence: float
    scores: tuple[float, ...]
    latency_us: float
    invoke_us: float
    queue_us: float = 0.0
    exit_index: int = 0
    cut_by_deadline: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON lines: the same keys as the attributes."""
        return {
            "stream_id": self.stream_id,
            "window_index": self.window_index,
            "timestamp_us": self.timestamp_us,
            "label": self.label,
            "label_index": self.label_index,
            "confidence": round(self.confidence, 4),
            "exit_index": self.exit_index,
            "cut_by_deadline": self.cut_by_deadline,
            "scores": [round(s, 4) for s in self.scores],
            "latency_us": round(self.latency_us, 1),
            "invoke_us": round(self.invoke_us, 1),
            "queue_us": round(self.queue_us, 1),
        }


@dataclass
class StreamStats:
    """What a stream did. Latencies in microseconds, over the last 65,536 results.

    ``exits``: results per exit index (one entry for a plain model). ``device_errors``: runner
    calls that raised and were handed to ``recover`` (see ``Stream``). ``swaps``: runners put
    in by ``swap`` or ``recover`` during this run. ``reader_stuck``: the reader thread did not
    stop within ``READER_STOP_TIMEOUT_S`` when the run ended.
    """

    frames: int = 0
    windows: int = 0
    results: int = 0
    dropped: int = 0
    gaps_reset: int = 0
    format_mismatch: int = 0
    latency_p50_us: float = 0.0
    latency_p99_us: float = 0.0
    invoke_p50_us: float = 0.0
    exits: list[int] = field(default_factory=list)
    device_errors: int = 0
    swaps: int = 0
    reader_stuck: bool = False
    source: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in vars(self).items()}


class _Run:
    """The state of one ``results()`` run. The reader thread holds this object, not the
    stream's, so a reader that outlives its run writes only into its own (closed) queue."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.reader_done = threading.Event()
        self.windows: dict[int, SlidingWindow] = {}
        self.last_seq: dict[int, int] = {}
        self.format: tuple[int, np.dtype[Any]] | None = None  # (channels, dtype), set by the first frame
        self.queue: WindowQueue | None = None
        self.pre: Preprocessor | None = None
        self.slot: Slot | None = None  # the window being inferred, read by ``fill``
        self.error: BaseException | None = None
        self.stats = StreamStats()
        self.fill = self._fill  # bound once: the per-window path makes no closure

    def _fill(self, dst: npt.NDArray[Any]) -> None:
        """Preprocess the current slot's window straight into the input tensor ``dst``."""
        pre, slot = self.pre, self.slot
        assert pre is not None and slot is not None
        pre(slot.data, dst)


#: What ``recover`` gets and returns: the error, the runner that raised; a runner to go on with, or None.
Recover = Callable[[BaseException, Runner], "Runner | None"]


class Swap:
    """A runner change asked of a running stream (``Stream.swap``). ``done`` is set once the
    stream has put the new runner in, between two windows; ``old`` is then the runner taken
    out, which the stream no longer uses and the caller now owns (and closes)."""

    def __init__(self, model: Runner, preprocess: Preprocess, labels: list[str] | None, deadline_ms: float | None):
        self.model, self.preprocess, self.labels, self.deadline_ms = model, preprocess, labels, deadline_ms
        self.done = threading.Event()
        self.old: Runner | None = None


class Stream:
    """Run ``runner`` (a model or a bundle) on windows of ``source``.

    ``window``/``hop``: sizes in samples (default: the input's time dimension, hop = window).
    ``preprocess``: what to do before quantization (default: nothing). ``queue_slots``
    and ``policy`` (``drop-oldest`` or ``block``) bound the queue between the threads;
    every drop is counted. ``labels`` name the output classes (default: the runner's).
    ``stream_id``: take only that stream (default: every stream, each with its own windows).
    ``deadline_ms``: passed to the runner (bundles skip a stage that would not fit).
    ``recover(error, runner)``: called on the inference thread when the runner raises (not for
    an ``InputError``/``ArgumentError``, which are the caller's mistakes): it returns a runner
    to go on with (the daemon loads the next device of its list), and the same window is run
    again on it, so no window is lost; None (or raising) ends the run with the error. The
    runner that raised is the callback's to close. ``swap()`` changes the runner of a running
    stream between two windows (a hot reload). The first frame fixes the sample format
    (channels, dtype); frames of another format are skipped and counted in
    ``stats.format_mismatch``. One ``results()`` at a time.
    """

    def __init__(
        self,
        model: Runner,
        source: Source,
        *,
        window: int | None = None,
        hop: int | None = None,
        preprocess: Preprocess | None = None,
        queue_slots: int = 8,
        policy: str = DROP_OLDEST,
        labels: Sequence[str] | None = None,
        stream_id: int | None = None,
        deadline_ms: float | None = None,
        recover: Recover | None = None,
    ) -> None:
        spec = model.inputs[0]
        if len(model.inputs) != 1:
            raise InputError("streams feed single-input models", path=str(model.path))
        if window is None:
            if len(spec.shape) < 2:
                raise ArgumentError(f"cannot infer a window size from input shape {spec.shape}: pass window=")
            window = spec.shape[1]
        for name, value in (("window", window), ("hop", hop if hop is not None else 1), ("queue_slots", queue_slots)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ArgumentError(f"{name} must be a whole number >= 1, got {value!r}")
        if hop is not None and hop > window:
            raise ArgumentError(
                f"hop {hop} is larger than the window {window}: samples between windows would be skipped"
            )
        if policy not in POLICIES:
            raise ArgumentError(f"unknown queue policy {policy!r}; expected one of {', '.join(POLICIES)}")
        self.model = model
        self.source = source
        self.window = window
        self.hop = hop if hop is not None else window
        self.preprocess = preprocess or Preprocess()
        self.labels = list(labels) if labels else (list(model.labels) if model.labels else None)
        classes = int(np.prod(model.outputs[0].shape))
        if labels and len(self.labels or ()) != classes:
            raise ArgumentError(f"{len(self.labels or ())} labels for a model with {classes} classes")
        self.stream_id = stream_id
        self.queue_slots = queue_slots
        self.policy = policy
        self.deadline_ms = deadline_ms
        self.recover = recover
        self._pending: Swap | None = None
        # Written now (np.full), not left to the first results: np.zeros' pages would join the
        # resident memory one by one over the first 65,536 results and look like a leak.
        self._latency = np.full(_LATENCY_RING, 0.0)
        self._invoke = np.full(_LATENCY_RING, 0.0)
        self._lock = threading.Lock()
        self._active = False
        self._stuck: threading.Thread | None = None
        self._run = _Run()
        # Checked now, not at the first frame: a window that cannot fill the input is the caller's mistake.
        if int(np.prod(spec.shape)) % window:
            raise ArgumentError(
                f"a window of {window} samples cannot fill input {spec.name!r} of shape {spec.shape} "
                f"({int(np.prod(spec.shape))} values are not a whole number of samples)"
            )

    @property
    def stats(self) -> StreamStats:
        """The counters of the current (or last) run."""
        return self._run.stats

    @property
    def queue_depth(self) -> int:
        """Windows waiting for inference now (0 before the first frame and after a run)."""
        q = self._run.queue
        return len(q) if q is not None else 0

    # -- changing the runner -------------------------------------------------------
    def swap(
        self,
        model: Runner,
        *,
        preprocess: Preprocess | None = None,
        labels: Sequence[str] | None = None,
        deadline_ms: float | None = None,
    ) -> Swap:
        """Put ``model`` in place of the current runner, between two windows: every window is run
        by exactly one runner, none is skipped or run twice. Returns a ``Swap`` whose ``done`` is
        set once it took effect (at once when no run is going on); ``Swap.old`` is then the
        caller's to close. ``preprocess``/``labels``/``deadline_ms`` replace the stream's (None:
        ``Preprocess()``, the new runner's labels, no deadline). The window must fill the new
        runner's input as it filled the old one's; otherwise ``ArgumentError`` and nothing changes.
        A swap asked before an earlier one took effect replaces it (the earlier one's runner is
        then handed back in its ``old``, unused)."""
        self._check_fits(model, labels)
        pre = preprocess or Preprocess()
        sw = Swap(model, pre, list(labels) if labels else (list(model.labels) if model.labels else None), deadline_ms)
        run = self._run
        if run.format is not None:  # fail here, on the caller's thread, rather than on the stream's
            Preprocessor(pre, self.window, run.format[0], model.inputs[0], run.format[1])
        with self._lock:
            earlier, self._pending = self._pending, sw
            if not self._active:
                self._apply(self._run)
        if earlier is not None:
            earlier.old = earlier.model
            earlier.done.set()
        return sw

    def _check_fits(self, model: Runner, labels: Sequence[str] | None) -> None:
        if len(model.inputs) != 1:
            raise ArgumentError("streams feed single-input models", path=str(model.path))
        new, old = model.inputs[0].shape, self.model.inputs[0].shape
        if int(np.prod(new)) != int(np.prod(old)):
            raise ArgumentError(f"the new runner's input {new} does not take this stream's windows (input {old})")
        classes = int(np.prod(model.outputs[0].shape))
        if labels and len(labels) != classes:
            raise ArgumentError(f"{len(labels)} labels for a model with {classes} classes")

    def _apply(self, run: _Run) -> None:
        """Put the pending swap in (on the inference thread, or under the lock when no run is on)."""
        sw, self._pending = self._pending, None
        if sw is None:
            return
        if run.format is not None:
            run.pre = Preprocessor(sw.preprocess, self.window, run.format[0], sw.model.inputs[0], run.format[1])
        sw.old, self.model = self.model, sw.model
        self.preprocess, self.labels, self.deadline_ms = sw.preprocess, sw.labels, sw.deadline_ms
        run.stats.swaps += 1
        sw.done.set()

    def abandon(self, timeout: float = READER_STOP_TIMEOUT_S) -> bool:
        """Give up the current run from another thread (its inference is hung): the reader stops and
        the queue closes, so the source can be handed to a new stream. Returns whether the
        reader stopped within ``timeout`` s. The hung call, if it ever returns, ends the run."""
        run = self._run
        run.stop.set()
        if run.queue is not None:
            run.queue.close()
        return run.reader_done.wait(timeout)

    # -- reader thread -------------------------------------------------------------
    def _on_frame(self, run: _Run, frame: Frame, arrival_ns: int) -> None:
        sid = frame.stream_id
        if self.stream_id is not None and sid != self.stream_id:
            return
        stats = run.stats
        stats.frames += 1
        if run.format is None:
            self._start(run, frame)
        elif frame.channels != run.format[0] or frame.dtype != run.format[1]:
            # One model input, one preprocessing: a frame of another shape or type cannot join.
            if not stats.format_mismatch:
                log.warning(
                    "edge_runtime: stream %d sends %d x %s, the stream started as %d x %s: skipped",
                    sid,
                    frame.channels,
                    frame.dtype,
                    run.format[0],
                    run.format[1],
                )
            stats.format_mismatch += 1
            return
        win = run.windows.get(sid)
        if win is None:
            win = run.windows[sid] = SlidingWindow(self.window, self.hop, frame.channels, frame.dtype)
        last = run.last_seq.get(sid)
        if last is not None and frame.seq != (last + 1) & 0xFFFFFFFF:
            stats.gaps_reset += 1  # samples are missing: a window must not straddle the hole
            win.reset()
        run.last_seq[sid] = frame.seq
        queue = run.queue
        assert queue is not None
        stopped = False

        def put(view: npt.NDArray[Any], ts: int) -> None:  # push writes every sample, then calls this per window
            nonlocal stopped
            if stopped:
                return
            stats.windows += 1
            while not queue.put(view, sid, win.windows - 1, ts, arrival_ns, timeout=0.1):
                if run.stop.is_set() or queue.closed:
                    stopped = True  # the run is over: the frame's later windows are not queued
                    return
            # Hand the GIL to the inference thread now, rather than when this thread next
            # blocks (sched_yield releases it; time.sleep(0) would also, but costs ~65 us of
            # timer slack here). Measured by scripts/bench_stream.py.
            os.sched_yield()

        win.push(frame.values(), frame.timestamp_us, frame.interval_us, on_window=put)

    def _start(self, run: _Run, frame: Frame) -> None:
        """The first frame fixes the format: make the preprocessor and the queue for it."""
        run.pre = Preprocessor(self.preprocess, self.window, frame.channels, self.model.inputs[0], frame.dtype)
        run.format = (frame.channels, frame.dtype)
        run.queue = WindowQueue(self.queue_slots, self.window, frame.channels, frame.dtype, self.policy)
        run.ready.set()

    def _reader(self, run: _Run) -> None:
        try:
            self.source.run(lambda frame, arrival: self._on_frame(run, frame, arrival), run.stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread and re-raised there
            run.error = exc
        finally:
            run.reader_done.set()
            run.ready.set()
            if run.queue is not None:
                run.queue.close()

    # -- caller's thread -----------------------------------------------------------
    def _infer(self, run: _Run, slot: Slot) -> StreamResult:
        run.slot = slot
        t0 = time.perf_counter_ns()
        try:
            c: Classification = self.model.classify_in_place(run.fill, deadline_ms=self.deadline_ms)
        except (ArgumentError, InputError):
            raise
        except Exception as exc:  # noqa: BLE001 - the device's trouble: handed to recover, or raised
            c = self._recover(run, exc)
        t1 = time.perf_counter_ns()
        latency = (t1 - slot.arrival_ns) / 1e3
        invoke = (t1 - t0) / 1e3
        stats = run.stats
        stats.dropped = run.queue.dropped if run.queue is not None else 0
        n = stats.results % _LATENCY_RING
        self._latency[n] = latency
        self._invoke[n] = invoke
        stats.results += 1
        while len(stats.exits) <= c.exit_index:
            stats.exits.append(0)
        stats.exits[c.exit_index] += 1
        label = label_for(c.label_index, self.labels) if self.labels is not None else c.label
        return StreamResult(
            slot.stream_id,
            slot.seq,
            slot.timestamp_us,
            c.label_index,
            label,
            c.confidence,
            tuple(float(s) for s in c.scores),
            latency,
            invoke,
            (t0 - slot.queued_ns) / 1e3,
            c.exit_index,
            c.cut_by_deadline,
        )

    def _recover(self, run: _Run, exc: Exception) -> Classification:
        """Hand a runner's error to ``recover`` and run the window again on what it returns."""
        while True:
            run.stats.device_errors += 1
            replacement = self.recover(exc, self.model) if self.recover is not None else None
            if replacement is None:
                raise exc
            self._check_fits(replacement, None)
            with self._lock:
                sw = Swap(replacement, self.preprocess, self.labels, self.deadline_ms)
                pending, self._pending = self._pending, sw
                self._apply(run)
                self._pending = pending  # a reload asked meanwhile still takes effect after this
            try:
                return self.model.classify_in_place(run.fill, deadline_ms=self.deadline_ms)
            except (ArgumentError, InputError):
                raise
            except Exception as again:  # noqa: BLE001 - the next device failed too: recover again
                exc = again

    def results(
        self,
        *,
        max_results: int | None = None,
        duration_s: float | None = None,
        stop: threading.Event | None = None,
        heartbeat: Callable[[], None] | None = None,
    ) -> Generator[StreamResult, None, None]:
        """Start the reader and yield results until the source ends, a limit is reached, ``stop`` is set,
        or the caller stops iterating. Windows still queued when ``stop`` is set are delivered first.

        ``heartbeat()`` is called by this loop at least every 0.1 s while it turns, data or not:
        proof that inference is not stuck (a silent sensor does not stop it; a hung backend
        does). The daemon's systemd watchdog is fed from it.

        One run at a time: a second ``results()`` while one is being consumed raises
        ``StreamError``, and so does a new run while the previous run's reader thread has
        not stopped (it is logged, and ``stats.reader_stuck`` set, when the run ends).
        """
        with self._lock:
            if self._active:
                raise StreamError("this stream's results() is already being consumed; one run at a time")
            if self._stuck is not None and self._stuck.is_alive():
                raise StreamError(
                    f"the reader thread of the previous run is still running (source {self.source.url}): "
                    "the source does not stop; make a new Stream with a new source"
                )
            self._active = True
        try:
            yield from self._results(max_results, duration_s, stop, heartbeat)
        finally:
            with self._lock:
                self._active = False

    def _results(
        self,
        max_results: int | None,
        duration_s: float | None,
        stop: threading.Event | None,
        heartbeat: Callable[[], None] | None = None,
    ) -> Generator[StreamResult, None, None]:
        run = self._run = _Run()
        reader = threading.Thread(target=self._reader, args=(run,), name="edge_runtime-reader", daemon=True)
        deadline = None if duration_s is None else time.monotonic() + duration_s
        reader.start()
        try:
            while run.queue is None and not run.reader_done.is_set():
                if self._pending is not None:
                    with self._lock:
                        self._apply(run)
                if heartbeat is not None:
                    heartbeat()
                run.ready.wait(0.1)
                if (deadline is not None and time.monotonic() > deadline) or (stop is not None and stop.is_set()):
                    return
            queue = run.queue
            while queue is not None:
                if deadline is not None and time.monotonic() > deadline:
                    return
                if stop is not None and stop.is_set() and not run.stop.is_set():
                    run.stop.set()  # the reader ends; what is queued is still delivered
                if self._pending is not None:
                    with self._lock:
                        self._apply(run)
                if heartbeat is not None:
                    heartbeat()
                slot = queue.get(timeout=0.1)
                if slot is None:
                    if run.reader_done.is_set() and not len(queue):
                        break
                    continue
                try:
                    result = self._infer(run, slot)
                finally:
                    queue.release(slot)
                yield result
                if max_results is not None and run.stats.results >= max_results:
                    return
        finally:
            run.stop.set()
            if run.queue is not None:
                run.queue.close()
            reader.join(timeout=READER_STOP_TIMEOUT_S)
            if reader.is_alive():
                self._stuck = reader
                run.stats.reader_stuck = True
                log.error(
                    "edge_runtime: the reader of %s did not stop within %.0f s; it is left behind, "
                    "writing only into this run's closed queue",
                    self.source.url,
                    READER_STOP_TIMEOUT_S,
                )
            self._finish_stats(run)
            with self._lock:
                self._apply(run)  # a swap asked as the run ended still takes effect
        if run.error is not None:
            raise run.error

    def run(self, on_result: Callable[[StreamResult], None] | None = None, **limits: Any) -> StreamStats:
        """Run to the end (see ``results``), calling ``on_result`` for each; return the stats."""
        for result in self.results(**limits):
            if on_result is not None:
                on_result(result)
        return self.stats

    def _finish_stats(self, run: _Run) -> None:
        st = run.stats
        st.dropped = run.queue.dropped if run.queue is not None else 0
        n = min(st.results, _LATENCY_RING)
        if n:
            st.latency_p50_us, st.latency_p99_us = (float(v) for v in np.percentile(self._latency[:n], [50, 99]))
            st.invoke_p50_us = float(np.median(self._invoke[:n]))
        st.source = self.source.stats.to_dict()
