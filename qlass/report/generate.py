"""Build a run's report (tables + plots) and its tree viewer from the store, and write them.

    async with await TreeStore.open("runs/demo/qlass.db") as store:
        report = await build_report(store, "demo")        # runs/demo/results.md, *.csv, *.png
        viewer = await build_viewer(store, "demo")        # runs/demo/trees.html
        episodes = await build_episode_viewer(store, "demo")  # runs/demo/episodes.html

Files go to the run's folder (``RunConfig.directory`` of the stored config) unless told
otherwise. Reading the store is async; file writing and plotting run in worker threads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from qlass.config import RunConfig
from qlass.errors import MissingDataError
from qlass.qnet.base import ValueModel
from qlass.report.data import load_episodes, pick_label_set, stored_config
from qlass.report.episodes import render_episodes, select_episodes
from qlass.report.plots import (
    QNET_DEV_PNG,
    REWARD_VS_TOKENS_PNG,
    SELF_TRAINING_PNG,
    plot_qnet_dev,
    plot_reward_vs_tokens,
    plot_self_training,
    reward_vs_tokens_series,
    self_training_series,
)
from qlass.report.scoring import DevScatter, load_scorer, qnet_dev_scatter
from qlass.report.tables import (
    EpisodeStageRow,
    ResultRow,
    StageRow,
    episode_stage_rows,
    episode_stages_csv,
    result_rows,
    results_csv,
    results_markdown,
    rows_for,
    stage_rows,
    stages_csv,
)
from qlass.report.viewer import add_qnet_scores, load_tree_views, render_viewer
from qlass.runtime.progress import Progress
from qlass.storage import TreeStore

__all__ = [
    "EpisodeViewerResult",
    "ReportResult",
    "ViewerResult",
    "build_episode_viewer",
    "build_report",
    "build_viewer",
    "describe",
]

log = structlog.get_logger(__name__)

RESULTS_MD, RESULTS_CSV, STAGES_CSV = "results.md", "results.csv", "stages.csv"
EPISODE_STAGES_CSV = "episode_stages.csv"


@dataclass(frozen=True)
class ReportResult:
    """What :func:`build_report` wrote and the numbers it wrote."""

    run: str
    directory: Path
    stage: str | None
    rows: tuple[ResultRow, ...]
    stages: tuple[StageRow, ...]
    episode_stages: tuple[EpisodeStageRow, ...]
    files: tuple[Path, ...]
    scatter: DevScatter | None = None
    notes: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class ViewerResult:
    """Where :func:`build_viewer` wrote the page and what is in it."""

    path: Path
    trees: int
    nodes_shown: int
    scored_nodes: int
    notes: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class EpisodeViewerResult:
    """Where :func:`build_episode_viewer` wrote the page and what is in it."""

    path: Path
    stage: str | None
    episodes: int
    tasks: int
    strategies: tuple[str, ...]
    notes: tuple[str, ...] = field(default=())


def _write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


async def build_report(
    store: TreeStore,
    run: str | int,
    *,
    out_dir: Path | None = None,
    stage: str | None = None,
    qnet_scatter: bool = True,
    value_model: ValueModel | None = None,
    device: str = "auto",
    max_dev_points: int = 2000,
    progress: Progress | None = None,
) -> ReportResult:
    """Regenerate ``results.md``, ``results.csv``, ``stages.csv`` and the plots of a run.

    Args:
        run: run name or id.
        out_dir: where the files go (default: the run's folder).
        stage: the episode stage of the results table and Figure 3 (default: the latest
            evaluation stage, ``eval:<split>:<fingerprint>``).
        qnet_scatter: score the dev set with the newest QNet checkpoint for the dev
            scatter plot (costs a model load and a forward pass per batch).
        value_model: score with this model instead of loading the checkpoint.

    Raises:
        UnknownNameError: no such run or stage.
    """
    record = await store.runs.get(run)
    config = stored_config(record)
    directory = out_dir if out_dir is not None else config.directory
    notes: list[str] = []
    episodes = await load_episodes(store, record.id)
    chosen, rows = rows_for(episodes, stage)
    other_stages = [s for s in episodes.stages if s != chosen]
    if other_stages:
        notes.append(f"other episode stages in the store (use --stage): {', '.join(other_stages)}")
    stage_records = await store.stages.of_run(record.id)
    stages = stage_rows(stage_records)
    episode_stages = episode_stage_rows(episodes)
    files: list[Path] = []
    plots: list[str] = []

    if rows:
        series = reward_vs_tokens_series(rows)
        title = f"Reward vs completion tokens: {record.name} ({rows[0].report.split})"
        files.append(
            await asyncio.to_thread(
                plot_reward_vs_tokens, series, directory / REWARD_VS_TOKENS_PNG, title=title
            )
        )
        plots.append(REWARD_VS_TOKENS_PNG)
    else:
        notes.append("no evaluation episodes: no results table and no reward-vs-tokens plot")

    scatter = None
    if qnet_scatter:
        scatter = await _dev_scatter(
            store, record.id, config, value_model, device, max_dev_points, progress, notes
        )
        if scatter is not None:
            files.append(await asyncio.to_thread(plot_qnet_dev, scatter, directory / QNET_DEV_PNG))
            plots.append(QNET_DEV_PNG)
            notes.extend(f"QNet dev scatter: {note}" for note in scatter.notes)
    else:
        notes.append("QNet dev scatter not made (--no-qnet)")

    rounds = self_training_series(stage_records)
    if rounds:
        files.append(
            await asyncio.to_thread(plot_self_training, rounds, directory / SELF_TRAINING_PNG)
        )
        plots.append(SELF_TRAINING_PNG)

    markdown = results_markdown(
        record.name,
        chosen,
        rows,
        stages,
        episode_stages=episode_stages,
        plots=plots,
        notes=notes,
    )
    for name, text in (
        (RESULTS_MD, markdown),
        (RESULTS_CSV, results_csv(rows)),
        (STAGES_CSV, stages_csv(stages)),
        (EPISODE_STAGES_CSV, episode_stages_csv(episode_stages)),
    ):
        files.append(await asyncio.to_thread(_write_text, directory / name, text))
    log.info("report written", run=record.name, directory=str(directory), files=len(files))
    return ReportResult(
        run=record.name,
        directory=directory,
        stage=chosen,
        rows=tuple(rows),
        stages=tuple(stages),
        episode_stages=tuple(episode_stages),
        files=tuple(files),
        scatter=scatter,
        notes=tuple(notes),
    )


async def _dev_scatter(
    store: TreeStore,
    run_id: int,
    config: RunConfig,
    value_model: ValueModel | None,
    device: str,
    max_points: int,
    progress: Progress | None,
    notes: list[str],
) -> DevScatter | None:
    checkpoint = await store.checkpoints.latest(run_id)
    if checkpoint is None:
        notes.append("no QNet checkpoint recorded: no dev scatter plot")
        return None
    label_set_id = checkpoint.label_set_id
    if label_set_id is None:
        label_set = pick_label_set(await store.labels.sets(run_id), config)
        if label_set is None:
            notes.append("no Q-label set: no dev scatter plot")
            return None
        label_set_id = label_set.id
    model = value_model
    try:
        if model is None:
            model = await load_scorer(checkpoint.path, device=device)
        scatter = await qnet_dev_scatter(
            store,
            config,
            checkpoint,
            model,
            label_set_id=label_set_id,
            max_points=max_points,
            progress=progress,
        )
    except MissingDataError as error:
        notes.append(f"no dev scatter plot: {error}")
        return None
    finally:
        if value_model is None and model is not None:
            await model.aclose()
    if scatter is None:
        notes.append("the QNet's dev split is empty (one task, or dev_fraction 0): no scatter")
    return scatter


async def build_viewer(
    store: TreeStore,
    run: str | int,
    *,
    out_file: Path | None = None,
    task_key: str | None = None,
    scores: bool = True,
    value_model: ValueModel | None = None,
    label_set_id: int | None = None,
    max_trees: int = 100,
    max_nodes: int = 2000,
    device: str = "auto",
    progress: Progress | None = None,
) -> ViewerResult:
    """Write the HTML tree viewer of a run (or of one task) and return where.

    Args:
        out_file: default ``<run folder>/trees.html`` (``tree-<task id>.html`` for one task).
        scores: score every shown node with the newest QNet checkpoint (or ``value_model``).
        label_set_id: the Q-label set to show (default: the one of the run's config).

    Raises:
        UnknownNameError: no such run, task or label set.
    """
    record = await store.runs.get(run)
    config = stored_config(record)
    label_set = pick_label_set(await store.labels.sets(record.id), config, label_set_id)
    views, notes = await load_tree_views(
        store,
        record.id,
        label_set=label_set,
        task_key=task_key,
        max_trees=max_trees,
        max_nodes=max_nodes,
    )
    qnet_note = "QNet scores not computed (--no-scores)" if views else "No trees stored"
    if scores and views:
        model = value_model
        checkpoint = await store.checkpoints.latest(record.id)
        if model is None and checkpoint is None:
            qnet_note = "No QNet checkpoint recorded: no QNet scores"
        else:
            try:
                if model is None and checkpoint is not None:
                    model = await load_scorer(checkpoint.path, device=device)
                assert model is not None
                views = await add_qnet_scores(views, model, progress=progress)
                source = checkpoint.path if value_model is None and checkpoint else "given model"
                qnet_note = f"QNet scores from {source}"
            except MissingDataError as error:
                qnet_note = f"No QNet scores: {error}"
            finally:
                if value_model is None and model is not None:
                    await model.aclose()
    if out_file is None:
        name = (
            "trees.html" if task_key is None or not views else f"tree-{views[0].tree.task.id}.html"
        )
        out_file = config.directory / name
    # Rendering is CPU work (and the first one reads the templates): off the event loop.
    page = await asyncio.to_thread(
        render_viewer, record.name, views, label_set=label_set, qnet_note=qnet_note, notes=notes
    )
    await asyncio.to_thread(_write_text, out_file, page)
    return ViewerResult(
        path=out_file,
        trees=len(views),
        nodes_shown=sum(len(v.shown) for v in views),
        scored_nodes=sum(len(v.qnet) for v in views),
        notes=tuple(notes),
    )


async def build_episode_viewer(
    store: TreeStore,
    run: str | int,
    *,
    out_file: Path | None = None,
    stage: str | None = None,
    task_key: str | None = None,
    max_tasks: int = 200,
) -> EpisodeViewerResult:
    """Write the HTML page of a run's episodes (every step, candidate values, two
    strategies side by side) and return where.

    Args:
        out_file: default ``<run folder>/episodes.html``.
        stage: the episode stage to show (default: the latest evaluation stage, as
            :func:`build_report`); the page notes the other stored stages.
        task_key: only this task's episodes.
        max_tasks: tasks shown at most (each with all its strategies' episodes).

    Raises:
        UnknownNameError: no such run or stage.
    """
    record = await store.runs.get(run)
    config = stored_config(record)
    episodes = await load_episodes(store, record.id)
    chosen, records = episodes.select(stage)
    notes: list[str] = []
    other_stages = [s for s in episodes.stages if s != chosen]
    if other_stages:
        notes.append(f"other episode stages in the store (use --stage): {', '.join(other_stages)}")
    if task_key is not None and not any(r.task_key == task_key for r in records):
        notes.append(f"no episode of task {task_key} in this stage")
    views, selection_notes = await asyncio.to_thread(
        select_episodes, records, task_key=task_key, max_tasks=max_tasks
    )
    notes.extend(selection_notes)
    rows = await asyncio.to_thread(result_rows, chosen, records) if chosen is not None else []
    summaries = [row.report for row in rows]
    page = await asyncio.to_thread(
        render_episodes, record.name, chosen, views, summaries=summaries, notes=notes
    )
    path = out_file if out_file is not None else config.directory / "episodes.html"
    await asyncio.to_thread(_write_text, path, page)
    return EpisodeViewerResult(
        path=path,
        stage=chosen,
        episodes=len(views),
        tasks=len({view.task.key for view in views}),
        strategies=tuple(summary.strategy for summary in summaries),
        notes=tuple(notes),
    )


def describe(files: Sequence[Path]) -> str:
    """File names, comma-separated (for the CLI's last line)."""
    return ", ".join(path.name for path in files)
