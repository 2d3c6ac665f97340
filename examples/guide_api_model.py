# Guide an API model with a local QNet: GPT-4o (or any LiteLLM model) proposes candidate
# actions, a QNet scores them, the best one is executed. Compares the API model alone
# (greedy), best-of-N and QLASS-guided on TextWorldExpress, with tokens and cost per episode.
#
#   qlass demo                                  # trains a QNet into runs/demo/qnet (CPU)
#   qlass serve-qnet runs/demo/qnet --port 8765 &
#   export OPENAI_API_KEY=sk-...
#   python examples/guide_api_model.py --config examples/configs/api-gpt4o.toml --tasks 10
#
# Any config field can be changed with --set (e.g. --set policy.model=openai/gpt-4o-mini,
# or a local OpenAI-compatible server: --set policy.api_base=http://localhost:8000/v1).
# --fast: 2 tasks of at most 4 steps (what the test suite runs).
from __future__ import annotations

import argparse
import asyncio
import statistics
from collections.abc import Sequence
from pathlib import Path

from qlass import (
    Agent,
    Env,
    RunConfig,
    TaskSpec,
    Trajectory,
    configure_logging,
    create_env,
    list_tasks,
    load_config,
)


async def play_all(
    agent: Agent, config: RunConfig, tasks: Sequence[TaskSpec], concurrency: int
) -> dict[str, list[Trajectory]]:
    """Every strategy on every task; a few simulators shared by concurrent episodes."""
    envs: asyncio.Queue[Env] = asyncio.Queue()
    for _ in range(concurrency):
        envs.put_nowait(create_env(config.env.name))

    async def play(strategy: str, task: TaskSpec) -> Trajectory:
        env = await envs.get()
        try:
            trajectory = await agent.run(env, task, strategy=strategy)
        finally:
            envs.put_nowait(env)
        u = trajectory.usage
        print(
            f"episode  {strategy:<12} {task.name}/{task.variation:<6} "
            f"score {trajectory.final_score:.2f}  steps {len(trajectory.steps):>2}  "
            f"tokens {u.prompt_tokens}+{u.completion_tokens}  cost ${u.cost_usd:.4f}"
        )
        return trajectory

    try:
        results = {}
        for strategy in config.search.strategies:
            results[strategy] = list(await asyncio.gather(*(play(strategy, t) for t in tasks)))
        return results
    finally:
        while not envs.empty():
            await envs.get_nowait().close()


def print_table(results: dict[str, list[Trajectory]]) -> None:
    header = (
        "| strategy | episodes | avg reward | success | tokens/ep (prompt+completion) | cost $/ep |"
    )
    print("\n" + header + "\n|---|---|---|---|---|---|")
    for strategy, episodes in results.items():
        reward = statistics.fmean(t.final_score for t in episodes)
        success = statistics.fmean(t.success for t in episodes)
        prompt = statistics.fmean(t.usage.prompt_tokens for t in episodes)
        completion = statistics.fmean(t.usage.completion_tokens for t in episodes)
        cost = statistics.fmean(t.usage.cost_usd for t in episodes)
        print(
            f"| {strategy} | {len(episodes)} | {100 * reward:.1f} | {100 * success:.0f}% "
            f"| {prompt:.0f}+{completion:.0f} | {cost:.4f} |"
        )


def main() -> None:
    configure_logging(level="WARNING")  # qlass logs to stderr; stdout shows the results
    here = Path(__file__).parent
    parser = argparse.ArgumentParser(description="Guide an API model with a QNet.")
    parser.add_argument("--config", type=Path, default=here / "configs" / "api-gpt4o.toml")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--tasks", type=int, default=10, help="dev tasks per strategy")
    parser.add_argument("--concurrency", type=int, default=4, help="episodes at once")
    parser.add_argument("--fast", action="store_true", help="2 tasks, 4 steps (tests)")
    args = parser.parse_args()
    overrides = [*args.set, *(["env.max_steps=4"] if args.fast else [])]
    config = load_config(args.config, overrides)
    env = config.env
    games = list(env.games) if env.games else None
    limit = 2 if args.fast else args.tasks
    tasks = list_tasks(env.name, config.eval.split, games=games, params=env.params, limit=limit)
    agent = Agent.from_config(config)
    print(f"policy {config.policy.model}, value model {config.search.value_model_path}")

    async def run() -> dict[str, list[Trajectory]]:
        async with agent:
            return await play_all(agent, config, tasks, min(args.concurrency, len(tasks)))

    print_table(asyncio.run(run()))


if __name__ == "__main__":
    main()
