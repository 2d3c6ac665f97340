"""Confidence intervals for strategy comparisons over seeds and tasks.

A study evaluates every strategy on the same held-out tasks in every seed's run, so each
strategy's results form a grid ``values[seed, task]``. Both axes are samples: seeds of the
whole pipeline (expert data, BC, exploration, QNet training, sampling) and tasks of the
split. :func:`grid_interval` resamples both at once (a two-way bootstrap: seeds with
replacement and, independently, tasks with replacement) and reads the interval off the
percentiles of the resampled grand means. With one seed it is the ordinary bootstrap over
tasks.

Paired differences use the same machinery on ``a[seed, task] - b[seed, task]``: the two
strategies played the same task in the same seed's run, so the pairing removes the task's
difficulty and the seed's quality from the comparison. The resampling is seeded, so a
summary is reproducible to the last digit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["Interval", "PairedCounts", "grid_interval", "paired_counts"]

DEFAULT_RESAMPLES = 10_000
DEFAULT_LEVEL = 0.95


@dataclass(frozen=True, slots=True)
class Interval:
    """A mean and its confidence interval ``[low, high]`` at ``level``."""

    mean: float
    low: float
    high: float
    level: float = DEFAULT_LEVEL

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly above or wholly below zero."""
        return self.low > 0 or self.high < 0

    def scaled(self, factor: float) -> Interval:
        """The same interval in other units (e.g. x100 for rewards shown as points)."""
        return Interval(self.mean * factor, self.low * factor, self.high * factor, self.level)

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "level": self.level}


def _grid(values: ArrayLike) -> NDArray[np.float64]:
    grid = np.asarray(values, dtype=np.float64)
    if grid.ndim == 1:
        grid = grid[np.newaxis, :]
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError(f"expected a non-empty seeds x tasks grid, got shape {grid.shape}")
    if not np.all(np.isfinite(grid)):
        raise ValueError("the grid holds NaN or infinite values")
    return grid


def grid_interval(
    values: ArrayLike,
    *,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Grand mean of a ``seeds x tasks`` grid (a 1-D array is one seed) with a percentile
    bootstrap interval from resampling seeds and tasks independently.

    Each resample draws as many seeds and as many tasks as the grid has, with replacement,
    and takes the mean over the resampled cells; the interval is the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of those means. A grid of equal
    values gives a zero-width interval.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    grid = _grid(values)
    seeds, tasks = grid.shape
    rng = np.random.default_rng(seed)
    # How often each seed and each task is drawn in each resample; the resampled mean is
    # then a weighted sum over the original grid (no copy of the grid per resample).
    seed_counts = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=resamples)
    task_counts = rng.multinomial(tasks, np.full(tasks, 1 / tasks), size=resamples)
    means = np.einsum("rs,st,rt->r", seed_counts, grid, task_counts) / (seeds * tasks)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    mean = float(grid.mean())
    # Quantiles of a degenerate (all-equal) distribution can miss the mean by one ulp.
    return Interval(mean, min(float(low), mean), max(float(high), mean), level)


@dataclass(frozen=True, slots=True)
class PairedCounts:
    """How often ``a`` scored above, equal to or below ``b`` on the same (seed, task)."""

    wins: int
    ties: int
    losses: int

    def as_dict(self) -> dict[str, int]:
        return {"wins": self.wins, "ties": self.ties, "losses": self.losses}


def paired_counts(a: ArrayLike, b: ArrayLike, *, tolerance: float = 1e-9) -> PairedCounts:
    """Wins, ties and losses of ``a`` against ``b``, cell by cell of two equal grids."""
    left, right = _grid(a), _grid(b)
    if left.shape != right.shape:
        raise ValueError(f"grids differ in shape: {left.shape} vs {right.shape}")
    diff = left - right
    wins = int(np.sum(diff > tolerance))
    losses = int(np.sum(diff < -tolerance))
    return PairedCounts(wins, int(diff.size) - wins - losses, losses)
