"""The serial wire protocol (firmware_notes/serial_protocol.md), sans-IO.

``encode_frame`` turns a frame into wire bytes; ``FrameDecoder`` is fed bytes and
calls back with each frame they complete (and, with ``on_reply``, with the body of
each reply to a host command: see ``command.py``). Neither touches a port, a clock or
a thread.
The decoder owns two preallocated buffers (encoded bytes waiting for their 0x00, and
the decoded frame); it never grows them, whatever it is fed. Zero-dense frames (every
0x00 of the data is a COBS block) are decoded by a vectorised NumPy path, see
``cobs_decode_into``.
"""

from __future__ import annotations

import struct
import zlib
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import ArgumentError, StreamError

VERSION = 1
HEADER = struct.Struct("<BBBBHHIIQ")  # version, stream, dtype, channels, samples, flags, seq, interval_us, ts_us
HEADER_SIZE = HEADER.size  # 24
CRC_SIZE = 4
MAX_PAYLOAD = 65536
MAX_FRAME = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE  # decoded: 65,564 bytes
MAX_ENCODED = MAX_FRAME + MAX_FRAME // 254 + 1  # COBS worst case, without the 0x00
FLAG_START = 0x0001
#: First byte of a command frame (host -> device) and of a reply frame (device -> host):
#: the same framing as data frames, told apart by that byte (``VERSION`` for data).
COMMAND_TYPE = 0x81
REPLY_TYPE = 0x82
#: Bodies (without the CRC) of a command and of a reply, bytes; see ``command.py``.
COMMAND_SIZE = 16
REPLY_SIZE = 32

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

    ``payload`` is the raw sample bytes. In ``FrameDecoder.feed``'s ``on_frame`` callback
    it is a read-only view of the decoder's buffer, valid only until the callback
    returns: copy what must outlive it (``values()`` shows it as an array without
    copying). Frames from ``FrameDecoder.decode_all`` and ``make_frame`` own ``bytes``.
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
        raise ArgumentError(f"values must be (samples, channels), got shape {arr.shape}")
    le = arr.dtype.newbyteorder("<") if arr.dtype.itemsize > 1 else arr.dtype
    if le.name not in DTYPE_CODES:
        raise ArgumentError(f"dtype {arr.dtype} is not in the protocol ({', '.join(DTYPE_CODES)})")
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
            raise ArgumentError(f"{name} {value} out of range 0..{top}")
    if len(payload) > MAX_PAYLOAD:
        raise ArgumentError(f"payload of {len(payload)} bytes exceeds the protocol maximum {MAX_PAYLOAD}")
    if len(payload) != frame.samples * frame.channels * frame.dtype.itemsize:
        raise ArgumentError("payload length does not match samples * channels * dtype size")
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


#: The Python walk decodes ``_ROUND`` blocks at a time; a round that covers fewer than
#: ``_ROUND * _DENSE`` encoded bytes (short blocks: a zero-dense payload) hands the rest,
#: if at least ``_MIN_REST`` bytes, to the vectorised path.
_ROUND = 32
_DENSE = 24
_MIN_REST = 128


