"""One pipeline of the daemon at run time: its runner, stream, sinks and thread.

Loading walks the pipeline's device list in order (``load_on_devices``): the index of the
request that loaded is kept, so a device that fails at run time hands over to the *next*
request of the list, never back to one that already failed. Every runner the daemon loads
is warmed (one inference on a zero input) before it serves, and is loaded with OpenVINO's
CPU pinning off: pinning is process-wide in OpenVINO, so two pinned pipelines share one
core (measured 0.87-0.95x of one pipeline's throughput, against 1.76-1.87x unpinned).

A ``Worker`` owns its runner (closed by ``close()``), its stream and source; the sinks are
shared between workers and owned by the service. The worker's thread takes results from
the stream and writes each, as one record, to every sink of the pipeline; ``sinks`` is
read once per result, so the service can replace the list between two results.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from ..backends.isolated import trial_load
from ..backends.isolation_policy import Isolation
from ..errors import (
    BackendUnavailableError,
    DeviceRequestError,
    DeviceUnavailableError,
    EdgeRuntimeError,
    InferenceError,
    ModelCrashError,
    ModelLoadError,
    ModelQuarantinedError,
)
from ..runner import Runner
from ..stream.pipeline import Stream
from ..stream.sources import Source
from .batched import BatchedRunner, Batchers
from .config import ConfigError, Pipeline

log = logging.getLogger("edge_runtime.daemon")

#: What every daemon load passes to OpenVINO (CPU only; other plugins never see it).
OPENVINO_CONFIG = {"ENABLE_CPU_PINNING": False}

#: ``loader(path, device, **options) -> Runner``: ``edge_runtime.load`` (tests pass their own).
Loader = Callable[..., Runner]


class ResultSink(Protocol):
    """Where a pipeline's records go (``JsonlSink``, ``MqttSink``)."""

    def write(self, record: dict[str, Any]) -> None: ...


def why(exc: BaseException) -> str:
    """The reason of an error with its path and device, on one line, for a log line or ``/healthz``."""
    if isinstance(exc, EdgeRuntimeError):
        return str(exc).splitlines()[0]
    return f"{type(exc).__name__}: {exc}"


def give_back_freed_memory() -> None:
    """Return the heap pages freed by closed runners to the system (glibc's ``malloc_trim``).

    A reload frees a whole interpreter and its arenas; glibc keeps such pages for reuse, so
    resident memory would ratchet up over the first reloads. Trimming after each reload keeps
    it flat (measured by ``scripts/soak.py``). Elsewhere (musl, macOS) nothing is done."""
    import ctypes
    import ctypes.util

    global _malloc_trim
    if _malloc_trim is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _malloc_trim = libc.malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None


