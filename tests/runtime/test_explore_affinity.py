"""Env affinity in exploration does not depend on timing: whatever the order in which
policy calls return (a busy machine reorders them), the explorer builds the same trees
with the same env steps, one reset and its depth in steps per leaf.

The load is a parameter of the schedule, not of the wall clock: every policy call waits
until a driver releases it, and the driver picks among the waiting calls by a seeded rule
(first come, newest first, or at random), after letting the other tasks run up to their
own calls. The pool has no linger time (``linger_s=0``: every call outlasts any grace, as
on a saturated machine) and fewer envs than the branches in flight.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pytest

from qlass.backends.scripted import ScriptedPolicy
from qlass.envs.pool import EnvPool
from qlass.runtime.context import SearchContext
from qlass.runtime.explore import ExploreSettings, TreeExplorer
from qlass.runtime.scheduler import bounded_map
from qlass.storage import Tree, TreeStore
from qlass.types import Candidate, ChatMessage, Observation, StepResult, TaskSpec

SETTINGS = ExploreSettings(width=2, max_depth=2, min_prune_depth=1, max_steps=3)
TASKS = [TaskSpec("maze", "walk", v, "train") for v in range(3)]
Order = Literal["fifo", "newest", "random"]


class Maze:
    """Observation = the task and the path walked; never done (leaves at the step limit)."""

    def __init__(self) -> None:
        self.path: list[str] = []
        self.task: TaskSpec | None = None

    async def reset(self, task: TaskSpec) -> Observation:
        self.task, self.path = task, []
        return Observation(text=f"{task.variation}:", instruction="walk")

    async def step(self, action: str) -> StepResult:
        assert self.task is not None
        self.path.append(action)
        return StepResult(f"{self.task.variation}:{'/'.join(self.path)}", 0.0, False, 0.0)

    async def close(self) -> None:
        pass


def _rule(messages: Sequence[ChatMessage], index: int) -> str:
    seen = messages[-1]["content"]
    return f"Action: go {(len(seen) + index) % 3}"


class ScheduledPolicy(ScriptedPolicy):
    """A scripted policy whose calls return when :meth:`drive` releases them."""

    def __init__(self, order: Order | None, seed: int) -> None:
        super().__init__(rule=_rule)
        self._order = order
        self._rng = random.Random(seed)
        self._waiting: list[asyncio.Future[None]] = []
        self._arrived = asyncio.Event()

    async def sample(self, messages: Sequence[ChatMessage], **kwargs: object) -> list[Candidate]:  # type: ignore[override]
        if self._order is not None:
            released = asyncio.get_running_loop().create_future()
            self._waiting.append(released)
            self._arrived.set()
            await released
        return await super().sample(messages, **kwargs)  # type: ignore[arg-type]

    async def drive(self) -> None:
        """Release the waiting calls one at a time, in this schedule's order."""
        while True:
            await self._arrived.wait()
            for _ in range(self._rng.randrange(1, 20)):  # let other tasks reach their calls
                await asyncio.sleep(0)
            if self._order == "fifo":
                index = 0
            elif self._order == "newest":
                index = len(self._waiting) - 1
            else:
                index = self._rng.randrange(len(self._waiting))
            self._waiting.pop(index).set_result(None)
            if not self._waiting:
                self._arrived.clear()


def _shape(tree: Tree) -> frozenset[tuple[tuple[int, ...], str | None, str]]:
    return frozenset(
        (tuple(n.sample_index for n in tree.path(node.id)[1:]), node.action, node.observation)
        for node in tree.nodes
    )


async def _grow(
    tmp: Path, order: Order | None, seed: int, *, pool_size: int, concurrency: int
) -> tuple[list[frozenset[tuple[tuple[int, ...], str | None, str]]], int, int, int]:
    """Trees, env steps, the sum of the leaves' depths and the nodes made."""
    policy = ScheduledPolicy(order, seed)
    async with await TreeStore.open(tmp / f"{order}-{seed}.db") as store:
        run = await store.runs.create("r", config={}, seed=0)
        await store.labels.create_set(run.id)
        records = await store.tasks.add_many(run.id, TASKS)
        async with EnvPool(Maze, size=pool_size, linger_s=0) as pool:
            explorer = TreeExplorer(
                store, SearchContext(policy=policy, envs=pool), SETTINGS, seed=0
            )
            driver = asyncio.create_task(policy.drive())
            try:
                async with asyncio.timeout(900):  # a hang fails instead of blocking the suite
                    stats = await bounded_map(explorer.explore, records, concurrency=concurrency)
            finally:
                driver.cancel()
            steps = pool.stats.steps
        trees = [await store.trees.load(r.id) for r in records]
    leaf_depths = sum(node.depth for tree in trees for node in tree.nodes if node.is_leaf)
    return [_shape(t) for t in trees], steps, leaf_depths, sum(s.new_nodes for s in stats)


FAST: tuple[Order | None, int] = (None, 0)


@pytest.mark.parametrize(
    ("pool_size", "concurrency", "schedules"),
    [
        # fewer envs than branches in flight: branches wait for envs
        (2, 3, [FAST, ("newest", 0), ("random", 0), ("random", 1)]),
        (16, 3, [FAST, ("random", 2)]),  # an env for every branch
    ],
)
async def test_trees_and_env_steps_are_the_same_under_any_order_of_policy_calls(
    tmp_path: Path, pool_size: int, concurrency: int, schedules: list[tuple[Order | None, int]]
) -> None:
    results = [
        await _grow(tmp_path, order, seed, pool_size=pool_size, concurrency=concurrency)
        for order, seed in schedules
    ]
    trees, steps, leaf_depths, nodes = results[0]
    assert nodes == sum(len(t) for t in trees) > 4 * len(TASKS)
    # Each leaf costs one reset and its depth: the fewest steps these trees allow.
    assert steps == leaf_depths
    for schedule, result in zip(schedules, results, strict=True):
        assert result == results[0], schedule
