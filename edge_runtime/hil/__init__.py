"""Hardware-in-the-loop helpers (not needed at run time).

- ``edge_runtime.hil.emulator``: the firmware emulator (a recording played through the wire
  protocol over a pty) and its fault injection: ``Emulator``, ``Faults``, ``Pty``.
- ``edge_runtime.hil.golden``: golden files of stream results (write, compare within tolerances).
- ``edge_runtime.hil.plugin``: the pytest plugin (``--hil-port``, the ``hil`` markers and the
  ``hil_*`` fixtures); see firmware_notes/hil_testing.md.

Importing this package imports nothing else: the pytest plugin is loaded into every pytest
session, so the names below are imported on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .emulator import Emulator, EmulatorStats, Faults, Pty, load_recording
    from .golden import GoldenMismatch, Tolerance, assert_matches_golden, compare_golden, read_golden, write_golden

#: Public name -> the submodule that defines it.
_LAZY = {
    "Emulator": "emulator",
    "EmulatorStats": "emulator",
    "Faults": "emulator",
    "Pty": "emulator",
    "load_recording": "emulator",
    "GoldenMismatch": "golden",
    "Tolerance": "golden",
    "assert_matches_golden": "golden",
    "compare_golden": "golden",
    "read_golden": "golden",
    "write_golden": "golden",
}

__all__ = [
    "Emulator",
    "EmulatorStats",
    "Faults",
    "GoldenMismatch",
    "Pty",
    "Tolerance",
    "assert_matches_golden",
    "compare_golden",
    "load_recording",
    "read_golden",
    "write_golden",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edge_runtime.hil' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
