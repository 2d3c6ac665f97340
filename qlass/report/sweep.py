"""A sweep's results: every (point, strategy) with its confidence interval over seeds and
tasks, and paired differences of each point against the base point, strategy by strategy,
on the same (seed, task) cells.

The points are studies (:mod:`qlass.runtime.sweep`); their episodes are put side by side
as the "strategies" ``<point> | <strategy>`` of one summary, so the intervals and paired
differences are exactly those of :mod:`qlass.report.study`. Only seeds every point has
finished are used.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qlass.errors import ConfigError
from qlass.report.data import strategy_sort_key
from qlass.report.stats import DEFAULT_LEVEL, DEFAULT_RESAMPLES
from qlass.report.study import (
    Cells,
    StrategyStats,
    StudySummary,
    pair_rows,
    seed_count,
    strategy_rows,
    study_cells,
    summarise_cells,
)
from qlass.storage import TreeStore

__all__ = [
    "SWEEP_CSV",
    "SWEEP_MD",
    "SWEEP_PNG",
    "SweepSummary",
    "axis_order",
    "cell_name",
    "plot_sweep",
    "render_sweep_markdown",
    "summarise_sweep",
    "write_sweep_report",
]

SWEEP_MD = "sweep.md"
SWEEP_CSV = "sweep.csv"
SWEEP_PNG = "sweep_reward.png"
_SEP = " | "


def cell_name(point: str, strategy: str) -> str:
    """How a (point, strategy) is named in the summary's tables."""
    return f"{point}{_SEP}{strategy}"


@dataclass(frozen=True)
class SweepSummary:
    """A sweep's grid, its points (labels, in grid order), the base point and the summary
    over every (point, strategy)."""

    sweep: str
    grid: tuple[tuple[str, tuple[str, ...]], ...]
    points: tuple[str, ...]
    base: str
    summary: StudySummary

    def as_dict(self) -> dict[str, Any]:
        return {
            "sweep": self.sweep,
            "grid": [[f, list(v)] for f, v in self.grid],
            "points": list(self.points),
            "base": self.base,
            "summary": self.summary.as_dict(),
        }


def _short(label: str, grid: Sequence[tuple[str, Sequence[str]]]) -> str:
    """A point's label without field names when the grid has one axis (``0.9``)."""
    if len(grid) == 1:
        return label.partition("=")[2]
    return label


async def summarise_sweep(
    store: TreeStore,
    name: str,
    *,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> SweepSummary:
    """Intervals per (point, strategy) and differences against the base point.

    Raises:
        UnknownNameError: no such sweep.
        ConfigError: ``name`` is a study, not a sweep.
    """
    record = await store.studies.get(name)
    settings = record.settings
    if settings.get("kind") != "sweep":
        raise ConfigError(f"{name!r} is a study, not a sweep: use qlass study show")
    grid = tuple((str(f), tuple(map(str, v))) for f, v in settings["grid"])
    points: list[Mapping[str, Any]] = settings["points"]
    labels = [_short(str(p["label"]), grid) for p in points]
    base = labels[[p["index"] for p in points].index(settings["base_point"])]
    cells: Cells = {}
    notes: list[str] = []
    seed_sets: list[set[int]] = []
    split = "dev"
    for point, label in zip(points, labels, strict=True):
        point_study = str(point["study"])
        point_cells, seeds, split, point_notes = await study_cells(store, point_study)
        notes += [f"{label}: {note}" for note in point_notes]
        failed = (await store.studies.get(point_study)).settings.get("failed", {})
        notes += [f"{label}: seed {seed} failed: {why}" for seed, why in sorted(failed.items())]
        if not seeds:  # nothing to compare: left out, not a reason to drop every seed
            notes.append(f"{label}: no seed finished (left out of the table)")
            continue
        seed_sets.append(set(seeds))
        for strategy, by_seed in point_cells.items():
            cells[cell_name(label, strategy)] = by_seed
    common = sorted(set.intersection(*seed_sets)) if seed_sets else []
    left_out = sorted(set.union(*seed_sets) - set(common)) if seed_sets else []
    if left_out:
        notes.append(f"seeds not finished by every point (left out): {left_out}")
    for by_seed in cells.values():
        for extra in [s for s in by_seed if s not in common]:
            del by_seed[extra]
    strategies = sorted(
        {name.partition(_SEP)[2] for name in cells}, key=strategy_sort_key
    )  # the base point's strategies, compared with the same strategy at every other point
    pairs = [
        (cell_name(label, s), cell_name(base, s))
        for label in labels
        if label != base
        for s in strategies
        if cell_name(label, s) in cells and cell_name(base, s) in cells
    ]
    summary = summarise_cells(
        name,
        cells,
        tuple(common),
        split,
        notes,
        pairs=pairs,
        level=level,
        resamples=resamples,
        seed=seed,
    )
    order = {label: i for i, label in enumerate(labels)}

    def key(stats_name: str) -> tuple[int, tuple[int, str, int]]:
        label, _, strategy = stats_name.partition(_SEP)
        return order.get(label, len(order)), strategy_sort_key(strategy)

    ordered = tuple(sorted(summary.strategies, key=lambda s: key(s.strategy)))
    summary = StudySummary(
        summary.study,
        summary.seeds,
        summary.tasks,
        summary.split,
        ordered,
        summary.pairs,
        summary.level,
        summary.resamples,
        summary.notes,
    )
    return SweepSummary(name, grid, tuple(labels), base, summary)


def _markdown_table(rows: Sequence[Mapping[str, str]]) -> list[str]:
    if not rows:
        return ["(none)"]
    header = list(rows[0])

    def line(cells: Sequence[str]) -> str:  # a cell's own "|" (a point's name) is escaped
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    lines = [line(header), "|" + "|".join("---" for _ in header) + "|"]
    return lines + [line([row[h] for h in header]) for row in rows]


def render_sweep_markdown(sweep: SweepSummary) -> str:
    """The sweep as a markdown page: grid, per-(point, strategy) table, differences."""
    summary = sweep.summary
    level = f"{100 * summary.level:.0f}%"
    grid = "; ".join(f"`{field}` = {', '.join(values)}" for field, values in sweep.grid)
    lines = [
        f"# Sweep {sweep.sweep}",
        "",
        f"Grid: {grid}. Base point: {sweep.base}. {len(summary.seeds)} seeds "
        f"({', '.join(map(str, summary.seeds)) or 'none'}) x {summary.tasks} {summary.split} "
        f"tasks; intervals {level}, two-way bootstrap over seeds and tasks "
        f"({summary.resamples} resamples).",
        "",
        "## Points",
        "",
        *_markdown_table(strategy_rows(summary)),
        "",
        f"## Against the base point ({sweep.base}), same strategy, same seed and task",
        "",
        *_markdown_table(pair_rows(summary)),
    ]
    if summary.notes:
        lines += ["", "## Notes", "", *[f"- {note}" for note in summary.notes]]
    return "\n".join(lines) + "\n"


def _csv(sweep: SweepSummary) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["kind", "point", "strategy", "vs", "metric", "mean", "low", "high",
                     "seeds", "tasks", "level"])  # fmt: skip
    for s in sweep.summary.strategies:
        point, _, strategy = s.strategy.partition(_SEP)
        for metric, value in (
            ("reward", s.reward),
            ("success", s.success),
            ("completion_tokens", s.completion_tokens),
        ):
            writer.writerow(["point", point, strategy, "", metric, value.mean, value.low,
                             value.high, s.seeds, s.tasks, value.level])  # fmt: skip
    for p in sweep.summary.pairs:
        point, _, strategy = p.a.partition(_SEP)
        for metric, value in (("reward", p.reward), ("success", p.success)):
            writer.writerow(["difference", point, strategy, p.b.partition(_SEP)[0], metric,
                             value.mean, value.low, value.high, len(sweep.summary.seeds),
                             sweep.summary.tasks, value.level])  # fmt: skip
    return out.getvalue()


