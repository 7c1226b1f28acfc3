#!/usr/bin/env python3
"""Which sensor sample rates fit a UART link carrying the edge_runtime serial protocol.

Prints the tables of firmware_notes/baud_budget.md (Markdown): bytes on the wire per
frame, the highest sample rate each link carries, and the link utilisation at common
rates. Frame sizes come from edge_runtime.stream.codec (header, CRC, dtype sizes), so
the figures follow the protocol if it changes.

    python scripts/baud_budget.py                                   # the tables in the doc
    python scripts/baud_budget.py --sensors mic_int16 --samples-per-frame 160 512
    python scripts/baud_budget.py --baud 460800 --bits-per-byte 11  # 8E1 or 8N2
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_runtime.stream.codec import (  # noqa: E402
    CRC_SIZE,
    DTYPE_CODES,
    DTYPES,
    HEADER_SIZE,
    MAX_ENCODED,
    MAX_FRAME,
    MAX_PAYLOAD,
)

DELIMITER = 1  # the 0x00 after each COBS frame
MAX_SAMPLES = 0xFFFF  # header field `samples` is a u16


@dataclass(frozen=True)
class Sensor:
    key: str
    label: str
    channels: int
    dtype: str  # a protocol dtype name: int8, uint8, int16, uint16, int32, float32

    @property
    def bytes_per_sample(self) -> int:
        """Bytes of payload per sample instant (all channels)."""
        return self.channels * DTYPES[DTYPE_CODES[self.dtype]].itemsize


SENSORS: dict[str, Sensor] = {
    s.key: s
    for s in (
        Sensor("imu6_int16", "6-axis IMU, int16", 6, "int16"),
        Sensor("imu6_float32", "6-axis IMU, float32", 6, "float32"),
        Sensor("accel3_int16", "3-axis accelerometer, int16", 3, "int16"),
        Sensor("accel3_float32", "3-axis accelerometer, float32", 3, "float32"),
        Sensor("mic_int16", "mono microphone, int16", 1, "int16"),
        Sensor("mic_float32", "mono microphone, float32", 1, "float32"),
    )
}

DEFAULT_BAUDS = (115_200, 921_600, 2_000_000)
DEFAULT_SPF = (1, 10, 50)
DEFAULT_RATES = (100, 1_000, 16_000)
DEFAULT_HEADROOM = 0.8


def cobs_overhead(n: int) -> int:
    """Worst-case bytes COBS adds to n bytes: 1, plus 1 per 254 (the spec's bound, as in codec.MAX_ENCODED)."""
    return n // 254 + 1


def wire_bytes(payload: int) -> int:
    """Worst-case bytes on the wire for one frame: COBS(header + payload + CRC) + 0x00."""
    frame = HEADER_SIZE + payload + CRC_SIZE
    return frame + cobs_overhead(frame) + DELIMITER


def max_rate(sensor: Sensor, spf: int, baud: int, bits_per_byte: int, utilisation: float = 1.0) -> float:
    """Highest sample rate (Hz) whose frames use at most `utilisation` of the link."""
    bytes_per_second = baud / bits_per_byte * utilisation
    return bytes_per_second * spf / wire_bytes(spf * sensor.bytes_per_sample)


def link_utilisation(sensor: Sensor, spf: int, rate: float, baud: int, bits_per_byte: int) -> float:
    """Fraction of the link's bit rate used at `rate` Hz (frames of `spf` samples)."""
    return rate / spf * wire_bytes(spf * sensor.bytes_per_sample) * bits_per_byte / baud


def _floor(value: float) -> int:
    """Round a rate down (a rate that fits), ignoring float noise: 39999.999999 -> 40000."""
    return math.floor(value + 1e-6)


def _hz(value: float) -> str:
    return f"{value:,.0f} Hz" if value >= 1000 else f"{value:g} Hz"


def _pct(fraction: float, headroom: float) -> str:
    text = f"{fraction * 100:.1f} %" if fraction < 10 else f"{fraction * 100:,.0f} %"
    if fraction > 1:
        return f"{text} (no)"
    if fraction > headroom:
        return f"{text} (tight)"
    return text


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---:" if r else "---" for r in right) + " |"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def report(
    sensors: Sequence[Sensor],
    spfs: Sequence[int],
    bauds: Sequence[int],
    rates: Sequence[float],
    headroom: float,
    bits_per_byte: int,
) -> str:
    lines = [
        f"Per frame: {HEADER_SIZE} B header + payload + {CRC_SIZE} B CRC-32, COBS worst case "
        f"(1 + n // 254 for n = header + payload + CRC), + {DELIMITER} B delimiter 0x00. "
        f"{bits_per_byte} bits on the wire per byte.",
        "",
        "### Bytes per frame",
        "",
    ]
    rows = []
    for sensor in sensors:
        for spf in spfs:
            payload = spf * sensor.bytes_per_sample
            wire = wire_bytes(payload)
            rows.append(
                [
                    sensor.label,
                    str(sensor.bytes_per_sample),
                    str(spf),
                    f"{payload:,}",
                    f"{wire:,}",
                    f"{wire - payload:,}",
                    f"{wire / spf:.2f}",
                    f"{payload / wire * 100:.0f} %",
                ]
            )
    lines += _table(
        [
            "sensor",
            "bytes/sample",
            "samples/frame",
            "payload B",
            "wire B/frame",
            "overhead B",
            "wire B/sample",
            "payload share",
        ],
        rows,
        [False] + [True] * 7,
    )
    for baud in bauds:
        lines += [
            "",
            f"### {baud:,} baud ({baud / bits_per_byte:,.0f} bytes/s)",
            "",
        ]
        rows = []
        for sensor in sensors:
            for spf in spfs:
                rows.append(
                    [
                        sensor.label,
                        str(spf),
                        _hz(_floor(max_rate(sensor, spf, baud, bits_per_byte))),
                        _hz(_floor(max_rate(sensor, spf, baud, bits_per_byte, headroom))),
                        *(_pct(link_utilisation(sensor, spf, r, baud, bits_per_byte), headroom) for r in rates),
                    ]
                )
        lines += _table(
            [
                "sensor",
                "samples/frame",
                "max rate (100 %)",
                f"max rate (<= {headroom * 100:g} %)",
                *(f"use at {_hz(r)}" for r in rates),
            ],
            rows,
            [False] + [True] * (3 + len(rates)),
        )
    lines += [
        "",
        f"(no): does not fit (over 100 %). (tight): fits, but above the {headroom * 100:g} % headroom.",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Print, as Markdown tables, the worst-case bytes per frame of the edge_runtime serial protocol, "
            "the highest sample rate that fits each UART baud rate, and the link utilisation at common rates."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--baud", type=int, nargs="+", metavar="BAUD", default=list(DEFAULT_BAUDS), help="UART baud rates"
    )
    parser.add_argument(
        "--samples-per-frame",
        type=int,
        nargs="+",
        metavar="N",
        default=list(DEFAULT_SPF),
        help="samples per channel per frame",
    )
    parser.add_argument(
        "--rates",
        type=float,
        nargs="+",
        metavar="HZ",
        default=list(DEFAULT_RATES),
        help="sample rates (Hz) to show utilisation at",
    )
    parser.add_argument(
        "--sensors",
        nargs="+",
        metavar="SENSOR",
        choices=list(SENSORS),
        default=list(SENSORS),
        help=f"which sensor formats to show: {', '.join(SENSORS)}",
    )
    parser.add_argument(
        "--headroom", type=float, default=DEFAULT_HEADROOM, help="utilisation to stay below, 0..1 (above it: (tight))"
    )
    parser.add_argument(
        "--bits-per-byte", type=int, default=10, help="UART bits per byte: 10 for 8N1, 11 for 8E1 or 8N2"
    )
    args = parser.parse_args(argv)
    if any(b <= 0 for b in args.baud) or any(r <= 0 for r in args.rates) or args.bits_per_byte < 9:
        parser.error("baud rates and sample rates must be positive, bits per byte at least 9")
    if not 0 < args.headroom <= 1:
        parser.error("--headroom must be in (0, 1]")
    for spf in args.samples_per_frame:
        for key in args.sensors:
            payload = spf * SENSORS[key].bytes_per_sample
            if not 1 <= spf <= MAX_SAMPLES or payload > MAX_PAYLOAD:
                parser.error(f"{spf} samples of {key} ({payload} B) do not fit one frame (max {MAX_PAYLOAD} B)")
    return args


def main(argv: list[str] | None = None) -> int:
    # The worst case used here is the one the receiver is sized for.
    assert wire_bytes(MAX_PAYLOAD) == MAX_ENCODED + DELIMITER and MAX_FRAME == HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE
    args = parse_args(argv)
    print(
        report(
            [SENSORS[k] for k in args.sensors],
            args.samples_per_frame,
            args.baud,
            args.rates,
            args.headroom,
            args.bits_per_byte,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
