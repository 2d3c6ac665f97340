"""A task whose simulator is not deterministic fails alone: exploration goes on.

A real TextWorldExpress env that, for one task, tells different observations after every
reset (as ScienceWorld's drifting state did on some tasks): revisiting that tree by
replay raises ReplayMismatchError. The task is recorded failed with the cause, every other
tree is finished, and the stage says how many failed.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from qlass.envs import registry
from qlass.runtime.pipeline import Pipeline
from qlass.testing import tiny_run_config
from qlass.types import Observation, StepResult, TaskSpec

DRIFTING_VARIATION = 1


class Drifting:
    """Forwards to a real env; for one task every observation changes at every reset."""

    resets = 0

    def __init__(self, env: Any) -> None:
        self.env = env
        self.drifting = False

    async def reset(self, task: TaskSpec) -> Observation:
        self.drifting = task.variation == DRIFTING_VARIATION
        Drifting.resets += self.drifting
        return await self.env.reset(task)  # type: ignore[no-any-return]

    async def step(self, action: str) -> StepResult:
        result: StepResult = await self.env.step(action)
        if not self.drifting:
            return result
        return replace(result, observation=f"{result.observation} (reset {Drifting.resets})")

    async def close(self) -> None:
        await self.env.close()


async def test_a_task_that_cannot_be_replayed_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    create = registry.create_env
    monkeypatch.setattr(registry, "create_env", lambda *a, **kw: Drifting(create(*a, **kw)))
    config = tiny_run_config(
        tmp_path / "run",
        "name=drift",
        "env.train_tasks=3",
        "env.pool_size=1",  # one env for all branches: siblings are reached by replay
        "env.max_steps=4",
        "policy.backend=scripted",
        "policy.prompt=none",
        "policy.model=look around|move north|move south|move east|move west",
        "explore.width=2",
        "explore.max_depth=2",
        "explore.min_prune_depth=1",
        "explore.concurrency=1",
    )
    async with Pipeline(config) as pipeline:
        (result,) = await pipeline.stage("explore")
        tasks = await pipeline.store.tasks.of_run(pipeline.run_record.id)
    by_variation = {t.variation: t for t in tasks}
    drifting = by_variation.pop(DRIFTING_VARIATION)
    assert drifting.status == "failed"
    assert drifting.error is not None and "not deterministic" in drifting.error
    assert {t.status for t in by_variation.values()} == {"done"}
    assert result.metrics["failed_tasks"] == 1
    assert result.metrics["unfinished_tasks"] == 1  # a rerun retries it
    assert result.metrics["trees"] == 2
