"""The ``edge-runtime`` command: thin verbs over the library.

Every verb prints a readable table, or with ``--json`` exactly one JSON object on
standard output (``run``: one JSON line per result, then the summary). Errors go to
standard error as one line ``edge-runtime: error: ...``; exit status 2 for a usage
error (a bad option, device request or value), 1 for a runtime failure (a file that is
not a model, a device that fails), 130 on Ctrl-C (the summary or the partial statistics
are still printed). SIGTERM ends ``run`` and ``demo`` like Ctrl-C, with the summary,
but exits 0: a service manager asked it to stop.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from types import FrameType
from typing import Any, Literal, NoReturn

from . import __version__
from .backends import REGISTRY, get_backend
from .bench import LatencyStats, StreamStats, measure, measure_stream, timed
from .devices import devices as find_devices
from .early_exit import EarlyExitModel
from .errors import ArgumentError, DeviceRequestError, EdgeRuntimeError
from .loader import load
from .model import Model
from .runner import Runner
from .tensors import random_tensor

log = logging.getLogger("edge_runtime")

DEVICE_HELP = (
    "device request, repeatable (tried in order): auto, cpu, gpu, npu, tpu, fpga, litert:cpu, "
    "litert:gpu, litert:npu, litert:edgetpu[:usb|pci[:N]], litert:vx, litert:delegate=/path/lib.so[;key=value], "
    "openvino:CPU, openvino:GPU.0, openvino:NPU, openvino:AUTO:NPU,CPU, openvino:HETERO:FPGA,CPU, "
    "onnxruntime:CPU, onnxruntime:CUDA, 'onnxruntime:CUDA;device_id=1' (quote the ';' from the shell), "
    "onnxruntime:TensorRT, onnxruntime:<provider> "
    "(default: auto)"
)
LOG_LEVELS = ("debug", "info", "warning", "error")
#: Exit status of a verb stopped by Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130
#: Exit status of a verb other than run/demo stopped by SIGTERM (128 + SIGTERM).
EXIT_TERMINATED = 143
_stopped_by: list[str] = []  # the signal that stopped this command, if one did


def _interrupted_status() -> int:
    return EXIT_TERMINATED if _stopped_by == ["SIGTERM"] else EXIT_INTERRUPTED


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM. ``run`` and ``demo`` stop like Ctrl-C, print their
    summary and exit 0 (a service manager asked them to stop); other verbs stop as on Ctrl-C
    (``bench`` prints its partial statistics) and exit 143 (128 + SIGTERM)."""


class UsageError(ArgumentError):
    """A command-line mistake found after argparse (exit status 2)."""


class Parser(argparse.ArgumentParser):
    """argparse with the package's one-line errors: ``edge-runtime: error: ...``, exit 2."""

    #: The verb whose options were parsed last (an unknown option is reported by the top-level
    #: parser, after the verb's parser has run: its hint should still name the verb).
    last_verb = ""

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if " " in self.prog:
            Parser.last_verb = self.prog.split(" ", 1)[1]
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        verb = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        if not verb and message.startswith("unrecognized arguments"):
            verb = Parser.last_verb
        hint = f" (see edge-runtime {verb + ' ' if verb else ''}--help)"
        self.exit(2, f"edge-runtime: error: {message}{hint}\n")


