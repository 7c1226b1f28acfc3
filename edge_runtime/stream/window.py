"""Sliding windows over a preallocated, mirrored ring buffer: windows are views, never copies.

Every sample is written twice, at ``i`` and ``i + capacity``, so that any window of up
to ``capacity`` samples is one contiguous slice of the buffer. That second write (of
``channels`` values per sample) buys views with no wrap-around case and no copy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import ArgumentError, StreamError


class SlidingWindow:
    """Windows of ``size`` samples every ``hop`` samples, over one stream.

    ``push(values, timestamp_us, interval_us, on_window=...)`` writes all of a frame's
    samples before it returns and calls ``on_window(view, last_timestamp_us)`` for every
    window they complete, in order (``windows - 1`` is that window's number). ``view`` is
    a read-only ``(size, channels)`` slice of the ring, no copy: valid until
    ``capacity - size`` more samples are written (at least one hop), which in practice
    means until ``on_window`` returns: copy what must be kept (``WindowQueue.put`` does).
    Memory: the ring, ``2 x capacity x channels`` values, allocated once.
    """

    def __init__(self, size: int, hop: int, channels: int, dtype: npt.DTypeLike, capacity: int | None = None) -> None:
        if size < 1 or hop < 1 or channels < 1:
            raise ArgumentError(f"window size, hop and channels must be >= 1 (got {size}, {hop}, {channels})")
        self.size = size
        self.hop = hop
        self.channels = channels
        self.capacity = capacity or size + hop
        if self.capacity < max(size, hop):
            raise ArgumentError(f"capacity {self.capacity} must hold a window ({size}) and a hop ({hop})")
        self._buf = np.zeros((2 * self.capacity, channels), dtype=dtype)
        self._ro = self._buf.view()
        self._ro.flags.writeable = False
        self.count = 0  # samples pushed, ever
        self._next_end = size  # sample count at which the next window completes
        self.windows = 0  # windows completed, ever
        self._pushing = False

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._buf.dtype

    def reset(self) -> None:
        """Start over (after a gap in the stream): the next window needs ``size`` new samples."""
        self._next_end = self.count + self.size

    def push(
        self,
        values: npt.NDArray[Any],
        timestamp_us: int = 0,
        interval_us: int = 0,
        *,
        on_window: Callable[[npt.NDArray[Any], int], object],
    ) -> int:
        """Write ``values`` (n, channels); call ``on_window(view, t)`` for each window completed; return how many.

        ``timestamp_us`` is the time of ``values[0]`` and ``interval_us`` the sample period:
        ``t`` is the time of the window's last sample. Allocates nothing that grows with the
        values (a few view objects per window; samples are slice-written into the ring).

        If ``on_window`` raises, the exception propagates at once and the samples after that
        window's last one are not written (``count`` says how many were). Calling ``push``
        again from inside ``on_window`` raises ``StreamError``.
        """
        if values.ndim != 2 or values.shape[1] != self.channels:
            raise ArgumentError(f"expected (samples, {self.channels}) values, got {values.shape}")
        if self._pushing:
            raise StreamError("SlidingWindow.push called from inside its own on_window callback")
        n = values.shape[0]
        done = 0
        completed = 0
        cap = self.capacity
        self._pushing = True
        try:
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
                    completed += 1
                    on_window(self._ro[start : start + self.size], timestamp_us + (done - 1) * interval_us)
        finally:
            self._pushing = False
        return completed
