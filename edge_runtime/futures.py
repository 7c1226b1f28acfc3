"""Asynchronous execution: the request pools behind ``runner.submit(x) -> Future``.

A pool runs requests on a session's workers and settles one ``concurrent.futures.Future``
per request. Every pool keeps the same promises:

- **Ownership.** ``submit`` takes arrays the request owns (the runner made them at submit
  time: the caller may reuse its own input at once). Each result is new, owned by whoever
  reads the future.
- **Errors stay with their request.** A worker that fails settles that request's future
  with the package's ``InferenceError`` (an ``EdgeRuntimeError`` raised by a backend is
  kept as it is; anything else is wrapped, the original as ``__cause__``). Other requests
  are unaffected. Errors in the input itself are raised by ``submit``, not the future.
- **Back-pressure, not an unbounded queue.** At most ``max_in_flight`` requests are
  pending; ``submit`` blocks until one completes. Do not ``submit`` from a future's
  done-callback: the callback runs on a worker, which may be the one ``submit`` waits for.
- **Order.** Futures are returned in submission order; with several workers they may
  complete out of order. ``map_ordered`` yields results in submission order.
- **Callbacks.** A done-callback runs on a worker (OpenVINO: its callback thread): it must
  neither ``submit`` nor ``close`` (both may wait for that very worker).
- **Closing.** ``close()`` cancels requests not yet started (their futures raise
  ``CancelledError``), waits for those running, and releases the workers; a ``submit``
  afterwards raises ``ModelClosedError``. Idempotent.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

import numpy.typing as npt

from .errors import ArgumentError, EdgeRuntimeError, InferenceError, ModelClosedError

if TYPE_CHECKING:
    from .runner import Inputs, Runner

T = TypeVar("T")

#: A request's input arrays, one per model input, in the model's dtypes and shapes.
Arrays = list[npt.NDArray[Any]]
#: Runs one request on one worker's own interpreter: arrays in, raw result out.
RunFn = Callable[[Arrays], Any]


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask; else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_workers(threads: int | None) -> int:
    """Workers for a CPU pool: the cores divided by each worker's thread count (at least 1)."""
    return max(1, available_cores() // max(1, threads or 1))


class RequestPool(ABC):
    """Runs requests on a session's workers; one future per request (see the module doc)."""

    #: How many requests can run at the same time.
    workers: int
    #: True when requests run in parallel (several interpreters or infer requests); False for a
    #: one-worker pool on the session's own interpreter (asynchronous, not parallel).
    parallel: bool

    def __init__(self, workers: int, max_in_flight: int, *, path: str, backend: str, device: str) -> None:
        self.workers = workers
        self.max_in_flight = max_in_flight
        self._where = {"path": path, "backend": backend, "device": device}
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._lock = threading.Lock()
        self._closed = False
        self._pending: set[Future[Any]] = set()

    def submit(self, arrays: Arrays, finish: Callable[[Any], T]) -> Future[T]:
        """Queue one request; ``finish`` turns the raw result into the future's value (it runs on
        the worker). Blocks while ``max_in_flight`` requests are pending."""
        if self._closed:
            raise self.closed_error()
        self._slots.acquire()
        fut: Future[T] = Future()
        with self._lock:
            if self._closed:
                self._slots.release()
                raise self.closed_error()
            self._pending.add(fut)
        fut.add_done_callback(self._release)  # also on cancel: the slot always comes back
        try:
            self._start(fut, arrays, finish)
        except Exception as exc:  # noqa: BLE001 - the request could not be queued: its future says why
            failure = exc
            if not fut.done():
                self.settle(fut, lambda: _raise(failure))
        return fut

    def _release(self, fut: Future[Any]) -> None:
        with self._lock:
            self._pending.discard(fut)
        self._slots.release()

    @abstractmethod
    def _start(self, fut: Future[T], arrays: Arrays, finish: Callable[[Any], T]) -> None:
        """Hand the request to a worker, which settles ``fut`` (with ``settle``)."""

    @abstractmethod
    def _shutdown(self) -> None:
        """Stop taking work, drop what has not started, wait for what runs, release the workers."""

    def settle(self, fut: Future[T], work: Callable[[], T]) -> None:
        """Run ``work`` and put its value or its error (as an ``InferenceError``) into ``fut``.
        Does nothing when ``fut`` was cancelled before it started."""
        if not fut.set_running_or_notify_cancel():
            return
        try:
            value = work()
        except EdgeRuntimeError as exc:
            fut.set_exception(exc)
        except Exception as exc:  # noqa: BLE001 - a worker's failure belongs to its own request
            error = self.error(f"request failed: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            fut.set_exception(error)
        else:
            fut.set_result(value)

    def error(self, reason: str) -> InferenceError:
        return InferenceError(reason, **self._where)

    def closed_error(self) -> ModelClosedError:
        return ModelClosedError("model is closed", **self._where)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Cancel what has not started, wait for what runs, release the workers. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._shutdown()
        with self._lock:
            left = list(self._pending)
        for fut in left:  # never started: cancelled; started but never settled: an error
            if not fut.cancel() and not fut.done():
                fut.set_exception(self.error("the pool was closed before this request returned a result"))


def _run_and_finish(run: RunFn, finish: Callable[[Any], T], arrays: Arrays) -> T:
    return finish(run(arrays))


def _raise(exc: Exception) -> Any:
    raise exc


class ThreadPool(RequestPool):
    """``workers`` threads, each owning one interpreter (``runners[i]``), taking requests in order
    from one queue: one interpreter is never used by two threads at once. For LiteRT (whose
    ``invoke`` releases the GIL, so interpreters run in parallel) and, with one worker on the
    session's own ``run``, for sessions that cannot run in parallel (isolated sessions, delegates,
    bundles). At most ``max_in_flight`` requests (default 2 x workers) are pending."""

    def __init__(
        self,
        runners: Sequence[RunFn],
        *,
        parallel: bool,
        max_in_flight: int | None = None,
        path: str,
        backend: str,
        device: str,
        name: str = "edge_runtime",
    ) -> None:
        n = len(runners)
        super().__init__(n, max_in_flight or 2 * n, path=path, backend=backend, device=device)
        self.parallel = parallel
        self._queue: queue.SimpleQueue[tuple[Future[Any], Arrays, Callable[[Any], Any]] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._worker, args=(run,), name=f"{name}-{i}", daemon=True)
            for i, run in enumerate(runners)
        ]
        for t in self._threads:
            t.start()

    def _start(self, fut: Future[T], arrays: Arrays, finish: Callable[[Any], T]) -> None:
        self._queue.put((fut, arrays, finish))

    def _worker(self, run: RunFn) -> None:
        """One thread: its own interpreter (``run``), one request at a time, until a ``None``."""
        while (item := self._queue.get()) is not None:
            fut, arrays, finish = item
            if self._closed:  # closing: what has not started is cancelled
                fut.cancel()
                continue
            self.settle(fut, functools.partial(_run_and_finish, run, finish, arrays))

    def _shutdown(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            if t is not threading.current_thread():  # close() from a done-callback: do not wait on itself
                t.join()
        self._threads = []


def serial_pool(run: RunFn, *, path: str, backend: str, device: str) -> ThreadPool:
    """A one-worker pool running ``run`` (a session's own ``run``): asynchronous, not parallel.

    ``run`` uses the session's own interpreter: do not call the runner's synchronous methods
    (``infer``, ``classify``...) while submitted requests are pending."""
    return ThreadPool([run], parallel=False, path=path, backend=backend, device=device, name="edge_runtime-serial")


def map_ordered(runner: Runner, inputs: Iterable[Inputs], *, in_flight: int = 4) -> Iterator[list[Any]]:
    """``runner.submit`` each input, at most ``in_flight`` pending at once, and yield each result
    (as ``runner.infer`` returns it) in input order. An error is raised when its result is
    reached; requests still pending then are left to finish (their results are dropped)."""
    if in_flight < 1:
        raise ArgumentError(f"in_flight must be a whole number >= 1, got {in_flight!r}")
    window: deque[Future[list[Any]]] = deque()
    for x in inputs:
        window.append(runner.submit(x))
        if len(window) >= in_flight:
            yield window.popleft().result()
    while window:
        yield window.popleft().result()