class DecodeScratch:
    """Work arrays of the vectorised path of ``cobs_decode_into``, for inputs of up to ``capacity`` bytes.

    Three index arrays (8 bytes per encoded byte each), a constant ``arange`` (8 bytes per
    byte) and one byte per byte: about 33 x ``capacity`` bytes (2.2 MB for
    ``MAX_ENCODED``), allocated the first time a zero-dense frame needs them and reused
    after that. Not thread-safe: one per decoder (``FrameDecoder`` owns one).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._arrays: tuple[npt.NDArray[np.intp], ...] | None = None
        self._codes: npt.NDArray[np.uint8] | None = None

    def arrays(self) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """``(arange, a, b, chain)``, each ``capacity + 2`` long."""
        if self._arrays is None:
            size = self.capacity + 2
            self._arrays = (np.arange(size, dtype=np.intp), *(np.empty(size, np.intp) for _ in range(3)))
        ar, a, b, chain = self._arrays
        return ar, a, b, chain

    def codes(self) -> npt.NDArray[np.uint8]:
        if self._codes is None:
            self._codes = np.empty(self.capacity + 2, np.uint8)
        return self._codes


def cobs_decode_into(
    src: memoryview | bytearray | bytes, n: int, dst: bytearray | memoryview, scratch: DecodeScratch | None = None
) -> int:
    """Decode ``src[:n]`` (COBS, no 0x00) into ``dst``; return the decoded length, or -1 if invalid.

    Invalid: a 0x00 where a code byte is due, a block running past ``n`` (the chain of
    code bytes must land exactly on ``n``), or output longer than ``dst`` (preallocated,
    never grown). ``src`` and ``dst`` must not overlap. Writes only into ``dst[:length]``
    (on -1 its contents are unspecified).

    Two paths, one result. Blocks are decoded in Python, one slice copy each, which is
    fast while blocks are long (float noise: a block per ~130 bytes, ~450 MB/s of payload
    here). Once a round of ``_ROUND`` blocks averages under ``_DENSE`` bytes (small
    integers, zeros: every 0x00 in the data ends a block), the rest is decoded with NumPy:
    pointer doubling over ``next[i] = i + src[i]`` finds the code positions (log2(blocks)
    passes over the rest), then one copy of ``src`` with those positions turned into 0x00
    (or, after a 0xFF block, removed). That path works in index arrays of about 33 bytes
    per encoded byte: in ``scratch`` if given (allocated once, reused: no allocation that
    grows with the frame), else allocated for this call and freed (about 1.5x slower).
    64 KiB of all zeros decodes at ~70 MB/s instead of 3.5 MB/s, of int16 samples in
    [-50, 50] at ~80 instead of 13 (``python scripts/bench_stream.py --decode-only``).
    """
    if not 0 <= n <= len(src):
        raise ArgumentError(f"n {n} out of range 0..{len(src)}")
    # Slice-assigning into a bytearray copies the source into a temporary first (CPython
    # converts any non-bytearray source); into a memoryview it is a plain memcpy.
    if not isinstance(dst, memoryview):
        dst = memoryview(dst)
    if not isinstance(src, memoryview):
        src = memoryview(src)
    i = 0
    o = 0
    try:
        while i < n:
            round_start = i
            for _ in range(_ROUND):
                code = src[i]
                if not code:
                    return -1
                end = i + code
                if end > n:
                    return -1
                # Too long for dst: the slice assignment raises ValueError, dst[o] IndexError.
                dst[o : o + code - 1] = src[i + 1 : end]
                o += code - 1
                i = end
                if i == n:
                    return o
                if code != 0xFF:
                    dst[o] = 0
                    o += 1
            if i - round_start < _ROUND * _DENSE and n - i >= _MIN_REST:
                break  # zero-dense: the rest goes to NumPy (o >= 1 here: a block ended before i)
        else:
            return o
    except (ValueError, IndexError):
        return -1
    if scratch is None or scratch.capacity < n - i:
        scratch = DecodeScratch(n - i)
    return _decode_dense(src, i, n, dst, o, scratch)


def _decode_dense(src: memoryview, start: int, n: int, dst: memoryview, o: int, scratch: DecodeScratch) -> int:
    """``cobs_decode_into`` from the code byte at ``src[start]`` on, output from ``dst[o]`` (``o >= 1``).

    Positions are relative to ``start``; ``k = n - start`` bytes. ``a[i]`` starts as the next
    code position after a code at ``i``: ``i + src[i]``, with two fixed points, ``k`` (landed
    exactly on the end: valid) and ``k + 1`` (jumped past it: invalid); a 0x00 code makes
    ``i`` a fixed point of its own. Each pass squares ``a`` (``a = a[a]``: ``2^j`` steps),
    and ``chain[:2^j]`` (the first ``2^j`` code positions) doubles with ``a[chain[:2^j]]``.
    """
    k = n - start
    rest = np.frombuffer(src, np.uint8, k, start)
    ar, a_full, b_full, chain = scratch.arrays()
    a = a_full[: k + 2]
    b = b_full[: k + 2]
    a[:k] = rest  # then add in int64: a mixed-type add would allocate a 64 KiB casting buffer
    a[:k] += ar[:k]
    np.minimum(a[:k], k + 1, out=a[:k])
    a[k] = k
    a[k + 1] = k + 1
    chain[0] = 0
    filled = 1
    while True:
        take = min(filled, k + 1 - filled)  # k + 1 positions at most: 0..k-1 and the end
        a.take(chain[:take], out=chain[filled : filled + take], mode="clip")
        filled += take
        last = int(chain[filled - 1])
        if last >= k or filled > k:  # at an end, or (a 0x00 code) stuck
            break
        a.take(a, out=b, mode="clip")
        a, b = b, a
    if last != k:
        return -1
    blocks = bisect_left(chain.data[:filled], k)  # chain: increasing, then k repeated
    pos = chain[:blocks]  # code positions, increasing, pos[0] == 0
    codes = scratch.codes()[: blocks - 1]  # the codes of every block but the last
    rest.take(pos[:-1], out=codes, mode="clip")
    out = np.frombuffer(dst, np.uint8)
    if blocks == 1 or int(codes.max()) != 0xFF:
        length = k - 1  # each code after the first becomes the 0x00 ending the block before it
        if o + length > len(out):
            return -1
        out[o : o + length] = rest[1:]
        out[o - 1 : o + length][pos[1:]] = 0  # rest[p] lands at out[o - 1 + p]
        return o + length
    # Some block before the last is a 0xFF block: the code after it is dropped, not zeroed.
    full = codes == 0xFF
    length = k - 1 - int(np.count_nonzero(full))
    if o + length > len(out):
        return -1
    zeros = pos[1:] - 1  # in rest[1:]
    keep = np.ones(k - 1, dtype=bool)
    keep[zeros[full]] = False
    window = out[o : o + length]
    np.compress(keep, rest[1:], out=window)
    kept = ~full
    window[zeros[kept] - np.cumsum(full)[kept]] = 0  # shifted left by the dropped codes before each
    return o + length


@dataclass
class DecoderStats:
    """What the decoder saw. Every counter only grows."""

    frames: int = 0
    bytes: int = 0
    crc_errors: int = 0
    malformed: int = 0
    oversize: int = 0
    gaps: int = 0
    replies: int = 0  # reply frames (first byte 0x82, CRC good, 32 bytes), handed to on_reply
    restarts: int = 0  # frames with FLAG_START: the sender (re)started (boot or reset), its sequence anew
    last_seq: dict[int, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if isinstance(v, int)}


class FrameDecoder:
    """Feed it bytes, get frames. Resynchronises at every 0x00; never grows its buffers.

    ``feed(data, on_frame=...)`` consumes all of ``data`` before it returns and calls
    ``on_frame(frame)`` for each valid frame it completes, in order; each frame's payload
    is a read-only view of the decoder's own buffer, valid only during that call (copy
    what must be kept). ``decode_all(data)`` returns frames that own copies instead.

    Reply frames (first byte ``REPLY_TYPE``, 0x82: a device answering a command) with a
    good CRC and the reply's length are not data: they are counted in ``stats.replies``
    and their 32-byte body (a copy, ``bytes``) is passed to ``on_reply`` if set (a
    settable attribute: ``CommandChannel.deliver`` takes it), else dropped. Only frames
    that fail the data checks are looked at for this, so data frames cost nothing more.

    Memory: the encoded bytes of the frame being received (``max_encoded``) and the
    decoded frame (``MAX_FRAME``), preallocated; for zero-dense frames, also the
    ``DecodeScratch`` of the vectorised decoder (~33 x ``max_encoded``), allocated the
    first time one arrives.
    """

    def __init__(self, max_encoded: int = MAX_ENCODED, *, on_reply: Callable[[bytes], object] | None = None) -> None:
        self.on_reply = on_reply
        self._pending = bytearray(max_encoded)  # encoded bytes of the frame being received
        self._pending_view = memoryview(self._pending)
        self._n = 0
        self._discarding = False  # dropping an oversize frame up to its 0x00
        self._out = bytearray(MAX_FRAME)
        self._out_view = memoryview(self._out)
        self._out_ro = self._out_view.toreadonly()  # what frames see: payloads are read-only
        self._fed: bytes | bytearray | None = None
        self._fed_view = memoryview(b"")
        self._scratch = DecodeScratch(max_encoded)
        self._feeding = False
        self.stats = DecoderStats()

    def reset(self) -> None:
        """Forget a partly received frame (after a reconnect); counters stay."""
        self._n = 0
        self._discarding = False

    def feed(
        self,
        data: bytes | bytearray,
        start: int = 0,
        end: int | None = None,
        *,
        on_frame: Callable[[Frame], object],
    ) -> int:
        """Consume ``data[start:end]``, calling ``on_frame(frame)`` for every valid frame it completes.

        Returns the number of frames handed to ``on_frame``. All the bytes are consumed
        (and counted in ``stats.bytes``) before ``feed`` returns; an unfinished frame waits
        for the next call. ``frame.payload`` views the decoder's buffer and is valid only
        until ``on_frame`` returns. Reads ``data`` in place (no slice copies): pass the
        reader's own buffer and the number of bytes read. Nothing here allocates memory that
        grows with the frame, except the vectorised decoder's scratch the first time a
        zero-dense frame arrives.

        If ``on_frame`` raises, the exception propagates at once; the bytes after that
        frame's 0x00 are then not consumed (nor counted). Calling ``feed`` again from inside
        ``on_frame`` raises ``StreamError``.
        """
        stop = len(data) if end is None else end
        if not 0 <= start <= stop <= len(data):
            raise ArgumentError(f"start {start} and end {end} out of range for {len(data)} bytes")
        if self._feeding:
            raise StreamError("FrameDecoder.feed called from inside its own on_frame callback")
        if data is not self._fed:  # the reader passes the same buffer every time: one view for it
            self._fed, self._fed_view = data, memoryview(data)
        view = self._fed_view
        pending = self._pending_view  # memoryview: slice assignment without a temporary copy
        cap = len(pending)
        frames = 0
        pos = start
        self._feeding = True
        try:
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
                    pos = stop
                    break
                pos = zero + 1
                if self._discarding:
                    self._discarding = False
                    continue
                n, self._n = self._n, 0
                if n == 0:
                    continue  # back-to-back delimiters: an empty frame, ignored
                frame = self._decode(n)
                if frame is not None:
                    frames += 1
                    on_frame(frame)
        finally:
            self._feeding = False
            self.stats.bytes += pos - start
        return frames

    def decode_all(self, data: bytes | bytearray, start: int = 0, end: int | None = None) -> list[Frame]:
        """``feed``, collecting the frames; each owns a copy of its payload (``bytes``). For tests and simple use."""
        frames: list[Frame] = []
        self.feed(data, start, end, on_frame=lambda f: frames.append(replace(f, payload=bytes(f.payload))))
        return frames

    def _decode(self, n: int) -> Frame | None:
        stats = self.stats
        length = cobs_decode_into(self._pending_view, n, self._out_view, self._scratch)
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
            if version == REPLY_TYPE and length == REPLY_SIZE + CRC_SIZE:  # not data: a reply to a command
                stats.replies += 1
                if self.on_reply is not None:
                    self.on_reply(bytes(out[:REPLY_SIZE]))
                return None
            stats.malformed += 1
            return None
        if flags & FLAG_START:
            stats.restarts += 1
        else:
            last = stats.last_seq.get(stream)
            if last is not None:
                missing = (seq - last - 1) & 0xFFFFFFFF
                if missing < 0x80000000:  # a jump backwards (duplicate, reorder) is not a gap
                    stats.gaps += missing
        stats.last_seq[stream] = seq
        stats.frames += 1
        payload = self._out_ro[HEADER_SIZE : HEADER_SIZE + payload_len]
        return Frame(stream, seq, ts, interval, dtype, channels, samples, payload, flags)
