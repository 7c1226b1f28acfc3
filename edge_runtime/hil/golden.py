"""Golden files of stream results: what a model said, window by window, kept as JSON lines.

A golden file holds one JSON object per window of one stream, in window order::

    {"window_index": 0, "timestamp_us": 9900000, "label": "standing", "label_index": 2,
     "scores": [0.0, 0.0, 0.9961, 0.0]}

(one line each; ``scores`` rounded to ``SCORE_DECIMALS`` places). A fresh run is compared
with it window by window, aligned by ``window_index``, within a ``Tolerance``: the label
must be the same, every score within ``score_abs`` (absolute), the timestamp equal (unless
``timestamps=False``), and at most ``max_differing`` windows may differ (default 0). A
window in the file but not in the run is *missing*, one in the run but not in the file is
*extra*; both count as differing.

Everything here is a pure function of its arguments, except ``read_golden`` and
``write_golden`` (the file) and ``assert_matches_golden`` (which reads one). Nothing is
imported that a pytest session without HIL tests would not already have.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from ..errors import ArgumentError, EdgeRuntimeError

#: Decimal places of the scores written to a golden file (int8 outputs step by 1/256 = 0.0039).
SCORE_DECIMALS = 4
#: Default absolute tolerance on each score: about two steps of an int8 output quantized by 1/256.
DEFAULT_SCORE_ABS = 0.01
#: The keys of one line of a golden file, in the order they are written.
KEYS = ("window_index", "timestamp_us", "label", "label_index", "scores")

DiffKind = Literal["label", "scores", "timestamp", "missing", "extra"]
#: Kinds of difference, most serious first (a window's kind is the first that applies).
DIFF_KINDS: tuple[DiffKind, ...] = ("missing", "extra", "label", "scores", "timestamp")


class GoldenFileError(EdgeRuntimeError):
    """A golden file cannot be read: missing, not JSON lines, or a line without the expected keys."""


class GoldenMismatch(AssertionError):
    """A run differs from its golden file by more than the tolerance allows.

    The message shows the first differing window (index, expected vs got, the tolerance)
    and the counts; ``comparison`` holds every difference.
    """

    def __init__(self, comparison: GoldenComparison, source: str) -> None:
        self.comparison = comparison
        self.source = source
        super().__init__(comparison.message(source))


class ResultLike(Protocol):
    """What a golden file keeps of a result (``edge_runtime.stream.StreamResult`` has it)."""

    @property
    def window_index(self) -> int: ...

    @property
    def timestamp_us(self) -> int: ...

    @property
    def label(self) -> str: ...

    @property
    def label_index(self) -> int: ...

    @property
    def scores(self) -> Sequence[float]: ...


@dataclass(frozen=True)
class GoldenWindow:
    """One window of a golden file (scores already rounded to ``SCORE_DECIMALS``)."""

    window_index: int
    timestamp_us: int
    label: str
    label_index: int
    scores: tuple[float, ...]

    @classmethod
    def from_result(cls, result: ResultLike) -> GoldenWindow:
        """The golden record of ``result``: its scores rounded, nothing else changed."""
        return cls(
            int(result.window_index),
            int(result.timestamp_us),
            str(result.label),
            int(result.label_index),
            tuple(round(float(s), SCORE_DECIMALS) for s in result.scores),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data for one JSON line, keys in ``KEYS`` order."""
        return {
            "window_index": self.window_index,
            "timestamp_us": self.timestamp_us,
            "label": self.label,
            "label_index": self.label_index,
            "scores": list(self.scores),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GoldenWindow:
        """The window of one parsed line; ``ValueError`` naming the key that is unknown, missing or mistyped."""
        unknown = sorted(set(data) - set(KEYS))
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")
        missing = [k for k in KEYS if k not in data]
        if missing:
            raise ValueError(f"missing key {missing[0]!r}")
        for key in ("window_index", "timestamp_us", "label_index"):
            if isinstance(data[key], bool) or not isinstance(data[key], int):
                raise ValueError(f"{key} must be a whole number, got {data[key]!r}")
        if not isinstance(data["label"], str):
            raise ValueError(f"label must be a string, got {data['label']!r}")
        scores = data["scores"]
        if not isinstance(scores, list) or not all(
            isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in scores
        ):
            raise ValueError(f"scores must be a list of finite numbers, got {scores!r}")
        return cls(data["window_index"], data["timestamp_us"], data["label"], data["label_index"], tuple(scores))

    def describe(self) -> str:
        """``label 'walking' (index 3), timestamp_us 79900000, scores [0.0, 0.0, 0.0, 0.9961]``."""
        scores = ", ".join(repr(s) for s in self.scores)
        return f"label {self.label!r} (index {self.label_index}), timestamp_us {self.timestamp_us}, scores [{scores}]"


@dataclass(frozen=True)
class Tolerance:
    """How far a run may be from its golden file.

    ``score_abs``: largest allowed absolute difference of each score (>= 0).
    ``max_differing``: windows allowed to differ in any way, missing and extra included (>= 0).
    ``timestamps``: whether ``timestamp_us`` must be equal (a board whose clock is not the
    recording's may turn it off). The label must always be the same.
    """

    score_abs: float = DEFAULT_SCORE_ABS
    max_differing: int = 0
    timestamps: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.score_abs, bool) or not (
            isinstance(self.score_abs, (int, float)) and math.isfinite(self.score_abs) and self.score_abs >= 0
        ):
            raise ArgumentError(f"score_abs={self.score_abs!r} must be a finite number >= 0")
        if isinstance(self.max_differing, bool) or not isinstance(self.max_differing, int) or self.max_differing < 0:
            raise ArgumentError(f"max_differing={self.max_differing!r} must be a whole number >= 0")

    def describe(self) -> str:
        timestamps = ", timestamp_us equal" if self.timestamps else ""
        return f"label must match, scores within ±{self.score_abs:g} absolute{timestamps}"


