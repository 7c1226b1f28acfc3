"""Sliding windows over a preallocated, mirrored ring buffer: windows are views, never copies.

Every sample is written twice, at ``i`` and ``i + capacity``, so that any window of up
to ``capacity`` samples is one contiguous slice of the buffer. That second write (of
``channels`` values per sample) buys views with no wrap-around case and no copy.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt


class SlidingWindow:
    """Windows of ``size`` samples every ``hop`` samples, over one stream.

    ``push(values, timestamp_us, interval_us)`` writes a frame's samples and yields,
    for every window they complete, ``(view, last_timestamp_us)``: ``view`` is a
    read-only ``(size, channels)`` slice of the ring, valid until ``capacity - size``
    more samples are pushed (at least one hop: consume or copy it before pushing on).
    """

    def __init__(self, size: int, hop: int, channels: int, dtype: npt.DTypeLike, capacity: int | None = None) -> None:
        if size < 1 or hop < 1 or channels < 1:
            raise ValueError(f"window size, hop and channels must be >= 1 (got {size}, {hop}, {channels})")
        self.size = size
        self.hop = hop
        self.channels = channels
        self.capacity = capacity or size + hop
        if self.capacity < max(size, hop):
            raise ValueError(f"capacity {self.capacity} must hold a window ({size}) and a hop ({hop})")
        self._buf = np.zeros((2 * self.capacity, channels), dtype=dtype)
        self._ro = self._buf.view()
        self._ro.flags.writeable = False
        self.count = 0  # samples pushed, ever
        self._next_end = size  # sample count at which the next window completes
        self.windows = 0

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._buf.dtype

    def reset(self) -> None:
        """Start over (after a gap in the stream): the next window needs ``size`` new samples."""
        self._next_end = self.count + self.size

    def push(
        self, values: npt.NDArray[Any], timestamp_us: int = 0, interval_us: int = 0
    ) -> Iterator[tuple[npt.NDArray[Any], int]]:
        """Write ``values`` (n, channels); yield each completed window and its last sample's time."""
        n = values.shape[0]
        if values.ndim != 2 or values.shape[1] != self.channels:
            raise ValueError(f"expected (samples, {self.channels}) values, got {values.shape}")
        done = 0
        cap = self.capacity
        while done < n:
            # Write up to the next window end (or the end of the values).
            take = min(n - done, self._next_end - self.count)
            pos = self.count % cap
            first = min(take, cap - pos)
            chunk = values[done : done + first]
            self._buf[pos : pos + first] = chunk
            self._buf[pos + cap : pos + cap + first] = chunk
            if first < take:  # wrapped: the rest goes to the start (and its mirror)
                rest = values[done + first : done + take]
                self._buf[0 : take - first] = rest
                self._buf[cap : cap + take - first] = rest
            self.count += take
            done += take
            if self.count == self._next_end:
                start = (self.count - self.size) % cap
                self._next_end += self.hop
                self.windows += 1
                yield self._ro[start : start + self.size], timestamp_us + (done - 1) * interval_us