def share_of_cores(pipelines: int) -> int:
    """Inference threads for a pipeline that does not set ``threads``: the cores this process may
    use, shared evenly between the pipelines (at least 1). Two pipelines on 2 cores get one each
    instead of two backends each spreading over both cores and contending."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, pipelines))


def load_on_devices(
    loader: Loader,
    spec: Pipeline,
    start: int = 0,
    *,
    cache_dir: Path | None = None,
    default_threads: int | None = None,
    passed_over: list[str] | None = None,
    measure_cache: Path | None = None,
    batchers: Batchers | None = None,
) -> tuple[Runner, int]:
    """Load and warm ``spec.model`` on the first of ``spec.device[start:]`` that works, with
    ``spec.threads`` inference threads (unset: ``default_threads``, see ``share_of_cores``).

    Returns the runner (the caller owns it) and the index of the request that loaded it.
    With ``spec.trusted_keys`` every load (and the probe) verifies the signed manifest, and the
    release loaded must be ``spec.signed_digest`` when the service pinned one (``SignatureError``
    otherwise: the file was replaced by another release since the service checked it).
    A bad model file (``ModelFileError``, ``SignatureError``) or a config that does not fit the model
    (``ConfigError``, see ``check_fit``) raise at once; a device that is absent, fails to
    compile or fails its warm-up inference is passed over (its request and reason appended to
    ``passed_over``), and when none is left a ``ModelLoadError`` lists each with its reason.

    ``measure_cache``: the measurement cache's directory (``auto:measure``, ``threads = "auto"``;
    the daemon's state directory), passed to every load and probe. A pipeline with
    ``max_batch > 1`` gets a ``BatchedRunner`` on the shared batcher of ``batchers`` (None: on a
    batcher of its own, as ``serve --check`` loads).
    """
    import numpy as np

    from ..early_exit import EarlyExitModel

    where = f"pipelines.{spec.name}"
    reasons: list[str] = []
    threads = spec.threads if spec.threads is not None else default_threads
    extra: dict[str, Any] = {"isolate": isolation_for(spec)} if spec.isolate else {}
    if spec.trusted_keys:
        extra["trusted_keys"] = spec.trusted_keys
    measure: dict[str, Any] = {"measure_cache": measure_cache} if measure_cache is not None else {}
    batched = spec.max_batch > 1
    if batched and batchers is None:
        batchers = Batchers()  # a batcher of its own (``serve --check``): closed with the runner
    for i in range(start, len(spec.device)):
        request = spec.device[i]
        runner: Any
        try:
            if spec.probe and not spec.isolate:
                probe_once(spec, request, threads=threads, cache_dir=cache_dir, **measure)
            if batched:
                assert batchers is not None
                runner = batchers.open(
                    spec,
                    i,
                    threads=threads,
                    cache_dir=cache_dir,
                    measure_cache=measure_cache,
                    openvino_config=OPENVINO_CONFIG,
                )
            else:
                asked = threads
                if spec.threads is None and measure_cache is not None:
                    if takes_cached_decision(spec, request, measure_cache, cache_dir):
                        asked = None
                runner = loader(
                    spec.model,
                    request,
                    threads=asked,
                    cache_dir=cache_dir,
                    labels=spec.labels,
                    openvino_config=dict(OPENVINO_CONFIG),
                    **extra,
                    **measure,
                )
        except (DeviceUnavailableError, BackendUnavailableError, ModelLoadError, DeviceRequestError) as exc:
            reasons.append(f"{request}: {why(exc)}")
            continue
        try:
            if spec.trusted_keys:
                check_release(spec, runner)
            check_fit(spec, runner)
            if spec.thresholds is not None:
                if not isinstance(runner, EarlyExitModel):
                    raise ConfigError(f"{where}.thresholds: {spec.model} is not an early-exit bundle")
                runner.set_thresholds(list(spec.thresholds))
            spec_in = runner.inputs[0]
            if batched:
                runner.warm()  # its batch-1 model, once per batcher (a window alone would wait max_wait_us)
            else:
                runner.classify(np.zeros(spec_in.shape, spec_in.dtype))  # warm: the first call pays for allocation
        except (InferenceError, RuntimeError) as exc:
            runner.close()
            reasons.append(f"{request}: warm-up inference failed: {why(exc)}")
            continue
        except BaseException:
            runner.close()
            raise
        for reason in reasons:
            log.info("edge_runtime: pipeline %s: passed over %s", spec.name, reason)
        if passed_over is not None:
            passed_over.extend(reasons)
        return runner, i
    tried = spec.device[start:]
    if not tried:
        raise ModelLoadError(f"{where}: no device left to fall back to (device = {list(spec.device)})")
    raise ModelLoadError(f"{where}: no device could run {spec.model}: " + "; ".join(reasons))


def preprocess_for(choice: str, runner: Any) -> Any:
    """``Preprocess.choose`` for a runner of either kind (a batched one: its batch-1 model's sidecar)."""
    from ..stream.preprocess import Preprocess

    return Preprocess.choose(choice, runner.model if isinstance(runner, BatchedRunner) else runner)


def chosen_threads(runner: Any, asked: int | str | None) -> int | None:
    """The inference threads ``runner`` runs with: what a measurement chose (``auto:measure``,
    ``threads = "auto"``, or a cached decision), else what was asked (None: the backend's default)."""
    if isinstance(runner, BatchedRunner):
        return runner.threads
    measurement = getattr(getattr(runner, "selection", None), "measurement", None)
    if measurement is not None:
        return measurement.fastest.threads  # type: ignore[no-any-return]
    return asked if isinstance(asked, int) else None


def choice_text(runner: Any, asked: int | str | None) -> str:
    """``threads 2`` / ``threads default``, and ``; measured: ...`` or ``; cached ...`` when the
    device and threads were chosen by a measurement (``MeasuredChoice.summary``)."""
    threads = chosen_threads(runner, asked)
    text = f"threads {threads if threads is not None else 'default'}"
    measurement = getattr(getattr(runner, "selection", None), "measurement", None)
    if isinstance(runner, BatchedRunner) and runner.shared.measurement is not None:
        measurement = runner.shared.measurement
    if measurement is not None:
        where = "taken from the measurement cache" if measurement.cached else "measured now"
        text += f"; device and threads {where}: {measurement.summary()}"
    return text


def takes_cached_decision(spec: Pipeline, request: str, measure_cache: Path, cache_dir: Path | None) -> bool:
    """A plain ``auto`` request of a model file that ``auto:measure`` (with ``threads = "auto"``)
    measured before, with the same options: its decision is in ``measure_cache``. The load then
    leaves ``threads`` unset, so that ``auto`` takes that decision, threads included."""
    from ..devices import parse_request, probe, select
    from ..measure import cached_choice
    from ..model_file import READERS, read_model_file

    try:
        r = parse_request(request)
        if not r.is_auto or r.measure or spec.model.is_dir():
            return False
        source = read_model_file(spec.model)
        selection = select([r], probe(list(READERS[source.format]), requests=[r]), source.format)
        options = {  # as load_model keys them
            "performance_hint": "LATENCY",
            "cache_dir": str(cache_dir) if cache_dir else None,
            "openvino_config": dict(OPENVINO_CONFIG),
        }
        return cached_choice(source, selection.candidates, cache_dir=measure_cache, options=options) is not None
    except EdgeRuntimeError:
        return False


def check_release(spec: Pipeline, runner: Runner) -> None:
    """The runner of a pipeline with trusted keys holds the signed release the service pinned
    (``spec.signed_digest``; any verified release when none is pinned); ``SignatureError`` else."""
    from ..errors import SignatureError

    release = getattr(runner, "release", None)  # Model and EarlyExitModel have it; a test's wrapper may not
    if release is None:
        raise SignatureError(
            f"pipelines.{spec.name}: the loader returned a runner without a verified release", path=str(spec.model)
        )
    if spec.signed_digest is not None and release.digest != spec.signed_digest:
        raise SignatureError(
            f"pipelines.{spec.name}: another signed release (version {release.model_version}) replaced the one "
            "checked at reload: reload again to take it",
            path=str(spec.model),
        )


def isolation_for(spec: Pipeline) -> Isolation:
    """The isolation policy of a pipeline with ``isolate = true``: a hung child is killed after half
    of ``inference_timeout_s``, so that its restart comes before the service's own hang watchdog."""
    return Isolation(timeout_s=max(0.05, spec.inference_timeout_s / 2))


#: Model files already probed by this process: (path, size, mtime ns, device request).
_probed: set[tuple[str, int, int, str]] = set()


def _identity(path: Path, request: str) -> tuple[str, int, int, str] | None:
    """What a probe is remembered by: the file (a bundle: its manifest) as it is now, and the device."""
    from ..bundle import MANIFEST

    target = path / MANIFEST if path.is_dir() else path
    try:
        st = target.stat()
    except OSError:
        return None  # the load that follows reports it
    return str(path.resolve()), st.st_size, st.st_mtime_ns, request


def probe_once(spec: Pipeline, request: str, **options: Any) -> None:
    """Load ``spec.model`` on ``request`` and run it once in a throwaway child process, unless this
    process has already done so for the file as it is now; raise ``ModelLoadError`` (with the
    signal when the child died) so the caller passes over the device as for any failed load."""
    key = _identity(spec.model, request)
    if key is None or key in _probed:
        return
    t0 = time.monotonic()
    try:
        if spec.trusted_keys:
            options["trusted_keys"] = spec.trusted_keys
        trial_load(
            spec.model,
            request,
            timeout_s=spec.inference_timeout_s,
            labels=spec.labels,
            openvino_config=dict(OPENVINO_CONFIG),
            **options,
        )
    except (DeviceUnavailableError, BackendUnavailableError, DeviceRequestError):
        raise
    except ModelLoadError as exc:
        detail = f" ({'; '.join(exc.attempts)})" if exc.attempts else ""
        raise ModelLoadError(f"probe in a child process: {exc.reason}{detail}", path=str(spec.model)) from None
    log.info(
        "edge_runtime: pipeline %s: %s probed in a child process on %s (%.0f ms)",
        spec.name,
        spec.model,
        request,
        (time.monotonic() - t0) * 1e3,
    )
    _probed.add(key)


def check_fit(spec: Pipeline, runner: Runner) -> None:
    """What the config says against the model it names: one input, a window that fills it, as
    many labels as classes. Raises ``ConfigError`` naming the key (found at ``--check``, not at
    the first frame)."""
    import numpy as np

    where = f"pipelines.{spec.name}"
    if len(runner.inputs) != 1:
        raise ConfigError(
            f"{where}.model: a pipeline feeds a single-input model; {spec.model} has {len(runner.inputs)}"
        )
    shape = runner.inputs[0].shape
    size = int(np.prod(shape))
    window = spec.window if spec.window is not None else (shape[1] if len(shape) >= 2 else None)
    if window is None:
        raise ConfigError(f"{where}.window: cannot be taken from input shape {shape}: set it")
    if size % window:
        raise ConfigError(
            f"{where}.window: a window of {window} samples cannot fill the input of {spec.model.name}, "
            f"shape {shape} ({size} values are not a whole number of samples)"
        )
    classes = int(np.prod(runner.outputs[0].shape))
    if spec.labels is not None and len(spec.labels) != classes:
        raise ConfigError(
            f"{where}.labels: {len(spec.labels)} labels for {spec.model.name}, which has {classes} classes"
        )


def note_fallback(w: Any, old: str, new: str, reason: str) -> None:
    """Worker ``w`` (either kind) left device ``old`` for ``new`` because of ``reason``: one more
    fallback, ``degraded`` says so, and a warning is logged. Whoever moved it swaps the runner."""
    w.fallbacks += 1
    w.degraded = f"fell back from {old} to {new}: {reason}"
    log.warning("edge_runtime: pipeline %s: %s", w.name, w.degraded)


def pipeline_state(w: Any, now: float, stuck_after: float) -> tuple[str, str]:
    """(state, why) of a pipeline on a thread (``Worker``) or in a process (``ProcessWorker``):
    failed, ended, hung, stalled (its loop is inside a sink's write), degraded (on a later
    device than its first choice) or running. ``now`` and ``stuck_after`` in seconds."""
    if w.error is not None:
        return "failed", why(w.error)
    if w.done:
        return "ended", "its source ended"
    age = now - w.last_beat
    if age > stuck_after and not w.recovering:
        if w.writing:
            return "stalled", f"writing a result to its sinks has not returned for {age:.1f} s"
        return "hung", f"inference on {w.device} has not returned for {age:.1f} s"
    if w.degraded:
        return "degraded", w.degraded
    return "running", ""


class Worker:
    """One pipeline at run time. Made by the service; ``start()`` runs it on its own thread."""

    def __init__(
        self,
        spec: Pipeline,
        runner: Runner,
        device_index: int,
        source: Source,
        sinks: Sequence[ResultSink],
        *,
        recover: Callable[[Worker, BaseException, Runner], Runner | None],
        on_result: Callable[[Any, int, float], None] | None = None,
    ) -> None:
        self.spec = spec
        self.runner = runner
        self.device_index = device_index
        self.source = source
        self.sinks: Sequence[ResultSink] = list(sinks)
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.last_beat = time.monotonic()
        self.results = 0
        self.discarded = 0  # results of a hung inference that returned after the pipeline moved on
        self.error: BaseException | None = None
        self.done = False
        self.abandoned = False  # its inference hung; a new worker took over its source
        self.recovering = False  # loading the next device after an error (no beats meanwhile)
        self.writing = False  # inside a sink's write (a stall here is not the device's)
        self.reported_stuck = False  # its stall is in the log already
        self.degraded = ""  # why it runs on a later device than its first choice
        self.fallbacks = 0
        self.crashes = 0  # an isolated model's process died or hung (each restarted)
        #: The spec this pipeline ran before the last reload changed its model: what a quarantine
        #: goes back to (None: nothing to go back to).
        self.last_good: Pipeline | None = None
        self.quarantined: list[str] = []  # "model: why", in order
        self._on_result = on_result
        self.stream = Stream(
            runner,
            source,
            window=spec.window,
            hop=spec.hop,
            preprocess=preprocess_for(spec.preprocess, runner),
            queue_slots=spec.queue_slots,
            policy=spec.policy,
            deadline_ms=spec.deadline_ms,
            recover=lambda exc, r: recover(self, exc, r),
        )

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def device(self) -> str:
        """The device of the runner now in use."""
        return self.stream.model.device

    def fall_back(
        self,
        exc: BaseException,
        runner: Runner,
        load: Callable[[Pipeline, int], tuple[Runner, int]],
        report: Callable[..., None],
    ) -> Runner | None:
        """After ``runner`` raised ``exc`` (on this pipeline's thread): the runner of the next
        device of the list, loaded by ``load(spec, start)``; None when ``on_device_error`` is
        ``fail`` or no device is left. ``report(kind, *args)`` hears of ``device_error``
        (device), ``recovering`` (True, then False) and ``moved`` (old, new, index, why); the
        failed runner is closed here."""
        if isinstance(exc, ModelCrashError) and not isinstance(exc, ModelQuarantinedError):
            # An isolated model's process died or hung: the runner starts a new one (after its
            # back-off) when the window runs again on it, so this pipeline keeps its runner.
            self.crashes += 1
            report("model_crash", runner.device)
            return runner
        log.error("edge_runtime: pipeline %s: inference failed on %s: %s", self.name, runner.device, why(exc))
        report("device_error", runner.device)
        if isinstance(exc, ModelQuarantinedError):
            self.crashes += 1  # the crash that quarantined it (the runner is replaced: no later call)
            report("model_crash", runner.device)
            self.quarantined.append(f"{self.spec.model}: {exc.reason}")
            report("quarantined", str(self.spec.model))
            if self.last_good is not None:
                return self._back_to_last_good(exc, runner, load, report)
        if self.spec.on_device_error == "fail":
            return None
        loaded = self._recovering_load(load, report, self.spec, self.device_index + 1, "no device to fall back to")
        if loaded is None:
            return None
        new, index = loaded
        self.runner, self.device_index = new, index
        note_fallback(self, runner.device, new.device, f"inference failed on {runner.device}: {why(exc)}")
        report("moved", runner.device, new.device, index, self.degraded)
        self._let_go(runner)
        return new

    def _recovering_load(
        self,
        load: Callable[[Pipeline, int], tuple[Runner, int]],
        report: Callable[..., None],
        spec: Pipeline,
        start: int,
        failure: str,
    ) -> tuple[Runner, int] | None:
        """``load(spec, start)`` while ``recovering`` (no beats are due meanwhile, and ``report``
        hears of it); None, with ``failure`` and the reason logged, when it raises."""
        self.recovering = True
        report("recovering", True)
        try:
            return load(spec, start)
        except EdgeRuntimeError as err:
            log.error("edge_runtime: pipeline %s: %s: %s", self.name, failure, why(err))
            return None
        finally:
            self.recovering = False
            self.last_beat = time.monotonic()
            report("recovering", False)

    def _let_go(self, runner: Runner) -> None:
        """Close a runner this pipeline left; a broken device may fail to let go too (logged)."""
        try:
            runner.close()
        except Exception as err:  # noqa: BLE001 - logged, the pipeline goes on with its new runner
            log.warning("edge_runtime: pipeline %s: closing %s failed: %s", self.name, runner.device, why(err))

    def _back_to_last_good(
        self,
        exc: BaseException,
        runner: Runner,
        load: Callable[[Pipeline, int], tuple[Runner, int]],
        report: Callable[..., None],
    ) -> Runner | None:
        """After ``runner``'s model was quarantined: the model this pipeline ran before the last
        reload (``last_good``), loaded from its first device; None when that fails too."""
        good = self.last_good
        assert good is not None
        loaded = self._recovering_load(load, report, good, 0, f"the last good model {good.model} did not load")
        if loaded is None:
            return None
        new, index = loaded
        bad = self.spec.model
        self.spec, self.runner, self.device_index, self.last_good = good, new, index, None
        self.fallbacks += 1
        self.degraded = f"{bad} quarantined ({why(exc)}); serving the last good model {good.model}"
        log.error("edge_runtime: pipeline %s: %s", self.name, self.degraded)
        report("moved", runner.device, new.device, index, self.degraded)
        self._let_go(runner)
        return new

    def passed_over(self) -> int:
        """Devices passed over at load, plus those left at run time."""
        return len(self.runner.attempts) + self.fallbacks

    def counters(self) -> tuple[int, int, int, int]:
        """Frames received, windows dropped, frames refused, windows queued now."""
        st = self.stream.source.stats
        dec = st.decoder
        bad = dec.crc_errors + dec.malformed + dec.oversize if dec is not None else 0
        return st.frames, self.stream.stats.dropped, bad, self.stream.queue_depth

    def start(self) -> None:
        self.last_beat = time.monotonic()
        self.thread = threading.Thread(target=self._serve, name=f"edge_runtime-{self.name}", daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        self.last_beat = time.monotonic()
        self.reported_stuck = False

    def _serve(self) -> None:
        try:
            for r in self.stream.results(stop=self.stop, heartbeat=self._beat):
                if self.abandoned:
                    self.discarded += 1
                    continue
                record = {"pipeline": self.name, "device": self.stream.model.device, **r.to_dict()}
                self.writing = True
                for sink in self.sinks:
                    sink.write(record)
                self.writing = False
                self.results += 1
                self.last_beat = time.monotonic()
                if self._on_result is not None:
                    self._on_result(self, r.exit_index, r.invoke_us)
        except BaseException as exc:  # noqa: BLE001 - reported by the service's main loop, which decides
            if not self.abandoned:
                self.error = exc
        finally:
            self.done = True

    def halt(self, timeout: float = 30.0) -> bool:
        """Stop taking frames, let queued windows finish, wait for the thread. True if it ended."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout)
            return not self.thread.is_alive()
        return True

    def state(self, now: float, stuck_after: float) -> tuple[str, str]:
        """(state, why): see ``pipeline_state``."""
        return pipeline_state(self, now, stuck_after)

    def close(self) -> None:
        """Release the runner(s) this worker holds. Not for an abandoned worker (its call still runs)."""
        for r in {id(self.runner): self.runner, id(self.stream.model): self.stream.model}.values():
            r.close()
