"""The results table (one row per strategy of an evaluation stage) and the compute table
(one row per pipeline stage), built from the store and written as Markdown and CSV.

Rewards are shown x100 as in the paper (average final reward in [0, 100]); the success
rate is shown beside it. Best-of-N's oracle column is the mean over tasks of the best true
reward among its N episodes: an upper bound, never what Best-of-N achieves.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from qlass.report.data import (
    RunEpisodes,
    episode_trajectory,
    split_strategy,
    strategy_sort_key,
)
from qlass.runtime.evaluate import StrategyReport, summarise
from qlass.storage import EpisodeRecord, StageRecord

__all__ = [
    "EPISODE_STAGE_COLUMNS",
    "RESULT_COLUMNS",
    "STAGE_COLUMNS",
    "EpisodeStageRow",
    "ResultRow",
    "StageRow",
    "episode_stage_rows",
    "episode_stages_csv",
    "print_tables",
    "result_rows",
    "results_csv",
    "results_markdown",
    "rows_for",
    "stage_row",
    "stage_rows",
    "stages_csv",
]

# Stage metrics worth a glance, in this order, when a stage has them.
_KEY_FIGURES = (
    "trajectories",
    "conversations",
    "examples",
    "train_tokens",
    "final_loss",
    "trees",
    "nodes",
    "leaves",
    "failed_tasks",
    "env_steps_per_node",
    "label_set",
    "gamma",
    "triples",
    "train_examples",
    "dev_examples",
    "dev_mse_before",
    "dev_mse",
    "dev_mse_mean_baseline",
    "dev_spearman",
    "dev_sibling_accuracy",
    "dev_sibling_spread",
    "round",
    "collected",
    "kept",
    "stopped",
)


@dataclass(frozen=True, slots=True)
class ResultRow:
    """One strategy's results in one stage (a :class:`StrategyReport` and where it is from)."""

    stage: str
    report: StrategyReport

    @property
    def family(self) -> str:
        return split_strategy(self.report.strategy)[0]

    @property
    def budget(self) -> int | None:
        """K of ``family:K`` (N of Best-of-N, M candidates of QLASS, beam width)."""
        return split_strategy(self.report.strategy)[1]

    @property
    def prompt_tokens_per_episode(self) -> float:
        n = self.report.episodes
        return self.report.prompt_tokens / n if n else 0.0

    @property
    def env_steps_per_episode(self) -> float:
        n = self.report.episodes
        return self.report.env_steps / n if n else 0.0


def result_rows(stage: str, episodes: Sequence[EpisodeRecord]) -> list[ResultRow]:
    """Aggregate a stage's episodes per strategy (with the runtime's own ``summarise``)."""
    by_strategy: dict[str, list[EpisodeRecord]] = {}
    for episode in episodes:
        by_strategy.setdefault(episode.strategy, []).append(episode)
    rows = []
    for strategy in sorted(by_strategy, key=strategy_sort_key):
        items = by_strategy[strategy]
        trajectories = [episode_trajectory(e) for e in items]
        split = items[0].split
        rows.append(ResultRow(stage, summarise(strategy, split, trajectories)))
    return rows


def rows_for(episodes: RunEpisodes, stage: str | None) -> tuple[str | None, list[ResultRow]]:
    """The chosen stage (``None``: the latest evaluation) and its rows."""
    chosen, records = episodes.select(stage)
    return chosen, result_rows(chosen, records) if chosen is not None else []


@dataclass(frozen=True, slots=True)
class StageRow:
    """What one pipeline stage cost (from its stored metrics).

    ``prompt_tokens``/``completion_tokens`` are policy tokens (an evaluation stage sums its
    strategies); ``figures`` holds the stage's key figures (trees, nodes, dev MSE...).
    """

    name: str
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    wall_time_s: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    env_steps: int | None
    figures: Mapping[str, Any] = field(default_factory=dict)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _summed(metrics: Mapping[str, Any], key: str) -> int | None:
    value = _number(metrics.get(key))
    if value is not None:
        return int(value)
    reports = metrics.get("reports")
    if isinstance(reports, list) and reports:
        values = [_number(r.get(key)) for r in reports if isinstance(r, Mapping)]
        if values and all(v is not None for v in values):
            return int(sum(v for v in values if v is not None))
    return None


