"""PNG plots from stored data: reward vs completion tokens (the paper's Figure 3), QNet
predictions vs true Q on its dev tasks, and reward per self-training round.

Each plot has a ``*_series`` function returning exactly the numbers it draws, so what a
plot shows can be checked against the store. Figures are drawn with matplotlib's
object API on the Agg canvas (no pyplot state, no display), so plotting is safe in a
worker thread. matplotlib (``qlass[report]``) is imported when a plot is drawn, so the
series, the tables and the viewers work without it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from qlass.errors import MissingDependencyError
from qlass.report.data import FAMILY_ORDER, split_strategy, strategy_sort_key
from qlass.report.scoring import DevScatter
from qlass.report.tables import ResultRow
from qlass.storage import StageRecord

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "ORACLE_SERIES",
    "QNET_DEV_PNG",
    "REWARD_VS_TOKENS_PNG",
    "SELF_TRAINING_PNG",
    "SeriesPoint",
    "plot_qnet_dev",
    "plot_reward_vs_tokens",
    "plot_self_training",
    "reward_vs_tokens_series",
    "self_training_series",
]

REWARD_VS_TOKENS_PNG = "reward_vs_tokens.png"
QNET_DEV_PNG = "qnet_dev_scatter.png"
SELF_TRAINING_PNG = "self_training.png"
ORACLE_SERIES = "best_of_n oracle (upper bound)"
"""Series name of Best-of-N's oracle upper bound in :func:`reward_vs_tokens_series`."""

_SELF_TRAIN_STAGE = re.compile(r"^self_train:(\d+)$")
_BUDGET_LETTER = {"best_of_n": "N", "qlass": "M", "beam": "B"}
_COLORS = {
    "greedy": "#444444",
    "sampled": "#8c8c8c",
    "best_of_n": "#1f77b4",
    "qlass": "#d62728",
    "beam": "#2ca02c",
    ORACLE_SERIES: "#1f77b4",
}


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    """One point of Figure 3: a strategy's completion tokens per episode and reward x100."""

    strategy: str
    budget: int | None
    completion_tokens: float
    reward: float


def reward_vs_tokens_series(rows: Sequence[ResultRow]) -> dict[str, tuple[SeriesPoint, ...]]:
    """Figure 3's data: per strategy family, one point per budget K (sorted by K).

    Families without a budget (greedy, sampled) have one point. When Best-of-N rows carry
    an oracle upper bound, it is an extra series, :data:`ORACLE_SERIES`, at the same tokens.
    """
    series: dict[str, list[SeriesPoint]] = {}
    for row in sorted(rows, key=lambda r: strategy_sort_key(r.report.strategy)):
        r = row.report
        point = SeriesPoint(
            r.strategy, row.budget, r.completion_tokens_per_episode, 100 * r.avg_reward
        )
        series.setdefault(row.family, []).append(point)
        if row.family == "best_of_n" and r.oracle_best_reward is not None:
            oracle = SeriesPoint(
                r.strategy, row.budget, r.completion_tokens_per_episode, 100 * r.oracle_best_reward
            )
            series.setdefault(ORACLE_SERIES, []).append(oracle)
    return {family: tuple(points) for family, points in series.items()}


def self_training_series(stages: Sequence[StageRecord]) -> dict[str, tuple[tuple[int, float], ...]]:
    """Reward x100 per self-training round, per strategy, from ``self_train:<round>`` stages
    (metrics ``{"round": k, "reports": [StrategyReport dicts]}``); empty when there are none.

    When there are rounds, the ``eval`` stage's reports are round 0: the policy before
    self-training, evaluated the same way.
    """
    rounds: list[tuple[int, Sequence[object]]] = []
    baseline: Sequence[object] = ()
    for stage in stages:
        metrics = stage.metrics or {}
        match = _SELF_TRAIN_STAGE.match(stage.name)
        if match is not None:
            rounds.append((int(metrics.get("round", match[1])), metrics.get("reports") or ()))
        elif stage.name == "eval":
            baseline = metrics.get("reports") or ()
    if not rounds:
        return {}
    series: dict[str, list[tuple[int, float]]] = {}
    for round_, reports in [(0, baseline), *rounds]:
        for report in reports:
            if isinstance(report, Mapping) and "strategy" in report and "avg_reward" in report:
                point = (round_, 100 * float(report["avg_reward"]))
                series.setdefault(str(report["strategy"]), []).append(point)
    return {
        name: tuple(sorted(points))
        for name, points in sorted(series.items(), key=lambda item: strategy_sort_key(item[0]))
    }


