"""The study statistics: the two-way bootstrap over seeds and tasks, and paired counts."""

from __future__ import annotations

import numpy as np
import pytest

from qlass.report.stats import Interval, grid_interval, paired_counts


def test_equal_values_give_a_zero_width_interval() -> None:
    interval = grid_interval(np.full((3, 20), 0.4))
    assert interval.mean == pytest.approx(0.4)
    assert interval.low == pytest.approx(0.4)
    assert interval.high == pytest.approx(0.4)


def test_one_seed_is_the_bootstrap_of_the_mean_over_tasks() -> None:
    """With one seed the interval is the percentile bootstrap of a sample mean, whose width
    for iid data is close to the normal one (mean +- 1.96 sd / sqrt(n))."""
    rng = np.random.default_rng(1)
    sample = rng.normal(0.5, 0.2, size=400)
    interval = grid_interval(sample, resamples=20_000, seed=2)
    normal_half = 1.96 * sample.std(ddof=1) / np.sqrt(sample.size)
    assert interval.mean == pytest.approx(sample.mean())
    assert interval.half_width == pytest.approx(normal_half, rel=0.1)
    assert interval.low < sample.mean() < interval.high


def test_seed_variation_widens_the_interval() -> None:
    """Seeds that differ by a constant shift add variance the task bootstrap alone misses."""
    rng = np.random.default_rng(3)
    tasks = rng.uniform(0, 1, size=50)
    same = np.stack([tasks, tasks, tasks])
    shifted = same + np.array([[-0.2], [0.0], [0.2]])
    assert grid_interval(shifted).half_width > 1.5 * grid_interval(same).half_width


def test_paired_differences_remove_the_shared_task_difficulty() -> None:
    rng = np.random.default_rng(4)
    difficulty = rng.uniform(0, 1, size=(3, 40))
    a, b = difficulty + 0.1, difficulty
    paired = grid_interval(a - b)
    assert paired.low == pytest.approx(0.1) and paired.high == pytest.approx(0.1)
    unpaired_width = grid_interval(a).half_width + grid_interval(b).half_width
    assert unpaired_width > 0.1
    assert paired.excludes_zero()


def test_the_interval_is_reproducible_and_depends_on_the_seed() -> None:
    grid = np.random.default_rng(5).uniform(size=(2, 30))
    assert grid_interval(grid, seed=7) == grid_interval(grid, seed=7)
    assert grid_interval(grid, seed=7) != grid_interval(grid, seed=8)


def test_coverage_of_the_two_way_bootstrap_is_near_its_level() -> None:
    """Over many simulated studies (5 seeds x 30 tasks, seed and task effects), the 90%
    interval holds the true mean about 90% of the time (the bootstrap is a little
    optimistic with 5 seeds: at least 75%)."""
    rng = np.random.default_rng(6)
    hits = 0
    trials = 200
    for trial in range(trials):
        seed_effect = rng.normal(0, 0.05, size=(5, 1))
        task_effect = rng.normal(0, 0.1, size=(1, 30))
        grid = 0.5 + seed_effect + task_effect + rng.normal(0, 0.1, size=(5, 30))
        interval = grid_interval(grid, level=0.9, resamples=1000, seed=trial)
        hits += interval.low <= 0.5 <= interval.high
    assert 0.75 <= hits / trials <= 0.99


def test_paired_counts() -> None:
    counts = paired_counts([[1, 0, 0.5, 1]], [[0, 0, 0.5, 0]])
    assert counts.as_dict() == {"wins": 2, "ties": 2, "losses": 0}
    with pytest.raises(ValueError, match="shape"):
        paired_counts([[1, 0]], [[1, 0, 1]])


@pytest.mark.parametrize("bad", [[], [[np.nan, 1.0]], np.zeros((2, 2, 2))])
def test_bad_grids_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="grid"):
        grid_interval(bad)  # type: ignore[arg-type]


def test_interval_helpers() -> None:
    interval = Interval(0.1, -0.05, 0.3)
    assert not interval.excludes_zero()
    assert interval.scaled(100) == Interval(10.0, -5.0, 30.0)
    assert Interval(0.1, 0.02, 0.3).excludes_zero()
