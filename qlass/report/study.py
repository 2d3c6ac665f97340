"""A study's results: per strategy a mean with its confidence interval over seeds and tasks,
and paired differences between strategies on the same (seed, task) cells.

Everything is computed from the evaluation episodes the store holds for the study's runs
(one run per seed, see :mod:`qlass.runtime.study`), so :func:`summarise_study` can be run
again at any time and gives the same numbers (the bootstrap is seeded). Only cells present
for every strategy in every seed are used (a seed whose evaluation is unfinished is left out
and named in :attr:`StudySummary.notes`).

Rewards are the paper's average final reward (score in [0, 1], shown x100); success is the
share of episodes that solved the task; tokens are completion tokens per episode (the
x-axis of the paper's Figure 3).
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qlass.report.data import split_strategy, strategy_sort_key
from qlass.report.stats import (
    DEFAULT_LEVEL,
    DEFAULT_RESAMPLES,
    Interval,
    PairedCounts,
    grid_interval,
    paired_counts,
)
from qlass.storage import EpisodeRecord, TreeStore

__all__ = [
    "STUDY_CSV",
    "STUDY_MD",
    "STUDY_PNG",
    "Cells",
    "PairedDifference",
    "StrategyStats",
    "StudySummary",
    "default_pairs",
    "parse_pair",
    "render_markdown",
    "seed_count",
    "study_cells",
    "summarise_cells",
    "summarise_episodes",
    "summarise_study",
    "write_study_report",
]

STUDY_MD = "study.md"
STUDY_CSV = "study.csv"
STUDY_PNG = "study_reward_vs_tokens.png"

_STEPWISE_FAMILIES = ("qlass", "beam", "rollout_oracle")
"""Value-guided step-wise strategies; each is compared with every Best-of-N by default."""


@dataclass(frozen=True, slots=True)
class StrategyStats:
    """One strategy over every (seed, task) cell of the study."""

    strategy: str
    seeds: int
    tasks: int
    reward: Interval
    success: Interval
    completion_tokens: Interval
    env_steps: float
    per_seed_reward: tuple[float, ...]
    oracle_best_reward: float | None = None


@dataclass(frozen=True, slots=True)
class PairedDifference:
    """``a - b`` on the same (seed, task) cells."""

    a: str
    b: str
    reward: Interval
    success: Interval
    completion_tokens: float
    counts: PairedCounts
    per_seed_reward: tuple[float, ...]


@dataclass(frozen=True)
class StudySummary:
    """What a study shows: per-strategy intervals, paired differences, and what was left out."""

    study: str
    seeds: tuple[int, ...]
    tasks: int
    split: str
    strategies: tuple[StrategyStats, ...]
    pairs: tuple[PairedDifference, ...]
    level: float = DEFAULT_LEVEL
    resamples: int = DEFAULT_RESAMPLES
    notes: tuple[str, ...] = field(default=())

    def strategy(self, name: str) -> StrategyStats:
        for stats in self.strategies:
            if stats.strategy == name:
                return stats
        raise KeyError(name)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_pair(text: str) -> tuple[str, str]:
    """``'qlass:2-best_of_n:2'`` or ``'qlass:2,best_of_n:2'`` -> ``('qlass:2', 'best_of_n:2')``."""
    for sep in (",", " - ", "-"):
        a, found, b = text.partition(sep)
        if found and a.strip() and b.strip():
            return a.strip(), b.strip()
    raise ValueError(f"a comparison looks like A-B (e.g. qlass:2-best_of_n:2), got {text!r}")


def default_pairs(strategies: Sequence[str]) -> list[tuple[str, str]]:
    """Each strategy against greedy, and each value-guided step-wise strategy (QLASS, beam)
    against each Best-of-N: the comparisons the paper makes. The ``rollout_oracle:M``
    diagnostic is also set against ``qlass:M`` (the QNet's shortfall)."""
    names = sorted(strategies, key=strategy_sort_key)
    pairs: list[tuple[str, str]] = []
    if "greedy" in names:
        pairs += [(s, "greedy") for s in names if s != "greedy"]
    stepwise = [s for s in names if split_strategy(s)[0] in _STEPWISE_FAMILIES]
    best_of = [s for s in names if split_strategy(s)[0] == "best_of_n"]
    pairs += list(itertools.product(stepwise, best_of))
    for name in names:
        family, budget = split_strategy(name)
        if family == "rollout_oracle" and f"qlass:{budget}" in names:
            pairs.append((name, f"qlass:{budget}"))
    return pairs


Cells = dict[str, dict[int, dict[str, EpisodeRecord]]]
"""strategy -> seed -> task key -> episode."""


def _add_cells(cells: Cells, seed: int, episodes: Sequence[EpisodeRecord]) -> None:
    for episode in episodes:
        cells.setdefault(episode.strategy, {}).setdefault(seed, {})[episode.task_key] = episode


async def study_cells(store: TreeStore, name: str) -> tuple[Cells, tuple[int, ...], str, list[str]]:
    """The evaluation episodes of study ``name`` by strategy, seed and task, the seeds
    that have some, the split, and notes on what is missing."""
    study = await store.studies.get(name)
    cells: Cells = {}
    notes: list[str] = []
    seeds: list[int] = []
    split = "dev"
    wanted = study.settings.get("seeds", [])
    members = await store.studies.members(study.id)
    recorded = {m.seed for m in members}
    missing = [s for s in wanted if s not in recorded]
    if missing:
        notes.append(f"seeds without a finished run (left out): {', '.join(map(str, missing))}")
    for member in members:
        episodes = await store.episodes.of_run(member.run_id, stage=member.eval_stage)
        if not episodes:
            notes.append(f"seed {member.seed} ({member.run_name}) has no evaluation episodes")
            continue
        seeds.append(member.seed)
        split = episodes[0].split
        _add_cells(cells, member.seed, episodes)
    return cells, tuple(seeds), split, notes


def _common(cells: Cells, seeds: Sequence[int], notes: list[str]) -> tuple[list[str], list[str]]:
    """Strategies present in every seed, and the task keys every one of them played."""
    strategies = [s for s in cells if all(seed in cells[s] for seed in seeds)]
    for dropped in sorted(set(cells) - set(strategies)):
        notes.append(f"strategy {dropped} is missing in some seeds (left out)")
    if not strategies:
        return [], []
    keys = [set(cells[s][seed]) for s in strategies for seed in seeds]
    common = set.intersection(*keys)
    everything = set.union(*keys)
    if len(common) < len(everything):
        notes.append(
            f"{len(everything) - len(common)} tasks lack an episode of some strategy in some "
            f"seed (left out; {len(common)} kept)"
        )
    return sorted(strategies, key=strategy_sort_key), sorted(common)


def _grid(
    cells: Cells, strategy: str, seeds: Sequence[int], tasks: Sequence[str], column: str
) -> np.ndarray[Any, np.dtype[np.float64]]:
    return np.array(
        [[float(getattr(cells[strategy][seed][task], column)) for task in tasks] for seed in seeds]
    )


def _oracle(
    cells: Cells, strategy: str, seeds: Sequence[int], tasks: Sequence[str]
) -> np.ndarray[Any, np.dtype[np.float64]] | None:
    """Per (seed, task) the best true score among a Best-of-N's samples, or None."""
    values = [
        [
            cells[strategy][seed][task].trajectory.get("info", {}).get("oracle_best_score")
            for task in tasks
        ]
        for seed in seeds
    ]
    if any(v is None for row in values for v in row):
        return None
    return np.array(values, dtype=float)


async def summarise_study(
    store: TreeStore,
    name: str,
    *,
    pairs: Sequence[tuple[str, str]] | None = None,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> StudySummary:
    """Intervals and paired differences of study ``name`` from its stored episodes.

    ``pairs`` default to :func:`default_pairs`; a pair naming a strategy the study does not
    hold is left out with a note. ``seed`` seeds the bootstrap.

    Raises:
        UnknownNameError: no such study.
    """
    cells, seeds, split, notes = await study_cells(store, name)
    return summarise_cells(
        name, cells, seeds, split, notes, pairs=pairs, level=level, resamples=resamples, seed=seed
    )


def summarise_episodes(
    name: str,
    seed: int,
    episodes: Sequence[EpisodeRecord],
    *,
    pairs: Sequence[tuple[str, str]] | None = None,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
) -> StudySummary:
    """The same summary for one run's evaluation episodes (a study of one seed): intervals
    over tasks only, paired differences on the same tasks."""
    cells: Cells = {}
    _add_cells(cells, seed, episodes)
    split = episodes[0].split if episodes else "dev"
    seeds = (seed,) if episodes else ()
    return summarise_cells(
        name, cells, seeds, split, [], pairs=pairs, level=level, resamples=resamples, seed=0
    )


def summarise_cells(
    name: str,
    cells: Cells,
    seeds: tuple[int, ...],
    split: str,
    notes: list[str],
    *,
    pairs: Sequence[tuple[str, str]] | None,
    level: float,
    resamples: int,
    seed: int,
) -> StudySummary:
    """The summary of ``cells`` (strategy -> seed -> task -> episode): intervals over the
    cells every strategy has, paired differences ``pairs`` (default :func:`default_pairs`)."""
    strategies, tasks = _common(cells, seeds, notes) if seeds else ([], [])
    if not tasks:
        return StudySummary(name, seeds, 0, split, (), (), level, resamples, tuple(notes))

    def interval(grid: np.ndarray[Any, np.dtype[np.float64]]) -> Interval:
        return grid_interval(grid, level=level, resamples=resamples, seed=seed)

    grids = {s: _grid(cells, s, seeds, tasks, "final_score") for s in strategies}
    success = {s: _grid(cells, s, seeds, tasks, "success") for s in strategies}
    tokens = {s: _grid(cells, s, seeds, tasks, "completion_tokens") for s in strategies}
    oracles = {s: _oracle(cells, s, seeds, tasks) for s in strategies}
    stats = tuple(
        StrategyStats(
            strategy=s,
            seeds=len(seeds),
            tasks=len(tasks),
            reward=interval(grids[s]),
            success=interval(success[s]),
            completion_tokens=interval(tokens[s]),
            env_steps=float(_grid(cells, s, seeds, tasks, "env_steps").mean()),
            per_seed_reward=tuple(float(v) for v in grids[s].mean(axis=1)),
            oracle_best_reward=_mean_or_none(oracles[s]),
        )
        for s in strategies
    )
    notes.extend(headroom_notes(seeds, grids, success, oracles))
    chosen = default_pairs(strategies) if pairs is None else list(pairs)
    differences = []
    for a, b in chosen:
        if a not in grids or b not in grids:
            notes.append(f"comparison {a} - {b} left out: the study holds no such strategy")
            continue
        diff = grids[a] - grids[b]
        differences.append(
            PairedDifference(
                a=a,
                b=b,
                reward=interval(diff),
                success=interval(success[a] - success[b]),
                completion_tokens=float((tokens[a] - tokens[b]).mean()),
                counts=paired_counts(grids[a], grids[b]),
                per_seed_reward=tuple(float(v) for v in diff.mean(axis=1)),
            )
        )
    return StudySummary(
        name, seeds, len(tasks), split, stats, tuple(differences), level, resamples, tuple(notes)
    )


HEADROOM_MARGIN = 0.05
"""Greedy within this much of the best Best-of-N oracle leaves search nothing to find."""


def _mean_or_none(grid: np.ndarray[Any, np.dtype[np.float64]] | None) -> float | None:
    return None if grid is None else float(grid.mean())


def headroom_notes(
    seeds: Sequence[int],
    rewards: Mapping[str, np.ndarray[Any, np.dtype[np.float64]]],
    success: Mapping[str, np.ndarray[Any, np.dtype[np.float64]]],
    oracles: Mapping[str, np.ndarray[Any, np.dtype[np.float64]] | None],
) -> list[str]:
    """Seeds where the BC policy leaves search no room: greedy never succeeds, greedy's
    reward is already within :data:`HEADROOM_MARGIN` of the best Best-of-N oracle (the best
    true score among N samples), or that oracle is below greedy (the samples are worse than
    greedy decoding). A comparison of search strategies on such a seed says
    little about the value model, so a reader must see it beside the tables.

    ``rewards``, ``success`` and ``oracles`` map a strategy to its (seed, task) grid, rows in
    the order of ``seeds``; a strategy without an oracle maps to None.
    """
    if "greedy" not in rewards:
        return []
    bounds = {s: grid for s, grid in oracles.items() if grid is not None}
    notes = []
    for row, seed in enumerate(seeds):
        greedy = float(rewards["greedy"][row].mean())
        if float(success["greedy"][row].mean()) == 0.0:
            notes.append(
                f"seed {seed}: greedy never succeeds (reward x100 {100 * greedy:.1f}): the "
                "BC policy may be too weak for search to build on"
            )
        elif bounds:
            best = max(bounds, key=lambda s: float(bounds[s][row].mean()))
            bound = float(bounds[best][row].mean())
            if bound < greedy - HEADROOM_MARGIN:
                notes.append(
                    f"seed {seed}: sampling does worse than greedy: the {best} oracle "
                    f"({100 * bound:.1f}, the best of its samples) is below greedy's reward "
                    f"x100 {100 * greedy:.1f}; the policy's samples, not the selector, limit "
                    "every sampling strategy"
                )
            elif bound - greedy <= HEADROOM_MARGIN:
                notes.append(
                    f"seed {seed}: no headroom: greedy reward x100 {100 * greedy:.1f} is "
                    f"within {100 * HEADROOM_MARGIN:.0f} points of the {best} oracle "
                    f"({100 * bound:.1f}); search has little to find"
                )
    return notes


# -- rendering --------------------------------------------------------------------------


def seed_count(summary: StudySummary) -> str:
    """``1 seed`` or ``3 seeds``: how many seeds the summary pools, for titles and pages."""
    count = len(summary.seeds)
    return f"{count} seed{'' if count == 1 else 's'}"


def _points(interval: Interval, scale: float = 100, digits: int = 1) -> str:
    i = interval.scaled(scale)
    return f"{i.mean:.{digits}f} [{i.low:.{digits}f}, {i.high:.{digits}f}]"


def _signed(interval: Interval, scale: float = 100) -> str:
    i = interval.scaled(scale)
    return f"{i.mean:+.1f} [{i.low:+.1f}, {i.high:+.1f}]"


def strategy_rows(summary: StudySummary) -> list[dict[str, str]]:
    """The per-strategy table, as display strings (the same for markdown and the CLI)."""
    rows = []
    for s in summary.strategies:
        oracle = "" if s.oracle_best_reward is None else f"{100 * s.oracle_best_reward:.1f}"
        rows.append(
            {
                "strategy": s.strategy,
                "reward x100 [CI]": _points(s.reward),
                "success % [CI]": _points(s.success, digits=0),
                "completion tokens / ep [CI]": _points(s.completion_tokens, scale=1, digits=0),
                "env steps / ep": f"{s.env_steps:.1f}",
                "reward per seed": " / ".join(f"{100 * v:.1f}" for v in s.per_seed_reward),
                "oracle best x100": oracle,
            }
        )
    return rows


def pair_rows(summary: StudySummary) -> list[dict[str, str]]:
    """The paired-difference table, as display strings."""
    rows = []
    for p in summary.pairs:
        verdict = (
            "a > b" if p.reward.low > 0 else "a < b" if p.reward.high < 0 else "no clear difference"
        )
        rows.append(
            {
                "a - b": f"{p.a} - {p.b}",
                "reward x100 [CI]": _signed(p.reward),
                "success pts [CI]": _signed(p.success),
                "tokens / ep (a - b)": f"{p.completion_tokens:+.0f}",
                "wins / ties / losses": f"{p.counts.wins} / {p.counts.ties} / {p.counts.losses}",
                "per seed": " / ".join(f"{100 * v:+.1f}" for v in p.per_seed_reward),
                "at this level": verdict,
            }
        )
    return rows


def _markdown_table(rows: Sequence[Mapping[str, str]]) -> list[str]:
    if not rows:
        return ["(none)"]
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row[h] for h in header) + " |" for row in rows]
    return lines