def stage_row(stage: StageRecord) -> StageRow:
    """The compute row of a stage record."""
    metrics = stage.metrics or {}
    wall = _number(metrics.get("wall_time_s"))
    if wall is None and stage.started_at is not None and stage.finished_at is not None:
        wall = (stage.finished_at - stage.started_at).total_seconds()
    figures = {key: metrics[key] for key in _KEY_FIGURES if metrics.get(key) is not None}
    return StageRow(
        name=stage.name,
        status=stage.status,
        started_at=stage.started_at,
        finished_at=stage.finished_at,
        wall_time_s=wall,
        prompt_tokens=_summed(metrics, "prompt_tokens"),
        completion_tokens=_summed(metrics, "completion_tokens"),
        env_steps=_summed(metrics, "env_steps"),
        figures=figures,
    )


def stage_rows(stages: Sequence[StageRecord]) -> list[StageRow]:
    return [stage_row(stage) for stage in stages]


@dataclass(frozen=True, slots=True)
class EpisodeStageRow:
    """What the episodes of one episode stage cost (evaluation, self-training collection...):
    totals over its episodes; ``episode_seconds`` adds up each episode's own wall time."""

    stage: str
    strategies: tuple[str, ...]
    episodes: int
    prompt_tokens: int
    completion_tokens: int
    env_steps: int
    episode_seconds: float


def episode_stage_rows(episodes: RunEpisodes) -> list[EpisodeStageRow]:
    """One row per episode stage, in the order the stages were first stored."""
    return [
        EpisodeStageRow(
            stage=stage,
            strategies=tuple(sorted({e.strategy for e in items}, key=strategy_sort_key)),
            episodes=len(items),
            prompt_tokens=sum(e.prompt_tokens for e in items),
            completion_tokens=sum(e.completion_tokens for e in items),
            env_steps=sum(e.env_steps for e in items),
            episode_seconds=sum(e.wall_time_s for e in items),
        )
        for stage, items in episodes.by_stage.items()
    ]


# -- formatting ---------------------------------------------------------------------------

RESULT_COLUMNS = (
    "stage",
    "strategy",
    "family",
    "budget",
    "split",
    "episodes",
    "avg_reward_x100",
    "success_rate_pct",
    "avg_steps",
    "completion_tokens_per_episode",
    "prompt_tokens_per_episode",
    "env_steps_per_episode",
    "seconds_per_episode",
    "oracle_best_reward_x100",
    "stop_reasons",
)
EPISODE_STAGE_COLUMNS = (
    "stage",
    "strategies",
    "episodes",
    "prompt_tokens",
    "completion_tokens",
    "env_steps",
    "episode_seconds",
)
STAGE_COLUMNS = (
    "stage",
    "status",
    "started_at",
    "finished_at",
    "wall_time_s",
    "prompt_tokens",
    "completion_tokens",
    "env_steps",
    "figures",
)


def _result_record(row: ResultRow) -> dict[str, Any]:
    r = row.report
    oracle = r.oracle_best_reward
    return {
        "stage": row.stage,
        "strategy": r.strategy,
        "family": row.family,
        "budget": row.budget,
        "split": r.split,
        "episodes": r.episodes,
        "avg_reward_x100": 100 * r.avg_reward,
        "success_rate_pct": 100 * r.success_rate,
        "avg_steps": r.avg_steps,
        "completion_tokens_per_episode": r.completion_tokens_per_episode,
        "prompt_tokens_per_episode": row.prompt_tokens_per_episode,
        "env_steps_per_episode": row.env_steps_per_episode,
        "seconds_per_episode": r.seconds_per_episode,
        "oracle_best_reward_x100": None if oracle is None else 100 * oracle,
        "stop_reasons": " ".join(f"{k}={n}" for k, n in r.stop_reasons.items()),
    }