@dataclass(frozen=True)
class WindowDiff:
    """How one window differs: ``expected`` None for an extra window, ``got`` None for a missing one."""

    window_index: int
    kind: DiffKind
    expected: GoldenWindow | None
    got: GoldenWindow | None
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class GoldenComparison:
    """The outcome of ``compare_golden``: ``ok`` when at most ``tolerance.max_differing`` windows differ."""

    tolerance: Tolerance
    expected: int
    got: int
    differing: tuple[WindowDiff, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return len(self.differing) <= self.tolerance.max_differing

    @property
    def matching(self) -> int:
        """Windows in both the file and the run that do not differ."""
        both = self.expected - self.count("missing")
        return both - sum(1 for d in self.differing if d.kind not in ("missing", "extra"))

    def count(self, kind: DiffKind) -> int:
        return sum(1 for d in self.differing if d.kind == kind)

    def message(self, source: str = "the golden file") -> str:
        """What differs, for a person: the verdict, the first differing window, the counts."""
        n = len(self.differing)
        allowed = self.tolerance.max_differing
        lines = [
            f"results {'match' if self.ok else 'differ from'} {source}: "
            f"{n} of {max(self.expected, self.got)} windows differ (allowed: {allowed})"
        ]
        if self.differing:
            first = self.differing[0]
            lines.append(f"first differing window: window_index {first.window_index} ({first.kind})")
            lines.append("  expected: " + (first.expected.describe() if first.expected else "(none: not in the file)"))
            lines.append("  got:      " + (first.got.describe() if first.got else "(none: not in this run)"))
            lines.append("  why:      " + "; ".join(first.reasons))
        lines.append(f"  tolerance: {self.tolerance.describe()}, at most {allowed} differing window(s)")
        counts = ", ".join(f"{self.count(k)} {k}" for k in DIFF_KINDS)
        lines.append(f"windows: {self.expected} expected, {self.got} got, {self.matching} match; differing: {counts}")
        return "\n".join(lines)


def golden_windows(results: Iterable[ResultLike]) -> list[GoldenWindow]:
    """The golden records of ``results`` (one stream), sorted by window index.

    ``ArgumentError`` if two results share a window index, or (for results that carry a
    ``stream_id``) they come from more than one stream: a golden file holds one stream.
    """
    windows: list[GoldenWindow] = []
    streams: set[int] = set()
    seen: set[int] = set()
    for r in results:
        sid = getattr(r, "stream_id", None)
        if sid is not None:
            streams.add(int(sid))
        w = GoldenWindow.from_result(r)
        if w.window_index in seen:
            raise ArgumentError(f"two results for window_index {w.window_index}: a golden file holds one stream")
        seen.add(w.window_index)
        windows.append(w)
    if len(streams) > 1:
        raise ArgumentError(f"results of streams {sorted(streams)}: a golden file holds one stream")
    return sorted(windows, key=lambda w: w.window_index)


def dumps_golden(windows: Iterable[GoldenWindow]) -> str:
    """The JSON lines text of ``windows`` (one object per line, ending with a newline)."""
    return "".join(json.dumps(w.to_dict()) + "\n" for w in windows)


def loads_golden(text: str, source: str = "<golden>") -> list[GoldenWindow]:
    """The windows of JSON lines ``text``; blank lines are skipped.

    ``GoldenFileError`` naming ``source`` and the line for a line that is not a JSON
    object of ``KEYS``, and for a window index given twice.
    """
    out: list[GoldenWindow] = []
    seen: dict[int, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, got {type(data).__name__}")
            window = GoldenWindow.from_dict(data)
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            raise GoldenFileError(f"line {number}: {exc}", path=source) from exc
        if window.window_index in seen:
            raise GoldenFileError(
                f"line {number}: window_index {window.window_index} already on line {seen[window.window_index]}",
                path=source,
            )
        seen[window.window_index] = number
        out.append(window)
    return out


def read_golden(path: str | Path) -> list[GoldenWindow]:
    """The windows of the golden file at ``path`` (``GoldenFileError`` if missing or malformed)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GoldenFileError("golden file not found", path=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GoldenFileError(f"cannot read golden file: {exc}", path=str(path)) from exc
    return loads_golden(text, source=str(path))


def write_golden(path: str | Path, results: Iterable[ResultLike]) -> int:
    """Write ``results`` (one stream) to ``path`` as a golden file, replacing it; returns the window count.

    Written to a temporary file beside it and renamed: a failed write leaves the old file.
    """
    windows = golden_windows(results)
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(dumps_golden(windows), encoding="utf-8")
    tmp.replace(target)
    return len(windows)


def _why(expected: GoldenWindow, got: GoldenWindow, tolerance: Tolerance) -> tuple[DiffKind | None, tuple[str, ...]]:
    """(the kind of difference or None, the reasons) of two windows with the same index."""
    reasons: list[str] = []
    kind: DiffKind | None = None
    if got.label != expected.label or got.label_index != expected.label_index:
        kind = "label"
        reasons.append(
            f"label {got.label!r} (index {got.label_index}) != expected {expected.label!r} "
            f"(index {expected.label_index})"
        )
    if len(got.scores) != len(expected.scores):
        kind = kind or "scores"
        reasons.append(f"{len(got.scores)} scores, expected {len(expected.scores)}")
    else:
        over = [
            (i, abs(g - e))
            for i, (g, e) in enumerate(zip(got.scores, expected.scores))
            if abs(g - e) > tolerance.score_abs + 1e-9
        ]
        if over:
            kind = kind or "scores"
            worst = max(over, key=lambda item: item[1])
            reasons.append(
                f"{len(over)} score(s) beyond ±{tolerance.score_abs:g}: largest difference "
                f"{worst[1]:.{SCORE_DECIMALS}f} at index {worst[0]}"
            )
    if tolerance.timestamps and got.timestamp_us != expected.timestamp_us:
        kind = kind or "timestamp"
        reasons.append(f"timestamp_us {got.timestamp_us} != expected {expected.timestamp_us}")
    return kind, tuple(reasons)


def compare_golden(
    expected: Sequence[GoldenWindow], got: Iterable[ResultLike], tolerance: Tolerance | None = None
) -> GoldenComparison:
    """Compare a run (results, or golden windows) with the golden windows ``expected``, by ``window_index``.

    Pure: reads and writes nothing. Differences are listed in window order.
    """
    tol = tolerance or Tolerance()
    fresh = golden_windows(got)  # a GoldenWindow is itself ResultLike: rounding again changes nothing
    want = {w.window_index: w for w in expected}
    have = {w.window_index: w for w in fresh}
    diffs: list[WindowDiff] = []
    for index in sorted(set(want) | set(have)):
        e, g = want.get(index), have.get(index)
        if g is None:
            diffs.append(WindowDiff(index, "missing", e, None, ("in the golden file, not in this run",)))
        elif e is None:
            diffs.append(WindowDiff(index, "extra", None, g, ("in this run, not in the golden file",)))
        else:
            kind, reasons = _why(e, g, tol)
            if kind is not None:
                diffs.append(WindowDiff(index, kind, e, g, reasons))
    return GoldenComparison(tol, len(want), len(have), tuple(diffs))


def assert_matches_golden(
    path: str | Path, results: Iterable[ResultLike], tolerance: Tolerance | None = None
) -> GoldenComparison:
    """Compare ``results`` with the golden file at ``path``; ``GoldenMismatch`` (an ``AssertionError``) if
    more windows differ than the tolerance allows, ``GoldenFileError`` if the file cannot be read."""
    comparison = compare_golden(read_golden(path), results, tolerance)
    if not comparison.ok:
        raise GoldenMismatch(comparison, f"golden file {path}")
    return comparison
