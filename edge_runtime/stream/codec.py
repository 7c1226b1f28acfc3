"""The serial wire protocol (firmware_notes/serial_protocol.md), sans-IO.

``encode_frame`` turns a frame into wire bytes; ``FrameDecoder`` is fed bytes and
hands back frames. Neither touches a port, a clock or a thread. The decoder owns two
preallocated buffers (encoded bytes waiting for their 0x00, and the decoded frame);
it never grows them, whatever it is fed.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

VERSION = 1
HEADER = struct.Struct("<BBBBHHIIQ")  # version, stream, dtype, channels, samples, flags, seq, interval_us, ts_us
HEADER_SIZE = HEADER.size  # 24
CRC_SIZE = 4
MAX_PAYLOAD = 65536
MAX_FRAME = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE  # decoded: 65,564 bytes
MAX_ENCODED = MAX_FRAME + MAX_FRAME // 254 + 1  # COBS worst case, without the 0x00
FLAG_START = 0x0001

#: Protocol dtype code -> little-endian NumPy dtype.
DTYPES: dict[int, np.dtype[Any]] = {
    0: np.dtype("i1"),
    1: np.dtype("u1"),
    2: np.dtype("<i2"),
    3: np.dtype("<u2"),
    4: np.dtype("<i4"),
    5: np.dtype("<f4"),
}
DTYPE_CODES: dict[str, int] = {dt.name: code for code, dt in DTYPES.items()}

_CRC = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame.

    ``payload`` is the raw sample bytes. From ``FrameDecoder.feed`` it is a read-only
    view of the decoder's buffer, valid only until the next ``feed`` call: copy what
    must outlive it (``samples()`` shows it as an array without copying).
    """

    stream_id: int
    seq: int
    timestamp_us: int
    interval_us: int
    dtype: np.dtype[Any]
    channels: int
    samples: int
    payload: memoryview | bytes
    flags: int = 0

    def values(self) -> npt.NDArray[Any]:
        """The payload as a (samples, channels) array: a view, no copy (same lifetime as ``payload``)."""
        return np.frombuffer(self.payload, dtype=self.dtype).reshape(self.samples, self.channels)

    @property
    def last_timestamp_us(self) -> int:
        """Sensor time of the frame's last sample (its first sample's for an empty frame)."""
        return self.timestamp_us + max(self.samples - 1, 0) * self.interval_us


def make_frame(
    values: npt.ArrayLike,
    *,
    stream_id: int = 0,
    seq: int = 0,
    timestamp_us: int = 0,
    interval_us: int = 0,
    flags: int = 0,
) -> Frame:
    """A frame holding ``values`` (shape (samples, channels), or (samples,) for one channel)."""
    arr = np.asarray(values)
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2:
        raise ValueError(f"values must be (samples, channels), got shape {arr.shape}")
    le = arr.dtype.newbyteorder("<") if arr.dtype.itemsize > 1 else arr.dtype
    if le.name not in DTYPE_CODES:
        raise ValueError(f"dtype {arr.dtype} is not in the protocol ({', '.join(DTYPE_CODES)})")
    payload = np.ascontiguousarray(arr, dtype=le).tobytes()
    return Frame(stream_id, seq, timestamp_us, interval_us, np.dtype(le), arr.shape[1], arr.shape[0], payload, flags)


def encode_frame(frame: Frame) -> bytes:
    """The wire bytes of ``frame``: COBS(header + payload + CRC-32) followed by 0x00."""
    payload = bytes(frame.payload)
    for name, value, top in (
        ("samples", frame.samples, 0xFFFF),
        ("channels", frame.channels, 0xFF),
        ("stream_id", frame.stream_id, 0xFF),
        ("interval_us", frame.interval_us, 0xFFFFFFFF),
        ("timestamp_us", frame.timestamp_us, 2**64 - 1),
        ("flags", frame.flags, 0xFFFF),
    ):
        if not 0 <= value <= top:
            raise ValueError(f"{name} {value} out of range 0..{top}")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds the protocol maximum {MAX_PAYLOAD}")
    if len(payload) != frame.samples * frame.channels * frame.dtype.itemsize:
        raise ValueError("payload length does not match samples * channels * dtype size")
    code = DTYPE_CODES[frame.dtype.name]
    header = HEADER.pack(
        VERSION,
        frame.stream_id,
        code,
        frame.channels,
        frame.samples,
        frame.flags,
        frame.seq & 0xFFFFFFFF,
        frame.interval_us,
        frame.timestamp_us,
    )
    body = header + payload
    return cobs_encode(body + _CRC.pack(zlib.crc32(body))) + b"\x00"


def cobs_encode(data: bytes) -> bytes:
    """COBS-encode ``data`` (no trailing 0x00). Allocates the result.

    A run of 254 non-zero bytes becomes a 0xFF block; when such a block ends the data,
    no closing code follows (the form the ``cobs`` package writes; decoders accept both).
    """
    out = bytearray()
    n = len(data)
    idx = 0
    while True:
        zero = data.find(0, idx, min(idx + 254, n))
        if zero >= 0:
            out.append(zero - idx + 1)
            out += data[idx:zero]
            idx = zero + 1
            continue
        end = min(idx + 254, n)
        if end - idx == 254:
            out.append(0xFF)
            out += data[idx:end]
            idx = end
            if idx == n:
                break
            continue
        out.append(end - idx + 1)
        out += data[idx:end]
        break
    return bytes(out)