def _csv(columns: Sequence[str], records: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for item in records:
        writer.writerow({k: "" if item.get(k) is None else item[k] for k in columns})
    return buffer.getvalue()


def results_csv(rows: Sequence[ResultRow]) -> str:
    """``results.csv``: full-precision numbers, one row per strategy."""
    return _csv(RESULT_COLUMNS, [_result_record(row) for row in rows])


def episode_stages_csv(rows: Sequence[EpisodeStageRow]) -> str:
    """``episode_stages.csv``: the cost of every episode stage (strategies space-separated)."""
    return _csv(
        EPISODE_STAGE_COLUMNS,
        [
            {
                "stage": row.stage,
                "strategies": " ".join(row.strategies),
                "episodes": row.episodes,
                "prompt_tokens": row.prompt_tokens,
                "completion_tokens": row.completion_tokens,
                "env_steps": row.env_steps,
                "episode_seconds": row.episode_seconds,
            }
            for row in rows
        ],
    )


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value is not None else ""


def stages_csv(rows: Sequence[StageRow]) -> str:
    """``stages.csv``: one row per stage; ``figures`` is a JSON object."""
    return _csv(
        STAGE_COLUMNS,
        [
            {
                "stage": row.name,
                "status": row.status,
                "started_at": _when(row.started_at),
                "finished_at": _when(row.finished_at),
                "wall_time_s": row.wall_time_s,
                "prompt_tokens": row.prompt_tokens,
                "completion_tokens": row.completion_tokens,
                "env_steps": row.env_steps,
                "figures": json.dumps(dict(row.figures), sort_keys=True, default=str),
            }
            for row in rows
        ],
    )


def _fixed(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _figure(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


_RESULT_HEADERS = (
    "strategy",
    "split",
    "episodes",
    "avg reward (x100)",
    "success %",
    "avg steps",
    "completion tok/ep",
    "prompt tok/ep",
    "env steps/ep",
    "s/episode",
    "oracle best-of-N (x100, upper bound)",
    "stopped by (episodes)",
)
_TERMINAL_HEADERS = (
    "strategy",
    "split",
    "eps",
    "reward",
    "success %",
    "steps",
    "compl tok",
    "prompt tok",
    "env steps",
    "s/ep",
    "oracle",
    "stopped by",
)
_STAGE_HEADERS = (
    "stage",
    "status",
    "wall s",
    "prompt tokens",
    "completion tokens",
    "env steps",
    "key figures",
)


_EPISODE_STAGE_HEADERS = (
    "episode stage",
    "strategies",
    "episodes",
    "prompt tokens",
    "completion tokens",
    "env steps",
    "episode s",
)


def _episode_stage_cells(rows: Sequence[EpisodeStageRow]) -> list[list[str]]:
    return [
        [
            row.stage,
            ", ".join(row.strategies),
            str(row.episodes),
            _count(row.prompt_tokens),
            _count(row.completion_tokens),
            _count(row.env_steps),
            _fixed(row.episode_seconds),
        ]
        for row in rows
    ]


def _result_cells(row: ResultRow) -> list[str]:
    r = row.report
    return [
        r.strategy,
        r.split,
        str(r.episodes),
        _fixed(100 * r.avg_reward),
        _fixed(100 * r.success_rate),
        _fixed(r.avg_steps),
        _fixed(r.completion_tokens_per_episode, 0),
        _fixed(row.prompt_tokens_per_episode, 0),
        _fixed(row.env_steps_per_episode),
        _fixed(r.seconds_per_episode, 2),
        _fixed(None if r.oracle_best_reward is None else 100 * r.oracle_best_reward),
        ", ".join(f"{reason} {n}" for reason, n in r.stop_reasons.items()),
    ]


def _total(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def _stage_cells(rows: Sequence[StageRow]) -> list[list[str]]:
    cells = [
        [
            row.name,
            row.status,
            _fixed(row.wall_time_s),
            _count(row.prompt_tokens),
            _count(row.completion_tokens),
            _count(row.env_steps),
            ", ".join(f"{k}={_figure(v)}" for k, v in row.figures.items()),
        ]
        for row in rows
    ]
    if rows:
        cells.append(
            [
                "total",
                "",
                _fixed(_total([r.wall_time_s for r in rows])),
                _count(_total([r.prompt_tokens for r in rows])),
                _count(_total([r.completion_tokens for r in rows])),
                _count(_total([r.env_steps for r in rows])),
                "",
            ]
        )
    return cells


def _md_table(
    headers: Sequence[str], cells: Sequence[Sequence[str]], *, left: Sequence[int] = (0,)
) -> str:
    def line(items: Sequence[str]) -> str:
        return "| " + " | ".join(item.replace("|", "\\|") for item in items) + " |"

    align = ["---" if i in left else "---:" for i in range(len(headers))]
    return "\n".join([line(headers), line(align), *(line(c) for c in cells)])


def results_markdown(
    run_name: str,
    stage: str | None,
    rows: Sequence[ResultRow],
    stages: Sequence[StageRow],
    *,
    episode_stages: Sequence[EpisodeStageRow] = (),
    plots: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> str:
    """``results.md``: the results table, the compute tables, the plots and notes."""
    parts = [f"# Results of run `{run_name}`", ""]
    if stage is None:
        parts += ["No evaluation episodes are stored for this run yet.", ""]
    else:
        parts += [
            f"Evaluation stage `{stage}`. Average final reward x100 (the paper's metric) "
            "with the success rate beside it; tokens are the policy's, per episode. The "
            "oracle column is an upper bound (the best true reward among Best-of-N's "
            "episodes), not a result.",
            "",
            _md_table(_RESULT_HEADERS, [_result_cells(row) for row in rows], left=(0, 1)),
            "",
        ]
    parts += [
        "## Compute per stage",
        "",
        _md_table(_STAGE_HEADERS, _stage_cells(stages), left=(0, 1, 6))
        if stages
        else "No stages recorded.",
        "",
    ]
    if episode_stages:
        parts += [
            "## Compute per episode stage",
            "",
            "Totals over the stored episodes of each stage (episode s adds up every "
            "episode's own wall time; episodes run concurrently).",
            "",
            _md_table(_EPISODE_STAGE_HEADERS, _episode_stage_cells(episode_stages), left=(0, 1)),
            "",
        ]
    if plots:
        parts += ["## Plots", "", *(f"![{name}]({name})" for name in plots), ""]
    if notes:
        parts += ["## Notes", "", *(f"- {note}" for note in notes), ""]
    return "\n".join(parts).rstrip("\n") + "\n"


def print_tables(
    console: Console,
    stage: str | None,
    rows: Sequence[ResultRow],
    stages: Sequence[StageRow],
    episode_stages: Sequence[EpisodeStageRow] = (),
) -> None:
    """The tables on the terminal."""
    if stage is not None:
        table = Table(
            title=f"results ({stage})",
            caption="reward x100 (paper metric); tokens, env steps and seconds per episode; "
            "oracle = Best-of-N's upper bound, not a result",
        )
        for i, header in enumerate(_TERMINAL_HEADERS):
            table.add_column(header, justify="left" if i < 2 else "right", no_wrap=i == 0)
        for row in rows:
            table.add_row(*map(escape, _result_cells(row)))
        console.print(table)
    else:
        console.print("no evaluation episodes stored yet")
    if stages:
        table = Table(title="compute per stage")
        for i, header in enumerate(_STAGE_HEADERS):
            table.add_column(header, justify="right" if 1 < i < 6 else "left", no_wrap=i == 0)
        for cells in _stage_cells(stages):
            table.add_row(*map(escape, cells))
        console.print(table)
    if episode_stages:
        table = Table(title="compute per episode stage")
        for i, header in enumerate(_EPISODE_STAGE_HEADERS):
            table.add_column(header, justify="left" if i < 2 else "right", no_wrap=i == 0)
        for cells in _episode_stage_cells(episode_stages):
            table.add_row(*map(escape, cells))
        console.print(table)
