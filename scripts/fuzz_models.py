#!/usr/bin/env python3
"""Model-file fuzzing: mutated variants of real models, loaded through ``edge_runtime.load``.

Seeds: the shipped ``models/**/*.tflite`` and, when present, ``../shared/models/mlperf_tiny/``
(read in place, never copied into the repository). Each variant is one mutation of one seed,
drawn from a seeded generator (the same ``--seed`` gives the same files):

  truncate    cut at a random length
  bitflip     1-8 random bits flipped
  chunk       a random span (1-64 bytes) overwritten with random bytes
  dimension   one tensor dimension of the first subgraph set to a huge value (2**20-2**31-1)
  duplicate   a random slice (1-256 bytes) copied over another place

Each variant is written to a temporary file and, for each ``--device``, loaded by a worker
process (``edge_runtime.load(path, device)``, then one ``infer`` on zeros of each input's
dtype). The worker is a child of this script, so a native crash or hang takes down only it:
it is replaced and the next variant goes on. Outcome per load:

  loaded       load and one inference succeeded
  refused      an edge_runtime error (the package's own, with path and reason): the goal for
               a broken file
  contained    (--isolate) the model's own child process crashed or hung, and load/infer
               raised our clean error for it: what isolation is for
  other        any other Python exception (a defect: it should have been our error)
  crash        the worker died (a signal: SIGSEGV, SIGABRT, ...)
  hang         no answer within --timeout seconds (the worker is killed)

Target (issue 9): zero crashes and zero hangs *of the parent* over 10,000 files. This script
measures what happens *in-process* (the worker is what ``load`` would be in your process), so
its crash count is what model isolation has to contain. Crashing and hanging variants are
kept in --keep DIR (default: a temporary directory named at the end) for regression tests.

  python scripts/fuzz_models.py --count 1000                      # both backends
  python scripts/fuzz_models.py --count 200 --device litert:cpu --json

Exit status: 0 no crash, hang or other error; 1 some; 2 usage error; 130 Ctrl-C; 143 SIGTERM.
Progress goes to stderr every ~10 s.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import signal
import struct
import sys
import tempfile
import time
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MLPERF = ROOT.parent / "shared" / "models" / "mlperf_tiny"
DEVICES = ("litert:cpu", "openvino:CPU")
MUTATIONS = ("truncate", "bitflip", "chunk", "dimension", "duplicate")
OUTCOMES = ("loaded", "refused", "contained", "other", "crash", "hang")
PROGRESS_S = 10.0


class Terminated(KeyboardInterrupt):
    """SIGTERM: stop as for Ctrl-C."""


# -- seeds and mutations -------------------------------------------------------------------------
def seeds() -> list[Path]:
    found = sorted((ROOT / "models").rglob("*.tflite"))
    if MLPERF.is_dir():
        found += sorted(MLPERF.glob("*.tflite"))
    return found


def _shape_vectors(content: bytes) -> list[tuple[int, int]]:
    """(start of elements, count) of each tensor shape in subgraph 0; [] if the walk fails."""
    sys.path.insert(0, str(ROOT))
    from edge_runtime.tflite_check import _Corrupt, _Reader

    try:
        r = _Reader(content)
        tensors = r.table(r.u32(0, "root"), "model").tables(2, "subgraphs")[0].tables(0, "tensors")
        return [v for t in tensors if (v := t.vector(0, 4, "shape"))[1] > 0]
    except (_Corrupt, IndexError):
        return []


def mutate(content: bytes, kind: str, rng: random.Random) -> bytes:
    """One ``kind`` mutation of ``content`` (a new bytes object)."""
    out = bytearray(content)
    n = len(out)
    if kind == "truncate":
        return bytes(out[: rng.randrange(0, n)])
    if kind == "bitflip":
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(n)
            out[i] ^= 1 << rng.randrange(8)
    elif kind == "chunk":
        size = rng.randint(1, 64)
        at = rng.randrange(max(1, n - size))
        out[at : at + size] = rng.randbytes(size)[: n - at]
    elif kind == "dimension":
        shapes = _shape_vectors(content)
        if not shapes:
            return mutate(content, "bitflip", rng)
        start, count = rng.choice(shapes)
        struct.pack_into("<i", out, start + 4 * rng.randrange(count), rng.randint(1 << 20, (1 << 31) - 1))
    elif kind == "duplicate":
        size = rng.randint(1, 256)
        src, dst = rng.randrange(max(1, n - size)), rng.randrange(max(1, n - size))
        out[dst : dst + size] = content[src : src + size]
    return bytes(out)


# -- the worker ----------------------------------------------------------------------------------
def _worker(conn: Connection) -> None:
    """Load what the parent names and answer (outcome, detail); until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import numpy as np

    import edge_runtime

    while True:
        msg = conn.recv()
        if msg is None:
            return
        path, device, isolate = msg
        try:
            with edge_runtime.load(path, device, isolate=isolate) as model:
                model.infer(*[np.zeros(s.shape, dtype=s.dtype) for s in model.inputs])
        except edge_runtime.ModelCrashError as exc:
            conn.send(("contained", exc.reason))
        except edge_runtime.EdgeRuntimeError as exc:
            text = str(exc)
            if isolate and ("model's process died" in text or "did not open it within" in text):
                conn.send(("contained", " ".join(text.split())[:200]))
            else:
                conn.send(("refused", type(exc).__name__))
        except Exception as exc:  # noqa: BLE001 - counted as a defect, with its type
            conn.send(("other", f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"))
        else:
            conn.send(("loaded", ""))


class Worker:
    """A worker process; ``run`` returns (outcome, detail) and replaces the process after a crash or hang."""

    def __init__(self) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self._start()

    def _start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child,), daemon=True)
        self.proc.start()
        child.close()

    def run(self, path: Path, device: str, timeout: float, isolate: bool = False) -> tuple[str, str]:
        try:
            self.conn.send((str(path), device, isolate))
            if self.conn.poll(timeout):
                outcome: tuple[str, str] = self.conn.recv()
                return outcome
            result = ("hang", f"no answer in {timeout:g} s")
        except (EOFError, OSError):
            self.proc.join(5)
            code = self.proc.exitcode
            name = signal.Signals(-code).name if code is not None and code < 0 else f"exit {code}"
            result = ("crash", name)
        self.proc.kill()
        self.proc.join(5)
        self.conn.close()
        self._start()
        return result

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()


