"""Sweeps on TextWorldExpress through the real pipeline: each point is a study, and the
stages a point does not change are shared (stage records, trees, QNets, BC policies)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qlass.cli import app
from qlass.config import RunConfig
from qlass.errors import ConfigError
from qlass.report.compute import sweep_compute
from qlass.report.sweep import SWEEP_MD, summarise_sweep, write_sweep_report
from qlass.runtime.sweep import (
    GridAxis,
    SweepRunner,
    parse_grid,
    point_study_name,
    sweep_member_config,
    sweep_points,
)
from qlass.storage import TreeStore
from qlass.testing import TINY_BC, tiny_run_config

OVERRIDES = [
    *TINY_BC,
    "env.params=numLocations=2,includeDoors=0",
    "env.train_tasks=4",
    "env.eval_tasks=2",
    "env.max_steps=4",
    "env.pool_size=2",
    "explore.width=2",
    "explore.max_depth=2",
    "explore.min_prune_depth=1",
    "explore.concurrency=2",
    "qnet.epochs=1",
    "qnet.batch_size=8",
    "qnet.head_dim=16",
    "qnet.max_length=512",
    "qnet.dev_fraction=0.25",
    "search.strategies=[greedy, qlass:2]",
    "eval.concurrency=2",
]


def _config(tmp: Path, name: str, *extra: str) -> RunConfig:
    return tiny_run_config(tmp, f"name={name}", *OVERRIDES, *extra)


def test_grids_parse_into_points_and_member_runs_share_what_they_can(tmp_path: Path) -> None:
    assert parse_grid("labels.gamma=0.5,0.9") == GridAxis("labels.gamma", ("0.5", "0.9"))
    assert parse_grid("search.strategies=[greedy, qlass:2],[greedy]").values == (
        "[greedy, qlass:2]",
        "[greedy]",
    )
    for bad in ("gamma=0.5", "labels.gamma=", "labels.gamma=1,1"):
        with pytest.raises(ConfigError):
            parse_grid(bad)
    base = _config(tmp_path, "g")
    with pytest.raises(ConfigError, match=r"labels\.gamma"):
        sweep_points(base, [parse_grid("labels.gamma=0.5,2")])
    with pytest.raises(ConfigError, match="sections"):
        sweep_points(base, [parse_grid("store.url=a,b")])
    points = sweep_points(
        base, [parse_grid("labels.gamma=0.5,0.9"), parse_grid("search.temperature=0,0.7")]
    )
    assert [p.label for p in points][:2] == [
        "labels.gamma=0.5 search.temperature=0",
        "labels.gamma=0.5 search.temperature=0.7",
    ]
    members = [sweep_member_config(base, p.config, 3) for p in points]
    assert len({m.name for m in members}) == 1  # one run: no point changes its trees
    assert all(m.seed == 3 and m.store_url == base.store_url for m in members)
    assert len({m.qnet_dir for m in members}) == 2  # one QNet per gamma
    assert len({m.policy_dir for m in members}) == 1
    wider = sweep_points(base, [parse_grid("explore.width=1,2"), parse_grid("bc.epochs=1,2")])
    runs = [sweep_member_config(base, p.config, 0) for p in wider]
    assert len({m.name for m in runs}) == 4 and len({m.policy_dir for m in runs}) == 2


async def _stage_names(store: TreeStore, run_id: int) -> list[str]:
    return sorted(s.name for s in await store.stages.of_run(run_id))


async def test_a_labels_and_search_sweep_reuses_the_trees_and_each_variant_keeps_its_qnet(
    tmp_path: Path,
) -> None:
    base = _config(tmp_path, "lab")
    axes = [parse_grid("labels.gamma=0.9,0.5"), parse_grid("search.temperature=0.7,0")]
    result = await SweepRunner(base, axes, (0,)).run()
    assert not result.stopped and len(result.points) == 4
    assert result.base.label == "labels.gamma=0.9 search.temperature=0.7"

    async with await TreeStore.open(base.store_url) as store:
        (run,) = await store.runs.all()  # one run: gold, BC and trees done once
        names = await _stage_names(store, run.id)
        assert [n for n in names if "@" not in n] == ["bc", "explore", "gold"]
        assert sum(n.startswith("label@") for n in names) == 2
        assert sum(n.startswith("train_qnet@") for n in names) == 2  # one per gamma
        assert sum(n.startswith("eval@") for n in names) == 4
        assert sorted(s.gamma for s in await store.labels.sets(run.id)) == [0.5, 0.9]
        checkpoints = await store.checkpoints.of_run(run.id)
        assert len(checkpoints) == 2 and len({c.path for c in checkpoints}) == 2
        nodes = {t.id: len((await store.trees.load(t.id)).nodes) for t in
                 await store.tasks.of_run(run.id)}  # fmt: skip

    # Resuming redoes nothing: no new node, checkpoint or episode.
    again = await SweepRunner(base, axes, (0,)).run()
    assert not again.stopped
    async with await TreeStore.open(base.store_url) as store:
        assert len(await store.checkpoints.of_run(run.id)) == 2
        after = {t.id: len((await store.trees.load(t.id)).nodes) for t in
                 await store.tasks.of_run(run.id)}  # fmt: skip
        assert after == nodes
        for point in result.points:
            study = await store.studies.get(point_study_name("lab", point.index))
            (member,) = await store.studies.members(study.id)
            episodes = await store.episodes.of_run(run.id, stage=member.eval_stage)
            assert len(episodes) == 4  # 2 strategies x 2 tasks, not played twice
        sweep = await summarise_sweep(store, "lab", resamples=200)
        costs = await sweep_compute(store, "lab")
    assert len(costs) == 4 * 6  # every point has each of the six stages' records
    explore = {c.completion_tokens for c in costs if c.stage == "explore"}
    assert len(explore) == 1 and explore.pop() > 0  # the one exploration, in every point
    assert sweep.base == "labels.gamma=0.9 search.temperature=0.7"
    assert len(sweep.summary.strategies) == 8
    assert len(sweep.summary.pairs) == 6  # 3 other points x 2 strategies, vs the base point
    files = await asyncio.to_thread(write_sweep_report, sweep, base.directory)
    assert len(files) == 3
    page = (base.directory / SWEEP_MD).read_text()
    assert "labels.gamma=0.5 search.temperature=0 \\| qlass:2" in page
    for table in page.split("\n\n"):  # every row has its header's columns
        rows = [r for r in table.splitlines() if r.startswith("|")]
        columns = {len(re.split(r"(?<!\\)\|", r)) for r in rows}
        assert len(columns) <= 1, table


async def test_an_explore_sweep_takes_over_gold_and_bc_and_bc_examples_zero_fails_alone(
    tmp_path: Path,
) -> None:
    base = _config(tmp_path, "exp")
    axes = [parse_grid("explore.max_depth=1,2")]
    await SweepRunner(base, axes, (0,), stages=("gold", "bc", "explore")).run()
    async with await TreeStore.open(base.store_url) as store:
        first, second = await store.runs.all()
        bc_first = await store.stages.get(first.id, "bc")
        bc_second = await store.stages.get(second.id, "bc")
        gold_second = await store.stages.get(second.id, "gold")
        assert bc_first is not None and "reused_from" not in bc_first.metrics
        assert bc_second is not None and bc_second.metrics["reused_from"] == first.name
        assert gold_second is not None and gold_second.metrics["reused_from"] == first.name
        assert bc_second.status == "done" and bc_second.fingerprint == bc_first.fingerprint
        assert len(list((base.directory / "seed0").glob("policy-*"))) == 1
        for run in (first, second):
            assert (await store.stages.get(run.id, "explore")) is not None

    # The whole method at bc.examples=0: the untrained policy never writes an action, so no
    # QNet can be trained; that point is recorded as failed (with why) and the sweep goes on.
    zero = _config(tmp_path / "zero", "bcx")
    result = await SweepRunner(zero, [parse_grid("bc.examples=0,4")], (0,)).run()
    assert not result.stopped
    async with await TreeStore.open(zero.store_url) as store:
        untrained, trained = await store.runs.all()
        no_bc = await store.stages.get(untrained.id, "bc")
        four = await store.stages.get(trained.id, "bc")
        assert no_bc is not None and no_bc.metrics["steps"] == 0
        assert no_bc.metrics["examples"] == 0
        assert four is not None and four.metrics["steps"] > 0 and four.metrics["conversations"] == 4
        gold = await store.stages.get(trained.id, "gold")
        assert gold is not None and gold.metrics["reused_from"] == untrained.name
        failed_point = await store.studies.get(point_study_name("bcx", 0))
        why = failed_point.settings["failed"]["0"]
        assert "none of the trees'" in why and "is a valid action" in why and "invalid" in why
        assert not await store.studies.members(failed_point.id)
        trained_point = await store.studies.get(point_study_name("bcx", 1))
        assert "failed" not in trained_point.settings
        assert [m.seed for m in await store.studies.members(trained_point.id)] == [0]
        summary = await summarise_sweep(store, "bcx", resamples=100)
    # points are named by their value (the one grid field): only "4" has figures
    assert {s.strategy.partition(" | ")[0] for s in summary.summary.strategies} == {"4"}
    notes = summary.summary.notes
    assert any(n.startswith("0: seed 0 failed: no labelled triples") for n in notes), notes
    assert len(list((zero.directory / "seed0").glob("policy-*/config.json"))) == 2


def test_the_cli_refuses_a_bad_grid_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["sweep", "run", "--grid", "gamma=1", "--set", f"run_dir={tmp_path}"]
    )
    assert result.exit_code != 0
    assert "section.field=v1,v2" in result.output


def test_compute_rows_average_over_seeds_and_mark_reused_stages() -> None:
    from datetime import UTC, datetime

    from qlass.report.compute import compute_rows, render_compute_markdown
    from qlass.storage import StageRecord

    def stage(name: str, **metrics: object) -> StageRecord:
        now = datetime.now(UTC)
        return StageRecord(1, name, "f", "done", now, now, dict(metrics))

    rows = compute_rows(
        "gamma=0.5",
        {
            "bc": [stage("bc", train_tokens=100, wall_time_s=4.0, reused_from="x")],
            "explore": [
                stage("explore", completion_tokens=300, env_steps=40, wall_time_s=2.0),
                stage("explore", completion_tokens=500, env_steps=60, wall_time_s=4.0),
            ],
            "eval": [
                stage(
                    "eval",
                    wall_time_s=1.0,
                    reports=[
                        {"completion_tokens": 30, "env_steps": 5},
                        {"completion_tokens": 70, "env_steps": 7},
                    ],
                )
            ],
        },
    )
    by_stage = {r.stage: r for r in rows}
    assert by_stage["bc"].reused and by_stage["bc"].train_tokens == 100
    explore = by_stage["explore"]
    assert (explore.seeds, explore.completion_tokens, explore.env_steps) == (2, 400, 50)
    assert explore.wall_time_s == 3.0 and not explore.reused
    assert (by_stage["eval"].completion_tokens, by_stage["eval"].env_steps) == (100, 12)
    text = render_compute_markdown("s", rows)
    assert "| gamma=0.5 | bc* | 1 | 0 | 100 | 0 | 4.0 |" in text
    assert "| gamma=0.5 | 400 | 50 | 7.0 |" in text  # training: bc + explore, not eval
