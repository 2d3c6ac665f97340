"""How well a QNet's values fit the dev labels: MSE, Spearman rank correlation, and the
ordering of sibling candidates (what Q-guided search needs)."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

__all__ = ["regression_metrics", "sibling_accuracy", "spearman"]


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN if either side is constant."""
    x, y = _ranks(np.asarray(a, dtype=np.float64)), _ranks(np.asarray(b, dtype=np.float64))
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(values.size, dtype=np.float64)
    start = 0
    while start < values.size:
        end = start
        while end + 1 < values.size and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0
        start = end + 1
    return ranks


def regression_metrics(predictions: Any, labels: Any) -> dict[str, float]:
    """``mse`` and ``spearman`` of predictions against labels."""
    pred = np.asarray(predictions, dtype=np.float64).reshape(-1)
    gold = np.asarray(labels, dtype=np.float64).reshape(-1)
    return {"mse": float(np.mean((pred - gold) ** 2)), "spearman": spearman(pred, gold)}


def sibling_accuracy(predictions: Any, labels: Any, states: Sequence[Hashable]) -> float:
    """How often two candidates of one state are ordered by the predictions as by the labels.

    This is what Q-guided search needs from a QNet (it only compares siblings), and what MSE
    and a correlation over all states do not show. Pairs with equal labels are skipped; a
    tie in the predictions counts one half. NaN when no state has two candidates with
    different labels.
    """
    pred = np.asarray(predictions, dtype=np.float64).reshape(-1)
    gold = np.asarray(labels, dtype=np.float64).reshape(-1)
    by_state: dict[Hashable, list[int]] = defaultdict(list)
    for index, state in enumerate(states):
        by_state[state].append(index)
    agree = pairs = 0.0
    for indices in by_state.values():
        for a, b in itertools.combinations(indices, 2):
            label_gap = gold[a] - gold[b]
            if abs(label_gap) < 1e-9:
                continue
            pairs += 1
            pred_gap = pred[a] - pred[b]
            agree += 0.5 if pred_gap == 0 else float((pred_gap > 0) == (label_gap > 0))
    return agree / pairs if pairs else math.nan
