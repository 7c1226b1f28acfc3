"""A bounded queue of windows between the reader thread and inference, with a drop policy.

Slots are preallocated: ``put`` copies a window into a free slot (the reader can then
overwrite its ring buffer), ``get`` hands the consumer a slot to read in place, and
``release`` gives it back. Memory is ``slots x size x channels`` and never grows.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

DROP_OLDEST = "drop-oldest"
BLOCK = "block"
POLICIES = (DROP_OLDEST, BLOCK)


@dataclass
class Slot:
    """One queued window. ``data`` is owned by the queue; read it between ``get`` and ``release``."""

    index: int
    data: npt.NDArray[Any]
    stream_id: int = 0
    seq: int = 0  # window number in its stream
    timestamp_us: int = 0  # sensor time of the window's last sample
    arrival_ns: int = 0  # perf_counter_ns when the byte completing the window's last frame was read


class WindowQueue:
    """Bounded, thread-safe; ``policy`` is ``drop-oldest`` (count and overwrite) or ``block``."""

    def __init__(self, slots: int, size: int, channels: int, dtype: npt.DTypeLike, policy: str = DROP_OLDEST) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown queue policy {policy!r}; expected one of {', '.join(POLICIES)}")
        if slots < 1:
            raise ValueError("a queue needs at least one slot")
        self.policy = policy
        self._slots = [Slot(i, np.zeros((size, channels), dtype=dtype)) for i in range(slots)]
        self._free: deque[int] = deque(range(slots))
        self._queued: deque[int] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0
        self.put_count = 0
        self.max_depth = 0

    def put(
        self,
        window: npt.NDArray[Any],
        stream_id: int,
        seq: int,
        timestamp_us: int,
        arrival_ns: int,
        timeout: float | None = None,
    ) -> bool:
        """Copy ``window`` into a slot and queue it. Returns False if closed (or, blocking, timed out)."""
        with self._cond:
            if not self._free:
                if self.policy == DROP_OLDEST and self._queued:
                    self._free.append(self._queued.popleft())
                    self.dropped += 1
                else:
                    deadline = None if timeout is None else time.monotonic() + timeout
                    while not self._free and not self._closed:
                        left = None if deadline is None else deadline - time.monotonic()
                        if left is not None and left <= 0:
                            return False
                        self._cond.wait(left)
            if self._closed:
                return False
            slot = self._slots[self._free.popleft()]
            np.copyto(slot.data, window)  # the copy that frees the reader's ring buffer
            slot.stream_id, slot.seq, slot.timestamp_us, slot.arrival_ns = stream_id, seq, timestamp_us, arrival_ns
            self._queued.append(slot.index)
            self.put_count += 1
            self.max_depth = max(self.max_depth, len(self._queued))
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> Slot | None:
        """The oldest queued slot, or None on timeout or when closed and empty."""
        with self._cond:
            if not self._queued and not self._closed:
                self._cond.wait(timeout)
            if not self._queued:
                return None
            return self._slots[self._queued.popleft()]

    def release(self, slot: Slot) -> None:
        with self._cond:
            self._free.append(slot.index)
            self._cond.notify_all()

    def close(self) -> None:
        """Wake everyone; ``get`` drains what is queued, then returns None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._queued)
