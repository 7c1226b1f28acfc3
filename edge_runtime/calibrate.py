"""Choosing early-exit thresholds: the least expected latency within an accuracy bound.

Every calibration sample is run through all stages once (``EarlyExitModel.exits_all``),
so each exit's confidence and prediction are known for every sample; then a threshold
per exit is chosen from candidates taken at the quantiles of that exit's confidences
(plus "never exit here"). The search is exhaustive while the product of the candidate
lists stays under 200,000 (three exits) and coordinate descent beyond. Expected
latency uses the measured median cost of each stage.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .bundle import ExitRule, confidence, write_manifest
from .early_exit import EarlyExitModel

_CANDIDATES = 48


@dataclass(frozen=True)
class Evaluation:
    thresholds: tuple[float, ...]
    accuracy: float
    mean_latency_us: float
    exit_rates: tuple[float, ...]
    exit_accuracy: tuple[float | None, ...]


@dataclass(frozen=True)
class Calibration:
    chosen: Evaluation
    all_stages: Evaluation
    stage_cost_us: tuple[float, ...]
    samples: int
    max_accuracy_drop: float
    curve: tuple[Evaluation, ...]  # the Pareto front: accuracy against mean latency
    stage_cost_spread_us: tuple[float, ...] = ()  # max - min of the pass medians, per stage

    def to_manifest(self, data: str) -> dict[str, Any]:
        return {
            "data": data,
            "date": time.strftime("%Y-%m-%d"),
            "samples": self.samples,
            "max_accuracy_drop": self.max_accuracy_drop,
            "stage_cost_us": [round(c, 1) for c in self.stage_cost_us],
            "stage_cost_spread_us": [round(c, 1) for c in self.stage_cost_spread_us],
            "accuracy_all_stages": round(self.all_stages.accuracy, 4),
            "mean_latency_all_stages_us": round(self.all_stages.mean_latency_us, 1),
            "accuracy": round(self.chosen.accuracy, 4),
            "mean_latency_us": round(self.chosen.mean_latency_us, 1),
            "exits": [
                {"exit_index": k, "rate": round(r, 4), "accuracy": None if a is None else round(a, 4)}
                for k, (r, a) in enumerate(zip(self.chosen.exit_rates, self.chosen.exit_accuracy))
            ],
        }


def collect(
    model: EarlyExitModel, x: npt.NDArray[Any]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """(confidence [exits, N], prediction [exits, N], stage times [stages, N] in us) over samples ``x``."""
    rules = [s.exit for s in model.manifest.stages]
    n_exits = len(rules)
    conf = np.zeros((n_exits, len(x)))
    pred = np.zeros((n_exits, len(x)), dtype=np.int64)
    times = np.zeros((n_exits, len(x)))
    shape = model.inputs[0].shape
    for i, sample in enumerate(x):
        probs, t = model.exits_all(np.asarray(sample, dtype=np.float32).reshape(shape))
        for k, p in enumerate(probs):
            rule = rules[k]
            conf[k, i] = confidence(rule.measure, p) if rule is not None else 1.0
            pred[k, i] = int(np.argmax(p))
            times[k, i] = t[k]
    return conf, pred, times


def evaluate(
    thresholds: tuple[float, ...],
    measures: list[str],
    conf: npt.NDArray[np.float64],
    pred: npt.NDArray[np.int64],
    y: npt.NDArray[np.int64],
    cost: npt.NDArray[np.float64],
) -> Evaluation:
    """Accuracy and expected latency if these thresholds had been used on these samples."""
    n_exits, n = conf.shape
    exit_at = np.full(n, n_exits - 1)
    undecided = np.ones(n, dtype=bool)
    for k, (t, measure) in enumerate(zip(thresholds, measures)):
        ok = ExitRule(measure, t).confident(conf[k])  # the run-time rule, over every sample at once
        take = undecided & ok
        exit_at[take] = k
        undecided &= ~take
    chosen = pred[exit_at, np.arange(n)]
    correct = chosen == y
    cum = np.cumsum(cost)
    rates = tuple(float(np.mean(exit_at == k)) for k in range(n_exits))
    accs = tuple(float(np.mean(correct[exit_at == k])) if np.any(exit_at == k) else None for k in range(n_exits))
    return Evaluation(
        tuple(float(t) for t in thresholds), float(correct.mean()), float(cum[exit_at].mean()), rates, accs
    )


def choose(
    model: EarlyExitModel,
    x: npt.NDArray[Any],
    y: npt.NDArray[Any],
    max_accuracy_drop: float = 0.01,
    *,
    cost_passes: int = 7,
    cost_runs: int = 50,
) -> Calibration:
    """The thresholds with the least expected latency whose accuracy stays within
    ``max_accuracy_drop`` (a fraction: 0.01 = one percentage point) of running every stage.

    Stage costs (us) are measured by ``EarlyExitModel.measure_stage_costs`` with
    ``cost_passes`` passes of ``cost_runs`` runs, on the model's own thread setting (the
    CLI loads with one thread unless told otherwise)."""
    conf, pred, _ = collect(model, x)
    y = np.asarray(y, dtype=np.int64).reshape(-1)
    # Stage costs from a run of their own (warm-up, median of several passes), not from the
    # one pass over the data above, whose times include the first, cold runs.
    costs, spread = model.measure_stage_costs(passes=cost_passes, runs=cost_runs)
    cost = np.asarray(costs)
    rules = [s.exit for s in model.manifest.stages if s.exit is not None]
    measures = [r.measure for r in rules]
    never = [_never(m) for m in measures]
    candidates = []
    for k, _m in enumerate(measures):
        qs = np.unique(np.quantile(conf[k], np.linspace(0, 1, _CANDIDATES)))
        candidates.append([*qs.tolist(), never[k]])
    all_stages = evaluate(tuple(never), measures, conf, pred, y, cost)
    bound = all_stages.accuracy - max_accuracy_drop - 1e-12
    evaluated: list[Evaluation] = []
    if int(np.prod([len(c) for c in candidates])) <= 200_000:
        for combo in itertools.product(*candidates):
            evaluated.append(evaluate(combo, measures, conf, pred, y, cost))
    else:  # coordinate descent from "never exit"
        current = list(never)
        for _ in range(4):
            for k in range(len(current)):
                for t in candidates[k]:
                    trial = tuple([*current[:k], t, *current[k + 1 :]])
                    evaluated.append(evaluate(trial, measures, conf, pred, y, cost))
                ok = [e for e in evaluated if e.accuracy >= bound]
                current = list(min(ok, key=lambda e: (e.mean_latency_us, -e.accuracy)).thresholds)
    feasible = [e for e in evaluated if e.accuracy >= bound]
    chosen = min(feasible, key=lambda e: (e.mean_latency_us, -e.accuracy))
    front: list[Evaluation] = []
    for e in sorted(evaluated, key=lambda e: (e.mean_latency_us, -e.accuracy)):
        if not front or e.accuracy > front[-1].accuracy:
            front.append(e)
    return Calibration(
        chosen,
        all_stages,
        tuple(float(c) for c in cost),
        len(y),
        max_accuracy_drop,
        tuple(front),
        tuple(spread),
    )


def _never(measure: str) -> float:
    """A threshold no confidence reaches: above 1 for probabilities, below 0 for entropy."""
    return -1.0 if measure == "entropy" else 2.0


def saved_thresholds(model: EarlyExitModel, thresholds: tuple[float, ...]) -> list[float | None]:
    """The search's thresholds as the manifest stores them: "never" placeholders become None."""
    rules = [s.exit for s in model.manifest.stages if s.exit is not None]
    return [None if t == _never(r.measure) else t for t, r in zip(thresholds, rules)]


def apply(model: EarlyExitModel, calibration: Calibration, data: str | Path) -> None:
    """Use the chosen thresholds now and write them, with the calibration record, to ``bundle.json``."""
    model.set_thresholds(saved_thresholds(model, calibration.chosen.thresholds))
    write_manifest(model.manifest, calibration.to_manifest(str(data)))


def plot(calibration: Calibration, path: str | Path) -> None:
    """The trade-off curve as a PNG (needs the ``plot`` extra: matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(
        [e.mean_latency_us for e in calibration.curve],
        [100 * e.accuracy for e in calibration.curve],
        "o-",
        ms=3,
        label="thresholds on the Pareto front",
    )
    c, a = calibration.chosen, calibration.all_stages
    ax.plot([c.mean_latency_us], [100 * c.accuracy], "r*", ms=14, label="chosen")
    ax.plot([a.mean_latency_us], [100 * a.accuracy], "ks", ms=8, label="every stage")
    ax.axhline(100 * (a.accuracy - calibration.max_accuracy_drop), color="grey", ls="--", lw=1, label="bound")
    ax.set_xlabel("mean latency per inference (us)")
    ax.set_ylabel("accuracy (%)")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
