#!/usr/bin/env python3
"""Coverage-guided fuzzing of the serial decoders with atheris (libFuzzer for Python).

The suite fuzzes the same code with hypothesis for a few seconds per run
(``tests/test_codec.py``, ``tests/test_command_channel.py``); this harness is for long runs.
One input drives, in turn:

- ``FrameDecoder.feed`` (host side, data and reply frames), the input cut into chunks
  of a size the input itself picks, with a small ``max_encoded`` so that oversize frames
  and resynchronisation are reached;
- ``CommandReceiver.feed`` (the device side of the command channel, as the emulator runs it);
- ``decode_command`` and ``decode_reply`` on the whole input.

What counts as a finding (the harness raises, libFuzzer saves the input as ``crash-*``):
any exception other than the package's own ``EdgeRuntimeError``; a delivered frame that does
not survive ``encode_frame`` -> decode unchanged; ``stats.bytes`` different from the bytes fed;
a payload length that does not match its header.

    pip install atheris          # wheels for Linux x86_64 / aarch64, CPython 3.8-3.12
    python scripts/fuzz_decoder.py -max_total_time=600 /tmp/decoder-corpus
    python scripts/fuzz_decoder.py -runs=100000 -print_final_stats=1 /tmp/decoder-corpus

Arguments are libFuzzer's (``-help=1`` lists them). The corpus directory is created and
seeded with the protocol's test vectors and one frame of each dtype when it is empty.
libFuzzer prints ``cov:`` (code edges covered) and ``exec/s`` as it goes and the totals at
the end with ``-print_final_stats=1``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

try:
    import atheris  # type: ignore[import-not-found,import-untyped,unused-ignore]
except ImportError:
    print("fuzz_decoder: needs atheris: pip install atheris", file=sys.stderr)
    raise SystemExit(2) from None

import numpy as np  # noqa: E402

with atheris.instrument_imports(include=["edge_runtime"]):
    from edge_runtime.errors import EdgeRuntimeError
    from edge_runtime.stream import codec
    from edge_runtime.stream import command as cmdmod


class Finding(AssertionError):
    """An invariant of the decoders did not hold for this input."""


def _check_frame(frame: codec.Frame) -> None:
    size = frame.samples * frame.channels * frame.dtype.itemsize
    if len(frame.payload) != size:
        raise Finding(f"payload of {len(frame.payload)} bytes, the header says {size}")
    again = codec.FrameDecoder().decode_all(codec.encode_frame(frame))
    if len(again) != 1 or bytes(again[0].payload) != bytes(frame.payload) or again[0].seq != frame.seq:
        raise Finding("a delivered frame does not survive encode -> decode")


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    chunk = fdp.ConsumeIntInRange(1, 300)
    small = fdp.ConsumeBool()
    body = fdp.ConsumeBytes(len(data))
    replies: list[bytes] = []
    dec = codec.FrameDecoder(max_encoded=512 if small else codec.MAX_ENCODED, on_reply=replies.append)
    try:
        frames: list[codec.Frame] = []

        def on_frame(f: codec.Frame) -> None:
            _check_frame(f)
            frames.append(f)

        for at in range(0, len(body), chunk):
            dec.feed(body, at, min(len(body), at + chunk), on_frame=on_frame)
        if dec.stats.bytes != len(body):
            raise Finding(f"stats.bytes {dec.stats.bytes} != {len(body)} fed")
        if dec.stats.frames != len(frames) or dec.stats.replies != len(replies):
            raise Finding("the counters disagree with what was delivered")
        rx = cmdmod.CommandReceiver()
        for at in range(0, len(body), chunk):
            rx.feed(body[at : at + chunk])
        if rx.stats.bytes != len(body):
            raise Finding("CommandReceiver.stats.bytes != bytes fed")
        for decode in (cmdmod.decode_command, cmdmod.decode_reply):
            try:
                decode(body)
            except EdgeRuntimeError:
                pass
    except (EdgeRuntimeError, Finding):
        if sys.exc_info()[0] is Finding:
            raise
        # the package's own error for bad input is the expected outcome


def seed_corpus(corpus: Path) -> None:
    """The protocol's frames and commands, so mutation starts from valid wire bytes."""
    corpus.mkdir(parents=True, exist_ok=True)
    if any(corpus.iterdir()):
        return
    seeds: list[bytes] = []
    for k, dtype in enumerate(codec.DTYPES.values()):
        values = np.arange(12, dtype=dtype).reshape(4, 3)
        seeds.append(codec.encode_frame(codec.make_frame(values, stream_id=k, seq=k, interval_us=1000, flags=k & 1)))
    seeds.append(codec.encode_frame(codec.make_frame(np.zeros((100, 3), np.int8))))
    for op in cmdmod.Opcode:
        seeds.append(cmdmod.encode_command(cmdmod.Command(op, token=int(op))))
    for i, s in enumerate(seeds):
        # two leading bytes feed the chunk size and the small-buffer switch of one_input
        (corpus / f"seed-{i:02d}").write_bytes(bytes([0x40, 0x01]) + s + s)


def main() -> None:
    args = sys.argv[1:]
    dirs = [a for a in args if not a.startswith("-")]
    for d in dirs:
        seed_corpus(Path(d))
    atheris.Setup([sys.argv[0], *args], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
