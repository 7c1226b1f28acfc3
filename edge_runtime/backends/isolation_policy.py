"""The isolation policy (``load(..., isolate=True | Isolation(...))``), apart from the machinery.

``edge_runtime.backends.isolated`` runs a model in a child process; it needs ``socket``,
``subprocess``, ``mmap`` and ``pickle``, ~10 ms of imports that a process which never isolates
a model should not pay at ``import edge_runtime``. This module holds only what ``load`` needs
to check and carry the option; ``isolated`` is imported when a model is really isolated.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ArgumentError


@dataclass(frozen=True)
class Isolation:
    """How an isolated model is run and restarted. Times in seconds.

    ``timeout_s``: the longest one inference may take before the child counts as hung and is
    killed. ``load_timeout_s``: the longest the child may take to start and open the model
    (an OpenVINO GPU compile can take minutes). ``max_crashes`` crashes (or hangs) within
    ``window_s`` quarantine the model. After a crash the next child starts no sooner than
    ``backoff_s`` later, doubling per crash in the window up to ``backoff_max_s``.
    """

    timeout_s: float = 30.0
    load_timeout_s: float = 300.0
    max_crashes: int = 3
    window_s: float = 600.0
    backoff_s: float = 0.2
    backoff_max_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("timeout_s", "load_timeout_s", "window_s", "backoff_max_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ArgumentError(f"Isolation.{name} must be a number of seconds > 0, got {value!r}")
        if not isinstance(self.backoff_s, (int, float)) or isinstance(self.backoff_s, bool) or self.backoff_s < 0:
            raise ArgumentError(f"Isolation.backoff_s must be a number of seconds >= 0, got {self.backoff_s!r}")
        if not isinstance(self.max_crashes, int) or isinstance(self.max_crashes, bool) or self.max_crashes < 1:
            raise ArgumentError(f"Isolation.max_crashes must be a whole number >= 1, got {self.max_crashes!r}")

    def backoff(self, crashes: int) -> float:
        """Seconds to wait before the next child after ``crashes`` recent crashes (>= 1)."""
        return float(min(self.backoff_max_s, self.backoff_s * 2 ** max(0, crashes - 1)))


def as_isolation(isolate: bool | Isolation | None) -> Isolation | None:
    """``load``'s ``isolate=`` as a policy: True -> the defaults, False/None -> not isolated."""
    if isolate is None or isolate is False:
        return None
    if isolate is True:
        return Isolation()
    if isinstance(isolate, Isolation):
        return isolate
    raise ArgumentError(f"isolate must be True, False or an edge_runtime.Isolation, got {isolate!r}")


__all__ = ["Isolation", "as_isolation"]
