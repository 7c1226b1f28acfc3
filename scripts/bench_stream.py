#!/usr/bin/env python3
"""Streaming benchmarks: allocations per frame, pipeline overhead, pty throughput, latency.

allocations   tracemalloc over >= 10,000 frames after warm-up, run synchronously through
              decoder -> window -> queue -> preprocess into the input tensor -> invoke, for
              64-byte and 64-KiB payloads: net growth per frame (leaks) and the largest
              transient allocation while one frame is processed (must not grow with the frame).
overhead      per window, end-to-end latency minus (preprocess + invoke), median, through the
              real two-thread Stream fed by a paced synthetic source.
pty           the firmware emulator at full speed through a pseudo-terminal into the Stream:
              frames/s, MB/s, good frames lost (must be 0), latency p50/p99 from the last byte
              of a window's last frame to its result.
decode        FrameDecoder on one 64-KiB-payload wire frame at a time (find the 0x00, COBS,
              CRC, header), side by side: float noise (long COBS blocks, the best case), small
              int16 samples (in [-50, 50]: a block every ~4 bytes) and all zeros (a block per
              byte, the worst case). Warm-up, then passes interleaved across the payloads;
              median and spread (min-max over passes) in MB/s of payload; target: all zeros
              >= 30 MB/s (a USB 2.0 CDC link). Then, under tracemalloc, steady-state growth and
              the largest transient allocation per frame. --compare-with REV also times the
              decoder of git revision REV (loaded into a temporary module, for before/after).

  python scripts/bench_stream.py [--json] [--frames 10000] [--decode-only] [--compare-with REV]
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import platform
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import edge_runtime as er  # noqa: E402
from edge_runtime.hil.emulator import Emulator  # noqa: E402
from edge_runtime.stream.codec import Frame, FrameDecoder, encode_frame, make_frame  # noqa: E402
from edge_runtime.stream.pipeline import Stream  # noqa: E402
from edge_runtime.stream.preprocess import Preprocess, Preprocessor  # noqa: E402
from edge_runtime.stream.queue import WindowQueue  # noqa: E402
from edge_runtime.stream.sources import open_source  # noqa: E402
from edge_runtime.stream.window import SlidingWindow  # noqa: E402

MODEL = ROOT / "models" / "basicmotions_int8.tflite"
SIDECAR = ROOT / "models" / "basicmotions_int8.json"


def allocations(payload_bytes: int, frames: int, model: er.Model) -> dict[str, Any]:
    """Synchronous path, one frame at a time, under tracemalloc."""
    channels = 6
    samples = max(1, payload_bytes // (4 * channels))
    rng = np.random.default_rng(0)
    wires = [
        encode_frame(
            make_frame(
                rng.standard_normal((samples, channels)).astype(np.float32),
                seq=i,
                interval_us=1000,
                timestamp_us=i * samples * 1000,
            )
        )
        for i in range(64)
    ]
    read_buf = bytearray(max(len(w) for w in wires) + 16)
    read_view = memoryview(read_buf)
    decoder = FrameDecoder()
    window = SlidingWindow(100, 100, channels, np.float32, capacity=max(200, samples + 100))
    queue = WindowQueue(4, 100, channels, np.float32)
    pre = Preprocessor(Preprocess.from_sidecar(SIDECAR), 100, channels, model.inputs[0], np.float32)
    results = 0

    def on_window(view: np.ndarray, ts: int) -> None:
        nonlocal results
        queue.put(view, 0, window.windows, ts, 0)
        slot = queue.get(0)
        if slot is not None:
            model.infer_in_place(lambda dst, s=slot: pre(s.data, dst))
            queue.release(slot)
            results += 1

    def on_frame(frame: Frame) -> None:
        window.push(frame.values(), frame.timestamp_us, frame.interval_us, on_window=on_window)

    def one(i: int) -> None:
        wire = wires[i % len(wires)]
        n = len(wire)
        read_view[:n] = wire  # stands for readv() filling the read buffer (memoryview: no temporary)
        decoder.feed(read_buf, 0, n, on_frame=on_frame)

    for i in range(500):  # warm-up: every lazily created object exists after this
        one(i)
    tracemalloc.start()
    base_current, _ = tracemalloc.get_traced_memory()
    peak_extra = 0
    transient_sum = 0
    for i in range(frames):
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        one(i)
        _, peak = tracemalloc.get_traced_memory()
        peak_extra = max(peak_extra, peak - before)
        transient_sum += peak - before
    end_current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "payload_bytes": samples * channels * 4,
        "frames": frames,
        "windows_inferred": results,
        "net_growth_bytes_per_frame": round((end_current - base_current) / frames, 3),
        "mean_transient_bytes_per_frame": round(transient_sum / frames, 1),
        "max_transient_bytes_per_frame": peak_extra,
        "decoder_errors": decoder.stats.crc_errors + decoder.stats.malformed,
    }


def overhead(model: er.Model, windows: int, rate: int, frame: int, hop: int) -> dict[str, Any]:
    """Two real threads, a paced source; ``rate`` samples/s in frames of ``frame``, a window every ``hop``."""
    src = open_source(f"synthetic:sine?channels=6&rate={rate}&frame={frame}&count={(windows * hop + 100) // frame}")
    stream = Stream(model, src, hop=hop, preprocess=Preprocess.from_sidecar(SIDECAR))
    overheads = [r.latency_us - r.invoke_us for r in stream.results()]
    st = stream.stats
    return {
        "windows_per_s": rate // hop,
        "frames_per_s": rate // frame,
        "windows": st.results,
        "dropped": st.dropped,
        "overhead_p50_us": round(float(np.median(overheads)), 1),
        "overhead_p90_us": round(float(np.percentile(overheads, 90)), 1),
        "preprocess_invoke_p50_us": round(st.invoke_p50_us, 1),
    }


def pty_throughput(model: er.Model, seconds: float, rate_hz: float | None = None) -> dict[str, Any]:
    rec = np.random.default_rng(1).standard_normal((400_000, 6)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        emu = Emulator(
            rec, rate=1000, speed=rate_hz / 1000 if rate_hz else None, frame_samples=10, link=Path(tmp) / "tty"
        )
        src = open_source(emu.address)
        stream = Stream(model, src, window=100, hop=100, preprocess=Preprocess.from_sidecar(SIDECAR), queue_slots=16)
        stop = threading.Event()

        def play() -> None:
            assert emu.pty is not None
            emu.pty.wait_for_reader(emu.stop)
            t0 = time.perf_counter()
            threading.Timer(seconds, emu.stop.set).start()
            emu.run()
            play.elapsed = time.perf_counter() - t0  # type: ignore[attr-defined]
            time.sleep(0.3)
            stop.set()

        t = threading.Thread(target=play, daemon=True)
        t.start()
        for _ in stream.results(stop=stop):
            pass
        t.join()
        emu.close()
    st = stream.stats
    dec = st.source["decoder"]
    elapsed = play.elapsed  # type: ignore[attr-defined]
    return {
        "rate_samples_per_s": rate_hz or "max",
        "seconds": round(elapsed, 2),
        "frames_sent": emu.stats.frames,
        "frames_received": dec["frames"],
        "good_frames_lost": emu.stats.frames - dec["frames"],
        "frames_per_s": round(dec["frames"] / elapsed),
        "mb_per_s": round(dec["bytes"] / elapsed / 1e6, 2),
        "bad_frames": dec["crc_errors"] + dec["malformed"] + dec["oversize"],
        "windows": st.windows,
        "results": st.results,
        "windows_dropped": st.dropped,
        "latency_p50_us": round(st.latency_p50_us, 1),
        "latency_p99_us": round(st.latency_p99_us, 1),
    }


#: Decode throughput target, MB/s of payload, for the worst case (all zeros).
DECODE_TARGET_MB_S = 30.0


def decode_payloads() -> dict[str, np.ndarray]:
    """64-KiB payloads, best case to worst case for COBS (more 0x00 bytes, more blocks)."""
    rng = np.random.default_rng(0)
    return {
        "float noise": rng.standard_normal((16384, 1)).astype(np.float32),
        "int16 [-50, 50]": rng.integers(-50, 51, (32768, 1)).astype(np.int16),
        "all zeros": np.zeros((32768, 1), np.int16),
    }


def _old_decoder(rev: str) -> type:
    """``FrameDecoder`` of ``edge_runtime/stream/codec.py`` at git revision ``rev``, in a temporary module."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:edge_runtime/stream/codec.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "codec_old.py"
        path.write_text(source)
        # Named inside the package so that its relative imports (..errors) resolve; in
        # sys.modules while it runs (dataclasses look their module up there), not after.
        name = "edge_runtime.stream._bench_old_codec"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        finally:
            del sys.modules[name]
    decoder: type = module.FrameDecoder
    return decoder


