"""Measured device and thread choice: time each candidate on this machine, keep the fastest.

``auto`` ranks devices by kind (NPU/TPU, GPU, CPU) and LiteRT before OpenVINO for a
``.tflite``, with the backend's default threads. On a small CPU that ranking is often
wrong: OpenVINO beats LiteRT on some models, two threads beat one on others, and lose on
tiny ones. ``measure_candidates`` compiles the model on every candidate setting (device x
thread count), times ``Model.infer_raw`` on one fixed random input, and returns the table
and the fastest (``choose_fastest``: a pure function of the table).

The decision is cached in one JSON file (``measure.json`` under ``default_cache_dir()``,
or a directory the caller names: the daemon passes its state directory), keyed by the
model's sha256, the candidate settings, the backends' runtime versions and the CPU model:
a change in any of them misses. A corrupt cache file is logged as a warning, ignored and
rewritten; writes are atomic (a temporary file, then ``os.replace``).

Measurement compiles and runs the model in this process, also when ``load`` is asked to
isolate the model: measure only files you would run in-process.

Used by ``load_model`` for ``device="auto:measure"`` (and ``KIND:measure``), for
``threads="auto"``, and by plain ``auto``, which takes a cached decision when one exists.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .backends import OPENVINO, get_backend
from .device_info import cpuinfo_model_name
from .devices import Candidate, Selection
from .errors import BackendUnavailableError, EdgeRuntimeError, ModelLoadError
from .model_file import ModelSource, read_model_file
from .tensors import random_tensor

log = logging.getLogger("edge_runtime")

#: Cache file name inside the cache directory.
CACHE_FILE = "measure.json"
#: Bumped when the meaning of a cached entry changes: older entries then miss.
CACHE_VERSION = 1
#: At most this many decisions are kept in the cache file (the oldest are dropped).
CACHE_ENTRIES = 256
#: Default time for timing all settings together, seconds (compiles not counted).
BUDGET_S = 1.2
#: Default timed rounds per setting; the reported latency is the median of the round means.
ROUNDS = 5
#: Default untimed calls per setting before timing.
WARMUP = 3
#: Settings whose p50 is within this fraction of the fastest count as equally fast; among
#: them the one with fewest threads (then the earliest in ``auto``'s order) is chosen.
TOLERANCE = 0.03


@dataclass(frozen=True)
class Timing:
    """One measured setting: a device request, a thread count (None: the backend's default).

    ``p50_us``: median over rounds of the mean per-call latency, microseconds.
    ``spread``: (slowest round - fastest round) / ``p50_us``, a fraction (noise indicator).
    ``calls``: timed calls in all. ``error``: why the setting could not be measured (then
    the figures are 0).
    """

    request: str
    threads: int | None
    p50_us: float
    spread: float
    calls: int = 0
    error: str | None = None

    @property
    def label(self) -> str:
        """``openvino:CPU threads=2`` / ``openvino:CPU threads=default``."""
        return f"{self.request} threads={self.threads if self.threads is not None else 'default'}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "request": self.request,
            "threads": self.threads,
            "p50_us": round(self.p50_us, 2),
            "spread": round(self.spread, 4),
            "calls": self.calls,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Timing:
        threads = raw["threads"]
        if threads is not None and not isinstance(threads, int):
            raise TypeError(f"threads {threads!r}")
        return cls(
            str(raw["request"]),
            threads,
            float(raw["p50_us"]),
            float(raw["spread"]),
            int(raw.get("calls", 0)),
            None if raw.get("error") is None else str(raw["error"]),
        )


@dataclass(frozen=True)
class MeasuredChoice:
    """The table of measured settings (in ``auto``'s order) and the fastest of them.

    ``cached``: read from the cache file rather than measured now. ``measured_at``: when it
    was measured (ISO 8601, UTC). ``seconds``: wall time of the measurement (0 when cached).
    """

    table: tuple[Timing, ...]
    fastest: Timing
    key: str
    cached: bool = False
    measured_at: str = ""
    seconds: float = 0.0

    def summary(self, limit: int = 3) -> str:
        """``fastest of 5 measured: openvino:CPU threads=default, 108 us p50 (litert:cpu threads=1: 195 us, ...)``."""
        ok = [t for t in self.table if t.error is None]
        others = sorted((t for t in ok if t != self.fastest), key=lambda t: t.p50_us)
        rest = ", ".join(f"{t.label}: {t.p50_us:.0f} us" for t in others[:limit])
        if len(others) > limit:
            rest += ", ..."
        failed = len(self.table) - len(ok)
        tail = f"; {failed} failed" if failed else ""
        source = f"cached {self.measured_at}" if self.cached else f"{self.seconds:.1f} s"
        return (
            f"fastest of {len(ok)} measured: {self.fastest.label}, {self.fastest.p50_us:.0f} us p50"
            + (f" ({rest})" if rest else "")
            + tail
            + f" [{source}]"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "cached": self.cached,
            "measured_at": self.measured_at,
            "seconds": round(self.seconds, 3),
            "fastest": self.fastest.to_dict(),
            "table": [t.to_dict() for t in self.table],
        }


@dataclass(frozen=True)
class Setting:
    """One thing to time: a candidate device with a thread count (None: backend default)."""

    candidate: Candidate
    threads: int | None

    @property
    def request(self) -> str:
        return self.candidate.device.request


@dataclass
class _Counter:
    """Settings compiled by ``measure_candidates`` in this process (tests count compiles)."""

    compiles: int = 0
    history: list[str] = field(default_factory=list)


#: Compiles done for measurement so far (read by tests; never reset by the package).
COMPILES = _Counter()


def cpu_count() -> int:
    """CPUs this process may run on (its affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_thread_counts(cores: int | None = None) -> tuple[int, ...]:
    """``{1, 2, cores}`` capped at ``cores``, ascending."""
    n = cores if cores is not None else cpu_count()
    return tuple(sorted({t for t in (1, 2, n) if 1 <= t <= n}))


def settings_for(
    candidates: Sequence[Candidate], thread_counts: Sequence[int], *, default_threads: bool = True
) -> list[Setting]:
    """Every (candidate, threads) to time, in ``auto``'s order. Pure.

    CPU devices get every count in ``thread_counts``; an OpenVINO CPU device also its
    default (None: OpenVINO sizes its own thread pool) unless ``default_threads`` is False.
    Other devices (GPU, NPU, TPU, an
    external delegate) are timed once, with the backend's default threads.
    """
    out: list[Setting] = []
    for cand in candidates:
        if cand.device.kind != "cpu":
            counts: list[int | None] = [None]
        elif cand.device.backend == OPENVINO:
            counts = [None, *thread_counts] if default_threads else list(thread_counts)
        else:
            counts = list(thread_counts)
        for t in counts:
            if all(not (s.request == cand.device.request and s.threads == t) for s in out):
                out.append(Setting(cand, t))
    return out


def choose_fastest(table: Sequence[Timing], tolerance: float = TOLERANCE) -> Timing:
    """The setting to use: least ``p50_us`` among those measured without error. Pure.

    Settings within ``tolerance`` (a fraction) of the least count as ties; among ties the one
    with fewest threads wins (the default, None, counts as most), then the earliest in the
    table (``auto``'s order). Raises ``ModelLoadError`` when no setting was measured.
    """
    ok = [(i, t) for i, t in enumerate(table) if t.error is None and t.p50_us > 0]
    if not ok:
        raise ModelLoadError(
            "no candidate setting could be measured",
            attempts=[f"{t.label}: {t.error or 'no timing'}" for t in table],
        )
    best = min(t.p50_us for _, t in ok)
    ties = [(i, t) for i, t in ok if t.p50_us <= best * (1 + tolerance)]
    _, chosen = min(ties, key=lambda it: (it[1].threads if it[1].threads is not None else 1 << 30, it[0]))
    return chosen


# --- timing -----------------------------------------------------------------------------


def time_calls(fn: Callable[[], object], *, budget_s: float, rounds: int = ROUNDS, warmup: int = WARMUP) -> Timing:
    """Time ``fn`` alone within about ``budget_s`` seconds (see ``time_interleaved``)."""
    return time_interleaved([fn], budget_s=budget_s, rounds=rounds, warmup=warmup)[0]


def time_interleaved(
    fns: Sequence[Callable[[], object]], *, budget_s: float, rounds: int = ROUNDS, warmup: int = WARMUP
) -> list[Timing]:
    """Time each of ``fns`` within about ``budget_s`` seconds each, their rounds interleaved.

    Each gets ``warmup`` untimed calls, then ``rounds`` rounds of N calls (N chosen from a
    short timed batch after the warm-up, so that its rounds fit its budget; at least one).
    Round k of every function runs before round k+1 of any (alternating direction), so a
    slow spell of the machine (another process, a frequency change) falls on all of them
    alike rather than on whichever was being timed. Returns one ``Timing`` per function,
    request/threads left blank; a function that raises ``EdgeRuntimeError`` gets its reason.
    """
    clock = time.perf_counter_ns
    n_rounds = max(1, rounds)
    per_round: list[int] = []
    errors: list[str | None] = [None] * len(fns)
    for i, fn in enumerate(fns):
        try:
            for _ in range(max(1, warmup)):
                fn()
            t0 = clock()
            probe_calls = max(1, warmup)
            for _ in range(probe_calls):
                fn()
            per_call_ns = max(1.0, (clock() - t0) / probe_calls)
        except EdgeRuntimeError as exc:
            errors[i], per_call_ns = exc.reason, 1.0
        per_round.append(max(1, int(budget_s * 1e9 / n_rounds / per_call_ns)))
    means: list[list[float]] = [[] for _ in fns]
    for r in range(n_rounds):
        order = range(len(fns)) if r % 2 == 0 else range(len(fns) - 1, -1, -1)
        for i in order:
            if errors[i] is not None:
                continue
            fn, n = fns[i], per_round[i]
            try:
                start = clock()
                for _ in range(n):
                    fn()
                means[i].append((clock() - start) / n / 1e3)
            except EdgeRuntimeError as exc:
                errors[i] = exc.reason
    out: list[Timing] = []
    for i in range(len(fns)):
        if errors[i] is not None or not means[i]:
            out.append(Timing("", None, 0.0, 0.0, error=errors[i] or "not timed"))
            continue
        p50 = statistics.median(means[i])
        spread = (max(means[i]) - min(means[i])) / p50 if p50 > 0 else 0.0
        out.append(Timing("", None, p50, spread, per_round[i] * len(means[i])))
    return out


def _open_setting(source: ModelSource, setting: Setting, options: dict[str, Any]) -> Any:
    """A ``Model`` for ``setting``, compiled in this process (the caller closes it)."""
    from .model import Model  # model.py imports this module lazily; no cycle at import time

    device = setting.candidate.device
    session = get_backend(device.backend).open_session(source, device, **{**options, "num_threads": setting.threads})
    COMPILES.compiles += 1
    COMPILES.history.append(f"{device.request} threads={setting.threads}")
    try:
        return Model(session, source, setting.candidate, Selection((setting.candidate,)), [], None, None)
    except BaseException:
        session.close()
        raise


Opener = Callable[[Setting], tuple[Callable[[], object], Callable[[], None]]]


def time_settings(
    settings: Sequence[Setting],
    open_setting: Opener,
    *,
    runs: int = ROUNDS,
    warmup: int = WARMUP,
    budget_s: float = BUDGET_S,
) -> list[Timing]:
    """Open every setting (``open_setting(s)`` returns the call to time and its closer), time the
    calls with their rounds interleaved (``time_interleaved``), close them all. A setting that
    fails to open (``ModelLoadError``, ``BackendUnavailableError``) is a row with its ``error``.
    ``budget_s``: timing time for all settings together, seconds (opening comes on top). Every
    setting is held open at once: memory is the sum of them."""
    each = budget_s / max(1, len(settings))
    rows: list[Timing | None] = []
    fns: list[Callable[[], object]] = []
    closers: list[Callable[[], None]] = []
    try:
        for s in settings:
            try:
                fn, close = open_setting(s)
            except (ModelLoadError, BackendUnavailableError) as exc:
                rows.append(Timing(s.request, s.threads, 0.0, 0.0, error=exc.reason))
                continue
            fns.append(fn)
            closers.append(close)
            rows.append(None)
        timed = iter(time_interleaved(fns, budget_s=each, rounds=runs, warmup=warmup))
    finally:
        for close in closers:
            close()
    return [
        row if row is not None else replace(next(timed), request=s.request, threads=s.threads)
        for s, row in zip(settings, rows)
    ]


def measure_settings(
    source: ModelSource,
    settings: Sequence[Setting],
    *,
    runs: int = ROUNDS,
    warmup: int = WARMUP,
    budget_s: float = BUDGET_S,
    options: dict[str, Any] | None = None,
) -> list[Timing]:
    """Compile every setting, then time them with their rounds interleaved (``time_interleaved``);
    all are closed before returning. A setting that fails to compile or run is a row with its
    ``error``. ``budget_s``: timing time for all settings together, seconds (compiles come on
    top). Every setting's compiled model is held at once: memory is the sum of them."""
    opts = dict(options or {})

    def open_one(s: Setting) -> tuple[Callable[[], object], Callable[[], None]]:
        model = _open_setting(source, s, opts)
        inputs = [random_tensor(spec, seed=0) for spec in model.inputs]
        return functools.partial(model.infer_raw, inputs[0] if len(inputs) == 1 else inputs), model.close

    return time_settings(settings, open_one, runs=runs, warmup=warmup, budget_s=budget_s)


# --- cache --------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$EDGE_RUNTIME_MEASURE_CACHE``, else ``$XDG_CACHE_HOME/edge_runtime``, else ``~/.cache/edge_runtime``."""
    explicit = os.environ.get("EDGE_RUNTIME_MEASURE_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "edge_runtime"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo ``model name``), else ``platform.processor()``/machine."""
    return cpuinfo_model_name() or platform.processor() or platform.machine() or "unknown"


def runtime_versions(backends: Sequence[str]) -> dict[str, str]:
    """``{backend: version}`` for ``backends`` ("unavailable: why" for one that does not import)."""
    out: dict[str, str] = {}
    for name in sorted(set(backends)):
        try:
            out[name] = str(get_backend(name).runtime_info().get("version", "unknown"))
        except BackendUnavailableError as exc:
            out[name] = f"unavailable: {exc.reason}"
    return out


def cache_fields(
    model_sha256: str,
    settings: Sequence[Setting],
    versions: dict[str, str],
    cpu: str,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What a cached decision depends on, as plain data (stored beside it for people). Pure."""
    return {
        "version": CACHE_VERSION,
        "model_sha256": model_sha256,
        "settings": [[s.request, s.threads] for s in settings],
        "runtimes": dict(sorted(versions.items())),
        "cpu": cpu,
        "options": {k: v for k, v in sorted((options or {}).items()) if k != "num_threads" and v is not None},
    }


def cache_key(fields: dict[str, Any]) -> str:
    """The sha256 (hex) of ``fields`` as canonical JSON. Pure."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def model_sha256(source: ModelSource) -> str:
    """sha256 of the model's bytes (and an IR's weights), hex."""
    h = hashlib.sha256(source.content)
    if source.weights is not None:
        h.update(source.weights)
    return h.hexdigest()


def _read_cache(file: Path) -> dict[str, Any]:
    """The cache's entries; {} when the file is absent, and (with a warning) when it is corrupt."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.warning("edge_runtime: cannot read measurement cache %s: %s; measuring again", file, exc)
        return {}
    try:
        raw = json.loads(text)
        if not isinstance(raw, dict) or not isinstance(raw.get("entries"), dict):
            raise ValueError("not an object with 'entries'")
        entries: dict[str, Any] = raw["entries"]
        return entries
    except ValueError as exc:
        log.warning("edge_runtime: measurement cache %s is corrupt (%s); ignoring it, it will be rewritten", file, exc)
        return {}


def lookup(cache_dir: str | Path, key: str) -> MeasuredChoice | None:
    """The decision cached under ``key`` in ``cache_dir``, or None (absent, stale, corrupt)."""
    file = Path(cache_dir) / CACHE_FILE
    entry = _read_cache(file).get(key)
    if entry is None:
        return None
    try:
        table = tuple(Timing.from_dict(t) for t in entry["table"])
        fastest = Timing.from_dict(entry["fastest"])
        return MeasuredChoice(table, fastest, key, cached=True, measured_at=str(entry.get("measured_at", "")))
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("edge_runtime: measurement cache %s: bad entry %s (%s); measuring again", file, key[:12], exc)
        return None


def store(cache_dir: str | Path, choice: MeasuredChoice, fields: dict[str, Any]) -> None:
    """Add ``choice`` under its key to the cache file in ``cache_dir``, atomically (temp file +
    ``os.replace``). A cache that cannot be written is a warning, never an error."""
    directory = Path(cache_dir)
    file = directory / CACHE_FILE
    try:
        directory.mkdir(parents=True, exist_ok=True)
        entries = _read_cache(file)
        entries.pop(choice.key, None)
        entries[choice.key] = {**choice.to_dict(), "fields": fields}
        while len(entries) > CACHE_ENTRIES:
            entries.pop(next(iter(entries)))
        fd, tmp = tempfile.mkstemp(prefix=".measure-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({"version": CACHE_VERSION, "entries": entries}, fh, indent=1)
            os.replace(tmp, file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        log.warning("edge_runtime: cannot write measurement cache %s: %s", file, exc)


# --- the public entry points --------------------------------------------------------------


def measure_candidates(
    path: str | Path | ModelSource,
    candidates: Sequence[Candidate],
    thread_counts: Sequence[int] | None = None,
    *,
    runs: int = ROUNDS,
    warmup: int = WARMUP,
    budget_s: float | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    default_threads: bool = True,
    options: dict[str, Any] | None = None,
) -> MeasuredChoice:
    """Time the model on every candidate setting and return the table and the fastest.

    ``candidates``: from ``select`` (their order is ``auto``'s; ties go to the earlier).
    ``thread_counts``: CPU thread counts to try (default ``{1, 2, cores}``); see
    ``settings_for`` for which setting gets which. ``runs``: timed rounds per setting;
    ``warmup``: untimed calls first; ``budget_s``: timing time for all settings, seconds (default ``BUDGET_S``).
    ``cache_dir``: where ``measure.json`` lives (default ``default_cache_dir()``);
    ``use_cache``: False measures again (and still stores the result). ``default_threads``:
    also time OpenVINO CPU with its own thread count (False: only ``thread_counts``). ``options``: the
    backend compile options (``performance_hint``, ``cache_dir``, ``openvino_config``).
    Raises ``ModelLoadError`` (with each setting's reason) when no setting could be measured.
    """
    source = path if isinstance(path, ModelSource) else read_model_file(path)
    counts = tuple(thread_counts) if thread_counts else default_thread_counts()
    settings = settings_for(candidates, counts, default_threads=default_threads)
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    fields = cache_fields(
        model_sha256(source), settings, runtime_versions([c.device.backend for c in candidates]), cpu_model(), options
    )
    key = cache_key(fields)
    if use_cache and (hit := lookup(directory, key)) is not None:
        return hit
    start = time.perf_counter()
    budget = BUDGET_S if budget_s is None else budget_s
    table = measure_settings(source, settings, runs=runs, warmup=warmup, budget_s=budget, options=options)
    return conclude(table, fields, directory, started=start, path=str(source.path))


def conclude(
    table: Sequence[Timing], fields: dict[str, Any], cache_dir: Path, *, started: float, path: str
) -> MeasuredChoice:
    """The decision from a measured ``table`` (``choose_fastest``), stored in ``cache_dir`` under
    ``fields``' key. ``started``: ``time.perf_counter()`` when measuring began. Raises
    ``ModelLoadError`` naming ``path`` when no setting could be measured."""
    try:
        fastest = choose_fastest(table)
    except ModelLoadError as exc:
        raise ModelLoadError(exc.reason, path=path, attempts=exc.attempts) from None
    choice = MeasuredChoice(
        tuple(table),
        fastest,
        cache_key(fields),
        cached=False,
        measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        seconds=time.perf_counter() - started,
    )
    store(cache_dir, choice, fields)
    return choice


def cached_choice(
    source: ModelSource,
    candidates: Sequence[Candidate],
    *,
    cache_dir: str | Path | None = None,
    options: dict[str, Any] | None = None,
) -> MeasuredChoice | None:
    """What ``auto:measure`` decided for this model, these candidates and default thread counts,
    if it is cached (plain ``auto`` takes it); None otherwise. Measures nothing."""
    settings = settings_for(candidates, default_thread_counts())
    fields = cache_fields(
        model_sha256(source), settings, runtime_versions([c.device.backend for c in candidates]), cpu_model(), options
    )
    return lookup(Path(cache_dir) if cache_dir is not None else default_cache_dir(), cache_key(fields))


def plan(
    source: ModelSource,
    request_text: str,
    selection: Selection,
    threads: int | None,
    measure: bool,
    auto_threads: bool,
    cache_dir: str | Path | None = None,
    options: dict[str, Any] | None = None,
) -> tuple[Selection, int | None]:
    """The selection ``load_model`` tries, and the thread count, after measuring (or the cache).

    ``measure``: time every candidate (``auto:measure``); ``auto_threads``: time only thread
    counts, on the first candidate (``threads="auto"``); neither: plain ``auto``, which takes
    a cached decision when there is one and otherwise leaves ``selection`` as it is. The chosen
    candidate comes first (its ``why`` says why; the others follow as fallbacks) and the
    returned selection's ``measurement`` holds the table.
    """
    candidates = selection.candidates
    if not candidates:
        return selection, threads
    options = {k: v for k, v in (options or {}).items() if k != "num_threads"}
    if measure or auto_threads:
        pool = candidates if measure else candidates[:1]
        counts = (threads,) if threads is not None else None
        choice = measure_candidates(
            source, pool, counts, cache_dir=cache_dir, default_threads=threads is None, options=options
        )
        label = request_text if measure else f"{request_text} threads=auto"
    else:
        hit = cached_choice(source, candidates, cache_dir=cache_dir, options=options)
        if hit is None:
            return selection, threads
        choice = hit
        label = f"{request_text} (cached auto:measure)"
    first = next((c for c in candidates if c.device.request == choice.fastest.request), None)
    if first is None:  # cannot happen for a key that names the candidates; be safe
        return selection, threads
    chosen = Candidate(first.device, label, choice.summary())
    rest = tuple(c for c in candidates if c is not first)
    return replace(selection, candidates=(chosen, *rest), measurement=choice), choice.fastest.threads


__all__ = [
    "MeasuredChoice",
    "Setting",
    "Timing",
    "cache_key",
    "cached_choice",
    "choose_fastest",
    "conclude",
    "default_cache_dir",
    "default_thread_counts",
    "measure_candidates",
    "plan",
    "settings_for",
]
