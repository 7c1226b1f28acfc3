"""Golden files (edge_runtime.hil.golden): JSONL round trip, comparison within tolerances, messages."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from edge_runtime.errors import ArgumentError
from edge_runtime.hil.golden import (
    GoldenFileError,
    GoldenMismatch,
    GoldenWindow,
    Tolerance,
    assert_matches_golden,
    compare_golden,
    dumps_golden,
    golden_windows,
    loads_golden,
    read_golden,
    write_golden,
)

LABELS = ("badminton", "running", "standing", "walking")


@dataclass(frozen=True)
class Result:
    """The fields of a StreamResult a golden file keeps (and one it ignores)."""

    window_index: int
    timestamp_us: int
    label: str
    label_index: int
    scores: tuple[float, ...]
    stream_id: int = 0
    latency_us: float = 123.0


def result(i: int, label_index: int = 2, top: float = 0.99609375, **changes: object) -> Result:
    scores = [0.0] * 4
    scores[label_index] = top
    r = Result(i, (i * 100 + 99) * 100_000, LABELS[label_index], label_index, tuple(scores))
    return replace(r, **changes)  # type: ignore[arg-type]


def run(n: int = 10) -> list[Result]:
    return [result(i, label_index=i % 4) for i in range(n)]


def test_write_then_read_round_trips_one_object_per_window(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    assert write_golden(path, reversed(run())) == 10
    lines = path.read_text().splitlines()
    assert len(lines) == 10
    first = json.loads(lines[0])
    assert list(first) == ["window_index", "timestamp_us", "label", "label_index", "scores"]
    assert first == {
        "window_index": 0,
        "timestamp_us": 9_900_000,
        "label": "badminton",
        "label_index": 0,
        "scores": [0.9961, 0.0, 0.0, 0.0],
    }, "sorted by window, scores rounded to 4 places, nothing else (no latency)"
    assert read_golden(path) == golden_windows(run())
    assert compare_golden(read_golden(path), run()).ok


def test_scores_within_the_tolerance_match_and_beyond_it_differ() -> None:
    golden = golden_windows(run())
    near = [replace(r, scores=tuple(s + 0.009 if s else s for s in r.scores)) for r in run()]
    assert compare_golden(golden, near).ok
    far = [
        replace(r, scores=tuple(s - 0.02 if s else s for s in r.scores)) if r.window_index == 4 else r for r in run()
    ]
    comparison = compare_golden(golden, far)
    assert not comparison.ok and [(d.window_index, d.kind) for d in comparison.differing] == [(4, "scores")]
    assert compare_golden(golden, far, Tolerance(score_abs=0.03)).ok


def test_mismatch_message_shows_the_first_differing_window_and_the_counts(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    write_golden(path, run())
    got = run()
    got[3] = result(3, label_index=1)  # was walking (3), now running
    got[7] = result(7, label_index=3, top=0.5)  # label right, score off
    del got[9]  # missing
    got.append(result(12))  # extra
    with pytest.raises(GoldenMismatch) as info:
        assert_matches_golden(path, got)
    text = str(info.value)
    assert isinstance(info.value, AssertionError)
    assert f"differ from golden file {path}: 4 of 10 windows differ (allowed: 0)" in text
    assert "first differing window: window_index 3 (label)" in text
    assert "expected: label 'walking' (index 3), timestamp_us 39900000, scores [0.0, 0.0, 0.0, 0.9961]" in text
    assert "got:      label 'running' (index 1), timestamp_us 39900000, scores [0.0, 0.9961, 0.0, 0.0]" in text
    assert "label 'running' (index 1) != expected 'walking' (index 3)" in text
    assert "tolerance: label must match, scores within ±0.01 absolute, timestamp_us equal" in text
    assert (
        "windows: 10 expected, 10 got, 7 match; differing: 1 missing, 1 extra, 1 label, 1 scores, 0 timestamp" in text
    )
    assert [d.kind for d in info.value.comparison.differing] == ["label", "scores", "missing", "extra"]
    # allowed differences are allowed, and no more
    assert compare_golden(read_golden(path), got, Tolerance(max_differing=4)).ok
    assert not compare_golden(read_golden(path), got, Tolerance(max_differing=3)).ok


def test_windows_are_aligned_by_index_not_position() -> None:
    golden = golden_windows(run())
    shifted = run()[1:]  # window 0 never came: the others must still line up
    comparison = compare_golden(golden, shifted)
    assert [(d.window_index, d.kind) for d in comparison.differing] == [(0, "missing")]
    assert comparison.matching == 9


def test_timestamps_compare_unless_turned_off() -> None:
    golden = golden_windows(run(3))
    late = [replace(r, timestamp_us=r.timestamp_us + 5) for r in run(3)]
    comparison = compare_golden(golden, late)
    assert [d.kind for d in comparison.differing] == ["timestamp"] * 3
    assert "timestamp_us 9900005 != expected 9900000" in comparison.message()
    assert compare_golden(golden, late, Tolerance(timestamps=False)).ok


def test_a_different_number_of_scores_differs() -> None:
    comparison = compare_golden(golden_windows([result(0)]), [replace(result(0), scores=(1.0, 0.0))])
    assert comparison.differing[0].reasons == ("2 scores, expected 4",)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "line 2: Expecting value"),
        ("[1, 2]", "line 2: expected a JSON object, got list"),
        ('{"window_index": 1}', "line 2: missing key 'timestamp_us'"),
        (
            '{"window_index": 1, "timestamp_us": 0, "label": "a", "label_index": 0, "scores": [], "extra": 1}',
            "line 2: unknown key 'extra'",
        ),
        ('{"window_index": "1", "timestamp_us": 0, "label": "a", "label_index": 0, "scores": []}', "window_index must"),
        ('{"window_index": 1, "timestamp_us": 0, "label": "a", "label_index": 0, "scores": [NaN]}', "finite numbers"),
        (dumps_golden(golden_windows(run(1))).strip(), "line 2: window_index 0 already on line 1"),
    ],
)
def test_a_bad_line_is_an_error_naming_the_file_and_line(line: str, message: str) -> None:
    text = dumps_golden(golden_windows(run(1))) + line + "\n"
    with pytest.raises(GoldenFileError, match=message) as info:
        loads_golden(text, source="g.jsonl")
    assert "path=g.jsonl" in str(info.value)


def test_a_missing_golden_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(GoldenFileError, match="golden file not found"):
        read_golden(tmp_path / "nope.jsonl")


def test_results_of_two_streams_or_twice_the_same_window_are_refused() -> None:
    with pytest.raises(ArgumentError, match="streams"):
        golden_windows([result(0), result(1, stream_id=1)])
    with pytest.raises(ArgumentError, match="two results for window_index 0"):
        golden_windows([result(0), result(0)])


@pytest.mark.parametrize(("kwargs", "message"), [({"score_abs": -1}, "score_abs"), ({"max_differing": -1}, "max_")])
def test_tolerance_is_validated(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ArgumentError, match=message):
        Tolerance(**kwargs)  # type: ignore[arg-type]


def test_golden_window_from_dict_is_the_inverse_of_to_dict() -> None:
    w = GoldenWindow(3, 10, "x", 1, (0.5, 0.25))
    assert GoldenWindow.from_dict(w.to_dict()) == w