def _whole_number(minimum: int) -> Callable[[str], int]:
    """argparse type: a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}, got {value}")
        return value

    return parse


positive_int = _whole_number(1)
non_negative_int = _whole_number(0)


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def threads_value(text: str) -> int | str:
    """argparse type for ``bench --threads``: a whole number >= 1, or ``auto``."""
    if text == "auto":
        return "auto"
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"takes a whole number >= 1 or 'auto', got {text!r}") from None


def seconds_value(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    value = positive_float(text)
    if value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, got {text}")
    return value


def speed_value(text: str) -> float | None:
    """argparse type: a multiple of real time (> 0), or ``max`` (None: as fast as possible)."""
    if text == "max":
        return None
    try:
        return positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"takes a multiple of real time (> 0) or 'max', got {text!r}") from None


def _rate_value(text: str) -> float | str:
    """argparse type for ``emulate --rate``: Hz (> 0); ``max`` is kept as the older spelling of ``--speed max``."""
    return "max" if text == "max" else positive_float(text)


def _plugins(values: Sequence[str] | None) -> dict[str, str] | None:
    """``--openvino-plugin NAME=PATH`` values as a dict, checked: the form and that the file exists."""
    if not values:
        return None
    out: dict[str, str] = {}
    for v in values:
        name, eq, path = v.partition("=")
        if not eq or not name or not path:
            raise UsageError(f"--openvino-plugin takes NAME=PATH (or xml=plugins.xml), got {v!r}")
        if not Path(path).is_file():
            raise UsageError(f"--openvino-plugin {v}: no such file", path=path)
        out[name] = path
    return out


def _register_plugins(plugins: dict[str, str] | None) -> None:
    """Register the plugins now, so one that OpenVINO refuses is an error, not a silent absence."""
    if not plugins:
        return
    backend = get_backend("openvino")
    backend.core(plugins)
    for name in plugins:
        reason = backend.registration_error(name)
        if reason:
            raise EdgeRuntimeError(reason, backend="openvino", device=name)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
    return "\n".join(lines)


def _emit(args: argparse.Namespace, obj: dict[str, Any], text: str) -> None:
    print(json.dumps(obj, indent=2) if args.json else text, flush=True)


def cmd_devices(args: argparse.Namespace) -> int:
    plugins = _plugins(args.openvino_plugin)
    found = find_devices(openvino_plugins=plugins)
    runtimes: dict[str, Any] = {}
    for name in REGISTRY:
        try:
            runtimes[name] = get_backend(name).runtime_info()
        except EdgeRuntimeError as exc:
            runtimes[name] = {"unavailable": exc.reason}
    rows = [
        [
            d.request if d.name else d.backend,
            d.kind,
            "yes" if d.available else "no",
            {True: "yes", False: "no", None: "?"}[d.int8],
            d.full_name if d.available else d.reason,
        ]
        for d in found
    ]
    runtime_lines = "\n".join(
        f"  {n}: " + (f"{r['module']} {r['version']}" if "module" in r else f"unavailable: {r['unavailable']}")
        for n, r in runtimes.items()
    )
    text = _table(rows, ["device", "kind", "available", "int8", "name / why not"]) + "\n\nruntimes:\n" + runtime_lines
    _emit(args, {"devices": [d.to_dict() for d in found], "runtimes": runtimes}, text)
    return 0


def _load(
    args: argparse.Namespace,
    model: str | None = None,
    threads: int | Literal["auto"] | None = None,
    isolate: bool = False,
    **extra: Any,
) -> Runner:
    """Load as the verb's options say; ``isolate``: the verb's default for ``--isolate`` (``info``: on)."""
    plugins = _plugins(args.openvino_plugin)
    _register_plugins(plugins)
    wanted = getattr(args, "isolate", None)
    return load(
        model or args.model,
        args.device or "auto",
        threads=args.threads if args.threads is not None else threads,
        cache_dir=args.cache_dir,
        openvino_plugins=plugins,
        isolate=isolate if wanted is None else wanted,
        **extra,
    )


def _spec_rows(specs: Sequence[Any]) -> list[list[str]]:
    rows = []
    for s in specs:
        q = s.quantization
        scale = "-" if q is None else (f"{q.scales[0]:.6g}" if not q.per_channel else f"per-channel axis {q.axis}")
        zp = "-" if q is None else (str(q.zero_points[0]) if not q.per_channel else f"{len(q.zero_points)} values")
        rows.append([s.name, s.dtype.name, "x".join(map(str, s.shape)), scale, zp])
    return rows


def _rule_text(rule: dict[str, Any] | None) -> str:
    if rule is None:
        return "always"
    if rule["threshold"] is None:
        return "never (calibrated out)"
    return f"{rule['measure']} {'<=' if rule['measure'] == 'entropy' else '>='} {rule['threshold']:.4g}"


def _attempts_text(attempts: Sequence[str]) -> str:
    return "\n".join(f"  - {a}" for a in attempts) or "  (none)"


def _bundle_info(args: argparse.Namespace, model: EarlyExitModel) -> int:
    desc = model.to_dict()
    rows = []
    for k, st in enumerate(desc["stages"]):
        ins = st["inputs"][0]
        rows.append(
            [str(k), st["file"], f"{ins['dtype']}{ins['shape']}", _rule_text(st["exit"]), f"{st['cost_us']:.1f}"]
        )
    cal = desc["calibration"]
    cal_text = (
        "not calibrated (edge-runtime calibrate BUNDLE --data FILE)"
        if not cal
        else (
            f"{cal['date']} on {cal['data']} ({cal['samples']} samples): accuracy {100 * cal['accuracy']:.2f} % vs "
            f"{100 * cal['accuracy_all_stages']:.2f} % all stages, mean {cal['mean_latency_us']} us vs "
            f"{cal['mean_latency_all_stages_us']} us; exit rates " + ", ".join(f"{e['rate']:.2f}" for e in cal["exits"])
        )
    )
    text = (
        f"bundle:      {desc['path']} ({desc['name']}, {len(desc['labels'])} labels)\n"
        f"backend:     {desc['backend']}\ndevice:      {desc['device']}  ({desc['device_full_name']}; runs on "
        f"{', '.join(desc['execution_devices']) or '?'})\n"
        f"why:         {desc['reason']}\npassed over:\n{_attempts_text(model.attempts)}\n"
        f"calibration: {cal_text}\n\n" + _table(rows, ["stage", "file", "input", "exit when", "cost us"])
    )
    _emit(args, desc, text)
    return 0


def _measure_requests(requests: Sequence[str] | None) -> tuple[list[str], bool]:
    """``info --measure``: ``auto`` and kind requests become ``...:measure``; when none of them
    can (every request names a device), the thread count is measured instead (True)."""
    out = []
    for r in requests or ["auto"]:
        low = r.strip().lower()
        out.append(f"{r}:measure" if low == "auto" or low in ("cpu", "gpu", "npu", "tpu", "fpga") else r)
    return out, all(not r.lower().endswith(":measure") for r in out)


def _measurement_text(m: Any) -> str:
    """The measured table of ``info`` (``m``: a ``measure.MeasuredChoice``)."""
    rows = [
        [
            "*" if t == m.fastest else "",
            t.request,
            "default" if t.threads is None else str(t.threads),
            "-" if t.error else f"{t.p50_us:.1f}",
            "-" if t.error else f"{100 * t.spread:.0f} %",
            t.error or "",
        ]
        for t in m.table
    ]
    when = f"cached, measured {m.measured_at}" if m.cached else f"measured now, {m.seconds:.1f} s"
    return f"measured ({when}):\n" + _table(rows, ["", "device", "threads", "p50 us", "spread", "error"])


def cmd_info(args: argparse.Namespace) -> int:
    threads: Literal["auto"] | None = None
    if args.measure:
        args.device, thread_only = _measure_requests(args.device)
        if thread_only and args.threads is None:
            threads = "auto"
    # isolated by default: `info` is what one runs on a file someone sent, and a file that crashes
    # a native reader then kills only the model's process (a clean error here, exit 1). A measured
    # choice compiles and times the model in this process first (edge_runtime.measure).
    with _load(args, threads=threads, isolate=True) as model:
        if isinstance(model, EarlyExitModel):
            return _bundle_info(args, model)
        assert isinstance(model, Model)
        desc = model.to_dict()
        header = ["name", "dtype", "shape", "scale", "zero point"]
        text = (
            f"model:     {model.path} ({model.format}, {model.size_bytes} bytes, {model.op_count} ops)\n"
            f"backend:   {model.backend}\n"
            f"device:    {model.device}  ({model.device_info.full_name}; runs on "
            f"{', '.join(desc['execution_devices']) or '?'})\n"
            f"placement: {model.placement or 'not reported by the backend'}\n"
            f"why:       {model.reason}\n"
            f"labels:    {', '.join(model.labels) if model.labels else '(none: no sidecar)'}\n"
            f"passed over:\n{_attempts_text(model.attempts)}\n\n"
            f"inputs:\n{_table(_spec_rows(model.inputs), header)}\n\n"
            f"outputs:\n{_table(_spec_rows(model.outputs), header)}"
        )
        measured = model.selection.measurement
        if measured is not None:
            desc["measurement"] = measured.to_dict()
            text += "\n\n" + _measurement_text(measured)
        _emit(args, desc, text)
    return 0


def _bench_plan(args: argparse.Namespace) -> None:
    """Check the bench options that argparse cannot check alone (usage errors, exit 2)."""
    new = [f"--{n}" for n in ("mode", "streams", "batch", "time") if getattr(args, n) not in (None, "latency", 1)]
    if args.data and new:
        raise UsageError(f"--data takes none of {', '.join(new)} (accuracy runs one sample at a time)")
    if args.mode == "latency" and args.streams is not None and args.streams > 1:
        raise UsageError(f"--streams {args.streams} needs --mode throughput (latency mode runs one call at a time)")
    if args.max_wait_us is not None and not (
        args.mode == "throughput" and args.batch > 1 and (args.streams is None or args.streams > 1)
    ):
        raise UsageError(
            "--max-wait-us applies only to --mode throughput with --batch > 1 and several --streams "
            "(the dynamic batcher)"
        )


def _threads_text(args: argparse.Namespace, used: int | None, reason: str = "") -> str:
    if args.threads == "auto":
        how = "taken from the measurement cache" if "[cached " in reason else "measured"
        return f"auto -> {used if used is not None else 'backend default'} ({how})"
    return str(used) if used is not None else "backend default"


def _threads_used(args: argparse.Namespace, model: Model) -> int | None:
    """The thread count the model runs with: ``--threads N``, or what ``--threads auto`` measured."""
    if args.threads != "auto":
        return int(args.threads) if args.threads is not None else None
    measured = model.selection.measurement
    return measured.fastest.threads if measured is not None else None


def cmd_bench(args: argparse.Namespace) -> int:
    _bench_plan(args)
    if args.mode == "throughput" and args.batch > 1 and (args.streams is None or args.streams > 1):
        return _bench_batcher(args)
    loaded, init_ms = timed(lambda: _load(args, **({"batch": args.batch} if args.batch > 1 else {})))
    with loaded as model:
        if isinstance(model, EarlyExitModel) or args.data:
            return _bench_data(args, model)
        assert isinstance(model, Model)
        inputs = [random_tensor(spec, args.seed) for spec in model.inputs]
        x: Any = inputs[0] if len(inputs) == 1 else inputs
        runs = args.runs if args.runs is not None or args.time is not None else 1000
        _, first_ms = timed(lambda: model.infer_raw(x))
        used = _threads_used(args, model)
        result: dict[str, Any] = {
            "model": str(model.path),
            "backend": model.backend,
            "device": model.device,
            "device_full_name": model.device_info.full_name,
            "reason": model.reason,
            "threads": args.threads,
            "threads_used": used,
            "mode": args.mode,
            "batch": args.batch,
            "init_ms": round(init_ms, 3),
            "first_inference_ms": round(first_ms, 3),
            "warmup": args.warmup,
            "runs_limit": runs,
            "time_limit_s": args.time,
        }
        if args.mode == "throughput":
            pool = model.start_workers()
            streams = args.streams or 2 * pool.workers
            st = _measure_stream(args, lambda: model.submit(x), streams, runs, samples_per_request=args.batch)
            result.update(call="Model.submit", workers=pool.workers, interrupted=st.interrupted, **st.to_dict())
            text = _bench_header(args, model.path, model.device, model.device_info.full_name, model.reason, used)
            text += (
                f"init:       {init_ms:.1f} ms (load)    first inference: {first_ms:.2f} ms\n"
                f"mode:       throughput, {streams} requests in flight on {pool.workers} worker(s), batch "
                f"{args.batch}: {_count(st.latency.runs, runs, st.interrupted)} requests (+{args.warmup} warm-up)\n\n"
                + _latency_table(st.latency, "latency (submit to result)")
                + f"\n\nthroughput: {st.samples_per_s:.1f} samples/s ({st.requests_per_s:.1f} requests/s)"
            )
            _emit(args, result, text)
            return _interrupted_status() if st.interrupted else 0
        lat = measure(
            lambda: model.infer_raw(x),
            runs,
            args.warmup,
            None if args.quiet else _progress("runs", runs, args.time),
            partial=True,
            seconds=args.time,
        )
        result.update(
            call="Model.infer_raw",
            interrupted=lat.interrupted,
            **lat.to_dict(),
            samples_per_s=round(lat.throughput * args.batch, 1),
        )
        text = _bench_header(args, model.path, model.device, model.device_info.full_name, model.reason, used)
        per_call = f", {args.batch} samples per call" if args.batch > 1 else ""
        text += (
            f"init:       {init_ms:.1f} ms (load)    first inference: {first_ms:.2f} ms\n"
            f"runs:       {_count(lat.runs, runs, lat.interrupted)} (+{args.warmup} warm-up){per_call}\n\n"
            + _latency_table(lat, "latency")
            + f"\n\nthroughput: {lat.throughput:.1f} inferences/s (one at a time)"
            + (f", {lat.throughput * args.batch:.1f} samples/s" if args.batch > 1 else "")
        )
        _emit(args, result, text)
    return _interrupted_status() if lat.interrupted else 0


def _bench_batcher(args: argparse.Namespace) -> int:
    """Throughput mode with --batch B and several streams: a DynamicBatcher (max_batch=B)."""
    from .batching import DynamicBatcher  # imported for this mode only

    plugins = _plugins(args.openvino_plugin)
    _register_plugins(plugins)
    max_wait = args.max_wait_us if args.max_wait_us is not None else 1000
    options: dict[str, Any] = {"threads": args.threads, "cache_dir": args.cache_dir, "openvino_plugins": plugins}
    if args.isolate:
        raise UsageError("--isolate does not apply to the dynamic batcher (--batch with several --streams)")
    batcher, init_ms = timed(
        lambda: DynamicBatcher(args.model, args.device or "auto", max_batch=args.batch, max_wait_us=max_wait, **options)
    )
    try:
        spec = batcher.inputs[0]
        x = random_tensor(spec, args.seed)
        runs = args.runs if args.runs is not None or args.time is not None else 1000
        _, first_ms = timed(lambda: batcher.submit(x).result())
        streams = args.streams or 2 * args.batch
        st = _measure_stream(args, lambda: batcher.submit(x), streams, runs)
        model = batcher.model
        device, full, reason = model.device, model.device_info.full_name, model.reason
        used = _threads_used(args, model)
        result: dict[str, Any] = {
            "model": str(args.model),
            "device": device,
            "device_full_name": full,
            "reason": reason,
            "threads": args.threads,
            "threads_used": used,
            "mode": "throughput",
            "batch": args.batch,
            "max_wait_us": max_wait,
            "init_ms": round(init_ms, 3),
            "first_inference_ms": round(first_ms, 3),
            "warmup": args.warmup,
            "runs_limit": runs,
            "time_limit_s": args.time,
            "call": "DynamicBatcher.submit",
            "interrupted": st.interrupted,
            **st.to_dict(),
            "batcher_stats": batcher.stats.to_dict(),
        }
        text = _bench_header(args, args.model, device, full, reason, used)
        text += (
            f"init:       {init_ms:.1f} ms (DynamicBatcher)    first inference: {first_ms:.2f} ms\n"
            f"mode:       throughput, {streams} samples in flight, dynamic batches of up to {args.batch} "
            f"(wait <= {max_wait:g} us): {_count(st.latency.runs, runs, st.interrupted)} samples "
            f"(+{args.warmup} warm-up)\n\n"
            + _latency_table(st.latency, "latency (submit to result)")
            + f"\n\nthroughput: {st.samples_per_s:.1f} samples/s"
        )
        _emit(args, result, text)
    finally:
        batcher.close()
    return _interrupted_status() if st.interrupted else 0


def _measure_stream(
    args: argparse.Namespace,
    submit: Callable[[], Future[Any]],
    streams: int,
    runs: int | None,
    samples_per_request: int = 1,
) -> StreamStats:
    """``bench --mode throughput``'s timed loop: ``streams`` requests in flight, ``--warmup``,
    ``--time``, progress unless ``--quiet``, partial statistics on Ctrl-C."""
    return measure_stream(
        submit,
        streams,
        runs,
        args.warmup,
        None if args.quiet else _progress("requests", runs, args.time),
        partial=True,
        seconds=args.time,
        samples_per_request=samples_per_request,
    )


def _progress(unit: str, runs: int | None, seconds: float | None) -> Callable[[int, float], None]:
    def progress(done: int, elapsed: float) -> None:
        if runs is not None:
            print(f"bench: {done}/{runs} {unit}", file=sys.stderr, flush=True)
        else:
            print(f"bench: {done} {unit}, {elapsed:.0f}/{seconds:g} s", file=sys.stderr, flush=True)

    return progress


def _count(done: int, runs: int | None, interrupted: bool) -> str:
    if interrupted:
        return f"{done} of {runs} (interrupted)" if runs is not None else f"{done} (interrupted)"
    return str(done)


def _bench_header(
    args: argparse.Namespace, path: Any, device: str, full_name: str, reason: str, used: int | None
) -> str:
    return (
        f"model:      {path}\n"
        f"device:     {device} ({full_name})\n"
        f"why:        {reason}\n"
        f"threads:    {_threads_text(args, used, reason)}\n"
    )


def _latency_table(st: LatencyStats, title: str) -> str:
    if not st.runs:
        return "(no timed run finished)"
    rows = [
        [k, f"{v:.1f}"]
        for k, v in (
            ("min", st.min_us),
            ("p50", st.p50_us),
            ("p90", st.p90_us),
            ("p99", st.p99_us),
            ("mean", st.mean_us),
        )
    ]
    return _table(rows, [title, "us"])


def _result_line(r: Any) -> str:
    exit_text = f"  exit {r.exit_index}" if r.exit_index else ""
    return (
        f"stream {r.stream_id} window {r.window_index:5d}  t={r.timestamp_us / 1e6:10.3f} s  {r.label:>12s} "
        f"{r.confidence:5.2f}{exit_text}  latency {r.latency_us:8.1f} us"
    )


def _summary_text(stats: Any, extra: dict[str, Any]) -> str:
    dec = stats.source.get("decoder", {})
    rows = [
        ["frames", str(stats.frames)],
        ["windows", str(stats.windows)],
        ["results", str(stats.results)],
        ["results per exit", " / ".join(map(str, stats.exits)) or "-"],
        ["dropped (queue full)", str(stats.dropped)],
        [
            "bad frames (crc / malformed / oversize)",
            f"{dec.get('crc_errors', 0)} / {dec.get('malformed', 0)} / {dec.get('oversize', 0)}",
        ],
        ["sequence gaps (frames missing)", str(dec.get("gaps", 0))],
        ["reconnects", str(max(stats.source.get("connects", 0) - 1, 0))],
        ["latency p50 / p99 (us)", f"{stats.latency_p50_us:.1f} / {stats.latency_p99_us:.1f}"],
        ["preprocess + invoke p50 (us)", f"{stats.invoke_p50_us:.1f}"],
        *[[k, str(v)] for k, v in extra.items()],
    ]
    return _table(rows, ["summary", "value"])


def _stream_source(args: argparse.Namespace, url: str) -> Any:
    from .stream.sources import is_serial, open_source

    options: dict[str, Any] = {}
    if not is_serial(url):
        given = [flag for flag, value in (("--baud", args.baud), ("--wait", getattr(args, "wait", False))) if value]
        if given:
            kind = url.split(":", 1)[0]
            raise UsageError(f"{' and '.join(given)} only applies to serial ports, not to {kind}: sources")
    if args.baud:
        options["baud"] = args.baud
    if getattr(args, "wait", False):
        options["wait"] = True
    return open_source(url, **options)


def _run_stream(
    args: argparse.Namespace, model: Runner, url: str, stop: threading.Event | None = None
) -> tuple[Any, list[Any], int]:
    """Stream ``url`` through ``model``, printing each result; (stats, results, exit status)."""
    from .stream.pipeline import Stream
    from .stream.preprocess import Preprocess
    from .stream.sources import is_serial

    pre = Preprocess.choose(args.preprocess, model)
    source = _stream_source(args, url)
    # A replay or a generator is finite and can wait for inference; a live sensor cannot.
    policy = args.policy or ("drop-oldest" if is_serial(url) else "block")
    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    stream = Stream(
        model,
        source,
        window=args.window,
        hop=args.hop,
        preprocess=pre,
        queue_slots=args.queue_slots,
        policy=policy,
        labels=labels,
    )
    kept: list[Any] = []
    # The banner goes out with the first result (or at the end, if none came), not before the
    # source is open: a source that fails (a port that is not there) is then one error line.
    banner = (
        None
        if args.json
        else f"{model.describe()}; source {url}; window {stream.window} hop {stream.hop}; preprocess {pre.describe()}"
    )
    status = 0
    results = stream.results(max_results=args.max_results, duration_s=args.duration, stop=stop)
    try:
        for r in results:
            if banner is not None:
                if getattr(args, "banner", None):
                    print(args.banner, file=sys.stderr)
                print(banner, file=sys.stderr, flush=True)
                banner = None
            kept.append(r)
            print(json.dumps(r.to_dict()) if args.json else _result_line(r), flush=True)
    except Terminated:  # SIGTERM: a service manager stopping us is a clean end
        status = 0
        args.stopped_by = "SIGTERM"
    except KeyboardInterrupt:  # Ctrl-C ends a live stream: the summary still counts
        status = EXIT_INTERRUPTED
        args.stopped_by = "SIGINT"
    finally:
        results.close()
    if banner is not None:
        print(banner, file=sys.stderr, flush=True)
    return stream.stats, kept, status


def _print_summary(args: argparse.Namespace, stats: Any, extra: dict[str, Any]) -> None:
    stopped = getattr(args, "stopped_by", None)
    if args.json:
        keys = {k.replace(" ", "_"): v for k, v in extra.items()}
        print(json.dumps({"summary": {**stats.to_dict(), **keys, "stopped_by": stopped}}), flush=True)
    else:
        extra = {**extra, "stopped by": stopped} if stopped else extra
        print("\n" + _summary_text(stats, extra), flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    with _load(args) as model:
        stats, _, status = _run_stream(args, model, args.source)
    _print_summary(args, stats, {})
    return status


def cmd_emulate(args: argparse.Namespace) -> int:
    from .hil.emulator import Emulator, Faults, load_recording

    values, recorded_rate = load_recording(args.recording)
    speed = None if args.rate == "max" else args.speed  # --rate max: the older spelling of --speed max
    rate = args.rate if isinstance(args.rate, float) else recorded_rate
    faults = Faults(
        garbage_every=args.garbage_every,
        flip_every=args.flip_every,
        drop_every=args.drop_every,
        pause_at=args.pause_at,
        pause_s=args.pause_s,
        disconnect_at=args.disconnect_at,
        disconnect_s=args.disconnect_s,
        seed=args.seed,
    )
    write = None
    port = None
    if args.port:
        import serial

        try:
            port = serial.serial_for_url(args.port, baudrate=args.baud or 115200)
        except (serial.SerialException, ValueError, OSError) as exc:
            raise EdgeRuntimeError(f"cannot open the port: {exc}", device=args.port) from exc
        write = port.write
    emu = Emulator(
        values,
        rate=rate,
        speed=speed,
        frame_samples=args.frame_samples,
        faults=faults,
        loop=args.loop,
        link=args.link,
        write=write,
        dtype=args.dtype,
    )
    print(emu.address if not args.port else args.port, flush=True)
    print(
        f"emulating {args.recording}: {len(values)} samples x {values.shape[1]} channels at {rate:g} Hz, "
        f"sent at {'max speed' if speed is None else f'{speed:g}x real time'}, {args.frame_samples} per frame",
        file=sys.stderr,
    )
    status = 0
    try:
        stats = emu.run()
        emu.close(linger_s=0.5)
        print(f"sent {stats.frames} frames, {stats.bytes} bytes", file=sys.stderr)
    except Terminated:
        status = 0
    except KeyboardInterrupt:
        status = EXIT_INTERRUPTED
    finally:
        emu.close()
        if port is not None:
            port.close()
    return status


def _demo_file(name: str) -> str:
    """A file the demo ships with: packaged with edge_runtime, else the repository's models/."""
    from importlib.resources import files

    packaged = Path(str(files("edge_runtime") / "data" / name))
    if packaged.is_file():
        return str(packaged)
    return str(Path(__file__).resolve().parents[1] / "models" / name)


