"""Dynamic batching between the daemon's pipelines: one ``DynamicBatcher`` shared by every
pipeline whose model file, device list, threads, ``max_batch`` and ``max_wait_us`` are equal.

``Batchers`` (one per service) hands out ``BatchedRunner``\\ s: runner-like adapters that a
``Worker`` and its ``Stream`` use as they use a ``Model`` (``inputs``, ``outputs``, ``labels``,
``classify``, ``classify_in_place``, ``device``, ``describe``, ``close``...). Each adapter owns
one input buffer: ``classify_in_place`` lets the stream fill it, then submits it to the shared
batcher and waits for that window's result, so each pipeline's results keep their order.

A batcher counts the adapters using it; closing the last one closes the batcher (after it ran
what was submitted). So nothing else has to know about sharing: a reload loads a runner for
each pipeline beside the running one (same key: the same batcher, one user more; new keys: a
new batcher), the stream swaps, the old runner is closed (one user less); shutdown closes
every worker's runner. A device failure: the batcher runs a failed batch's windows one by one
(``DynamicBatcher``), and a window that fails alone goes to the pipeline's ``recover``, which
loads the next device of its list; the key holds the index of the device request, so every
pipeline of the batcher that fails over lands on one new batcher for the next device, and the
old batcher is closed when its last pipeline has left it.

Batching needs the pipelines on threads of one process (``pipelines_in``: ``threads`` or
``auto``); an isolated model and an early-exit bundle are not batched (``ConfigError``, see
``config._batching``). The service's ``loader`` is not used for batched pipelines: the batcher
loads with ``edge_runtime.model.load_model``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import ModelClosedError
from ..result import Classification
from ..tensors import TensorSpec
from .config import Pipeline

log = logging.getLogger("edge_runtime.daemon")

Fill = Callable[[npt.NDArray[Any]], None]


def batch_key(spec: Pipeline, index: int, threads: int | str | None) -> tuple[Any, ...]:
    """What pipelines must share to share a batcher: the model file as it is now, the device list
    and the index of the request tried, threads, batching keys, and the signed release."""
    from ..bundle import MANIFEST

    target = spec.model / MANIFEST if spec.model.is_dir() else spec.model
    try:
        st = target.stat()
        stamp: tuple[int, int] = (st.st_size, st.st_mtime_ns)
    except OSError:
        stamp = (-1, -1)
    return (
        str(spec.model.resolve()),
        stamp,
        spec.device,
        index,
        threads,
        spec.max_batch,
        spec.max_wait_us,
        spec.signed_digest,
        spec.trusted_keys,
    )


@dataclass
class Shared:
    """A batcher and the adapters using it."""

    key: tuple[Any, ...]
    batcher: Any  # DynamicBatcher
    #: The threads it runs with (resolved from ``"auto"`` when measured) and what measured them.
    threads: int | None
    measurement: Any = None
    users: int = 0
    warm: bool = False

    @property
    def closed(self) -> bool:
        return bool(self.batcher._closed)


class Batchers:
    """The batchers of one service, by key; thread-safe (a fallback loads on a pipeline's thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[tuple[Any, ...], Shared] = {}

    def open(
        self,
        spec: Pipeline,
        index: int,
        *,
        threads: int | str | None,
        cache_dir: Path | None,
        measure_cache: Path | None,
        openvino_config: dict[str, Any],
    ) -> BatchedRunner:
        """An adapter for ``spec`` on ``spec.device[index]``: on the batcher of its key, made now
        (loaded, not yet warm) when there is none. Raises what ``DynamicBatcher`` raises
        (``ModelLoadError`` for a model that cannot take the batch, with the reason)."""
        key = batch_key(spec, index, threads)
        with self._lock:
            shared = self._by_key.get(key)
            if shared is None or shared.closed:
                shared = self._by_key[key] = self._make(
                    spec, spec.device[index], key, threads, cache_dir, measure_cache, openvino_config
                )
            shared.users += 1
        return BatchedRunner(self, shared, spec.labels)

    @staticmethod
    def _make(
        spec: Pipeline,
        request: str,
        key: tuple[Any, ...],
        threads: int | str | None,
        cache_dir: Path | None,
        measure_cache: Path | None,
        openvino_config: dict[str, Any],
    ) -> Shared:
        from ..batching import DynamicBatcher
        from ..devices import parse_request
        from ..errors import ArgumentError, ModelLoadError
        from ..model import load_model

        if spec.model.is_dir():
            raise ModelLoadError(
                f"pipelines.{spec.name}: {spec.model} is an early-exit bundle, which runs one window at a time: "
                "it cannot be batched (max_batch = 1)",
                path=str(spec.model),
            )
        options: dict[str, Any] = {"cache_dir": cache_dir, "openvino_config": dict(openvino_config)}
        if spec.trusted_keys:
            options["trusted_keys"] = spec.trusted_keys
        if measure_cache is not None:
            options["measure_cache"] = measure_cache
        measurement = None
        device = request
        if threads == "auto" or parse_request(request).measure:
            # Measured on one sample (batch 1), cached; every batch size then loads on that choice.
            asked: Any = threads  # an int, "auto" or None (config._threads)
            with load_model(spec.model, request, threads=asked, **options) as m:
                measurement = m.selection.measurement
                device = m.device
                if measurement is not None:
                    threads = measurement.fastest.threads
                elif threads == "auto":
                    threads = None
        assert threads is None or isinstance(threads, int)
        try:
            batcher = DynamicBatcher(
                spec.model,
                device,
                max_batch=spec.max_batch,
                max_wait_us=spec.max_wait_us,
                threads=threads,
                **options,
            )
        except ArgumentError as exc:  # e.g. a model file that is not batchable in form
            raise ModelLoadError(f"cannot batch: {exc.reason}", path=str(spec.model)) from None
        except ModelLoadError as exc:  # the reason (a batch it cannot take) is in the attempts
            detail = "; ".join(a.split(": ", 1)[-1] for a in exc.attempts) if exc.attempts else ""
            raise ModelLoadError(
                f"batched (max_batch = {spec.max_batch}): {detail or exc.reason}", path=str(spec.model)
            ) from None
        log.info(
            "edge_runtime: pipeline %s: batching on %s: up to %d windows per batch, waiting up to %g us "
            "(sizes %s, %d at a time)",
            spec.name,
            batcher.device,
            spec.max_batch,
            spec.max_wait_us,
            list(batcher.sizes),
            batcher.workers,
        )
        return Shared(key, batcher, threads, measurement)

    def release(self, shared: Shared) -> None:
        """One adapter of ``shared`` closed: the last one closes the batcher."""
        with self._lock:
            shared.users -= 1
            last = shared.users <= 0
            if last and self._by_key.get(shared.key) is shared:
                del self._by_key[shared.key]
        if last:
            shared.batcher.close()

    def live(self) -> list[Shared]:
        """The batchers in use now."""
        with self._lock:
            return [s for s in self._by_key.values() if s.users > 0]


class BatchedRunner:
    """What a ``Worker`` and its ``Stream`` call, on a shared batcher (see the module doc)."""

    def __init__(self, owner: Batchers, shared: Shared, labels: tuple[str, ...] | None) -> None:
        b = shared.batcher
        self._owner, self.shared = owner, shared
        self.model = b.model  # the batch-1 Model: sidecar, release, selection
        self.path: Path = b.model.path
        self.backend: str = b.backend
        self.device: str = b.device
        self.inputs: tuple[TensorSpec, ...] = b.inputs
        self.outputs: tuple[TensorSpec, ...] = b.outputs
        self.labels: tuple[str, ...] | None = tuple(labels) if labels else b.model.labels
        self.attempts: tuple[str, ...] = b.model.attempts
        self.release = b.model.release
        self.selection = b.model.selection
        spec = self.inputs[0]
        self._buffer: npt.NDArray[Any] = np.zeros(spec.shape, spec.dtype)  # one window, filled in place
        self._closed = False

    @property
    def batcher(self) -> Any:
        return self.shared.batcher

    @property
    def threads(self) -> int | None:
        return self.shared.threads

    def warm(self) -> None:
        """Run the batcher's batch-1 model once on zeros, if nobody did yet (a new batcher: no
        window is submitted to it before its first pipeline starts)."""
        if not self.shared.warm:
            spec = self.inputs[0]
            self.model.classify(np.zeros(spec.shape, spec.dtype))
            self.shared.warm = True

    def _check(self) -> None:
        if self._closed:
            raise ModelClosedError("runner is closed", path=str(self.path), backend=self.backend, device=self.device)

    def submit_classify(self, x: Any) -> Future[Classification]:
        self._check()
        return self.batcher.submit_classify(x)  # type: ignore[no-any-return]

    def classify(self, x: Any, *, deadline_ms: float | None = None) -> Classification:
        """One window through the batcher; its result when its batch has run."""
        return self.submit_classify(x).result()

    def classify_in_place(self, fill: Fill, *, deadline_ms: float | None = None) -> Classification:
        """``fill`` writes the window (already quantized) into this adapter's buffer, which the
        batcher copies into a row of its batch at ``submit``; then wait for the result."""
        self._check()
        fill(self._buffer)
        return self.batcher.submit_classify(self._buffer).result()  # type: ignore[no-any-return]

    def describe(self) -> str:
        b = self.batcher
        return (
            f"{self.model.describe()}, batched: up to {b.max_batch} windows per batch, waiting up to "
            f"{b.max_wait_us:g} us"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**self.model.to_dict(), "max_batch": self.batcher.max_batch, "max_wait_us": self.batcher.max_wait_us}

    def close(self) -> None:
        """Let go of the batcher (the last adapter closes it). Safe to call twice."""
        if not self._closed:
            self._closed = True
            self._owner.release(self.shared)

    def __enter__(self) -> BatchedRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["BatchedRunner", "Batchers", "batch_key"]