def _figure(width: float = 7.0, height: float = 4.8) -> Figure:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependencyError("matplotlib", "report", "the report's plots") from exc
    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def plot_reward_vs_tokens(
    series: Mapping[str, Sequence[SeriesPoint]], path: Path, *, title: str = ""
) -> Path:
    """Draw :func:`reward_vs_tokens_series` output: lines over budgets, single markers for
    budget-free strategies, the oracle bound dashed. Writes ``path`` (PNG) and returns it."""
    figure = _figure()
    ax = figure.subplots()
    order = sorted(
        series,
        key=lambda f: (FAMILY_ORDER.index(f) if f in FAMILY_ORDER else len(FAMILY_ORDER), f),
    )
    for family in order:
        points = series[family]
        xs = [p.completion_tokens for p in points]
        ys = [p.reward for p in points]
        color = _COLORS.get(family)
        if family == ORACLE_SERIES:
            ax.plot(xs, ys, "--", color=color, alpha=0.5, marker="x", label=family)
            continue
        if all(p.budget is None for p in points) and len(points) == 1:
            ax.scatter(xs, ys, s=70, marker="*", color=color, zorder=3, label=points[0].strategy)
            continue
        ax.plot(xs, ys, "-o", color=color, label=family)
        for p in points:
            if p.budget is not None:
                ax.annotate(
                    f"{_BUDGET_LETTER.get(family, 'K')}={p.budget}",
                    (p.completion_tokens, p.reward),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=8,
                    color=color,
                )
    ax.set_xlabel("completion tokens per episode")
    ax.set_ylabel("average final reward (x100)")
    ax.set_title(title or "Reward vs completion tokens (paper Fig. 3)")
    ax.grid(True, alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no evaluation episodes", ha="center", transform=ax.transAxes)
    return _save(figure, path)


def plot_qnet_dev(scatter: DevScatter, path: Path) -> Path:
    """QNet predictions (y) against the true Q labels (x) on the dev tasks, Spearman shown."""
    figure = _figure(5.6, 5.2)
    ax = figure.subplots()
    ax.scatter(scatter.true_q, scatter.predicted, s=12, alpha=0.6, color="#d62728")
    values = [*scatter.true_q, *scatter.predicted]
    low, high = min(values), max(values)
    ax.plot([low, high], [low, high], ":", color="#444444", linewidth=1)
    rho = "n/a" if math.isnan(scatter.spearman) else f"{scatter.spearman:.3f}"
    ax.text(
        0.03,
        0.97,
        f"Spearman ρ = {rho}\nMSE = {scatter.mse:.4f}\n"
        f"n = {len(scatter.true_q)} steps, {scatter.tasks} dev tasks\ndotted: y = x",
        transform=ax.transAxes,
        va="top",
        fontsize=9,
        bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "#cccccc"},
    )
    ax.set_xlabel("true Q (label)")
    ax.set_ylabel("QNet predicted Q")
    ax.set_title(f"QNet on its dev tasks (checkpoint {Path(scatter.checkpoint).name})", fontsize=10)
    ax.grid(True, alpha=0.3)
    return _save(figure, path)


def plot_self_training(series: Mapping[str, Sequence[tuple[int, float]]], path: Path) -> Path:
    """Reward x100 per self-training round, one line per strategy."""
    figure = _figure()
    ax = figure.subplots()
    for strategy, points in series.items():
        color = _COLORS.get(split_strategy(strategy)[0])
        ax.plot([p[0] for p in points], [p[1] for p in points], "-o", color=color, label=strategy)
    ax.set_xlabel("self-training round (0: before self-training)")
    ax.set_ylabel("average final reward (x100)")
    ax.set_title("Reward per self-training round")
    from matplotlib.ticker import MaxNLocator  # _figure() imported matplotlib already

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(figure, path)