def cmd_demo(args: argparse.Namespace) -> int:
    """Emulator on a pty with a real recording -> serial source -> shipped int8 model."""
    import tempfile

    from .hil.emulator import Emulator, load_recording
    from .stream.sources import FileSource

    model_path = args.model or _demo_file("basicmotions_int8.tflite")
    recording = args.recording or _demo_file("basicmotions_recording.csv")
    for path in (model_path, recording):
        if not Path(path).is_file():
            raise EdgeRuntimeError("demo file not found (pass --model and --recording)", path=path)
    values, recorded_rate = load_recording(recording)
    truth = FileSource(f"file:{recording}").labels
    with tempfile.TemporaryDirectory(prefix="edge_runtime_demo_") as tmp, _load(args, model_path) as model:
        emu = Emulator(
            values, rate=recorded_rate, speed=args.speed, frame_samples=args.frame_samples, link=Path(tmp) / "ttyIMU"
        )
        if not args.json:  # printed with the stream's banner, once the options have been checked
            pty_path = emu.pty.path if emu.pty else ""
            speed = "max speed" if args.speed is None else f"{args.speed:g}x real time"
            args.banner = (
                f"emulator: {recording} ({len(values)} samples at {recorded_rate:g} Hz) on pty {pty_path} "
                f"(linked as {emu.address}), {speed}"
            )
        stop = threading.Event()
        sent = threading.Event()
        finished = threading.Event()
        window = args.window or model.inputs[0].shape[1]
        expected = max(0, (len(values) - window) // (args.hop or window) + 1)
        if args.max_results is None:
            args.max_results = expected  # every window of the recording, then stop

        def play() -> None:
            try:
                emu.run()  # sends once the reader has the port open, as a USB CDC device waits for DTR
            finally:
                sent.set()

        def stop_when_sent() -> None:
            # Normally the stream ends by itself at the last expected window; if frames were
            # lost on the way, stop 2 s after the emulator sent its last byte.
            sent.wait()
            if not finished.wait(2.0):
                stop.set()

        threading.Thread(target=play, name="edge_runtime-demo-emulator", daemon=True).start()
        threading.Thread(target=stop_when_sent, name="edge_runtime-demo-stop", daemon=True).start()
        try:
            stats, results, status = _run_stream(args, model, emu.address + "?baud=921600", stop=stop)
        finally:
            finished.set()
            stop.set()
            emu.close()
    extra: dict[str, Any] = {}
    if truth:
        interval = 1e6 / recorded_rate
        correct = sum(truth[round(r.timestamp_us / interval)] == r.label for r in results)
        extra["accuracy vs recording labels"] = f"{correct}/{len(results)}"
    _print_summary(args, stats, extra)
    return status


def _load_data(path: str, model: Runner) -> tuple[Any, Any]:
    """(x, y) of an .npz, x reshaped to one input per sample; ``ArgumentError`` naming what is wrong."""
    import numpy as np

    try:
        data = np.load(path)
        x, y = data["x"], data["y"]
    except FileNotFoundError:
        raise ArgumentError("--data: no such file", path=path) from None
    except (OSError, KeyError, ValueError) as exc:
        raise ArgumentError(f"--data must be an .npz with arrays x and y: {exc}", path=path) from exc
    shape = model.inputs[0].shape
    per_sample = int(np.prod(shape))
    if len(x) != len(y) or not len(x) or int(np.prod(x.shape[1:])) != per_sample:
        raise ArgumentError(
            f"--data holds x{list(x.shape)} and y{list(y.shape)}: expected one sample of {per_sample} values "
            f"(input shape {list(shape)}) per label",
            path=path,
        )
    return x.reshape((len(x), *shape)), y


def _bench_data(args: argparse.Namespace, model: Runner) -> int:
    """Accuracy, mean and p99 latency and the exit histogram over --data, against every stage forced."""
    import numpy as np

    if not args.data:
        raise UsageError("benchmarking a bundle needs --data FILE.npz (arrays x, y)")
    x, y = _load_data(args.data, model)
    bundle = model if isinstance(model, EarlyExitModel) else None
    variants = [("early exit", False), ("all stages", True)] if bundle else [("model", False)]
    out: dict[str, Any] = {"model": str(model.path), "device": model.device, "samples": len(y), "variants": {}}
    rows = []
    interrupted = False
    for name, force in variants:
        lat: list[float] = []
        correct, exits = 0, []
        try:
            for _ in range(max(1, args.repeat)):
                for sample, label in zip(x, y):
                    xi = np.asarray(sample, dtype=np.float32)
                    t0 = time.perf_counter_ns()
                    r = bundle.classify(xi, force_all=force) if bundle is not None else model.classify(xi)
                    lat.append((time.perf_counter_ns() - t0) / 1e3)
                    correct += int(r.label_index == int(label))
                    exits.append(r.exit_index)
        except KeyboardInterrupt:
            interrupted = True
        if not lat:
            break
        n = len(lat)
        hist = np.bincount(exits, minlength=len(bundle.stages) if bundle else 1)
        v = {
            "samples": n,
            "accuracy": round(correct / n, 4),
            "mean_us": round(float(np.mean(lat)), 1),
            "p50_us": round(float(np.median(lat)), 1),
            "p99_us": round(float(np.percentile(lat, 99)), 1),
            "exit_histogram": hist.tolist(),
        }
        out["variants"][name] = v
        rows.append(
            [
                name,
                str(n),
                f"{100 * v['accuracy']:.2f}",
                f"{v['mean_us']:.1f}",
                f"{v['p99_us']:.1f}",
                " ".join(str(int(h)) for h in hist),
            ]
        )
        if interrupted:
            break
    out["interrupted"] = interrupted
    text = f"model:   {model.path} on {model.device}, {len(y)} samples from {args.data} (end to end through classify)"
    text += "\n\n" + (
        _table(rows, ["variant", "samples", "accuracy %", "mean us", "p99 us", "exits per stage"]) if rows else "(none)"
    )
    if bundle and len(out["variants"]) == 2:
        e, a = out["variants"]["early exit"], out["variants"]["all stages"]
        out["speedup_mean"] = round(a["mean_us"] / e["mean_us"], 2)
        out["accuracy_drop_pp"] = round(100 * (a["accuracy"] - e["accuracy"]), 2)
        text += (
            f"\n\nearly exit: {out['speedup_mean']}x lower mean latency, accuracy "
            f"{-out['accuracy_drop_pp']:+.2f} percentage points"
        )
    if interrupted:
        text += "\n\n(interrupted: partial statistics)"
    _emit(args, out, text)
    return _interrupted_status() if interrupted else 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .calibrate import apply, choose, plot

    if not 0 <= args.max_accuracy_drop < 1:
        raise UsageError("--max-accuracy-drop is a fraction in [0, 1), e.g. 0.01")
    if args.plot:  # checked before anything runs or is written
        plot_path = Path(args.plot)
        if plot_path.suffix.lower() not in (".png", ".pdf", ".svg"):
            raise UsageError("--plot takes a .png, .pdf or .svg file name", path=args.plot)
        if not plot_path.parent.is_dir():
            raise UsageError("--plot: no such directory", path=str(plot_path.parent))
    with _load(args, threads=1) as model:  # stage costs on one thread unless --threads says otherwise
        if not isinstance(model, EarlyExitModel):
            raise UsageError("not an early-exit bundle (a directory with bundle.json)", path=str(args.model))
        x, y = _load_data(args.data, model)
        if not args.json:
            print(f"calibrating on {len(y)} samples of {args.data} (every stage runs on each) ...", file=sys.stderr)
        cal = choose(model, x, y, args.max_accuracy_drop)
        if args.plot:
            try:
                plot(cal, args.plot)
            except ImportError:
                print(
                    "edge-runtime: warning: no plot: matplotlib is not installed (pip install matplotlib, "
                    "or the project's plot extra: pip install '.[plot]')",
                    file=sys.stderr,
                )
        if not args.dry_run:
            apply(model, cal, args.data)
        record = cal.to_manifest(args.data)
        rows = [
            [str(k), "always" if t != t else f"{t:.4g}", f"{100 * r:.1f}", "-" if a is None else f"{100 * a:.2f}"]
            for k, (t, r, a) in enumerate(
                zip((*cal.chosen.thresholds, float("nan")), cal.chosen.exit_rates, cal.chosen.exit_accuracy)
            )
        ]
        curve = [
            [f"{e.mean_latency_us:.1f}", f"{100 * e.accuracy:.2f}", ", ".join(f"{t:.3g}" for t in e.thresholds)]
            for e in cal.curve
        ]
        costs = ", ".join(f"{c:.1f} (+-{s / 2:.1f})" for c, s in zip(cal.stage_cost_us, cal.stage_cost_spread_us))
        text = (
            f"stage cost (median us, {args.threads or 1} thread(s)): {costs}\n"
            f"all stages: accuracy {100 * cal.all_stages.accuracy:.2f} %, "
            f"mean {cal.all_stages.mean_latency_us:.1f} us\n"
            f"chosen:     accuracy {100 * cal.chosen.accuracy:.2f} % (bound: -{100 * args.max_accuracy_drop:g} pp), "
            f"mean {cal.chosen.mean_latency_us:.1f} us\n\n"
            + _table(rows, ["exit", "threshold", "exit rate %", "accuracy there %"])
            + "\n\ntrade-off (Pareto front):\n"
            + _table(curve, ["mean us", "accuracy %", "thresholds"])
            + ("\n\n(dry run: bundle.json unchanged)" if args.dry_run else f"\n\nwritten to {args.model}/bundle.json")
        )
        _emit(args, {"calibration": record, "thresholds": list(cal.chosen.thresholds)}, text)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """``serve --config FILE``: run the pipelines; ``serve --check FILE``: validate and say what it declares."""
    from .daemon.config import load_config

    if bool(args.check) == bool(args.config):
        raise UsageError("give one of --config FILE (run) or --check FILE (validate only)")
    if args.config:
        from .daemon.service import Service, StoppedDuringStart

        cfg = load_config(args.config)
        if getattr(args, "log_level", None) is None and not getattr(args, "verbose", False):
            logging.getLogger("edge_runtime").setLevel(getattr(logging, cfg.log_level.upper()))
        service = Service(cfg)
        try:
            service.start()
        except StoppedDuringStart as stopped:
            print(f"edge-runtime: stopped by {stopped.signal} while loading the models", file=sys.stderr)
            return 0 if stopped.signal == "SIGTERM" else EXIT_INTERRUPTED
        return service.run()
    cfg = load_config(args.check)
    from .daemon.service import resolve_store, verify_pipeline
    from .daemon.worker import load_on_devices
    from .loader import load

    loaded: dict[str, tuple[str, list[str]]] = {}  # pipeline -> (device, what was passed over)
    releases: dict[str, str | None] = {}  # pipeline -> signed model_version (None: unsigned)
    for pl in cfg.pipelines:  # each model on its device list, checked against the config: as serve will
        resolved = resolve_store(pl, cfg.model_store, clean=False)
        if resolved is None:  # load_config let it through: an update waits in the inbox
            loaded[pl.name] = ("", [])  # "loads_on": nothing yet
            releases[pl.name] = None
            continue
        resolved, releases[pl.name] = verify_pipeline(resolved)
        passed: list[str] = []
        runner, _ = load_on_devices(load, resolved, passed_over=passed)
        loaded[pl.name] = (runner.device, passed + list(runner.attempts))
        runner.close()
    summary: dict[str, Any] = {
        "config": str(cfg.path),
        "state_dir": str(cfg.state_dir),
        "trusted_keys": [str(k) for k in cfg.trusted_keys],
        "model_store": None if cfg.model_store is None else str(cfg.model_store),
        "updates": None if cfg.updates is None else str(cfg.updates),
        "metrics": cfg.metrics.listen if cfg.metrics.enabled else None,
        "mqtt": f"{cfg.mqtt.host}:{cfg.mqtt.port}" if cfg.mqtt else None,
        "pipelines": [
            {
                "name": p.name,
                "source": p.source,
                "model": str(p.model),
                "from_store": p.from_store,
                "model_version": releases[p.name],
                "sha256_pinned": p.sha256 is not None,
                "device": list(p.device),
                "loads_on": loaded[p.name][0] or None,
                "passed_over": loaded[p.name][1],
                "sinks": [s.kind if s.path is None else f"{s.kind}:{s.path}" for s in p.sinks],
            }
            for p in cfg.pipelines
        ],
    }
    lines = [f"{cfg.path}: ok, {len(cfg.pipelines)} pipeline(s)"]
    if cfg.trusted_keys:
        lines.append(f"  signed models only: {len(cfg.trusted_keys)} trusted key(s)")
    if cfg.model_store is not None:
        lines.append(f"  model store: {cfg.model_store}; updates inbox: {cfg.updates or 'none'}")
    for pl in cfg.pipelines:
        pin = ", sha256 pinned" if pl.sha256 else ""
        if releases[pl.name] is not None:
            pin += f", signed release {releases[pl.name]}"
        if pl.from_store:
            pin += " (the store's current release)"
        sinks = ", ".join(s.kind if s.path is None else f"{s.kind}:{s.path}" for s in pl.sinks)
        device, passed = loaded[pl.name]
        where = (
            f"on {device}"
            if device
            else "not loaded: the store holds no release yet; serve installs the update waiting in the inbox first"
        )
        lines.append(f"  {pl.name}: {pl.source} -> {pl.model}{pin} {where} -> {sinks}")
        lines.extend(f"    passed over: {line}" for line in passed)
    _emit(args, summary, "\n".join(lines))
    return 0


def _version_arg(text: str) -> str:
    """argparse type: a version ``edge_runtime.manifest`` can compare (e.g. 1.2.0)."""
    from .manifest import check_version

    try:
        return check_version(text)
    except ArgumentError as exc:
        raise argparse.ArgumentTypeError(exc.reason.removeprefix("version: ")) from None


def _size_text(n: int) -> str:
    return f"{n:,} bytes"


def cmd_keys_create(args: argparse.Namespace) -> int:
    """``keys create DIR``: a new Ed25519 signing key pair; never overwrites one."""
    from .manifest import create_keypair, key_id, load_public_key

    private, public = create_keypair(args.dir, args.name)
    kid = key_id(load_public_key(public))
    text = (
        f"private key: {private} (mode 0600: keep it secret, on the signing machine only)\n"
        f"public key:  {public} (key id {kid}: give it to devices and to verify --trusted)"
    )
    _emit(args, {"private_key": str(private), "public_key": str(public), "key_id": kid}, text)
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    """``sign MODEL_OR_BUNDLE --key KEY --version V``: write the signed manifest beside it."""
    from .manifest import load_private_key, read_unverified, sign, signature_path

    try:
        key = load_private_key(args.key)
    except ArgumentError as exc:
        raise UsageError(f"--key: {exc.reason}", path=exc.path) from None
    manifest = sign(args.model, key, args.version, args.min_runtime)
    doc = read_unverified(manifest)
    total = sum(f["size"] for f in doc["files"])
    text = (
        f"signed:    {args.model} ({doc['kind']}, {len(doc['files'])} files, {_size_text(total)})\n"
        f"manifest:  {manifest}\n"
        f"signature: {signature_path(manifest)} (Ed25519, key id {doc['key_id']})\n"
        f"version:   {doc['model_version']} (installs on edge-runtime >= {doc['min_runtime_version']})"
    )
    out = {"manifest": str(manifest), "signature": str(signature_path(manifest)), **doc}
    _emit(args, out, text)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """``verify MODEL_OR_BUNDLE --trusted KEY.pub...``: check signature, versions and every file."""
    from .manifest import key_id, load_public_key, verify

    keys = []
    for path in args.trusted:
        try:
            keys.append(load_public_key(path))
        except ArgumentError as exc:
            raise UsageError(f"--trusted: {exc.reason}", path=exc.path) from None
    v = verify(args.model, keys, installed_version=args.installed)
    key_files = {key_id(k): path for k, path in zip(keys, args.trusted)}
    installed = f"; installed {args.installed}: not a downgrade" if args.installed else ""
    rows = [[f.path, f"{f.size:,}", f.sha256] for f in v.files]
    text = (
        f"verified:  {v.target} ({v.kind}, {len(v.files)} files, {_size_text(v.total_bytes)})\n"
        f"manifest:  {v.manifest} (sha256 {v.digest[:16]}...)\n"
        f"signature: {v.signature} (Ed25519, good)\n"
        f"key:       {v.key_id} (trusted: {key_files.get(v.key_id, '?')})\n"
        f"version:   {v.model_version} (needs edge-runtime >= {v.min_runtime_version}; this is {__version__})"
        f"{installed}\n"
        f"files:     every listed file matches its sha256 and size; no file is unlisted\n\n"
        + _table(rows, ["file", "bytes", "sha256"])
    )
    out = v.to_dict()
    out["key_path"] = key_files.get(v.key_id)
    out["installed_version"] = args.installed
    _emit(args, out, text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    # Logging options go on the main parser and on every verb, so `-v` works before or after
    # the verb; on the verbs they default to SUPPRESS so they never undo the main parser's value.
    log_opts = Parser(add_help=False)
    log_opts.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="more log lines (info level)"
    )
    log_opts.add_argument(
        "--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS, help="log level on stderr (default: warning)"
    )
    parser = Parser(
        prog="edge-runtime",
        description="Run int8 LiteRT/TFLite, OpenVINO and ONNX models (LiteRT, OpenVINO, ONNX Runtime) "
        "on the best accelerator this machine has.",
        epilog="Exit status: 0 ok, 1 runtime failure, 2 usage error, 130 interrupted (Ctrl-C).",
    )
    parser.add_argument("--version", action="version", version=f"edge-runtime {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="more log lines (info level)")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default=None, help="log level on stderr (default: warning)")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=Parser)

    def verb(name: str, help_text: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[log_opts])
        p.set_defaults(func=func)
        return p

    def common(p: argparse.ArgumentParser, model: bool = True) -> None:
        p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
        p.add_argument(
            "--openvino-plugin",
            action="append",
            metavar="NAME=PATH",
            help="register an OpenVINO plugin library for device NAME (or xml=plugins.xml); repeatable",
        )
        if model:
            p.add_argument(
                "model",
                help="a .tflite, OpenVINO IR .xml (with its .bin) or .onnx file, or an early-exit bundle directory",
            )
        if model or p.prog.endswith("demo"):
            p.add_argument("-d", "--device", action="append", metavar="REQUEST", help=DEVICE_HELP)
            p.add_argument(
                "--threads", type=positive_int, default=None, help="CPU threads for inference (default: backend's)"
            )
            p.add_argument(
                "--cache-dir",
                default=None,
                help="compile cache directory: OpenVINO compiled models, ONNX Runtime TensorRT engines and timings",
            )
            p.add_argument(
                "--isolate",
                action=argparse.BooleanOptionalAction,
                default=None,
                help="run the model in a child process, so a native crash in the interpreter is a clean error "
                "(default: on for info, off otherwise)",
            )

    p = verb("devices", "list every accelerator found, and why the missing ones are missing", cmd_devices)
    common(p, model=False)

    p = verb("info", "show a model's inputs/outputs, quantization, op count and chosen device", cmd_info)
    common(p)
    p.add_argument(
        "--measure",
        action="store_true",
        help="time every candidate device and thread count, load on the fastest and print the table "
        "(auto -> auto:measure; a named device: its thread counts); the choice is cached",
    )

    p = verb(
        "bench",
        "measure latency (min/p50/p90/p99/mean, us) or throughput (samples/s), init and first-inference "
        "time; with --data, accuracy too",
        cmd_bench,
    )
    common(p)
    for action in p._actions:  # bench also takes --threads auto
        if action.dest == "threads":
            action.type = threads_value
            action.metavar = "N|auto"
            action.help = (
                "CPU threads for inference, or 'auto': measure the thread counts on the device and use the "
                "fastest (the choice is printed) (default: backend's)"
            )
    p.add_argument(
        "--mode",
        choices=("latency", "throughput"),
        default="latency",
        help="latency: one Model.infer_raw call at a time, each timed (default); throughput: --streams requests "
        "kept in flight through Model.submit (from one submitting thread, each replaced as it completes), samples/s "
        "and per-request latency from submit to result",
    )
    p.add_argument(
        "--streams",
        type=positive_int,
        default=None,
        metavar="N",
        help="throughput mode: requests in flight (default: 2 x the submit pool's workers; with --batch B: 2 x B); "
        "latency mode takes only 1",
    )
    p.add_argument(
        "--batch",
        type=positive_int,
        default=1,
        metavar="B",
        help="samples per backend call (default 1). Latency mode or --streams 1: the model is loaded with batch B "
        "and each call runs B samples (latency per call, samples/s = calls/s x B). Throughput mode with several "
        "streams: each request is one sample, grouped into batches of up to B by a DynamicBatcher",
    )
    p.add_argument(
        "--max-wait-us",
        type=non_negative_float,
        default=None,
        metavar="US",
        help="throughput mode with --batch and several streams: how long the oldest waiting sample waits for "
        "others to fill a batch, microseconds (default 1000; 0: run what is queued at once)",
    )
    p.add_argument(
        "--runs",
        type=positive_int,
        default=None,
        help="timed calls (throughput mode: requests) (default 1000, or unlimited with --time); "
        "with --time too, it stops at whichever comes first",
    )
    p.add_argument(
        "--time",
        type=seconds_value,
        default=None,
        metavar="S",
        help="time the loop for S seconds instead of a number of runs (with --runs too: whichever comes first)",
    )
    p.add_argument(
        "--warmup",
        type=non_negative_int,
        default=50,
        help="untimed calls first, after the first inference (default 50)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random input (default 0)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument(
        "--data",
        default=None,
        help=".npz with arrays x, y: report accuracy and latency over it (bundles: against every stage)",
    )
    p.add_argument("--repeat", type=positive_int, default=1, help="passes over --data (default 1)")
    p.epilog = (
        "Figures: init = load() from call to return, ms; first inference = the first Model.infer_raw, before "
        "warm-up, ms; latency in microseconds; throughput in inferences (samples) per second. Progress on stderr "
        "once a second; Ctrl-C prints the statistics so far (exit 130), SIGTERM too (exit 143)."
    )

    p = verb("calibrate", "choose early-exit thresholds: least mean latency within an accuracy bound", cmd_calibrate)
    common(p)
    for action in p._actions:  # calibrate's own meaning of two shared options
        if action.dest == "model":
            action.help = "an early-exit bundle directory (with bundle.json); its bundle.json is rewritten"
        elif action.dest == "threads":
            action.help = "CPU threads for inference (default 1: stage costs are measured on one core)"
    p.add_argument("--data", required=True, help="held-out calibration data: .npz with arrays x, y")
    p.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=0.01,
        help="accuracy the bundle may lose against running every stage, as a fraction (default 0.01)",
    )
    p.add_argument("--plot", default=None, metavar="PNG", help="also draw the trade-off curve (needs matplotlib)")
    p.add_argument("--dry-run", action="store_true", help="print the choice, leave bundle.json unchanged")

    def frame_samples_opt(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--frame-samples",
            "--frame",
            dest="frame_samples",
            type=positive_int,
            default=10,
            help="samples per frame (default 10; --frame is the older spelling)",
        )

    def stream_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--window", type=positive_int, default=None, help="samples per window (default: the input's time axis)"
        )
        p.add_argument(
            "--hop", type=positive_int, default=None, help="samples between window starts (default: the window)"
        )
        p.add_argument("--baud", type=positive_int, default=None, help="serial baud rate (or ?baud=N in the URL)")
        p.add_argument(
            "--preprocess",
            default="auto",
            help="JSON sidecar with a 'preprocessing' block, 'none', or 'auto' (the model's MODEL.json if present)",
        )
        p.add_argument("--labels", default=None, help="comma-separated class names (default: the model's)")
        p.add_argument(
            "--queue-slots",
            "--queue",
            dest="queue_slots",
            type=positive_int,
            default=8,
            help="window slots between reader and inference (default 8; --queue is the older spelling)",
        )
        p.add_argument(
            "--policy",
            choices=["drop-oldest", "block"],
            default=None,
            help="when the queue is full: drop the oldest window (counted) or block the reader "
            "(default: block for file: and synthetic: sources, drop-oldest for live ports)",
        )
        p.add_argument("--max-results", type=positive_int, default=None, help="stop after N results")
        p.add_argument("--duration", type=positive_float, default=None, help="stop after S seconds")

    p = verb("run", "stream a sensor source through a model, one line (or JSON line) per window", cmd_run)
    common(p)
    p.add_argument(
        "--source",
        required=True,
        help="serial device or pyserial URL (/dev/ttyUSB0, loop://, socket://host:port), "
        "file:REC.csv[?speed=max|K&frame_samples=N] (plays in real time by default), "
        "or synthetic:sine|ramp[?channels=N&rate=HZ&speed=max]",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait for a serial device that is not there yet (default: fail at once if it never opened)",
    )
    stream_opts(p)

    p = verb("emulate", "play a recording as a sensor over a pty (prints its path) or a serial port", cmd_emulate)
    p.add_argument("recording", help="CSV (timestamp_us, channels..., label) or .npy recording")
    p.add_argument("--pty", action="store_true", help="send over a new pseudo-terminal (the default)")
    p.add_argument("--port", default=None, help="send over this serial port or pyserial URL instead of a pty")
    p.add_argument("--baud", type=positive_int, default=None, help="baud rate for --port")
    p.add_argument("--link", default=None, help="also make this path a symlink to the pty (kept across reconnects)")
    p.add_argument(
        "--rate",
        type=_rate_value,
        default=None,
        help="the recording's sample rate in Hz (default: its timestamps; 'max' is the older spelling of --speed max)",
    )
    p.add_argument("--speed", type=speed_value, default=1.0, help="times real time, or 'max' (default 1: as recorded)")
    frame_samples_opt(p)
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["int8", "uint8", "int16", "uint16", "int32", "float32"],
        help="sample type on the wire (default float32)",
    )
    p.add_argument("--loop", action="store_true", help="repeat the recording forever")
    p.add_argument(
        "--garbage-every", type=non_negative_int, default=0, metavar="N", help="a burst of random bytes every N frames"
    )
    p.add_argument("--flip-every", type=non_negative_int, default=0, metavar="N", help="flip one bit every Nth frame")
    p.add_argument(
        "--drop-every", type=non_negative_int, default=0, metavar="N", help="lose 3 bytes of every Nth frame"
    )
    p.add_argument("--pause-at", type=non_negative_int, default=0, metavar="FRAME", help="go silent before this frame")
    p.add_argument("--pause-s", type=positive_float, default=3.0, help="how long the pause lasts (default 3 s)")
    p.add_argument(
        "--disconnect-at",
        type=non_negative_int,
        default=0,
        metavar="FRAME",
        help="unplug mid-frame at this frame, then plug in again (use --link to keep the path)",
    )
    p.add_argument("--disconnect-s", type=positive_float, default=1.0, help="how long unplugged (default 1 s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault positions")

    p = verb("serve", "run pipelines as a service from a TOML config (--config), or validate one (--check)", cmd_serve)
    p.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="run the pipelines of this config until SIGTERM/SIGINT (systemd Type=notify; SIGHUP reloads "
        "the config and models without losing a result, and reopens JSON lines files); logs at the "
        "config's log_level unless --log-level or -v is given",
    )
    p.add_argument(
        "--check",
        metavar="FILE",
        default=None,
        help="validate this config (every key, value, model file and sha256 pin; each model loaded on its "
        "device list and checked against window, labels and thresholds) and exit; "
        "a commented example with every key ships as edge_runtime/data/edge-runtime.example.toml",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")

    p = verb("demo", "emulator on a pty with a real IMU recording -> stream -> shipped int8 model", cmd_demo)
    common(p, model=False)
    p.add_argument("--model", default=None, help="model (default: the shipped basicmotions_int8.tflite)")
    p.add_argument("--recording", default=None, help="recording (default: the shipped basicmotions_recording.csv)")
    p.add_argument("--speed", type=speed_value, default=100.0, help="times real time, or 'max' (default 100)")
    frame_samples_opt(p)
    stream_opts(p)

    p = verb("keys", "make an Ed25519 key pair to sign model releases with", cmd_keys_create)
    keys = p.add_subparsers(dest="keys_action", required=True, metavar="ACTION", parser_class=Parser)
    p = keys.add_parser(
        "create",
        help="write DIR/NAME.key (private, mode 0600) and DIR/NAME.pub; never overwrites a key",
        description="Write a new Ed25519 key pair: DIR/NAME.key (private, PKCS#8 PEM, mode 0600) and "
        "DIR/NAME.pub (public, PEM). Refuses to overwrite either file.",
        parents=[log_opts],
    )
    p.set_defaults(func=cmd_keys_create)
    p.add_argument("dir", metavar="DIR", help="directory for the key files (created, mode 0700, if missing)")
    p.add_argument("--name", default="signing", help="file name stem of the key files (default: signing)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")

    p = verb(
        "sign",
        "write a signed manifest (every file's sha256 and size, the version) beside a model or bundle",
        cmd_sign,
    )
    p.add_argument(
        "model",
        metavar="MODEL_OR_BUNDLE",
        help="a .tflite, .xml (with its .bin) or .onnx file (its MODEL.json sidecar is signed too), or an "
        "early-exit bundle directory (every file in it); writes MODEL.manifest.json or DIR/manifest.json, "
        "and the Ed25519 signature beside it as .sig",
    )
    p.add_argument("--key", required=True, metavar="PRIVATE", help="the private key file (from keys create)")
    p.add_argument(
        "--version", required=True, type=_version_arg, metavar="V", help="the release's model_version, e.g. 1.2.0"
    )
    p.add_argument(
        "--min-runtime",
        type=_version_arg,
        default=None,
        metavar="V",
        help=f"the oldest edge-runtime that may install it (default: this one, {__version__})",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")

    p = verb(
        "verify",
        "check a model's or bundle's signed manifest: signature, trusted key, versions, every file",
        cmd_verify,
    )
    p.add_argument("model", metavar="MODEL_OR_BUNDLE", help="a signed model file or bundle directory")
    p.add_argument(
        "--trusted",
        required=True,
        action="append",
        metavar="PUBLIC",
        help="a trusted public key file (.pub); repeatable",
    )
    p.add_argument(
        "--installed",
        type=_version_arg,
        default=None,
        metavar="V",
        help="the version installed now: refuse a release below it (a downgrade; equal is allowed)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser


def _configure_logging(args: argparse.Namespace) -> None:
    level = getattr(args, "log_level", None)
    if level is None:
        level = "info" if getattr(args, "verbose", False) else "warning"
    handler = logging.StreamHandler()
    handler.setFormatter(_LogFormat())
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
    if level != "warning":
        logging.getLogger("edge_runtime").setLevel(getattr(logging, level.upper()))


class _LogFormat(logging.Formatter):
    """``edge-runtime: warning: <message>``, like the error lines (the library's own
    ``edge_runtime:`` prefix, there for other programs' logs, is dropped here)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).removeprefix("edge_runtime: ")
        return f"edge-runtime: {record.levelname.lower()}: {text}"


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _stopped_by[:] = ["SIGTERM"]
    raise Terminated


def _one_line(exc: EdgeRuntimeError) -> str:
    """The error as one line: reason [path=..., device=...]; tried: a; b. A line break inside
    a reason (LiteRT's own messages have them) becomes a space."""
    where = [f"{k}={v}" for k, v in (("path", exc.path), ("backend", exc.backend), ("device", exc.device)) if v]
    text = f"{exc.reason} [{', '.join(where)}]" if where else exc.reason
    if exc.attempts:
        text += "; tried: " + "; ".join(exc.attempts)
    return re.sub(r"\s*\n\s*", " ", text)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args)
    previous = (
        signal.signal(signal.SIGTERM, _on_sigterm) if threading.current_thread() is threading.main_thread() else None
    )
    try:
        return int(args.func(args))
    except (ArgumentError, DeviceRequestError) as exc:
        print(f"edge-runtime: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except EdgeRuntimeError as exc:
        print(f"edge-runtime: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except Terminated:
        print("edge-runtime: terminated (SIGTERM)", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("edge-runtime: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:  # the environment, not a bug: a folder that is not there, a full disk
        path = exc.filename2 or exc.filename  # a link's target is the second name
        where = f" [path={path}]" if path else ""
        print(f"edge-runtime: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `edge-runtime devices | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug, not a user mistake: one line, the traceback in the debug log
        log.debug("edge_runtime: internal error", exc_info=True)
        print(
            f"edge-runtime: internal error: {type(exc).__name__}: {exc} (a bug: rerun with --log-level debug "
            "for the traceback, and report it)",
            file=sys.stderr,
        )
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
