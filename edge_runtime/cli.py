"""The ``edge-runtime`` command: thin verbs over the library.

Every verb prints a readable table, or with ``--json`` exactly one JSON object on
standard output. Errors go to standard error as one ``edge-runtime: error: ...``
block and exit with status 1 (usage errors: 2).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .backends import REGISTRY, get_backend
from .bench import measure
from .devices import devices as find_devices
from .errors import EdgeRuntimeError
from .model import Model, load
from .tensors import random_tensor

DEVICE_HELP = (
    "device request, repeatable (tried in order): auto, cpu, gpu, npu, tpu, fpga, litert:cpu, "
    "litert:edgetpu[:usb|pci[:N]], litert:gpu, litert:vx, litert:delegate=/path/lib.so[;key=value], "
    "openvino:CPU, openvino:GPU.0, openvino:NPU, openvino:AUTO:NPU,CPU, openvino:HETERO:FPGA,CPU "
    "(default: auto)"
)


def _plugins(values: Sequence[str] | None) -> dict[str, str] | None:
    if not values:
        return None
    out: dict[str, str] = {}
    for v in values:
        name, eq, path = v.partition("=")
        if not eq or not name or not path:
            raise SystemExit(f"edge-runtime: error: --openvino-plugin takes NAME=PATH (or xml=plugins.xml), got {v!r}")
        out[name] = path
    return out


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
    return "\n".join(lines)


def _emit(args: argparse.Namespace, obj: dict[str, Any], text: str) -> None:
    print(json.dumps(obj, indent=None if args.json == "compact" else 2) if args.json else text)


def cmd_devices(args: argparse.Namespace) -> int:
    found = find_devices(openvino_plugins=_plugins(args.openvino_plugin))
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


def _load(args: argparse.Namespace) -> Model:
    return load(
        args.model,
        args.device or "auto",
        num_threads=args.threads,
        cache_dir=args.cache_dir,
        openvino_plugins=_plugins(args.openvino_plugin),
    )


def _spec_rows(specs: Sequence[Any]) -> list[list[str]]:
    rows = []
    for s in specs:
        q = s.quantization
        scale = "-" if q is None else (f"{q.scales[0]:.6g}" if not q.per_channel else f"per-channel axis {q.axis}")
        zp = "-" if q is None else (str(q.zero_points[0]) if not q.per_channel else f"{len(q.zero_points)} values")
        rows.append([s.name, s.dtype.name, "x".join(map(str, s.shape)), scale, zp])
    return rows


def _is_bundle(model: Any) -> bool:
    from .early_exit import EarlyExitModel

    return isinstance(model, EarlyExitModel)


def _rule_text(rule: dict[str, Any] | None) -> str:
    if rule is None:
        return "always"
    if rule["threshold"] is None:
        return "never (calibrated out)"
    return f"{rule['measure']} {'<=' if rule['measure'] == 'entropy' else '>='} {rule['threshold']:.4g}"


def _bundle_info(args: argparse.Namespace, model: Any) -> int:
    desc = model.describe()
    rows = []
    for k, st in enumerate(desc["stages"]):
        rule = st["exit"]
        ins = st["inputs"][0]
        rows.append(
            [
                str(k),
                st["file"],
                f"{ins['dtype']}{ins['shape']}",
                "always"
                if rule is None
                else f"{rule['measure']} {'<=' if rule['measure'] == 'entropy' else '>='} {rule['threshold']:.4g}",
                f"{st['cost_us']:.1f}",
            ]
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
        f"bundle:    {desc['path']} ({desc['name']}, {len(desc['labels'])} labels)\n"
        f"backend:   {desc['backend']}\ndevice:    {desc['device']}  ({desc['device_full_name']})\n"
        f"why:       {desc['reason']}\ncalibration: {cal_text}\n\n"
        + _table(rows, ["stage", "file", "input", "exit when", "cost us"])
    )
    _emit(args, desc, text)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    with _load(args) as model:
        if _is_bundle(model):
            return _bundle_info(args, model)
        desc = model.describe()
        header = ["name", "dtype", "shape", "scale", "zero point"]
        passed = "\n".join(f"  - {a}" for a in model.attempts) or "  (none)"
        text = (
            f"model:     {model.path} ({model.format}, {model.size_bytes} bytes, {model.op_count} ops)\n"
            f"backend:   {model.backend}\n"
            f"device:    {model.device}  ({model.device_info.full_name}; runs on "
            f"{', '.join(desc['execution_devices']) or '?'})\n"
            f"why:       {model.reason}\n"
            f"passed over:\n{passed}\n\n"
            f"inputs:\n{_table(_spec_rows(model.inputs), header)}\n\n"
            f"outputs:\n{_table(_spec_rows(model.outputs), header)}"
        )
        _emit(args, desc, text)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.runs < 1 or args.warmup < 0:
        print("edge-runtime: error: --runs must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    with _load(args) as model:
        if _is_bundle(model) or args.data:
            return _bench_data(args, model)
        inputs = [random_tensor(spec, args.seed) for spec in model.inputs]
        x: Any = inputs[0] if len(inputs) == 1 else inputs

        def progress(done: int, total: int) -> None:
            print(f"bench: {done}/{total} runs", file=sys.stderr, flush=True)

        st = measure(lambda: model.infer_raw(x), args.runs, args.warmup, None if args.quiet else progress)
        result = {
            "model": str(model.path),
            "backend": model.backend,
            "device": model.device,
            "device_full_name": model.device_info.full_name,
            "reason": model.reason,
            "threads": args.threads,
            "call": "Model.infer_raw",
            "warmup": args.warmup,
            **st.to_dict(),
        }
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
        text = (
            f"model:      {model.path}\n"
            f"device:     {model.device} ({model.device_info.full_name})\n"
            f"why:        {model.reason}\n"
            f"runs:       {st.runs} (+{args.warmup} warm-up), threads={args.threads or 'backend default'}\n\n"
            + _table(rows, ["latency", "us"])
            + f"\n\nthroughput: {st.throughput:.1f} inferences/s (one at a time)"
        )
        _emit(args, result, text)
    return 0


def _stream_parts(args: argparse.Namespace, model: Model) -> tuple[Any, list[str] | None]:
    """(Preprocess, labels) from --preprocess / --labels, or the model's JSON sidecar."""
    from .stream.preprocess import Preprocess

    sidecar = Path(args.model).with_suffix(".json")
    labels: list[str] | None = None
    pre = Preprocess()
    source = args.preprocess if args.preprocess != "auto" else (str(sidecar) if sidecar.is_file() else "none")
    if source != "none":
        pre = Preprocess.from_sidecar(source)
    if args.labels:
        labels = [x.strip() for x in args.labels.split(",")]
    elif sidecar.is_file():
        labels = json.loads(sidecar.read_text()).get("labels")
    return pre, labels