def _feeder(decoder: Any) -> Any:
    """``feed(wire) -> frames decoded`` for ``decoder``: the callback API, or an older generator ``feed``."""
    feed = decoder.feed
    if "on_frame" in inspect.signature(feed).parameters:
        sink = lambda f: None  # noqa: E731 - one callback for every frame: nothing allocated per frame
        return lambda wire: feed(wire, on_frame=sink)
    return lambda wire: sum(1 for _ in feed(wire))


def decode_throughput(passes: int, min_pass_s: float, decoder_type: type = FrameDecoder) -> dict[str, Any]:
    """MB/s of payload per kind: ``passes`` passes (each at least ``min_pass_s``), interleaved across kinds."""
    payloads = decode_payloads()
    wires = {name: encode_frame(make_frame(values)) for name, values in payloads.items()}
    decoders = {name: decoder_type() for name in payloads}
    feeders = {name: _feeder(dec) for name, dec in decoders.items()}
    reps = {}
    for name, wire in wires.items():  # warm-up (lazy buffers, caches), and the repeat count of a pass
        feed = feeders[name]
        assert feed(wire) == 1, f"{name}: the frame did not decode"
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < min_pass_s / 4:
            feed(wire)
            n += 1
        reps[name] = max(1, 4 * n)
    rates: dict[str, list[float]] = {name: [] for name in payloads}
    for _ in range(passes):
        for name, wire in wires.items():
            feed, n = feeders[name], reps[name]
            t0 = time.perf_counter()
            for _ in range(n):
                feed(wire)
            elapsed = time.perf_counter() - t0
            rates[name].append(payloads[name].nbytes * n / elapsed / 1e6)
    out: dict[str, Any] = {}
    for name, r in rates.items():
        out[name] = {
            "payload_bytes": payloads[name].nbytes,
            "wire_bytes": len(wires[name]),
            "passes": passes,
            "frames_per_pass": reps[name],
            "median_mb_per_s": round(float(np.median(r)), 1),
            "min_mb_per_s": round(min(r), 1),
            "max_mb_per_s": round(max(r), 1),
            "errors": decoders[name].stats.crc_errors + decoders[name].stats.malformed,
        }
    return out


