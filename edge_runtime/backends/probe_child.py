"""Running native probing code in a child process, so that a crash or a hang cannot take the
caller down: the Edge TPU listing (``edgetpu_probe``), LiteRT's GPU trial compile
(``litert_compiled``), and the words for a child's exit status (also ``isolated``).

Imports only the standard library: it sits on the device-probe path.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def describe_exit(code: int | None) -> str:
    """A child's exit status in words: ``SIGSEGV``, ``exit status 3``."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


@dataclass(frozen=True)
class ChildResult:
    """What a probe child did: its exit status (negative: killed by that signal; None: it did
    not finish within the timeout and was killed), its stdout and stderr as text."""

    returncode: int | None
    stdout: str
    stderr: str

    @property
    def failure(self) -> str:
        """ "" when the child exited 0; else its fate in words (``killed by SIGABRT``,
        ``exit status 2``, ``no answer within the timeout``) and its last stderr line."""
        if self.returncode == 0:
            return ""
        if self.returncode is None:
            fate = "no answer within the timeout (killed)"
        elif self.returncode < 0:
            fate = f"killed by {describe_exit(self.returncode)}"
        else:
            fate = describe_exit(self.returncode)
        tail = next((ln.strip() for ln in reversed(self.stderr.splitlines()) if ln.strip()), "")
        return f"{fate}: {tail}" if tail else fate


def run_probe_child(argv: Sequence[str], timeout_s: float) -> ChildResult:
    """Run ``argv`` (a probe that may crash or hang), waiting at most ``timeout_s`` seconds; a
    child still running then is killed. Never raises for the child's own failure."""
    try:
        done = subprocess.run(list(argv), capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode("utf-8", "replace") if isinstance(exc.stderr, bytes) else ""
        return ChildResult(None, "", err)
    except OSError as exc:  # the interpreter itself could not be started
        return ChildResult(127, "", f"cannot start {argv[0]}: {exc}")
    return ChildResult(done.returncode, done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace"))


def last_json_line(text: str) -> Any:
    """The last line of ``text`` that parses as JSON, or None. Pure."""
    for line in reversed(text.splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None