def _result_line(r: Any) -> str:
    return (
        f"stream {r.stream_id} window {r.window:5d}  t={r.timestamp_us / 1e6:10.3f} s  {r.label:>12s} "
        f"{r.confidence:5.2f}  latency {r.latency_us:8.1f} us"
    )


def _summary_text(stats: Any, extra: dict[str, Any]) -> str:
    dec = stats.source.get("decoder", {})
    rows = [
        ["frames", str(stats.frames)],
        ["windows", str(stats.windows)],
        ["results", str(stats.results)],
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


def _run_stream(
    args: argparse.Namespace, model: Model, url: str, stop: threading.Event | None = None
) -> tuple[Any, list[Any]]:
    from .stream.pipeline import Stream
    from .stream.sources import open_source

    pre, labels = _stream_parts(args, model)
    options: dict[str, Any] = {}
    if args.baud:
        options["baudrate"] = args.baud
    source = open_source(url, **options)
    # A replay or a generator is finite and can wait for inference; a live sensor cannot.
    policy = args.policy or ("block" if url.startswith(("file:", "synthetic:")) else "drop-oldest")
    stream = Stream(
        model,
        source,
        window=args.window,
        hop=args.hop,
        preprocess=pre,
        queue_slots=args.queue,
        policy=policy,
        labels=labels,
    )
    kept: list[Any] = []
    if not args.json:
        print(
            f"model {model.path} on {model.device}; source {url}; window {stream.window} hop {stream.hop}; "
            f"preprocess {pre.describe()}",
            file=sys.stderr,
        )
    results = stream.results(max_results=args.max_results, duration_s=args.duration, stop=stop)
    try:
        for r in results:
            kept.append(r)
            print(json.dumps(r.to_dict()) if args.json else _result_line(r), flush=True)
    except KeyboardInterrupt:  # Ctrl-C ends a live stream: the summary still counts
        results.close()
        args.interrupted = True
    return stream.stats, kept


def cmd_run(args: argparse.Namespace) -> int:
    with _load(args) as model:
        stats, _ = _run_stream(args, model, args.source)
    if args.json:
        print(json.dumps({"summary": stats.as_dict()}))
    else:
        print("\n" + _summary_text(stats, {}))
    return 130 if getattr(args, "interrupted", False) else 0


def cmd_emulate(args: argparse.Namespace) -> int:
    from .hil.emulator import Emulator, Faults, load_recording

    values, recorded_rate = load_recording(args.recording)
    try:
        rate = None if args.rate == "max" else float(args.rate) if args.rate else recorded_rate
    except ValueError:
        print(f"edge-runtime: error: --rate takes samples per second or 'max', got {args.rate!r}", file=sys.stderr)
        return 2
    if rate is not None and not rate > 0:
        print(f"edge-runtime: error: --rate must be > 0 (or 'max'), got {args.rate}", file=sys.stderr)
        return 2
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

        port = serial.serial_for_url(args.port, baudrate=args.baud or 115200)
        write = port.write
    emu = Emulator(
        values,
        rate_hz=rate,
        sample_rate_hz=recorded_rate,
        frame_samples=args.frame,
        faults=faults,
        loop=args.loop,
        link=args.link,
        write=write,
        dtype=args.dtype,
    )
    print(emu.address if not args.port else args.port, flush=True)
    print(
        f"emulating {args.recording}: {len(values)} samples x {values.shape[1]} channels, recorded at "
        f"{recorded_rate:g} Hz, sending at {rate or 'max'} samples/s, {args.frame} per frame",
        file=sys.stderr,
    )
    try:
        stats = emu.run()
        emu.close(linger_s=0.5)
    finally:
        emu.close()
        if port is not None:
            port.close()
    print(f"sent {stats.frames} frames, {stats.bytes} bytes", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Emulator on a pty with a real recording -> serial source -> shipped int8 model."""
    import tempfile

    from .hil.emulator import Emulator, load_recording
    from .stream.sources import FileSource

    for path in (args.model, args.recording):
        if not Path(path).is_file():
            print(
                f"edge-runtime: error: {path} not found (run from the repository root, or pass --model and "
                "--recording)",
                file=sys.stderr,
            )
            return 1
    values, recorded_rate = load_recording(args.recording)
    truth = FileSource(f"file:{args.recording}").labels
    with tempfile.TemporaryDirectory(prefix="edge_runtime_demo_") as tmp, _load(args) as model:
        emu = Emulator(
            values,
            rate_hz=recorded_rate * args.speed,
            sample_rate_hz=recorded_rate,
            frame_samples=args.frame,
            link=Path(tmp) / "ttyIMU",
        )
        if not args.json:
            pty_path = emu.pty.path if emu.pty else ""
            print(
                f"emulator: {args.recording} ({len(values)} samples at {recorded_rate:g} Hz) on pty {pty_path} "
                f"(linked as {emu.address}), {args.speed:g}x real time",
                file=sys.stderr,
            )
        stop = threading.Event()

        def play() -> None:
            emu.run()  # sends once the reader has the port open, as a USB CDC device waits for DTR
            time.sleep(0.3)  # let the last frame through the reader
            stop.set()

        threading.Thread(target=play, name="edge_runtime-demo-emulator", daemon=True).start()
        try:
            stats, results = _run_stream(args, model, emu.address + "?baud=921600", stop=stop)
        finally:
            stop.set()
            emu.close()
    extra: dict[str, Any] = {}
    if truth:
        interval = 1e6 / recorded_rate
        correct = sum(truth[round(r.timestamp_us / interval)] == r.label for r in results)
        extra["accuracy vs recording labels"] = f"{correct}/{len(results)}"
    if args.json:
        print(json.dumps({"summary": {**stats.as_dict(), **extra}}))
    else:
        print("\n" + _summary_text(stats, extra))
    return 0


def _load_data(path: str) -> tuple[Any, Any]:
    import numpy as np

    try:
        data = np.load(path)
        return data["x"], data["y"]
    except (OSError, KeyError, ValueError) as exc:
        raise EdgeRuntimeError(f"--data must be an .npz with arrays x and y: {exc}", path=path) from exc


def _bench_data(args: argparse.Namespace, model: Any) -> int:
    """Accuracy, mean and p99 latency and the exit histogram over --data, against every stage forced."""
    import numpy as np

    if not args.data:
        print("edge-runtime: error: benchmarking a bundle needs --data FILE.npz (arrays x, y)", file=sys.stderr)
        return 2
    x, y = _load_data(args.data)
    shape = model.inputs[0].shape
    bundle = _is_bundle(model)
    variants = [("early exit", False), ("all stages", True)] if bundle else [("model", False)]
    out: dict[str, Any] = {"model": str(model.path), "device": model.device, "samples": len(y), "variants": {}}
    rows = []
    for name, force in variants:
        lat, correct, exits = [], 0, []
        for _ in range(max(1, args.repeat)):
            for sample, label in zip(x, y):
                xi = np.asarray(sample, dtype=np.float32).reshape(shape)
                t0 = time.perf_counter_ns()
                if bundle:
                    r = model.infer(xi, force_all=force)
                    pred, exit_k = r.label_index, r.exit_index
                else:
                    pred, exit_k = int(np.argmax(model.infer(xi)[0])), 0
                lat.append((time.perf_counter_ns() - t0) / 1e3)
                correct += int(pred == int(label))
                exits.append(exit_k)
        n = len(lat)
        hist = np.bincount(exits, minlength=len(model.stages) if bundle else 1)
        v = {
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
                f"{100 * v['accuracy']:.2f}",
                f"{v['mean_us']:.1f}",
                f"{v['p99_us']:.1f}",
                " ".join(str(int(h)) for h in hist),
            ]
        )
    if bundle:
        e, a = out["variants"]["early exit"], out["variants"]["all stages"]
        out["speedup_mean"] = round(a["mean_us"] / e["mean_us"], 2)
        out["accuracy_drop_pp"] = round(100 * (a["accuracy"] - e["accuracy"]), 2)
    text = (
        f"model:   {model.path} on {model.device}, {len(y)} samples from {args.data} (end to end through infer)\n\n"
        + _table(rows, ["variant", "accuracy %", "mean us", "p99 us", "exits per stage"])
    )
    if bundle:
        text += (
            f"\n\nearly exit: {out['speedup_mean']}x lower mean latency, accuracy "
            f"{-out['accuracy_drop_pp']:+.2f} percentage points"
        )
    _emit(args, out, text)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .calibrate import apply, choose, plot

    with _load(args) as model:
        if not _is_bundle(model):
            print(
                f"edge-runtime: error: {args.model} is not an early-exit bundle (a directory with bundle.json)",
                file=sys.stderr,
            )
            return 2
        if not 0 <= args.max_accuracy_drop < 1:
            print("edge-runtime: error: --max-accuracy-drop is a fraction in [0, 1), e.g. 0.01", file=sys.stderr)
            return 2
        x, y = _load_data(args.data)
        bundle: Any = model
        if not args.json:
            print(f"calibrating on {len(y)} samples of {args.data} (every stage runs on each) ...", file=sys.stderr)
        cal = choose(bundle, x, y, args.max_accuracy_drop)
        if not args.dry_run:
            apply(bundle, cal, args.data)
        if args.plot:
            try:
                plot(cal, args.plot)
            except ImportError:
                print(
                    "edge-runtime: warning: no plot: install the plot extra (pip install 'edge-runtime[plot]')",
                    file=sys.stderr,
                )
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
        text = (
            f"stage cost (median us): {', '.join(f'{c:.1f}' for c in cal.stage_cost_us)}\n"
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-runtime",
        description="Run int8 LiteRT/TFLite and OpenVINO models on the best accelerator this machine has.",
    )
    parser.add_argument("--version", action="version", version=f"edge-runtime {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every device decision to stderr")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def common(p: argparse.ArgumentParser, model: bool = True) -> None:
        p.add_argument("--json", action="store_const", const="pretty", help="print one JSON object instead of a table")
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
            p.add_argument("-d", "--device", action="append", metavar="REQUEST", help=DEVICE_HELP)
            p.add_argument("--threads", type=int, default=None, help="CPU threads for inference (default: backend's)")
            p.add_argument("--cache-dir", default=None, help="OpenVINO compiled-model cache directory")

    p = sub.add_parser("devices", help="list every accelerator found, and why the missing ones are missing")
    common(p, model=False)
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("info", help="show a model's inputs/outputs, quantization, op count and chosen device")
    common(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("bench", help="measure Model.infer_raw latency (min/p50/p90/p99) and throughput")
    common(p)
    p.add_argument("--runs", type=int, default=1000, help="timed runs (default 1000)")
    p.add_argument("--warmup", type=int, default=50, help="untimed runs first (default 50)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input (default 0)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument(
        "--data",
        default=None,
        help=".npz with arrays x, y: report accuracy and latency over it (bundles: against every stage)",
    )
    p.add_argument("--repeat", type=int, default=1, help="passes over --data (default 1)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("calibrate", help="choose early-exit thresholds: least mean latency within an accuracy bound")
    common(p)
    p.add_argument("--data", required=True, help="held-out calibration data: .npz with arrays x, y")
    p.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=0.01,
        help="accuracy the bundle may lose against running every stage, as a fraction (default 0.01)",
    )
    p.add_argument("--plot", default=None, metavar="PNG", help="also draw the trade-off curve (needs matplotlib)")
    p.add_argument("--dry-run", action="store_true", help="print the choice, leave bundle.json unchanged")
    p.set_defaults(func=cmd_calibrate)

    def stream_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--window", type=int, default=None, help="samples per window (default: the input's time axis)")
        p.add_argument("--hop", type=int, default=None, help="samples between window starts (default: window)")
        p.add_argument("--baud", type=int, default=None, help="serial baud rate (or ?baud=N in the source URL)")
        p.add_argument(
            "--preprocess",
            default="auto",
            help="JSON sidecar with a 'preprocessing' block, 'none', or 'auto' (MODEL.json if present)",
        )
        p.add_argument("--labels", default=None, help="comma-separated class names (default: from the sidecar)")
        p.add_argument("--queue", type=int, default=8, help="window slots between reader and inference (default 8)")
        p.add_argument(
            "--policy",
            choices=["drop-oldest", "block"],
            default=None,
            help="when the queue is full: drop the oldest window (counted) or block the reader "
            "(default: block for file: and synthetic: sources, drop-oldest for live ports)",
        )
        p.add_argument("--max-results", type=int, default=None, help="stop after N results")
        p.add_argument("--duration", type=float, default=None, help="stop after S seconds")

    p = sub.add_parser("run", help="stream a sensor source through a model, one line (or JSON line) per window")
    common(p)
    p.add_argument(
        "--source",
        required=True,
        help="serial device or pyserial URL (/dev/ttyUSB0, loop://, socket://host:port), "
        "file:REC.csv[?speed=max|K&frame=N], or synthetic:sine|ramp[?channels=N&rate=HZ]",
    )
    stream_opts(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("emulate", help="play a recording as a sensor over a pty (prints its path) or a serial port")
    p.add_argument("recording", help="CSV (timestamp_us, channels..., label) or .npy recording")
    p.add_argument("--pty", action="store_true", help="send over a new pseudo-terminal (the default)")
    p.add_argument("--port", default=None, help="send over this serial port or pyserial URL instead of a pty")
    p.add_argument("--baud", type=int, default=None, help="baud rate for --port")
    p.add_argument("--link", default=None, help="also make this path a symlink to the pty (kept across reconnects)")
    p.add_argument("--rate", default=None, help="samples per second, or 'max' (default: the recording's rate)")
    p.add_argument("--frame", type=int, default=10, help="samples per frame (default 10)")
    p.add_argument("--dtype", default="float32", help="sample type on the wire: float32, int16, ... (default float32)")
    p.add_argument("--loop", action="store_true", help="repeat the recording forever")
    p.add_argument("--garbage-every", type=int, default=0, metavar="N", help="a burst of random bytes every N frames")
    p.add_argument("--flip-every", type=int, default=0, metavar="N", help="flip one bit in every Nth frame")
    p.add_argument("--drop-every", type=int, default=0, metavar="N", help="lose 3 bytes of every Nth frame")
    p.add_argument("--pause-at", type=int, default=0, metavar="FRAME", help="go silent before this frame")
    p.add_argument("--pause-s", type=float, default=3.0, help="how long the pause lasts (default 3 s)")
    p.add_argument(
        "--disconnect-at",
        type=int,
        default=0,
        metavar="FRAME",
        help="unplug mid-frame at this frame, then plug in again (use --link to keep the path)",
    )
    p.add_argument("--disconnect-s", type=float, default=1.0, help="how long unplugged (default 1 s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault positions")
    p.set_defaults(func=cmd_emulate)

    p = sub.add_parser("demo", help="emulator on a pty with a real IMU recording -> stream -> shipped int8 model")
    common(p, model=False)
    p.add_argument("--model", default="models/basicmotions_int8.tflite", help="model (default: %(default)s)")
    p.add_argument("--recording", default="models/basicmotions_recording.csv", help="recording (default: %(default)s)")
    p.add_argument("-d", "--device", action="append", metavar="REQUEST", help=DEVICE_HELP)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for inference")
    p.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--speed", type=float, default=100.0, help="times real time (default 100)")
    p.add_argument("--frame", type=int, default=10, help="samples per frame (default 10)")
    stream_opts(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except EdgeRuntimeError as exc:
        print(f"edge-runtime: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `edge-runtime devices | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
