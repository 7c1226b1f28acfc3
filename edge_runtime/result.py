"""One result type for a classification, from a plain model or an early-exit bundle."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Classification:
    """One classification.

    ``scores``: float32, one per label, owned by this result (a new array). For a plain
    model they are its first output, dequantized (probabilities when the model ends in a
    softmax); for an early-exit bundle, the softmax of the exit taken.
    ``confidence``: the exit's own measure of ``scores`` (``measure`` names it:
    ``max_prob``, ``margin`` or ``entropy``; a plain model reports ``max_score``, the top score).
    ``exit_index``: 0 for a plain model; for a bundle, the stage whose exit answered.
    ``stage_us``: the time of each stage that ran, in microseconds (one entry for a plain model).
    ``cut_by_deadline``: a later stage was skipped because it would not have fitted in the deadline.
    """

    label: str
    label_index: int
    scores: npt.NDArray[np.float32]
    confidence: float
    exit_index: int = 0
    stage_us: tuple[float, ...] = ()
    cut_by_deadline: bool = False
    measure: str = "max_score"

    @property
    def total_us(self) -> float:
        """Time of every stage that ran, in microseconds."""
        return float(sum(self.stage_us))

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: the same keys as the attributes."""
        return {
            "label": self.label,
            "label_index": self.label_index,
            "confidence": round(self.confidence, 4),
            "measure": self.measure,
            "exit_index": self.exit_index,
            "scores": [round(float(s), 4) for s in self.scores],
            "stage_us": [round(t, 1) for t in self.stage_us],
            "cut_by_deadline": self.cut_by_deadline,
        }


def label_for(index: int, labels: Sequence[str] | None) -> str:
    """The name of class ``index``, or the index as text when there are no (or too few) labels."""
    return labels[index] if labels is not None and 0 <= index < len(labels) else str(index)


def top_score(scores: npt.NDArray[np.float32], labels: Sequence[str] | None, stage_us: float) -> Classification:
    """A plain model's classification of ``scores`` (which it takes ownership of)."""
    idx = int(scores.argmax())
    return Classification(label_for(idx, labels), idx, scores, float(scores[idx]), 0, (stage_us,))