def render_markdown(summary: StudySummary) -> str:
    """The study as a markdown page: what was compared, the two tables and the notes."""
    level = f"{100 * summary.level:.0f}%"
    seeds = ", ".join(map(str, summary.seeds)) or "none"
    lines = [
        f"# Study {summary.study}",
        "",
        f"{seed_count(summary)} ({seeds}) x {summary.tasks} {summary.split} tasks; every "
        f"strategy plays the same tasks in every seed's run. Intervals: {level}, two-way "
        f"bootstrap over seeds and tasks ({summary.resamples} resamples).",
        "",
        "## Strategies",
        "",
        *_markdown_table(strategy_rows(summary)),
        "",
        "## Paired differences (same seed, same task)",
        "",
        *_markdown_table(pair_rows(summary)),
    ]
    if summary.notes:
        lines += ["", "## Notes", "", *[f"- {note}" for note in summary.notes]]
    return "\n".join(lines) + "\n"


def _csv(summary: StudySummary) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        ["kind", "strategy", "vs", "metric", "mean", "low", "high", "seeds", "tasks", "level"]
    )
    for s in summary.strategies:
        for metric, value in (
            ("reward", s.reward),
            ("success", s.success),
            ("completion_tokens", s.completion_tokens),
        ):
            writer.writerow(
                ["strategy", s.strategy, "", metric, value.mean, value.low, value.high,
                 s.seeds, s.tasks, value.level]
            )  # fmt: skip
    for p in summary.pairs:
        for metric, value in (("reward", p.reward), ("success", p.success)):
            writer.writerow(
                ["difference", p.a, p.b, metric, value.mean, value.low, value.high,
                 len(summary.seeds), summary.tasks, value.level]
            )  # fmt: skip
    return out.getvalue()


