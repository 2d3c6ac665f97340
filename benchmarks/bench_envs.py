"""Env benchmark: throughput with 1 vs N concurrent episodes, and env steps per tree node.

Part 1 (throughput). Gold-path episodes of TextWorldExpress and ScienceWorld run through an
:class:`~qlass.envs.pool.EnvPool` of size 1 (one episode at a time) and of size N (N
episodes at once). Each configuration first plays the episode list once to start its JVMs
and warm their JIT, then plays it again, timed. Reported: env steps per second (resets
included in the time) and the ratio N/1.

Part 2 (positioning cost). A paper-shaped exploration tree (W=2 samples per node, every
child expanded below the prune depth 3, beyond it the first child expanded and the others
rolled out to a leaf, nodes at depth 8 rolled out; leaves at done or the step limit) is
grown on TextWorldExpress tasks the way the runtime's explorer grows it (siblings
concurrently). Candidate actions are drawn from the valid actions with a seed derived from
the node's path, so every run grows the same tree. It is grown three times:

- live continuation through an EnvPool of size 1 and of size 4 (idle envs remember where
  they stand; a child of the node an env stands at costs one step);
- replay from reset (what the authors' released code did: reset and replay the prefix for
  every node).

Reported: tree nodes, env steps, resets, steps per new node, and the ratio to replay. The
runs are checked to build identical trees (same observation at every node). It also times
TextWorldExpress's own ``clone()`` (its "snapshot": a new JVM replaying the actions)
against reset + replay in a live env.

    .venv/bin/python -m benchmarks.bench_envs
    .venv/bin/python -m benchmarks.bench_envs --concurrency 4 --trees 4 --skip-sciworld
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from qlass.envs.base import Env
from qlass.envs.pool import EnvPool
from qlass.envs.registry import create_env, gold_actions, list_tasks
from qlass.types import Observation, StepResult, TaskSpec

# -- part 1: throughput ------------------------------------------------------------------


async def _gold_episodes(name: str, tasks: Sequence[TaskSpec]) -> list[tuple[TaskSpec, list[str]]]:
    env = create_env(name)
    try:
        return [(task, await gold_actions(env, task)) for task in tasks]
    finally:
        await env.close()


async def _play_all(pool: EnvPool, episodes: Sequence[tuple[TaskSpec, list[str]]]) -> int:
    async def play(task: TaskSpec, gold: list[str]) -> int:
        async with pool.at(task) as env:
            for n, action in enumerate(gold, 1):
                if (await env.step(action)).done:
                    return n
            return len(gold)

    return sum(await asyncio.gather(*(play(t, g) for t, g in episodes)))


async def throughput(
    name: str, episodes: Sequence[tuple[TaskSpec, list[str]]], size: int, warmup: int
) -> tuple[float, int, float]:
    """(steps per second, steps, seconds) of the timed pass after ``warmup`` passes."""
    async with EnvPool.for_env(name, size=size) as pool:
        for _ in range(warmup):  # start the JVMs and warm their JIT (ScienceWorld: slow)
            await _play_all(pool, episodes)
        start = time.perf_counter()
        steps = await _play_all(pool, episodes)
        elapsed = time.perf_counter() - start
    return steps / elapsed, steps, elapsed


# -- part 2: tree positioning ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TreeShape:
    width: int = 2
    max_depth: int = 8
    prune_depth: int = 3
    max_steps: int = 30  # the runtime's default step limit (ExploreSettings.max_steps)


@dataclass(frozen=True, slots=True)
class _Node:
    path: tuple[str, ...]
    valid: tuple[str, ...]
    leaf: bool


class _Handle:
    def __init__(self, env: Env, counter: ResetReplay, initial: Observation) -> None:
        self._env, self._counter, self.initial = env, counter, initial

    async def step(self, action: str) -> StepResult:
        self._counter.steps += 1
        self._counter.caller_steps += 1
        return await self._env.step(action)


class ResetReplay:
    """Positions every node by reset + replay of its whole prefix (the released code)."""

    def __init__(self, envs: Sequence[Env]) -> None:
        self._free: asyncio.Queue[Env] = asyncio.Queue()
        for env in envs:
            self._free.put_nowait(env)
        self.steps = self.caller_steps = self.resets = 0

    @contextlib.asynccontextmanager
    async def at(self, task: TaskSpec, actions: Sequence[str] = ()) -> AsyncIterator[_Handle]:
        env = await self._free.get()
        try:
            first = await env.reset(task)
            self.resets += 1
            for action in actions:
                await env.step(action)
                self.steps += 1
            yield _Handle(env, self, first)
        finally:
            self._free.put_nowait(env)


def _choose(task: TaskSpec, node: _Node, count: int) -> list[str]:
    seed = int.from_bytes(hashlib.sha256("|".join((task.key, *node.path)).encode()).digest()[:8])
    options = sorted(node.valid)
    return random.Random(seed).sample(options, min(count, len(options)))


class TreeGrower:
    """Grows the paper-shaped tree, either like the runtime's explorer (``concurrent``:
    siblings at once, subtrees at once) or depth first, one branch at a time."""

    def __init__(
        self, provider: EnvPool | ResetReplay, shape: TreeShape, *, concurrent: bool
    ) -> None:
        self.provider = provider
        self.shape = shape
        self.concurrent = concurrent
        self.observations: dict[tuple[str, ...], str] = {}

    async def root(self, task: TaskSpec) -> _Node:
        async with self.provider.at(task) as env:
            first = env.initial
        assert first.valid_actions is not None
        self.observations[(task.key,)] = first.text
        return _Node((), first.valid_actions, False)

    async def _child(self, task: TaskSpec, node: _Node, action: str) -> _Node:
        async with self.provider.at(task, node.path) as env:
            result = await env.step(action)
        path = (*node.path, action)
        self.observations[(task.key, *path)] = result.observation
        leaf = result.done or len(path) >= self.shape.max_steps
        return _Node(path, result.valid_actions or (), leaf)

    async def _children(self, task: TaskSpec, node: _Node, count: int) -> list[_Node]:
        actions = _choose(task, node, count)
        return list(await asyncio.gather(*(self._child(task, node, a) for a in actions)))

    async def rollout(self, task: TaskSpec, node: _Node) -> None:
        while not node.leaf:
            children = await self._children(task, node, 1)
            if not children:
                return
            node = children[0]

    async def grow(self, task: TaskSpec, node: _Node) -> None:
        if node.leaf:
            return
        depth = len(node.path)
        if depth >= self.shape.max_depth:
            await self.rollout(task, node)
            return
        if not self.concurrent:
            # Depth first: step a child, finish its subtree, then the next child.
            for i, action in enumerate(_choose(task, node, self.shape.width)):
                child = await self._child(task, node, action)
                if depth < self.shape.prune_depth or i == 0:
                    await self.grow(task, child)
                else:
                    await self.rollout(task, child)
            return
        children = await self._children(task, node, self.shape.width)
        if depth < self.shape.prune_depth:
            await asyncio.gather(*(self.grow(task, child) for child in children))
        elif children:
            await asyncio.gather(
                self.grow(task, children[0]), *(self.rollout(task, c) for c in children[1:])
            )


async def grow_trees(
    provider: EnvPool | ResetReplay,
    tasks: Sequence[TaskSpec],
    shape: TreeShape,
    *,
    concurrent: bool,
) -> tuple[dict[tuple[str, ...], str], float]:
    grower = TreeGrower(provider, shape, concurrent=concurrent)
    start = time.perf_counter()
    for task in tasks:  # one tree at a time: the positioning cost of one tree is the point
        await grower.grow(task, await grower.root(task))
    return grower.observations, time.perf_counter() - start


async def clone_vs_replay(path_len: int = 10) -> tuple[float, float]:
    """Seconds for TextWorldExpress's clone() and for reset + replay in a live env."""
    from textworld_express import TextWorldExpressEnv as Simulator

    sims = []
    try:

        def setup() -> tuple[float, float]:
            sim = Simulator(envStepLimit=10**6)
            sims.append(sim)
            sim.load("coin", "numLocations=6,includeDoors=0")
            sim.reset(seed=3, gameFold="train", generateGoldPath=False)
            actions = ["look around"] * path_len
            for action in actions:
                sim.step(action)
            start = time.perf_counter()
            sims.append(sim.clone())
            cloned = time.perf_counter() - start
            start = time.perf_counter()
            sim.reset(seed=3, gameFold="train", generateGoldPath=False)
            for action in actions:
                sim.step(action)
            return cloned, time.perf_counter() - start

        return await asyncio.to_thread(setup)
    finally:

        def shutdown() -> None:
            for sim in sims:
                sim.close()
                proc = sim._gateway.java_process
                proc.kill()
                proc.wait()
                proc.stdin.close()
                sim._obj_tree_tempfile.close()

        await asyncio.to_thread(shutdown)


