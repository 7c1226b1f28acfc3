"""Dynamic batching across streams: single windows from several sources, run as one batch.

``DynamicBatcher(path, device, max_batch=4, max_wait_us=1000)`` loads the model once per
batch size it may run (1, 2, 4, ... up to ``max_batch``: every input's and output's first
dimension that size, ``load(..., batch=B)``) on one device, and takes single samples from
any number of threads (one per sensor stream) through ``submit(x) -> Future``. One
dispatcher thread gathers them:

- **Batch formation.** The oldest waiting sample opens a batch; the batch runs when it holds
  ``max_batch`` samples or when that oldest sample has waited ``max_wait_us`` microseconds,
  whichever comes first (Triton's ``max_queue_delay_microseconds``). Samples already queued
  when a batch closes open the next one at once. A stream that stalls holds nothing back: the
  wait is counted from the oldest sample, whoever sent it.
- **Sizes and padding.** A batch of ``k`` samples runs on the smallest loaded size ``>= k``;
  the rows past ``k`` hold whatever the previous batch left there, and their outputs are
  dropped. Rows are written straight into the batched model's input tensor (one copy per
  sample: from the request's own array into its row).
- **Order.** Samples run in submission order and their futures settle in that order, so each
  stream's results arrive in its own order.
- **Errors stay with their request.** Inputs are checked and quantized at ``submit`` (an
  ``InputError`` there, as ``Model.submit``). When a batch fails in the backend, each of its
  samples runs again alone on the batch-1 model, so only a sample that fails by itself gets
  the ``InferenceError``.
- **Results.** ``submit`` resolves to what ``Model.infer`` of that one sample returns (float32
  arrays with a first dimension of 1, new and owned by the caller), bit-identical to the
  batch-1 model on LiteRT; ``submit_raw`` to the raw (quantized) arrays, ``submit_classify`` to
  a ``Classification``.

Batching pays where one call on ``B`` samples costs less than ``B`` calls: the per-call
overhead is shared and the backend's threads split the larger work. Measure it on the board
(``scripts/bench_throughput.py`` prints batched against unbatched rates); the daemon batches
only pipelines that set ``max_batch`` above 1 (``edge_runtime.daemon.batched``).
"""

from __future__ import annotations

import inspect
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from .errors import ArgumentError, EdgeRuntimeError, InferenceError, ModelClosedError, ModelLoadError
from .futures import default_workers
from .model import Model, check_batch, load_model
from .result import Classification, top_score
from .runner import Inputs
from .tensors import TensorSpec, dequantize

log = logging.getLogger("edge_runtime.batching")

T = TypeVar("T")
#: The keyword options ``load_model`` takes (a batcher passes them on; ``batch`` is its own).
_LOAD_OPTIONS = set(inspect.signature(load_model).parameters) - {"path", "device", "batch"}
#: The idle timer thread looks for work this often even when nobody woke it, seconds.
IDLE_LOOK_S = 0.5
Raw = list[npt.NDArray[Any]]
#: Turns one sample's raw outputs (views of the batch's rows, valid only during the call) into
#: the future's value; must copy what it keeps.
Finish = Callable[[Raw], Any]


def batch_sizes(max_batch: int) -> tuple[int, ...]:
    """The sizes a batcher loads: 1, the powers of two below ``max_batch``, and ``max_batch``."""
    check_batch(max_batch)
    sizes = {1, max_batch}
    b = 2
    while b < max_batch:
        sizes.add(b)
        b *= 2
    return tuple(sorted(sizes))


@dataclass
class BatchStats:
    """What a batcher ran so far (counters only grow)."""

    #: Samples taken by ``submit`` and settled (with a result or an error).
    samples: int = 0
    #: Batches run (a batch of one counts).
    batches: int = 0
    #: Rows computed and thrown away because a batch was smaller than the size it ran on.
    padded_rows: int = 0
    #: Batches that failed in the backend (their samples were then run one by one).
    failed_batches: int = 0
    #: Batches by how many samples they held.
    by_fill: Counter[int] = field(default_factory=Counter)

    @property
    def mean_batch(self) -> float:
        """Samples per batch, on average (0.0 before the first batch)."""
        return self.samples / self.batches if self.batches else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "batches": self.batches,
            "mean_batch": round(self.mean_batch, 3),
            "padded_rows": self.padded_rows,
            "failed_batches": self.failed_batches,
            "by_fill": {str(k): v for k, v in sorted(self.by_fill.items())},
        }


@dataclass
class _Request:
    arrays: Raw
    fut: Future[Any]
    finish: Finish
    t_ns: int