def plot_study(summary: StudySummary, path: Path) -> Path:
    """Reward vs completion tokens per episode with error bars in both directions (the
    paper's Figure 3), one line per strategy family, from one study."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.4), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    families: dict[str, list[StrategyStats]] = {}
    for stats in summary.strategies:
        families.setdefault(split_strategy(stats.strategy)[0], []).append(stats)
    for family, members in families.items():
        members.sort(key=lambda s: s.completion_tokens.mean)
        x = [s.completion_tokens.mean for s in members]
        y = [100 * s.reward.mean for s in members]
        xerr = [
            [s.completion_tokens.mean - s.completion_tokens.low for s in members],
            [s.completion_tokens.high - s.completion_tokens.mean for s in members],
        ]
        yerr = [
            [100 * (s.reward.mean - s.reward.low) for s in members],
            [100 * (s.reward.high - s.reward.mean) for s in members],
        ]
        axes.errorbar(x, y, xerr=xerr, yerr=yerr, marker="o", capsize=3, label=family)
        for s, xi, yi in zip(members, x, y, strict=True):
            budget = split_strategy(s.strategy)[1]
            if budget is not None:
                axes.annotate(str(budget), (xi, yi), textcoords="offset points", xytext=(4, 4))
    axes.set_xlabel("completion tokens per episode")
    axes.set_ylabel("average final reward (x100)")
    level = f"{100 * summary.level:.0f}%"
    axes.set_title(f"{summary.study}: {seed_count(summary)} x {summary.tasks} tasks ({level} CI)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    return path


def write_study_report(summary: StudySummary, directory: Path) -> list[Path]:
    """Write ``study.md``, ``study.csv`` and the plot into ``directory`` (blocking I/O)."""
    directory.mkdir(parents=True, exist_ok=True)
    markdown = directory / STUDY_MD
    markdown.write_text(render_markdown(summary), encoding="utf-8")
    table = directory / STUDY_CSV
    table.write_text(_csv(summary), encoding="utf-8")
    files = [markdown, table]
    if summary.strategies:
        files.append(plot_study(summary, directory / STUDY_PNG))
    return files