def decode_allocations(frames: int) -> dict[str, Any]:
    """Per kind, under tracemalloc after warm-up: net growth per frame and the largest transient allocation."""
    out: dict[str, Any] = {}
    for name, values in decode_payloads().items():
        wire = encode_frame(make_frame(values))
        decoder = FrameDecoder()
        sink = lambda f: None  # noqa: E731 - one callback for every frame: nothing allocated per frame
        for _ in range(20):  # warm-up: the decoder's scratch, NumPy's and the interpreter's caches
            decoder.feed(wire, on_frame=sink)
        tracemalloc.start()
        base, _ = tracemalloc.get_traced_memory()
        largest = 0
        for _ in range(frames):
            tracemalloc.reset_peak()
            before, _ = tracemalloc.get_traced_memory()
            decoder.feed(wire, on_frame=sink)
            largest = max(largest, tracemalloc.get_traced_memory()[1] - before)
        end, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        out[name] = {"net_growth_bytes_per_frame": round((end - base) / frames, 3), "max_transient_bytes": largest}
    return out


def print_decode(decode: dict[str, Any], old: dict[str, Any] | None, alloc: dict[str, Any], rev: str | None) -> None:
    print("decode throughput (FrameDecoder, one 64-KiB-payload frame per feed; MB/s of payload)")
    for name, d in decode.items():
        line = (
            f"  {name:16s} median {d['median_mb_per_s']:7.1f} MB/s (min {d['min_mb_per_s']}, max {d['max_mb_per_s']}; "
            f"{d['passes']} passes of {d['frames_per_pass']} frames)"
        )
        if old is not None:
            o = old[name]
            line += f"; {rev}: median {o['median_mb_per_s']} MB/s (min {o['min_mb_per_s']}, max {o['max_mb_per_s']})"
        print(line)
    for name, a in alloc.items():
        print(
            f"  {name:16s} allocation: steady-state growth {a['net_growth_bytes_per_frame']} B/frame, "
            f"largest transient {a['max_transient_bytes']} B"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=10_000, help="frames per allocation run (default 10000)")
    ap.add_argument("--windows", type=int, default=2000, help="windows for the overhead run (default 2000)")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of the pty run (default 5)")
    ap.add_argument("--threads", type=int, default=1, help="inference threads (default 1)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--decode-only", action="store_true", help="run only the decode throughput section")
    ap.add_argument("--decode-passes", type=int, default=7, help="passes per payload in the decode section (7)")
    ap.add_argument("--compare-with", metavar="REV", help="also time the FrameDecoder of git revision REV")
    args = ap.parse_args()

    print("decode ...", file=sys.stderr, flush=True)
    decode = decode_throughput(args.decode_passes, 0.2)
    old = decode_throughput(args.decode_passes, 0.2, _old_decoder(args.compare_with)) if args.compare_with else None
    decode_alloc = decode_allocations(500)
    decode_ok = decode["all zeros"]["median_mb_per_s"] >= DECODE_TARGET_MB_S
    decode_target = f"decoding an all-zero 64-KiB payload >= {DECODE_TARGET_MB_S:g} MB/s"
    if args.decode_only:
        if args.json:
            doc = {"decode": decode, "decode_allocations": decode_alloc, "targets": {decode_target: decode_ok}}
            if old is not None:
                doc["decode_" + args.compare_with] = old
            print(json.dumps(doc, indent=2))
        else:
            print_decode(decode, old, decode_alloc, args.compare_with)
            print(f"\ntargets: {decode_target}: {'met' if decode_ok else 'NOT met'}")
        return 0 if decode_ok else 1

    model = er.load_model(MODEL, "litert:cpu", threads=args.threads)
    print("allocations ...", file=sys.stderr, flush=True)
    alloc = [allocations(64, args.frames, model), allocations(65536, args.frames, model)]
    print("overhead ...", file=sys.stderr, flush=True)
    # Sparse: a window every 5 ms, the threads sleep in between (caches go cold). Busy: a frame
    # every 0.5 ms and a window every 5 frames, the steady state of a fast sensor.
    over_sparse = overhead(model, args.windows, rate=20000, frame=100, hop=100)
    over = overhead(model, args.windows, rate=100000, frame=10, hop=50)
    print("pty ...", file=sys.stderr, flush=True)
    pty = pty_throughput(model, args.seconds)
    pty_paced = pty_throughput(model, args.seconds, rate_hz=10_000)
    model.close()
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "python": platform.python_version(),
        "model": MODEL.name,
        "device": "litert:cpu",
        "threads": args.threads,
    }
    targets = {
        # 64-KiB frames complete 27 windows each (48-byte frames: one in 43), so a few more
        # short-lived objects are alive at once; a copy of the frame would add 64 KiB.
        "no allocation growing with frame size": alloc[1]["max_transient_bytes_per_frame"]
        <= alloc[0]["max_transient_bytes_per_frame"] + 1024,
        "steady-state allocation under 1 KiB per frame": all(a["net_growth_bytes_per_frame"] < 1024 for a in alloc),
        "no leak (net growth < 1 B per frame)": all(a["net_growth_bytes_per_frame"] < 1 for a in alloc),
        "overhead p50 <= 20 us (busy)": over["overhead_p50_us"] <= 20,
        "overhead p50 <= 20 us (sparse)": over_sparse["overhead_p50_us"] <= 20,
        "no good frame lost through the pty": pty["good_frames_lost"] == 0 and pty_paced["good_frames_lost"] == 0,
        decode_target: decode_ok,
    }
    if args.json:
        print(
            json.dumps(
                {
                    "meta": meta,
                    "allocations": alloc,
                    "overhead": [over_sparse, over],
                    "pty": [pty, pty_paced],
                    "decode": decode,
                    "decode_allocations": decode_alloc,
                    **({"decode_" + args.compare_with: old} if old is not None else {}),
                    "targets": targets,
                },
                indent=2,
            )
        )
        return 0 if all(targets.values()) else 1
    print(
        f"streaming benchmark ({meta['date']}, {meta['machine']}, python {meta['python']}, "
        f"{meta['model']} on litert:cpu, {args.threads} thread)\n"
    )
    print("allocations (tracemalloc, synchronous decode -> window -> queue -> preprocess -> invoke)")
    for a in alloc:
        print(
            f"  payload {a['payload_bytes']:6d} B: {a['frames']} frames, {a['windows_inferred']} windows inferred; "
            f"steady-state growth {a['net_growth_bytes_per_frame']} B/frame; short-lived objects alive while a "
            f"frame is processed: mean {a['mean_transient_bytes_per_frame']} B, "
            f"largest {a['max_transient_bytes_per_frame']} B"
        )
    for label, o in (("sparse", over_sparse), ("busy", over)):
        print(
            f"\npipeline overhead per window, {label} ({o['frames_per_s']} frames/s, {o['windows_per_s']} windows/s, "
            f"{o['windows']} windows): end-to-end minus preprocess+invoke p50 {o['overhead_p50_us']} us, "
            f"p90 {o['overhead_p90_us']} us (preprocess+invoke p50 {o['preprocess_invoke_p50_us']} us)"
        )
    for label, p in (("at full speed", pty), ("paced at 10,000 samples/s (1,000 frames/s)", pty_paced)):
        print(
            f"\npty {label} for {p['seconds']} s: {p['frames_received']} frames ({p['frames_per_s']} frames/s, "
            f"{p['mb_per_s']} MB/s), good frames lost {p['good_frames_lost']}, bad frames {p['bad_frames']}; "
            f"windows {p['windows']}, results {p['results']}, dropped {p['windows_dropped']}; latency from the last "
            f"byte of a window's last frame to its result: p50 {p['latency_p50_us']} us, p99 {p['latency_p99_us']} us"
        )
    print()
    print_decode(decode, old, decode_alloc, args.compare_with)
    print("\ntargets: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in targets.items()))
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