def axis_order(points: Sequence[str]) -> list[str]:
    """The points in the order a plot's x axis shows them: by value when every label is a
    number (a grid given as ``2,1,3`` is drawn 1, 2, 3), else in grid order."""
    try:
        values = [float(point) for point in points]
    except ValueError:
        return list(points)
    return [point for _, point in sorted(zip(values, points, strict=True))]


_DODGE = 0.06
"""How far apart (in x-axis steps) the strategies at one point are drawn, so that their
error bars do not hide each other."""


def plot_sweep(sweep: SweepSummary, path: Path) -> Path:
    """Reward per point with its CI, one line per strategy (x: the points, see
    :func:`axis_order`; the strategies drawn side by side at each point)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.4), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    by_strategy: dict[str, dict[str, StrategyStats]] = {}
    for cell in sweep.summary.strategies:
        point, _, strategy = cell.strategy.partition(_SEP)
        by_strategy.setdefault(strategy, {})[point] = cell
    order = axis_order(sweep.points)
    for rank, (strategy, per_point) in enumerate(by_strategy.items()):
        offset = _DODGE * (rank - (len(by_strategy) - 1) / 2)
        xs = [i for i, p in enumerate(order) if p in per_point]
        line = [per_point[order[i]] for i in xs]
        y = [100 * s.reward.mean for s in line]
        yerr = [
            [100 * (s.reward.mean - s.reward.low) for s in line],
            [100 * (s.reward.high - s.reward.mean) for s in line],
        ]
        positions = [x + offset for x in xs]
        axes.errorbar(positions, y, yerr=yerr, marker="o", capsize=3, label=strategy)
    long_labels = any(len(point) > 8 for point in order)
    axes.set_xticks(
        range(len(order)),
        order,
        rotation=20 if long_labels else 0,
        fontsize=8 if long_labels else 10,
    )
    axes.set_xlabel(" x ".join(field for field, _ in sweep.grid))
    axes.set_ylabel("average final reward (x100)")
    summary = sweep.summary
    axes.set_title(
        f"{sweep.sweep}: {seed_count(summary)} x {summary.tasks} tasks "
        f"({100 * summary.level:.0f}% CI)"
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    return path


def write_sweep_report(sweep: SweepSummary, directory: Path) -> list[Path]:
    """Write ``sweep.md``, ``sweep.csv`` and the plot into ``directory`` (blocking I/O)."""
    directory.mkdir(parents=True, exist_ok=True)
    markdown = directory / SWEEP_MD
    markdown.write_text(render_sweep_markdown(sweep), encoding="utf-8")
    table = directory / SWEEP_CSV
    table.write_text(_csv(sweep), encoding="utf-8")
    files = [markdown, table]
    if sweep.summary.strategies:
        files.append(plot_sweep(sweep, directory / SWEEP_PNG))
    return files
