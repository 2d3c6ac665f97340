"""The Ray executor's parts that run without a Ray cluster: the actor's bodies (one explore
worker per actor; a share of the evaluation per actor) on a real SQLite store with real
TextWorldExpress simulators, the merging of the actors' metrics, and the CLI's checks of
``--executor``. The Ray plumbing itself
(remote actors, restarts) needs a live cluster and is not exercised here."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from qlass.cli import app, main
from qlass.errors import ConfigError
from qlass.runtime.evaluate import StrategyReport
from qlass.runtime.pipeline import Pipeline
from qlass.runtime.ray_executor import RaySettings, RunActor, _merge, import_ray
from qlass.testing import tiny_run_config
from tests.reliability.harness import SCRIPTED_ACTIONS, snapshot_async

SETTINGS = (
    "name=rayparts",
    "policy.backend=scripted",
    f"policy.model={SCRIPTED_ACTIONS}",
    "policy.prompt=none",
    "env.pool_size=2",
    "env.train_tasks=4",
    "env.max_steps=5",
    "explore.width=2",
    "explore.max_depth=3",
    "explore.min_prune_depth=2",
    "explore.concurrency=1",
)


async def test_two_actor_bodies_share_the_run_and_grow_the_single_process_trees(
    tmp_path: Path,
) -> None:
    shared = tiny_run_config(tmp_path / "shared", *SETTINGS, f"store.url={tmp_path / 's.db'}")
    alone = tiny_run_config(tmp_path / "alone", *SETTINGS, f"store.url={tmp_path / 'a.db'}")
    async with Pipeline(shared) as pipeline:  # the driver creates the run first
        assert pipeline.run_record.name == "rayparts"
    data = shared.model_dump(mode="json")
    actors = [RunActor(data, i, RaySettings(lease_s=60), None) for i in range(2)]
    parts = await asyncio.gather(*(actor.explore() for actor in actors))
    async with Pipeline(alone) as pipeline:
        await pipeline.stage("explore")

    ids = {part["worker_id"] for part in parts}
    assert len(ids) == 2 and all(i.startswith(("ray0@", "ray1@")) for i in ids)
    assert not any(part["restarted"] for part in parts)
    got = await snapshot_async(shared.store_url, "rayparts")
    want = await snapshot_async(alone.store_url, "rayparts")
    assert set(got.task_status.values()) == {"done"}
    assert set(got.task_attempts.values()) == {1}  # every task claimed once
    assert got.content() == want.content()
    assert got.labels.keys() == want.labels.keys()
    merged = _merge(parts)
    assert merged["nodes"] == len(got.nodes)  # roots included
    assert merged["actors"] == 2 and merged["restarted_actors"] == 0
    assert merged["unfinished_tasks"] == 0
    claimed = sum(merged[f"worker:{i}"]["claimed"] for i in ids)
    assert claimed == 4


EVAL_SETTINGS = (
    "name=rayeval",
    "policy.backend=scripted",
    f"policy.model={SCRIPTED_ACTIONS}",
    "policy.prompt=none",
    "env.pool_size=2",
    "env.eval_tasks=5",
    "env.max_steps=4",
    "search.strategies=[sampled,best_of_n:2]",
    "search.value_model=random",
    "eval.concurrency=2",
)


async def test_actors_share_the_evaluation_and_the_driver_reads_the_single_process_numbers(
    tmp_path: Path,
) -> None:
    shared = tiny_run_config(tmp_path / "shared", *EVAL_SETTINGS, f"store.url={tmp_path / 's.db'}")
    alone = tiny_run_config(tmp_path / "alone", *EVAL_SETTINGS, f"store.url={tmp_path / 'a.db'}")
    async with Pipeline(alone) as pipeline:
        want = await pipeline.evaluate()
        want_episodes = await pipeline.store.episodes.of_run(pipeline.run_record.id)

    async with Pipeline(shared) as driver:  # the driver creates the run, the actors play
        data = shared.model_dump(mode="json")
        actors = [RunActor(data, i, RaySettings(), None) for i in range(2)]
        names = list(shared.search.strategies)
        parts = await asyncio.gather(
            *(a.evaluate(names, "dev", i, 2) for i, a in enumerate(actors))
        )
        assert [p["tasks"] for p in parts] == [3, 2]  # tasks 0, 2, 4 and 1, 3
        got = await driver.evaluate()
        # every episode was stored by the actors: the driver built no policy and no env
        assert not driver.resources._policies and driver.resources._pool is None
        got_episodes = await driver.store.episodes.of_run(driver.run_record.id)

    def timeless(reports: list[StrategyReport]) -> list[StrategyReport]:
        return [dataclasses.replace(r, seconds_per_episode=0.0) for r in reports]

    assert timeless(got) == timeless(want)

    def key(e: Any) -> tuple[str, str]:
        return e.strategy, e.task_key

    assert len(got_episodes) == 10 and len({key(e) for e in got_episodes}) == 10  # none twice
    assert {key(e): e.final_score for e in got_episodes} == {
        key(e): e.final_score for e in want_episodes
    }
    assert {key(e): e.trajectory["steps"] for e in got_episodes} == {
        key(e): e.trajectory["steps"] for e in want_episodes
    }


def test_merge_adds_up_the_actors_figures() -> None:
    parts = [
        {
            "worker_id": f"ray{i}@h:{i}",
            "restarted": i == 1,
            "skipped": False,
            "metrics": {
                "new_nodes": 10 * (i + 1),
                "nodes": 40 + 10 * i,
                "env_steps": 30,
                "cost_usd": 0.5,
                "unfinished_tasks": 1 - i,
                f"worker:ray{i}@h:{i}": {"claimed": 2},
            },
        }
        for i in range(2)
    ]
    merged = _merge(parts)
    assert (
        merged["new_nodes"] == 30
        and merged["nodes"] == 50
        and merged["env_steps"] == 60
        and merged["cost_usd"] == 1.0
    )
    assert merged["env_steps_per_node"] == 2
    assert merged["restarted_actors"] == 1 and merged["unfinished_tasks"] == 0
    assert merged["worker:ray1@h:1"] == {"claimed": 2, "restarted": True}


def test_missing_ray_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'qlass\[ray\]'"):
        import_ray()


def test_cli_refuses_ray_without_ray_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    run_dir = tmp_path / "run"
    argv = ["qlass", "explore", "--executor", "ray", "--set", f"run_dir={run_dir}"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "pip install 'qlass[ray]'" in lines[0], lines
    assert not run_dir.exists()  # refused before anything was created


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--executor", "spark"], "must be 'local' or 'ray'"),
        (["--executor", "ray", "--worker"], "leave out --worker"),
    ],
)
def test_cli_checks_the_executor_option(cli: CliRunner, args: list[str], message: str) -> None:
    result = cli.invoke(app, ["explore", *args])
    assert result.exit_code == 2
    assert message in result.output
