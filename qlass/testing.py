"""Small builders shared by the test suite and the benchmarks: stored runs with tasks, trees
of a known shape, and tiny run configurations.

Not needed to use qlass; here so that tests and benchmarks build the same things the same
way (like :mod:`qlass.backends.scripted`, the test policy).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from qlass.config import RunConfig, load_config
from qlass.storage import NewNode, NodeRecord, RunRecord, TaskRecord, TreeStore
from qlass.types import Split, TaskSpec

__all__ = [
    "TINY_BC",
    "TINY_COIN",
    "full_tree",
    "new_run",
    "synthetic_node",
    "tiny_run_config",
]

TINY_COIN = ("env.games=[coin]", "env.params=numLocations=3,includeDoors=0")
"""TextWorldExpress coin games in 3 rooms without doors (solved in a few steps)."""

TINY_BC = (
    "policy.prompt=none",
    "policy.max_tokens=12",
    "policy.max_turns_in_prompt=2",
    "bc.epochs=25",
    "bc.lr=1e-2",
    "bc.layers=1",
    "bc.width=64",
    "bc.heads=2",
    "bc.vocab_size=1024",
    "bc.max_length=512",
)
"""A one-layer policy trained from scratch in seconds on a CPU, with a short prompt."""


def tiny_run_config(run_dir: Path, *overrides: str, base: Sequence[str] = TINY_COIN) -> RunConfig:
    """A run config in ``run_dir``: ``base`` (the tiny coin games), then ``overrides``."""
    return load_config(None, [*base, f"run_dir={run_dir}", *overrides])


async def new_run(
    store: TreeStore,
    name: str,
    tasks: int | Sequence[TaskSpec] = 1,
    *,
    config: Mapping[str, Any] | None = None,
    split: Split = "train",
    instruction: str = "",
) -> tuple[RunRecord, list[TaskRecord]]:
    """A run ``name`` with ``tasks``: given specs, or that many coin tasks (variations 0..)."""
    run = await store.runs.create(
        name, config=dict(config or {"name": name}), code_version="test", seed=0
    )
    specs = (
        [TaskSpec("textworld_express", "coin", i, split) for i in range(tasks)]
        if isinstance(tasks, int)
        else list(tasks)
    )
    return run, await store.tasks.add_many(run.id, specs, instruction=instruction)


def synthetic_node(rng: random.Random, depth: int, final: float | None = None) -> NewNode:
    """A plausible random node at ``depth`` (a leaf scoring ``final`` if given)."""
    action = rng.choice(["move north", "move south", "open door", "take coin", "look around"])
    return NewNode(
        observation=f"You are in room {rng.randrange(50)}. " * 6,
        action=action,
        text=f"Thought: step {depth}, I will {action}.\nAction: {action}",
        done=final is not None,
        final_reward=final,
        prompt_tokens=400 + 40 * depth,
        completion_tokens=18,
    )


async def full_tree(
    store: TreeStore,
    task_id: int,
    node: Callable[[int, str], NewNode],
    *,
    width: int = 2,
    depth: int = 3,
    observation: str = "You are in the kitchen.",
    instruction: str | None = None,
) -> list[NodeRecord]:
    """A complete ``width``-ary tree of ``depth`` levels below a root; ``node(level, path)``
    makes each node (``path`` like ``".0.1"``: the child indices from the root). Returns the
    deepest level, in order."""
    root = await store.trees.add_root(task_id, observation, instruction=instruction)
    level: list[tuple[NodeRecord, str]] = [(root, "")]
    for at in range(1, depth + 1):
        deeper: list[tuple[NodeRecord, str]] = []
        for parent, path in level:
            paths = [f"{path}.{i}" for i in range(width)]
            made = await store.trees.add_children(parent.id, [node(at, p) for p in paths])
            deeper.extend(zip(made, paths, strict=True))
        level = deeper
    return [record for record, _ in level]
