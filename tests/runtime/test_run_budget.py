"""The run budget and per-episode limits through the pipeline: real TextWorldExpress, real
SQLite, a scripted policy (its tokens are word counts).

A run whose budget is reached stops new episodes gracefully (the stage stays to be
resumed, nothing stored is lost), records what it spent, and a rerun with a higher budget
plays only the episodes not stored yet.
"""

from __future__ import annotations

from pathlib import Path

from qlass.runtime.pipeline import Pipeline
from qlass.testing import tiny_run_config

SETTINGS = (
    "env.name=textworld_express",
    "env.pool_size=1",
    "env.eval_tasks=4",
    "env.max_steps=4",
    "policy.backend=scripted",
    "policy.model=look around|move north|take coin",
    "policy.prompt=none",
    "search.strategies=[sampled]",
    "search.value_model=constant",
    "eval.concurrency=1",
)


async def _eval(run_dir: Path, *overrides: str) -> tuple[Pipeline, list[str], int]:
    config = tiny_run_config(run_dir, *SETTINGS, *overrides)
    async with Pipeline(config) as pipeline:
        (result,) = await pipeline.stage("eval")
        stopped = pipeline.stop.requested
        episodes = await pipeline.store.episodes.of_run(pipeline.run_record.id)
        run = await pipeline.store.runs.get(pipeline.run_record.id)
    assert result.name == "eval"
    keys = [e.task_key for e in episodes]
    assert len(keys) == len(set(keys)), "an episode was played twice"
    return pipeline, keys if not stopped else [*keys, "<stopped>"], run.spent_tokens


async def test_budget_stops_new_episodes_and_a_higher_budget_resumes(tmp_path: Path) -> None:
    _, unlimited, full_spend = await _eval(tmp_path / "free")
    assert len(unlimited) == 4 and full_spend > 0

    budget = full_spend // 3  # reached during the second episode
    _, first, spent = await _eval(tmp_path / "run", f"budget.tokens={budget}")
    assert first[-1] == "<stopped>"
    played = first[:-1]
    assert 1 <= len(played) < 4
    assert spent >= budget  # recorded in the run, for the next budget check

    _, again, spent_again = await _eval(tmp_path / "run", f"budget.tokens={budget}")
    assert again == [*played, "<stopped>"] and spent_again == spent  # spent: nothing new

    _, resumed, total = await _eval(tmp_path / "run", f"budget.tokens={full_spend * 2}")
    assert resumed == unlimited  # the same episodes, none twice
    assert total == full_spend  # episodes were paid for once


async def test_episode_limits_are_recorded_per_episode_and_in_the_column(tmp_path: Path) -> None:
    pipeline, keys, _ = await _eval(tmp_path, "eval.completion_token_limit=3")
    async with Pipeline(pipeline.config) as again:
        episodes = await again.store.episodes.of_run(again.run_record.id)
    assert len(keys) == 4
    # Each scripted turn is 3 words: an episode stops after its first step (unless that
    # step took the coin and ended it).
    reasons = [e.stop_reason for e in episodes]
    assert "token_limit" in reasons and set(reasons) <= {"token_limit", "done"}
    assert [e.trajectory["stop_reason"] for e in episodes] == reasons
    assert all(e.steps == 1 for e in episodes)


async def test_a_resumed_explore_reports_the_stored_trees_and_its_own_work(
    tmp_path: Path,
) -> None:
    settings = (
        *SETTINGS,
        "env.train_tasks=3",
        "explore.max_depth=3",
        "explore.min_prune_depth=1",
        "explore.concurrency=1",
    )

    async def explore(*overrides: str) -> tuple[dict[str, object], int]:
        config = tiny_run_config(tmp_path / "run", *settings, *overrides)
        async with Pipeline(config) as pipeline:
            (result,) = await pipeline.stage("explore")
            nodes, _ = await pipeline.store.trees.count(pipeline.run_record.id)
        return result.metrics, nodes

    stopped, nodes_then = await explore("budget.tokens=20")  # stops within the first trees
    assert stopped["stopped"] and stopped["nodes"] == stopped["new_nodes"] == nodes_then
    resumed, nodes_now = await explore("budget.tokens=1000000")
    assert resumed["unfinished_tasks"] == 0 and resumed["trees"] == 3
    assert resumed["nodes"] == nodes_now > nodes_then  # the stored trees, all of them
    assert resumed["new_nodes"] == nodes_now - nodes_then  # what this invocation added
    assert resumed["leaves"] >= resumed["new_leaves"] > 0
