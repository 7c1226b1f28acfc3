"""Streaming sensor input: wire codec, sources, windows, in-place preprocessing.

The names a user needs: ``open_source(url, *, baud=None, wait=False)`` (a serial port or
pyserial URL, ``file:``, ``synthetic:``), ``Stream(runner, source, ...)`` and ``Preprocess``.
"""

from __future__ import annotations

from .pipeline import Stream, StreamResult, StreamStats
from .preprocess import Preprocess
from .sources import open_source

__all__ = ["Preprocess", "Stream", "StreamResult", "StreamStats", "open_source"]