class DynamicBatcher:
    """Single samples from many threads, run in batches (see the module doc).

    ``path``, ``device`` and ``load_options`` (threads, cache_dir, performance_hint, ...) are
    ``load_model``'s; every size is loaded on the device the batch-1 model landed on.
    ``max_batch``: the largest batch (>= 1). ``max_wait_us``: how long the oldest waiting
    sample may wait for others, in microseconds (>= 0; 0 runs every sample at once, alone).
    ``sizes``: the batch sizes to load (default ``batch_sizes(max_batch)``; must hold 1 and
    ``max_batch``). ``workers``: how many batches may run at the same time, each on a model
    of its own (default: the cores divided by ``threads``, at least 1).

    Raises ``ModelLoadError`` when the model cannot take a batch size (its reason says why: a
    Reshape that hard-codes a batch of 1, for instance), ``ArgumentError`` for a bad option,
    and what ``load_model`` raises.
    """

    def __init__(
        self,
        path: str | Path,
        device: str | Sequence[str] = "auto",
        *,
        max_batch: int = 4,
        max_wait_us: float = 1000.0,
        sizes: Sequence[int] | None = None,
        workers: int | None = None,
        **load_options: Any,
    ) -> None:
        check_batch(max_batch, "max_batch")
        unknown = sorted(set(load_options) - _LOAD_OPTIONS)
        if unknown:
            raise ArgumentError(
                f"DynamicBatcher got unknown option(s) {', '.join(unknown)}; it takes max_batch, max_wait_us, sizes, "
                "workers and load_model's options"
            )
        if isinstance(max_wait_us, bool) or not isinstance(max_wait_us, (int, float)) or not max_wait_us >= 0:
            raise ArgumentError(f"max_wait_us must be a number of microseconds >= 0, got {max_wait_us!r}")
        chosen = tuple(sorted(set(sizes))) if sizes is not None else batch_sizes(max_batch)
        for b in chosen:
            check_batch(b, "each of sizes")
        if not chosen or chosen[0] != 1 or chosen[-1] != max_batch:
            raise ArgumentError(f"sizes must hold 1 and max_batch={max_batch}, got {list(chosen)}")
        threads = load_options.get("threads")
        if workers is None:
            workers = default_workers(threads if isinstance(threads, int) else None)
        check_batch(workers, "workers")
        if workers > 1:
            # Pinned, OpenVINO runs every model of the process on the same cores (measured: two
            # one-thread models in two threads at 0.87x of one); unpinned they share the cores.
            config = dict(load_options.get("openvino_config") or {})
            config.setdefault("ENABLE_CPU_PINNING", False)
            load_options = {**load_options, "openvino_config": config}
        self.max_batch = max_batch
        self.max_wait_us = float(max_wait_us)
        self.workers = workers
        self._wait_s = self.max_wait_us / 1e6
        self._all: list[Model] = []
        #: Per size: the models not running a batch now (``workers`` of each size).
        self._free: dict[int, queue.SimpleQueue[Model]] = {b: queue.SimpleQueue() for b in chosen}
        try:
            one = load_model(path, device, **load_options)
            self._all.append(one)
            self._free[1].put(one)
            for b in chosen:
                for _ in range(workers - (1 if b == 1 else 0)):
                    try:
                        m = load_model(path, one.device, batch=b, **load_options)
                    except ModelLoadError as exc:
                        if b == max_batch:
                            raise
                        raise ModelLoadError(
                            f"max_batch={max_batch}: the batcher also loads a batch of {b} (for batches that "
                            f"do not fill), and the model cannot take it: {exc.reason}",
                            path=exc.path,
                            attempts=exc.attempts,
                        ) from exc
                    self._all.append(m)
                    self._free[b].put(m)
        except BaseException:
            for m in self._all:
                m.close()
            raise
        #: The first batch-1 model: its ``inputs``/``outputs`` are one sample's.
        self.model = one
        self.sizes = chosen
        self.inputs: tuple[TensorSpec, ...] = one.inputs
        self.outputs: tuple[TensorSpec, ...] = one.outputs
        self.stats = BatchStats()
        self._lock = threading.Condition(threading.Lock())
        self._timer_idle = False  # the timer waits with no deadline: a new batch must wake it
        self._pending: list[_Request] = []
        self._deadline = 0.0  # monotonic seconds: when the oldest pending sample's wait ends
        self._taken = 0  # batches taken (each gets the next number)
        self._settled = 0  # batches settled, in the order they were taken
        self._order = threading.Condition()
        self._closed = False
        self._timer = threading.Thread(target=self._time_out, name="edge_runtime-batcher", daemon=True)
        self._timer.start()

    # -- the caller's side --------------------------------------------------------------------
    @property
    def device(self) -> str:
        return self.model.device

    @property
    def backend(self) -> str:
        return self.model.backend

    def submit(self, x: Inputs) -> Future[list[npt.NDArray[np.float32]]]:
        """One sample (the batch-1 model's shapes); a future of what ``Model.infer`` returns."""
        outputs = self.outputs
        return self._submit(x, lambda raw: [dequantize(r, s) for r, s in zip(raw, outputs)])

    def submit_raw(self, x: Inputs) -> Future[list[npt.NDArray[Any]]]:
        """One sample; a future of its raw outputs (the model's dtypes, new arrays)."""
        return self._submit(x, lambda raw: [r.copy() for r in raw])

    def submit_classify(self, x: Inputs) -> Future[Classification]:
        """One sample; a future of its ``Classification`` (``stage_us``: submit to result, us)."""
        spec, labels = self.outputs[0], self.model.labels
        t0 = time.perf_counter_ns()

        def finish(raw: Raw) -> Classification:
            scores = dequantize(raw[0], spec).reshape(-1)
            return top_score(scores, labels, (time.perf_counter_ns() - t0) / 1e3)

        return self._submit(x, finish)

    def _submit(self, x: Inputs, finish: Finish) -> Future[Any]:
        """Queue one sample. The sample that fills a batch runs that batch on this thread (no
        hand-off to another thread: waking one costs as much as a small model's inference);
        a batch that does not fill in time is run by the timer thread."""
        if self._closed:
            raise self._closed_error()
        arrays = self.model._request_arrays(x)  # checked and quantized now, owned by the request
        fut: Future[Any] = Future()
        full: tuple[list[_Request], int] | None = None
        with self._lock:
            if self._closed:
                raise self._closed_error()
            pending = self._pending
            pending.append(_Request(arrays, fut, finish, time.perf_counter_ns()))
            if len(pending) >= self.max_batch or self._wait_s == 0:
                full = self._take()
            elif len(pending) == 1:
                self._deadline = time.monotonic() + self._wait_s
                if self._timer_idle:  # else it wakes by itself within max_wait_us and looks
                    self._lock.notify_all()  # (not notify: see _time_out)
        if full is not None:
            try:
                self._run(*full)  # settles its futures and passes the turn on, even when interrupted
            except BaseException:
                self._abandon(*full)  # interrupted before _run began: nothing may wait for this turn
                raise
        return fut

    def _take(self) -> tuple[list[_Request], int]:
        """The pending samples as one batch, and its number (call with the lock held)."""
        batch, self._pending = self._pending, []
        self._taken += 1
        return batch, self._taken

    def _closed_error(self) -> ModelClosedError:
        m = self.model
        return ModelClosedError("the batcher is closed", path=str(m.path), backend=m.backend, device=m.device)

    # -- running batches ----------------------------------------------------------------------
    def _time_out(self) -> None:
        """The timer thread: runs the pending batch when its oldest sample's wait is over.

        Waking a thread costs tens of microseconds here, as much as a small model's inference,
        so ``submit`` wakes the timer only when it sleeps with no deadline. Under load the timer
        stays armed instead: with nothing pending it waits one more ``max_wait_us`` before it
        sleeps for good, and a batch opened meanwhile is looked at when that wait ends (its
        deadline is no earlier)."""
        lock = self._lock
        armed = False
        while True:
            with lock:
                if not self._pending:
                    if self._closed:
                        return
                    if armed:
                        lock.wait(self._wait_s)  # linger: under load, the next batch is near
                        armed = False
                    else:
                        # A notify interrupted by Ctrl-C in the submitting thread can leave a stale
                        # waiter behind in the Condition, which then swallows the next notify: so
                        # every notify is notify_all, and the idle wait still looks again now and
                        # then (a lost wake-up costs at most IDLE_LOOK_S, not a hang).
                        self._timer_idle = True
                        lock.wait(IDLE_LOOK_S)
                        self._timer_idle = False
                    continue
                armed = True
                left = self._deadline - time.monotonic()
                if left > 0 and not self._closed:
                    lock.wait(left)
                    continue  # filled and taken meanwhile, or a new deadline: look again
                batch, number = self._take()
            self._run(batch, number)

    def _run(self, batch: list[_Request], number: int) -> None:
        """Run ``batch`` (the ``number``-th taken) on a free model of the smallest size that holds
        it, then settle its futures once every earlier batch is settled (so results keep the
        submission order). A thread never waits for its turn while it holds a model (no
        deadlock between batches waiting for models and for turns). Interrupted (Ctrl-C in the
        submitting thread), the batch's futures still settle, with an ``InferenceError``, the
        model goes back and the turn passes on: the batcher keeps working for what follows."""
        outcomes: list[tuple[Any, Exception | None]] | None = None
        failed = False
        try:
            outcomes, failed = self._compute(batch, self._size_for(len(batch)))
        finally:
            if outcomes is None:  # interrupted before the results were ready
                self._abandon(batch, number, "interrupted before this request's batch returned")
            else:
                self._settle(batch, number, outcomes, failed)

    def _size_for(self, k: int) -> int:
        """The smallest loaded batch size that holds ``k`` samples."""
        return next(b for b in self.sizes if b >= k)

    def _abandon(
        self, batch: list[_Request], number: int, reason: str = "interrupted before this request's batch ran"
    ) -> None:
        """Settle a batch whose thread was interrupted: each request gets an ``InferenceError``."""
        m = self.model
        stop = InferenceError(reason, path=str(m.path), backend=m.backend, device=m.device)
        self._settle(batch, number, [(None, stop)] * len(batch), failed=False)

    def _compute(self, batch: list[_Request], size: int) -> tuple[list[tuple[Any, Exception | None]], bool]:
        """Each request's value or error, and whether the batch as a whole failed."""
        model = self._free[size].get()  # blocks while every model of this size runs a batch
        try:
            outputs = _run_rows(model, [r.arrays for r in batch])
            # each finish copies out of the rows (views of the model's tensors)
            outcomes = [_outcome(r.finish, [out[row : row + 1] for out in outputs]) for row, r in enumerate(batch)]
            del outputs  # gone before the model runs again
        except Exception as exc:  # noqa: BLE001 - the batch failed: each sample runs alone below
            error: Exception | None = exc
        else:
            error = None
        finally:
            self._free[size].put(model)
        if error is None:
            return outcomes, False
        log.warning("edge_runtime: a batch of %d failed (%s); running its samples one by one", len(batch), error)
        return [self._alone(r) for r in batch], True

    def _settle(
        self,
        batch: list[_Request],
        number: int,
        outcomes: list[tuple[Any, Exception | None]],
        failed: bool,
    ) -> None:
        """Settle the batch's futures in turn (after batch ``number - 1``) and pass the turn on.
        A batch already settled is left alone."""
        with self._order:
            while self._settled < number - 1:
                self._order.wait()
            if self._settled >= number:
                return
            try:
                for r, (value, error) in zip(batch, outcomes):
                    if r.fut.done() or not r.fut.set_running_or_notify_cancel():  # cancelled meanwhile
                        continue
                    if error is not None:
                        r.fut.set_exception(_as_inference_error(error, self.model))
                    else:
                        r.fut.set_result(value)
                self._count(len(batch), self._size_for(len(batch)), failed=failed)
            finally:
                self._settled = max(self._settled, number)
                self._order.notify_all()

    def _alone(self, r: _Request) -> tuple[Any, Exception | None]:
        """Run one sample on a batch-1 model: its value, or its own error."""
        one = self._free[1].get()
        try:
            raw = one.infer_raw(r.arrays if len(r.arrays) > 1 else r.arrays[0])
        except Exception as exc:  # noqa: BLE001 - this sample's own failure
            return None, exc
        finally:
            self._free[1].put(one)
        return _outcome(r.finish, raw)

    def _count(self, k: int, size: int, *, failed: bool) -> None:
        s = self.stats
        s.samples += k
        s.batches += 1
        s.padded_rows += size - k
        s.failed_batches += failed
        s.by_fill[k] += 1

    # -- closing ------------------------------------------------------------------------------
    def close(self) -> None:
        """Run what was submitted, stop the timer thread, close every model. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._lock.notify_all()
        if self._timer is not threading.current_thread():
            self._timer.join()
        for m in self._all:
            m.close()

    def __enter__(self) -> DynamicBatcher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _run_rows(model: Model, samples: list[Raw]) -> Raw:
    """Write each sample into its row of ``model``'s input tensors, run once, and return views
    (or arrays) of the outputs, first dimension the model's batch."""
    session = model.session
    if session.capabilities.writable_inputs:
        for i in range(len(model.inputs)):
            view = session.input_buffer(i)
            for row, arrays in enumerate(samples):
                view[row] = arrays[i][0]  # the one copy: into the tensor's own row
            del view  # LiteRT refuses to invoke while a view of its tensors is alive
        session.invoke()
        return [session.output_view(i) for i in range(len(model.outputs))]
    staged = [np.zeros(s.shape, s.dtype) for s in model.inputs]
    for i, buf in enumerate(staged):
        for row, arrays in enumerate(samples):
            buf[row] = arrays[i][0]
    return session.run(staged)


def _outcome(finish: Finish, raw: Raw) -> tuple[Any, Exception | None]:
    try:
        return finish(raw), None
    except Exception as exc:  # noqa: BLE001 - belongs to its request
        return None, exc


def _as_inference_error(exc: Exception, model: Model) -> EdgeRuntimeError:
    if isinstance(exc, EdgeRuntimeError):
        return exc
    error = InferenceError(
        f"request failed: {type(exc).__name__}: {exc}", path=str(model.path), backend=model.backend, device=model.device
    )
    error.__cause__ = exc
    return error


__all__ = ["BatchStats", "DynamicBatcher", "batch_sizes"]
