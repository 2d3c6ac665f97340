"""Episodes played by the runtime's real strategies and stored by the real store give a
results table equal to the reports ``evaluate_strategy`` returned when they were played
(Best-of-N's oracle bound included)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qlass.backends.scripted import ScriptedPolicy
from qlass.config import RunConfig
from qlass.envs.pool import EnvPool
from qlass.report import build_report, reward_vs_tokens_series
from qlass.runtime.context import SearchContext
from qlass.runtime.evaluate import StrategyReport, evaluate_strategy
from qlass.runtime.strategies import make_strategy
from qlass.storage import TreeStore
from qlass.types import TaskSpec
from tests.runtime.toys import Corridor, FunctionValueModel

STAGE = "eval:dev:roundtrip"


async def test_report_rows_equal_the_reports_of_the_played_episodes(tmp_path: Path) -> None:
    tasks = [TaskSpec("corridor", "walk", i, "dev") for i in range(3)]
    policy = ScriptedPolicy(texts=["Thought: go\nAction: move right", "Action: move left"])
    value = FunctionValueModel(lambda text: 1.0 if "right" in text else 0.0)
    ctx = SearchContext(
        policy=policy, envs=EnvPool.around(Corridor(2)), value_model=value, max_steps=4
    )
    config = RunConfig(name="roundtrip", run_dir=tmp_path)
    played: dict[str, StrategyReport] = {}
    async with await TreeStore.open(tmp_path / "qlass.db") as store:
        run = await store.runs.create("roundtrip", config=config.model_dump(mode="json"))
        for name in ("greedy", "best_of_n:2", "best_of_n:3", "qlass:2", "sampled"):
            strategy = make_strategy(name)
            report, trajectories = await evaluate_strategy(
                strategy, tasks, ctx, concurrency=1, seed=7
            )
            for trajectory in trajectories:
                await store.episodes.add(run.id, STAGE, strategy.name, trajectory)
            played[strategy.name] = report
        result = await build_report(store, "roundtrip", qnet_scatter=False)
    assert result.stage == STAGE
    assert {row.report.strategy: row.report for row in result.rows} == played
    assert played["best_of_n:3"].oracle_best_reward is not None  # survived the store
    series = reward_vs_tokens_series(result.rows)
    assert [p.budget for p in series["best_of_n"]] == [2, 3]
    assert series["qlass"][0].completion_tokens == pytest.approx(
        played["qlass:2"].completion_tokens_per_episode
    )
    assert [p.strategy for p in series["sampled"]] == ["sampled"]
