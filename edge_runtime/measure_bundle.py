"""Measured device and thread choice for an early-exit bundle (``load(bundle, "auto:measure")``).

A bundle runs every stage on one device, and how many stages run depends on the input: the
cost that matters is the bundle's, not stage 0's. For each candidate setting (stage 0's
candidate devices x thread counts, as ``edge_runtime.measure.settings_for`` lists them) the
whole bundle is loaded and timed:

- **on representative data** when ``measure_data`` is given (an array of windows, first
  dimension the window count): ``classify`` over the windows in turn, so early exits happen
  as often as they do on that data; the figure is the mean cost of one window;
- **per stage** otherwise: every stage once, in order, on a fixed random input (the cost of a
  window that exits last: the upper bound of what ``classify`` costs).

The fastest setting is chosen by ``choose_fastest`` and cached in ``measure.json`` like a
model's decision, keyed by the sha256 of ``bundle.json`` and every stage file, the data's
sha256 (or "per stage"), the settings, the runtime versions, the CPU model and the options.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from . import measure
from .bundle import MANIFEST, Manifest
from .devices import DeviceRequest
from .errors import ArgumentError
from .measure import (
    MeasuredChoice,
    Setting,
    cache_fields,
    cache_key,
    conclude,
    cpu_model,
    default_cache_dir,
    default_thread_counts,
    lookup,
    runtime_versions,
    settings_for,
    time_settings,
)
from .model import candidates_for
from .model_file import read_model_file
from .tensors import random_tensor

#: Options of ``load`` that do not change what is timed (left out of the cache key).
_NOT_KEYED = {"threads", "labels", "devices", "openvino_plugins", "isolate", "trusted_keys", "release", "measure_cache"}


def bundle_sha256(manifest: Manifest) -> str:
    """sha256 over ``bundle.json`` and every stage file (their names and bytes), hex."""
    h = hashlib.sha256()
    files = [MANIFEST, *sorted({name for st in manifest.stages for name in (st.tflite, st.openvino) if name})]
    for name in files:
        path = manifest.path / name
        h.update(name.encode() + b"\0")
        h.update(path.read_bytes())
        if path.suffix == ".xml" and path.with_suffix(".bin").is_file():
            h.update(path.with_suffix(".bin").read_bytes())
    return h.hexdigest()


def data_sha256(data: npt.NDArray[Any]) -> str:
    """sha256 of an array's dtype, shape and bytes, hex."""
    h = hashlib.sha256(f"{data.dtype.str}{data.shape}".encode())
    h.update(np.ascontiguousarray(data).tobytes())
    return h.hexdigest()


def measure_bundle(
    manifest: Manifest,
    requests: Sequence[DeviceRequest],
    options: dict[str, Any],
    data: Any = None,
    *,
    labels: Sequence[str] | None = None,
    budget_s: float | None = None,
) -> MeasuredChoice:
    """Time the bundle on every candidate setting (see the module doc); the table and the fastest.

    ``requests``: the device requests as parsed; ``:measure`` in any of them times every
    candidate, else (``threads="auto"``) only thread counts on the first. ``options``: the
    options ``load_bundle`` got (``threads``: a whole number fixes the count; ``measure_cache``:
    the cache directory). ``data``: representative windows, or None for the per-stage figure.
    Raises ``DeviceUnavailableError`` when no requested device can run stage 0, ``ModelLoadError``
    when no setting could be measured, ``ArgumentError`` for data that is not an array of windows.
    """
    from .early_exit import load_bundle  # early_exit imports this module lazily; no cycle

    windows = None if data is None else np.asarray(data)
    if windows is not None and (windows.ndim < 2 or len(windows) == 0):
        raise ArgumentError(
            f"measure_data must be an array of windows (first dimension: how many), got shape {windows.shape}",
            path=str(manifest.path),
        )
    first = manifest.stages[0]
    file0 = first.tflite or first.openvino
    assert file0 is not None
    source = read_model_file(manifest.path / file0)
    selection = candidates_for(
        source, requests, options.get("devices"), options.get("openvino_plugins"), "bundle", str(manifest.path)
    )
    measure_all = any(r.measure for r in requests)
    pool = selection.candidates if measure_all else selection.candidates[:1]
    threads = options.get("threads")
    fixed = isinstance(threads, int) and not isinstance(threads, bool)
    counts: tuple[int, ...] = (threads,) if isinstance(threads, int) and fixed else default_thread_counts()
    settings = settings_for(pool, counts, default_threads=not fixed)
    keyed = {k: v for k, v in options.items() if k not in _NOT_KEYED}
    keyed["bundle_timing"] = data_sha256(windows) if windows is not None else "per stage"
    fields = cache_fields(
        bundle_sha256(manifest),
        settings,
        runtime_versions([c.device.backend for c in pool]),
        cpu_model(),
        keyed,
    )
    key = cache_key(fields)
    cache_dir = Path(options["measure_cache"]) if options.get("measure_cache") else default_cache_dir()
    if (hit := lookup(cache_dir, key)) is not None:
        return hit
    load_options = {k: v for k, v in options.items() if k not in ("threads", "measure_cache", "isolate")}

    def open_setting(s: Setting) -> tuple[Callable[[], object], Callable[[], None]]:
        bundle = load_bundle(manifest.path, s.request, labels=labels, threads=s.threads, **load_options)
        if windows is not None:
            shape = bundle.inputs[0].shape
            rows = windows if windows.shape[1:] == shape else windows[:, None]  # one window per row
            if rows.shape[1:] != shape:
                bundle.close()
                raise ArgumentError(
                    f"measure_data windows have shape {windows.shape[1:]}; the bundle takes {shape}",
                    path=str(manifest.path),
                )
            order = itertools.cycle(range(len(rows)))
            return (lambda: bundle.classify(rows[next(order)])), bundle.close
        xs = [random_tensor(st.inputs[0], seed=0) for st in bundle.stages]
        stages = bundle.stages

        def every_stage() -> None:
            for st, x in zip(stages, xs):
                st.infer_raw(x)

        return every_stage, bundle.close

    start = time.perf_counter()
    table = time_settings(settings, open_setting, budget_s=measure.BUDGET_S if budget_s is None else budget_s)
    return conclude(table, fields, cache_dir, started=start, path=str(manifest.path))


__all__ = ["bundle_sha256", "data_sha256", "measure_bundle"]