# -- main ----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="fuzz_models.py",
        description="Load mutated variants of real models through edge_runtime.load, each in a worker "
        "process, and count loaded / refused / other / crash / hang per device.",
    )
    ap.add_argument("--count", type=int, default=1000, help="variants to make (default 1000)")
    ap.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    ap.add_argument("--device", action="append", choices=DEVICES, help="device to load on (repeatable; default both)")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds before a load counts as hung (30)")
    ap.add_argument("--keep", type=Path, help="directory for crashing and hanging variants (default: temporary)")
    ap.add_argument(
        "--isolate",
        action="store_true",
        help="load with isolate=True (the model in its own child process, as the daemon's isolate = true): "
        "a native crash or hang there is counted as 'contained'",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    if args.count < 1:
        ap.error(f"--count must be >= 1, got {args.count}")
    if not args.timeout > 0:
        ap.error(f"--timeout must be > 0, got {args.timeout:g}")
    return args


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    devices = args.device or list(DEVICES)
    pool = seeds()
    if not pool:
        print("fuzz_models: no seed models found under models/", file=sys.stderr)
        return 2
    contents = {p: p.read_bytes() for p in pool}
    rng = random.Random(args.seed)
    keep = args.keep or Path(tempfile.mkdtemp(prefix="edge-runtime-fuzz-crashers-"))
    keep.mkdir(parents=True, exist_ok=True)
    counts: dict[str, Counter[str]] = {d: Counter() for d in devices}
    by_mutation: dict[str, Counter[str]] = {m: Counter() for m in MUTATIONS}
    others: Counter[str] = Counter()
    kept: list[dict[str, str]] = []
    t0 = time.monotonic()
    next_progress = t0 + PROGRESS_S
    workers: dict[str, Worker] = {}
    done = 0
    try:
        workers = {d: Worker() for d in devices}
        with tempfile.TemporaryDirectory(prefix="edge-runtime-fuzz-") as tmp:
            for i in range(args.count):
                seed_path = rng.choice(pool)
                kind = rng.choice(MUTATIONS)
                variant = mutate(contents[seed_path], kind, rng)
                path = Path(tmp) / f"{i:05d}-{seed_path.stem}-{kind}.tflite"
                path.write_bytes(variant)
                for d in devices:
                    outcome, detail = workers[d].run(path, d, args.timeout, args.isolate)
                    counts[d][outcome] += 1
                    by_mutation[kind][outcome] += 1
                    if outcome == "other":
                        others[detail] += 1
                    if outcome in ("crash", "hang"):
                        dest = keep / path.name
                        dest.write_bytes(variant)
                        kept.append({"file": str(dest), "device": d, "outcome": outcome, "detail": detail})
                path.unlink()
                done = i + 1
                if time.monotonic() >= next_progress:
                    summary = "; ".join(f"{d}: {dict(counts[d])}" for d in devices)
                    print(f"fuzz_models: {done}/{args.count} variants, {summary}", file=sys.stderr, flush=True)
                    next_progress += PROGRESS_S
    except KeyboardInterrupt as exc:
        what = "SIGTERM" if isinstance(exc, Terminated) else "Ctrl-C"
        print(f"fuzz_models: interrupted ({what}) after {done} variants", file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(exc, Terminated) else 130
    finally:
        for w in workers.values():
            w.close()
    wall = time.monotonic() - t0
    bad = sum(counts[d][o] for d in devices for o in ("other", "crash", "hang"))
    doc: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "variants": done,
        "seed": args.seed,
        "seeds": [str(p.relative_to(ROOT.parent)) for p in pool],
        "seconds": round(wall, 1),
        "isolate": args.isolate,
        "outcomes": {d: {o: counts[d][o] for o in OUTCOMES} for d in devices},
        "by_mutation": {m: {o: by_mutation[m][o] for o in OUTCOMES} for m in MUTATIONS},
        "other_errors": dict(others.most_common(10)),
        "kept": kept,
        "kept_in": str(keep),
    }
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"{done} variants of {len(pool)} seed models (seed {args.seed}) in {wall:.0f} s")
        print(f"{'':14s}" + "".join(f"{o:>10s}" for o in OUTCOMES))
        for d in devices:
            print(f"{d:14s}" + "".join(f"{counts[d][o]:>10d}" for o in OUTCOMES))
        print("by mutation (both devices together):")
        for m in MUTATIONS:
            print(f"  {m:12s}" + "".join(f"{by_mutation[m][o]:>10d}" for o in OUTCOMES))
        for detail, n in others.most_common(10):
            print(f"other error x{n}: {detail}")
        for k in kept:
            print(f"{k['outcome']} on {k['device']} ({k['detail']}): {k['file']}")
        if not kept:
            print(f"no crash or hang (nothing kept in {keep})")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