def cobs_decode_into(src: memoryview | bytearray | bytes, n: int, dst: bytearray | memoryview) -> int:
    """Decode ``src[:n]`` (COBS, no 0x00) into ``dst``; return the decoded length, or -1 if invalid.

    Writes only into ``dst`` (preallocated; never grown: a frame that would not fit is
    invalid) and allocates nothing that grows with ``n``.
    """
    # Slice-assigning into a bytearray copies the source into a temporary first (CPython
    # converts any non-bytearray source); into a memoryview it is a plain memcpy.
    if isinstance(dst, bytearray):
        dst = memoryview(dst)
    if not isinstance(src, memoryview):
        src = memoryview(src)
    cap = len(dst)
    i = 0
    o = 0
    while i < n:
        code = src[i]
        if code == 0:
            return -1
        i += 1
        block = code - 1
        if i + block > n or o + block > cap:
            return -1
        dst[o : o + block] = src[i : i + block]
        o += block
        i += block
        if code != 0xFF and i < n:
            if o >= cap:
                return -1
            dst[o] = 0
            o += 1
    return o


@dataclass
class DecoderStats:
    """What the decoder saw. Every counter only grows."""

    frames: int = 0
    bytes: int = 0
    crc_errors: int = 0
    malformed: int = 0
    oversize: int = 0
    gaps: int = 0
    last_seq: dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if isinstance(v, int)}


class FrameDecoder:
    """Feed it bytes, get frames. Resynchronises at every 0x00; never grows its buffers.

    ``feed(data)`` returns an iterator of ``Frame``; each frame's payload is a view of
    the decoder's own buffer, valid until the next frame is produced or ``feed`` is
    called again. Use it as ``for frame in decoder.feed(chunk): ...`` and copy what
    must be kept.
    """

    def __init__(self, max_encoded: int = MAX_ENCODED) -> None:
        self._pending = bytearray(max_encoded)  # encoded bytes of the frame being received
        self._pending_view = memoryview(self._pending)
        self._n = 0
        self._discarding = False  # dropping an oversize frame up to its 0x00
        self._out = bytearray(MAX_FRAME)
        self._out_view = memoryview(self._out)
        self._out_ro = self._out_view.toreadonly()  # what frames see: payloads are read-only
        self._fed: bytes | bytearray | None = None
        self._fed_view = memoryview(b"")
        self.stats = DecoderStats()

    def reset(self) -> None:
        """Forget a partly received frame (after a reconnect); counters stay."""
        self._n = 0
        self._discarding = False

    def feed(self, data: bytes | bytearray, start: int = 0, end: int | None = None) -> Iterator[Frame]:
        """Consume ``data[start:end]``; yield every complete, valid frame it finishes.

        Reads ``data`` in place (no slice copies): pass the reader's own buffer and the
        number of bytes read.
        """
        stop = len(data) if end is None else end
        self.stats.bytes += stop - start
        if data is not self._fed:  # the reader passes the same buffer every time: one view for it
            self._fed, self._fed_view = data, memoryview(data)
        view = self._fed_view
        pending = self._pending_view  # memoryview: slice assignment without a temporary copy
        cap = len(pending)
        pos = start
        while pos < stop:
            zero = data.find(0, pos, stop)
            chunk_end = stop if zero < 0 else zero
            chunk = chunk_end - pos
            if self._discarding:
                pass
            elif self._n + chunk > cap:
                self.stats.oversize += 1
                self._discarding = True
                self._n = 0
            else:
                pending[self._n : self._n + chunk] = view[pos:chunk_end]
                self._n += chunk
            if zero < 0:
                return
            pos = zero + 1
            if self._discarding:
                self._discarding = False
                continue
            n, self._n = self._n, 0
            if n == 0:
                continue  # back-to-back delimiters: an empty frame, ignored
            frame = self._decode(n)
            if frame is not None:
                yield frame

    def _decode(self, n: int) -> Frame | None:
        stats = self.stats
        length = cobs_decode_into(self._pending_view, n, self._out_view)
        if length < HEADER_SIZE + CRC_SIZE:
            stats.malformed += 1
            return None
        out = self._out_view
        body = out[: length - CRC_SIZE]
        if zlib.crc32(body) != _CRC.unpack_from(out, length - CRC_SIZE)[0]:
            stats.crc_errors += 1
            return None
        version, stream, code, channels, samples, flags, seq, interval, ts = HEADER.unpack_from(out, 0)
        dtype = DTYPES.get(code)
        payload_len = length - HEADER_SIZE - CRC_SIZE
        if version != VERSION or dtype is None or channels == 0 or samples * channels * dtype.itemsize != payload_len:
            stats.malformed += 1
            return None
        last = stats.last_seq.get(stream)
        if last is not None and not flags & FLAG_START:
            missing = (seq - last - 1) & 0xFFFFFFFF
            if missing < 0x80000000:  # a jump backwards (duplicate, reorder) is not a gap
                stats.gaps += missing
        stats.last_seq[stream] = seq
        stats.frames += 1
        payload = self._out_ro[HEADER_SIZE : HEADER_SIZE + payload_len]
        return Frame(stream, seq, ts, interval, dtype, channels, samples, payload, flags)
