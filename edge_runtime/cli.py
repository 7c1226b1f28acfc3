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
from collections.abc import Sequence
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


def cmd_info(args: argparse.Namespace) -> int:
    with _load(args) as model:
        desc = model.describe()
        header = ["name", "dtype", "shape", "scale", "zero point"]
        passed = "\n".join(f"  - {a}" for a in model.attempts) or "  (none)"
        text = (
            f"model:     {model.path} ({model.format}, {model.size_bytes} bytes, {model.op_count} ops)\n"
            f"backend:   {model.backend}\n"
            f"device:    {model.device}  ({model.device_info.full_name})\n"
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
            p.add_argument("model", help="a .tflite, OpenVINO IR .xml (with its .bin) or .onnx file")
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
    p.set_defaults(func=cmd_bench)
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
