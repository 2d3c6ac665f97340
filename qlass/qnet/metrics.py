"""How well a QNet's values fit the dev labels: MSE, Spearman rank correlation, and the
ordering of sibling candidates (what Q-guided search needs)."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

__all__ = ["regression_metrics", "sibling_accuracy", "sibling_spread", "spearman"]


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


def _sibling_pairs(states: Sequence[Hashable]) -> list[tuple[int, int]]:
    by_state: dict[Hashable, list[int]] = defaultdict(list)
    for index, state in enumerate(states):
        by_state[state].append(index)
    return [pair for ids in by_state.values() for pair in itertools.combinations(ids, 2)]


def sibling_spread(predictions: Any, labels: Any, states: Sequence[Hashable]) -> float:
    """How much of the labels' spread among one state's candidates the predictions keep:
    the median absolute prediction gap over the median absolute label gap, over sibling
    pairs with different labels.

    About 1: the QNet separates siblings as much as the labels do; near 0: it predicts the
    state's value whatever the action, and :func:`sibling_accuracy` then measures gaps too
    small to matter (a search choosing among near-ties follows noise). NaN without pairs.
    """
    pred = np.asarray(predictions, dtype=np.float64).reshape(-1)
    gold = np.asarray(labels, dtype=np.float64).reshape(-1)
    pairs = [(a, b) for a, b in _sibling_pairs(states) if abs(gold[a] - gold[b]) >= 1e-9]
    if not pairs:
        return math.nan
    label_gap = float(np.median([abs(gold[a] - gold[b]) for a, b in pairs]))
    pred_gap = float(np.median([abs(pred[a] - pred[b]) for a, b in pairs]))
    return pred_gap / label_gap


def sibling_accuracy(predictions: Any, labels: Any, states: Sequence[Hashable]) -> float:
    """How often two candidates of one state are ordered by the predictions as by the labels.

    This is what Q-guided search needs from a QNet (it only compares siblings), and what MSE
    and a correlation over all states do not show. Pairs with equal labels are skipped; a
    tie in the predictions counts one half. NaN when no state has two candidates with
    different labels.
    """
    pred = np.asarray(predictions, dtype=np.float64).reshape(-1)
    gold = np.asarray(labels, dtype=np.float64).reshape(-1)
    agree = pairs = 0.0
    for a, b in _sibling_pairs(states):
        label_gap = gold[a] - gold[b]
        if abs(label_gap) < 1e-9:
            continue
        pairs += 1
        pred_gap = pred[a] - pred[b]
        agree += 0.5 if pred_gap == 0 else float((pred_gap > 0) == (label_gap > 0))
    return agree / pairs if pairs else math.nan