# -- main --------------------------------------------------------------------------------


def _row(cells: Sequence[object], widths: Sequence[int]) -> str:
    return "  ".join(
        str(c).rjust(w) if i else str(c).ljust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )


async def main(args: argparse.Namespace) -> None:
    n = args.concurrency
    print(f"== env throughput: 1 vs {n} concurrent episodes (gold paths, second pass) ==")
    widths = (26, 10, 8, 9, 9)
    print(_row(("env", "episodes", "steps", "steps/s", "ratio"), widths))
    setups = [
        (
            "textworld_express",
            list_tasks(
                "textworld_express",
                "train",
                games=["coin", "sorting", "arithmetic", "twc"],
                limit=args.twx_episodes,
            ),
        )
    ]
    if not args.skip_sciworld:
        names = [
            "find-animal",
            "find-living-thing",
            "lifespan-longest-lived",
            "lifespan-shortest-lived",
        ]
        sw = [
            t
            for name in names
            for t in list_tasks("scienceworld", "train", games=[name], limit=args.sw_episodes // 4)
        ]
        setups.append(("scienceworld", sw))
    for name, tasks in setups:
        episodes = await _gold_episodes(name, tasks)
        base, steps, _ = await throughput(name, episodes, 1, args.warmup)
        print(_row((f"{name} x1", len(episodes), steps, f"{base:.0f}", "1.00"), widths))
        rate, steps, _ = await throughput(name, episodes, n, args.warmup)
        print(
            _row(
                (f"{name} x{n}", len(episodes), steps, f"{rate:.0f}", f"{rate / base:.2f}"), widths
            )
        )

    shape = TreeShape(max_steps=args.max_steps)
    print(
        f"\n== env steps per new tree node (W={shape.width}, depth {shape.max_depth}, prune "
        f"depth {shape.prune_depth}, step limit {shape.max_steps}; {args.trees} TWX coin trees) =="
    )
    tasks = list_tasks(
        "textworld_express",
        "train",
        games=["coin"],
        params="numLocations=8,includeDoors=0",
        limit=args.trees,
    )
    widths = (44, 6, 7, 7, 10, 9, 7)
    print(
        _row(
            ("positioning", "nodes", "steps", "resets", "steps/node", "vs replay", "time s"), widths
        )
    )
    results = []
    runs = [
        ("live continuation, depth first, pool 1", 1, False, 0.5),
        (f"explorer order, pool {n}, no linger (LRU)", n, True, 0.0),
        (f"explorer order, pool {n}, linger 0.5 s", n, True, 0.5),
        (f"explorer order, pool {args.big_pool}, linger 0.5 s", args.big_pool, True, 0.5),
    ]
    for label, size, concurrent, linger in runs:
        pool = EnvPool.for_env(
            "textworld_express", size=size, linger_s=linger, max_steps=shape.max_steps
        )
        async with pool:
            observed, seconds = await grow_trees(pool, tasks, shape, concurrent=concurrent)
            stats = pool.stats
            results.append(
                (label, observed, stats.caller_steps, stats.steps, stats.resets, seconds)
            )
    envs = [create_env("textworld_express")]
    try:
        replay = ResetReplay(envs)
        observed, seconds = await grow_trees(replay, tasks, shape, concurrent=False)
        results.append(
            (
                "replay from reset (released code)",
                observed,
                replay.caller_steps,
                replay.steps,
                replay.resets,
                seconds,
            )
        )
    finally:
        await asyncio.gather(*(env.close() for env in envs))
    reference = results[-1][1]
    replay_per_node = results[-1][3] / results[-1][2]
    for label, observed, nodes, steps, resets, seconds in results:
        assert observed == reference, f"{label} grew a different tree"
        per_node = steps / nodes
        cells = (
            label,
            nodes,
            steps,
            resets,
            f"{per_node:.2f}",
            f"{per_node / replay_per_node:.2f}",
            f"{seconds:.1f}",
        )
        print(_row(cells, widths))

    cloned, replayed = await clone_vs_replay()
    print(
        f"\nTextWorldExpress clone() of a 10-step state: {cloned * 1000:.0f} ms (a new JVM that "
        f"replays the actions); reset + replay in a live env: {replayed * 1000:.1f} ms "
        f"({cloned / replayed:.0f}x): clone is no cheaper snapshot, so positioning replays."
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--concurrency", type=int, default=4, help="N episodes at once (and pool size)"
    )
    parser.add_argument("--twx-episodes", type=int, default=64)
    parser.add_argument("--sw-episodes", type=int, default=16)
    parser.add_argument("--trees", type=int, default=4, help="TWX trees grown per positioning mode")
    parser.add_argument("--big-pool", type=int, default=16, help="the largest pool tried for trees")
    parser.add_argument("--max-steps", type=int, default=30, help="episode step limit in trees")
    parser.add_argument("--warmup", type=int, default=2, help="untimed passes before the timed one")
    parser.add_argument("--skip-sciworld", action="store_true")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
