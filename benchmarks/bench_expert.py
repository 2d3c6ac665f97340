"""Expert benchmark: qlass's deterministic expert search vs the simulator's random gold agent.

For each TextWorldExpress setting, the same train tasks get an expert path twice in one
simulator: from the simulator's gold agent (``generateGoldPath``, a random walk in coin and
twc) and from qlass's search (:mod:`qlass.envs.expert`). Every path is replayed to check
that it wins. Reported per setting: seconds per game, simulator calls of the search, path
lengths (mean and max) and how many of the simulator's paths were longer, and the ratio of
the two times. The search is also run a second time on a fresh simulator, which must give
the same path for every task (the point of it).

    .venv/bin/python -m benchmarks.bench_expert                  # coin (demo) and twc
    .venv/bin/python -m benchmarks.bench_expert --games 200 --settings "coin:numLocations=5,includeDoors=0"
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from qlass.envs.registry import list_tasks
from qlass.envs.textworld_express import TextWorldExpressEnv
from qlass.errors import NoExpertPathError
from qlass.types import TaskSpec

DEFAULT_SETTINGS = ("coin:numLocations=5,includeDoors=0", "coin:", "twc:")


@dataclass
class Side:
    """One expert's figures over a setting's tasks."""

    seconds: float = 0.0
    lengths: list[int] = field(default_factory=list)
    failed: int = 0

    def line(self, name: str, games: int) -> str:
        lengths = self.lengths or [0]
        return (
            f"  {name:<10} {1000 * self.seconds / games:8.1f} ms/game   path length "
            f"mean {statistics.mean(lengths):5.2f} max {max(lengths):3d}   failed {self.failed}"
        )


async def _winning_length(env: TextWorldExpressEnv, task: TaskSpec, actions: list[str]) -> int:
    await env.reset(task)
    for n, action in enumerate(actions, 1):
        result = await env.step(action)
        if result.done:
            return n if result.success else -1
    return -1


async def bench_setting(game: str, params: str, games: int) -> None:
    tasks = list_tasks("textworld_express", "train", games=[game], params=params, limit=games)
    env, fresh = TextWorldExpressEnv(), TextWorldExpressEnv()
    simulator, search = Side(), Side()
    longer = calls = 0
    try:
        await env.reset(tasks[0])  # start the JVM outside the timings
        await fresh.reset(tasks[0])
        for task in tasks:
            started = time.perf_counter()
            gold = await env.gold_actions(task)
            simulator.seconds += time.perf_counter() - started
            before = env.search_calls
            started = time.perf_counter()
            try:
                path = await env.expert_actions(task)
            except NoExpertPathError:
                search.failed += 1
                path = []
            search.seconds += time.perf_counter() - started
            calls += env.search_calls - before
            gold_length = await _winning_length(env, task, gold)
            if gold_length < 0:
                simulator.failed += 1
            else:
                simulator.lengths.append(gold_length)
            if path:
                length = await _winning_length(env, task, path)
                assert length == len(path), f"{task.key}: the expert path does not win"
                search.lengths.append(length)
                longer += gold_length > length
                again = await fresh.expert_actions(task)
                assert again == path, f"{task.key}: the search gave another path"
    finally:
        await asyncio.gather(env.close(), fresh.close())
    print(f"{game} [{params or 'simulator defaults'}], {len(tasks)} train games")
    print(simulator.line("simulator", len(tasks)))
    print(search.line("search", len(tasks)))
    print(
        f"  search: {calls / len(tasks):.0f} simulator calls/game; time x"
        f"{search.seconds / max(simulator.seconds, 1e-9):.1f} the simulator's gold agent; "
        f"the simulator's path was longer on {longer} games; the same path on a fresh "
        "simulator for every game"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--games", type=int, default=50, help="train games per setting")
    parser.add_argument(
        "--settings",
        nargs="+",
        default=list(DEFAULT_SETTINGS),
        help="game:params pairs (empty params: the simulator's defaults)",
    )
    args = parser.parse_args(argv)
    for setting in args.settings:
        game, _, params = setting.partition(":")
        asyncio.run(bench_setting(game, params, args.games))


if __name__ == "__main__":
    main()
