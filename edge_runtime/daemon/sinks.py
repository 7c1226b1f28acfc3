"""Where results go. So far: JSON lines to standard output or to a file.

A ``JsonlSink`` file is appended to, one JSON object per line, flushed after each line (a
reader tailing it, or a crash, sees every line written so far). Rotation is left to
logrotate: ``reopen()`` (the daemon calls it on SIGHUP, as logrotate's ``postrotate`` sends)
closes the file and opens the path again, so after a ``mv`` the next line goes to a new
file and no line is lost or split. The sink never rotates by itself.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import IO, Any

from ..errors import EdgeRuntimeError


class JsonlSink:
    """JSON lines to ``path`` (``None``: standard output). Thread-safe; ``close()`` is idempotent."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self.lines = 0  # written since this sink was made
        self._fh: IO[str] | None = self._open()

    def _open(self) -> IO[str]:
        if self.path is None:
            return sys.stdout
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            reason = f"cannot open the JSON lines sink: {exc.strerror or exc}"
            raise EdgeRuntimeError(reason, path=str(self.path)) from exc
        return os.fdopen(fd, "a", encoding="utf-8", buffering=1)

    def write(self, record: dict[str, Any]) -> None:
        """Append one record as one line (the whole line in one write: never interleaved)."""
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            if self._fh is None:
                raise EdgeRuntimeError("the JSON lines sink is closed", path=str(self.path or "<stdout>"))
            self._fh.write(line)
            self._fh.flush()
            self.lines += 1

    def reopen(self) -> None:
        """Close and open the path again (after logrotate moved the file away). No-op for stdout."""
        if self.path is None:
            return
        with self._lock:
            if self._fh is None:
                return
            new = self._open()  # first: if it fails, the old file keeps taking lines
            old, self._fh = self._fh, new
            old.close()

    def close(self) -> None:
        with self._lock:
            fh, self._fh = self._fh, None
        if fh is not None and fh is not sys.stdout:
            fh.close()
