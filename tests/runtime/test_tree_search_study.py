"""Best-first search and MCTS through the study runner on TextWorldExpress: real
simulators positioned by the env pool's replay, episodes stored and summarised like every
other strategy's.

A scripted policy (its samples cycle through a fixed list of real coin actions) and a
random value model keep it fast: what is checked is the plumbing a researcher relies on,
not the searches' quality (their values are hand-checked in test_tree_search.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qlass.report.study import render_markdown, summarise_study
from qlass.runtime.study import StudyRunner
from qlass.storage import TreeStore
from qlass.testing import tiny_run_config

STRATEGIES = ("greedy", "best_first:3", "mcts:3")


@pytest.mark.timeout(900)  # a hang guard on a loaded box, not a speed claim
async def test_tree_searches_run_through_the_study_runner_on_textworld_express(
    tmp_path: Path,
) -> None:
    config = tiny_run_config(
        tmp_path,
        "name=trees",
        "env.name=textworld_express",
        "env.eval_tasks=2",
        "env.max_steps=4",
        "env.pool_size=2",
        "policy.backend=scripted",
        "policy.model=look around|move north|move south|move east|move west|take coin",
        "policy.prompt=none",
        f"search.strategies=[{', '.join(STRATEGIES)}]",
        "search.value_model=random",
        "eval.concurrency=2",
    )
    result = await StudyRunner(config, (0, 1), stages=("eval",)).run()
    assert result.seeds_done == (0, 1) and not result.stopped
    async with await TreeStore.open(config.store_url) as store:
        members = await store.studies.members(result.study.id)
        assert len(members) == 2
        for member in members:
            for strategy in STRATEGIES[1:]:
                episodes = await store.episodes.of_run(
                    member.run_id, stage=member.eval_stage, strategy=strategy
                )
                assert len(episodes) == 2
                for episode in episodes:
                    info = episode.trajectory["info"]
                    assert info["strategy"] == strategy and info["searches"] >= 1
                    # Every action the scripted policy emits parses and is a real env
                    # step; the committed steps are among the executed nodes, and nodes
                    # off the committed path were reached by replay.
                    assert info["nodes_executed"] >= episode.env_steps >= episode.steps >= 1
                    assert info["nodes_executed"] > episode.steps or episode.steps == 1
                    assert info["replay_bound"] >= 0
                    assert episode.completion_tokens > 0
                    assert episode.stop_reason in {"done", "step_limit"}
        summary = await summarise_study(store, config.name, resamples=100)
    assert [s.strategy for s in summary.strategies] == list(STRATEGIES)
    assert summary.seeds == (0, 1) and summary.tasks == 2
    pairs = {(p.a, p.b) for p in summary.pairs}
    assert ("best_first:3", "greedy") in pairs and ("mcts:3", "greedy") in pairs
    assert "mcts:3 - greedy" in render_markdown(summary)
