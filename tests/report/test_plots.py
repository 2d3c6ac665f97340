"""Every plot is drawn from stored data: the series each plot draws equal what the store
holds, for two different stores, and the PNG files are valid images."""

from __future__ import annotations

import asyncio
import math
import statistics
from pathlib import Path

import pytest
from PIL import Image

from qlass.qnet.base import ValueQuery
from qlass.qnet.scorer import QNetScorer
from qlass.qnet.train import spearman, split_by_task
from qlass.report import build_report, reward_vs_tokens_series, self_training_series
from qlass.report.plots import ORACLE_SERIES
from qlass.report.sweep import axis_order
from qlass.storage import TreeStore

from .conftest import Stored
from .demo_run import DEV_FRACTION, NEW_STAGE, STRATEGIES, DemoRun, populate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _valid_png(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def _figure3_truth(demo: DemoRun) -> dict[str, list[tuple[float, float]]]:
    """(completion tokens per episode, reward x100) per family, from the stored episodes."""
    truth: dict[str, list[tuple[float, float]]] = {}
    for strategy in STRATEGIES:
        items = [e for e in demo.episodes if e.stage == NEW_STAGE and e.strategy == strategy]
        tokens = sum(e.completion_tokens for e in items) / len(items)
        family = strategy.partition(":")[0]
        truth.setdefault(family, []).append(
            (tokens, 100 * statistics.fmean(e.score for e in items))
        )
        if family == "best_of_n":
            oracle = 100 * statistics.fmean(e.oracle or 0.0 for e in items)
            truth.setdefault(ORACLE_SERIES, []).append((tokens, oracle))
    return truth


async def test_reward_vs_tokens_follows_the_store(tmp_path: Path) -> None:
    drawn = []
    for variant in (0, 1):
        run_dir = tmp_path / f"run{variant}"
        async with await TreeStore.open(run_dir / "qlass.db") as store:
            demo = await populate(store, run_dir, variant=variant)
            result = await build_report(store, "demo", qnet_scatter=False)
        series = reward_vs_tokens_series(result.rows)
        truth = _figure3_truth(demo)
        assert set(series) == set(truth)
        for family, points in series.items():
            assert [p.completion_tokens for p in points] == pytest.approx(
                [t[0] for t in truth[family]]
            ), family
            assert [p.reward for p in points] == pytest.approx([t[1] for t in truth[family]])
        assert [p.budget for p in series["best_of_n"]] == [2, 4]
        assert [p.budget for p in series["greedy"]] == [None]
        width, height = await asyncio.to_thread(_valid_png, run_dir / "reward_vs_tokens.png")
        assert width > 300 and height > 200
        drawn.append(series)
    assert drawn[0] != drawn[1]  # different stores, different plots: nothing is hard-coded


async def test_self_training_plot_reads_round_stages(stored: Stored) -> None:
    stages = await stored.store.stages.of_run(stored.demo.run_id)
    series = self_training_series(stages)
    truth: dict[str, list[tuple[int, float]]] = {}
    for stage in stages:
        if stage.name == "eval" or stage.name.startswith("self_train:"):
            for report in stage.metrics["reports"]:
                truth.setdefault(report["strategy"], []).append(
                    (stage.metrics.get("round", 0), 100 * report["avg_reward"])
                )
    assert {k: list(v) for k, v in series.items()} == truth
    assert list(series) == ["greedy", "qlass:2"]
    assert [r for r, _ in series["qlass:2"]] == [0, 1, 2]  # the eval stage is round 0
    result = await build_report(stored.store, "demo", qnet_scatter=False)
    assert stored.run_dir / "self_training.png" in result.files
    await asyncio.to_thread(_valid_png, stored.run_dir / "self_training.png")
    assert self_training_series([s for s in stages if s.name == "explore"]) == {}


async def test_qnet_dev_scatter_scores_the_training_dev_split(
    tmp_path: Path, qnet_checkpoint: Path
) -> None:
    run_dir = tmp_path / "run"
    async with await TreeStore.open(run_dir / "qlass.db") as store:
        demo = await populate(store, run_dir, checkpoint=qnet_checkpoint)
        result = await build_report(store, "demo", device="cpu")
        scatter = result.scatter
        assert scatter is not None
        # The dev split training made: one of the three trees, all its labelled steps.
        triples = await store.export_triples(demo.label_set_id, max_per_tree=300, seed=0)
        dev = split_by_task(triples, DEV_FRACTION, 0).dev
        assert len({s.task_key for s in dev}) == 1
        assert scatter.task_keys == tuple(s.task_key for s in dev)
        task = await store.tasks.by_key(demo.run_id, dev[0].task_key)
        assert task is not None
        labels = await store.labels.values(demo.label_set_id, task.id, normalized=True)
    index = demo.task_ids.index(task.id)
    stored_q = sorted(labels[demo.node_ids[index][n]] for n in ("A", "B", "A1", "A2", "B2"))
    assert sorted(scatter.true_q) == pytest.approx(stored_q)  # the stored (normalised) labels
    scorer = await asyncio.to_thread(QNetScorer.from_pretrained, qnet_checkpoint, device="cpu")
    direct = await asyncio.to_thread(
        scorer.score_batch, [ValueQuery(s.history, s.candidate_text) for s in dev]
    )
    await scorer.aclose()
    assert scatter.predicted == pytest.approx(direct, abs=1e-5)
    rho = spearman(direct, [s.q for s in dev])
    assert scatter.spearman == pytest.approx(rho) or (
        math.isnan(rho) and math.isnan(scatter.spearman)
    )
    assert run_dir / "qnet_dev_scatter.png" in result.files
    await asyncio.to_thread(_valid_png, run_dir / "qnet_dev_scatter.png")


async def test_no_checkpoint_means_no_scatter_and_says_so(stored: Stored) -> None:
    result = await build_report(stored.store, "demo")
    assert result.scatter is None
    assert not (stored.run_dir / "qnet_dev_scatter.png").exists()
    assert any("no QNet checkpoint" in note for note in result.notes)


def test_a_numeric_sweep_axis_is_drawn_in_value_order() -> None:
    assert axis_order(["2", "1", "3"]) == ["1", "2", "3"]  # --grid explore.width=2,1,3
    assert axis_order(["200", "50", "0"]) == ["0", "50", "200"]
    assert axis_order(["0.9", "0.5", "1.0"]) == ["0.5", "0.9", "1.0"]
    # not every label a number: the grid's own order
    assert axis_order(["null", "0", "10"]) == ["null", "0", "10"]
    assert axis_order(["bellman", "mc_mean"]) == ["bellman", "mc_mean"]
