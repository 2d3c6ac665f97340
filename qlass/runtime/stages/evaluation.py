"""The eval stage, and the evaluation it runs: strategies played on a split's tasks, each
episode stored as it ends, so that a rerun plays only the episodes not stored yet."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from qlass.backends.base import Policy
from qlass.config import RunConfig
from qlass.runtime.context import SearchContext, Tally
from qlass.runtime.evaluate import StrategyReport, evaluate_strategy, summarise
from qlass.runtime.stages import DEPENDS
from qlass.runtime.stages.base import StageContext, StageResult
from qlass.runtime.strategies import SearchStrategy, StrategyOptions, make_strategy
from qlass.storage import trajectory_from_json
from qlass.types import TaskSpec, Trajectory

__all__ = ["episode_progress", "eval_stage_label", "evaluate", "run", "stored_trajectories"]


def eval_stage_label(config: RunConfig, split: str | None = None) -> str:
    """The stage label of a run's evaluation episodes on ``split`` (default ``eval.split``):
    the split and the fingerprint of every config section evaluation depends on. The eval
    stage stores its episodes under it; studies and the demo find them by it."""
    fingerprint = config.section_fingerprint(*DEPENDS["eval"])
    return f"eval:{split or config.eval.split}:{fingerprint}"


async def evaluate(
    ctx: StageContext,
    strategies: Sequence[str] | None = None,
    *,
    split: str | None = None,
    tasks: Sequence[TaskSpec] | None = None,
    policy: Policy | None = None,
    stage: str | None = None,
) -> list[StrategyReport]:
    """Evaluate strategies on a split; episodes already stored are not played again.

    ``strategies``, ``split``, ``tasks``, ``policy`` and ``stage`` (the episodes' stage
    label) default to ``search.strategies``, ``eval.split``, that split's tasks, the run's
    policy and ``eval:<split>:<fingerprint>``. After a stop request nothing is returned.
    """
    config = ctx.config
    split = split or config.eval.split
    names = list(strategies or config.search.strategies)
    parsed = [
        make_strategy(name, options=StrategyOptions.from_config(config.search)) for name in names
    ]
    tasks = list(tasks) if tasks is not None else await ctx.tasks(split, config.env.eval_tasks)
    stage = stage or eval_stage_label(config, split)
    todo = [await _unplayed(ctx, stage, strategy.name, tasks) for strategy in parsed]
    if any(todo):  # the policy, simulators and QNet are loaded only when there is play
        policy = policy or await ctx.resources.policy()
        pool = await ctx.resources.env_pool()
        needs_value = any(s.needs_value for s, left in zip(parsed, todo, strict=True) if left)
        value = await ctx.resources.value_model() if needs_value else None
        search = ctx.resources.search_context(policy, pool, value, episode_limits=True)
        # Strategies run side by side: the local policy and the QNet batch their requests.
        await asyncio.gather(
            *(
                _play(ctx, strategy, len(tasks), left, search, stage)
                for strategy, left in zip(parsed, todo, strict=True)
            )
        )
    if ctx.stop.requested:
        return []
    return [
        summarise(strategy.name, split, await stored_trajectories(ctx, stage, strategy.name))
        for strategy in parsed
    ]


async def episode_progress(
    ctx: StageContext,
    strategies: Sequence[str] | None = None,
    *,
    split: str | None = None,
    tasks: Sequence[TaskSpec] | None = None,
) -> tuple[int, int]:
    """How many of the evaluation's episodes (strategies x tasks, defaults as in
    :func:`evaluate`) are stored, and how many there are."""
    config = ctx.config
    split = split or config.eval.split
    options = StrategyOptions.from_config(config.search)
    names = [make_strategy(n, options=options).name for n in strategies or config.search.strategies]
    tasks = list(tasks) if tasks is not None else await ctx.tasks(split, config.env.eval_tasks)
    stage = eval_stage_label(config, split)
    left = [len(await _unplayed(ctx, stage, name, tasks)) for name in names]
    total = len(tasks) * len(names)
    return total - sum(left), total


async def _unplayed(
    ctx: StageContext, stage: str, strategy: str, tasks: Sequence[TaskSpec]
) -> list[TaskSpec]:
    """The tasks ``strategy`` has no stored episode of under ``stage``."""
    done = await ctx.store.episodes.done_keys(ctx.run_record.id, stage, strategy)
    return [t for t in tasks if t.key not in done]


async def _play(
    ctx: StageContext,
    strategy: SearchStrategy,
    total: int,
    todo: Sequence[TaskSpec],
    search: SearchContext,
    stage: str,
) -> None:
    run_id, episodes = ctx.run_record.id, ctx.store.episodes
    bar = ctx.progress.bar(f"eval {strategy.name}", total)
    bar.advance(total - len(todo))

    async def record(trajectory: Trajectory, _tally: Tally) -> None:
        await episodes.add(run_id, stage, strategy.name, trajectory)
        bar.advance(reward=trajectory.final_score)

    await evaluate_strategy(
        strategy,
        todo,
        search,
        concurrency=ctx.config.eval.concurrency,
        seed=ctx.config.seed,
        max_steps=ctx.resources.max_steps,
        on_episode=record,
        stop=ctx.stop,
    )


async def stored_trajectories(ctx: StageContext, stage: str, strategy: str) -> list[Trajectory]:
    """The episodes stored for (stage, strategy), decoded."""
    stored = await ctx.store.episodes.of_run(ctx.run_record.id, stage=stage, strategy=strategy)
    return [trajectory_from_json(e.trajectory) for e in stored]


async def run(ctx: StageContext, *, force: bool = False) -> list[StageResult]:
    """The eval stage: every configured strategy on the configured split."""

    async def body() -> dict[str, Any]:
        reports = await evaluate(ctx)
        return {"reports": [r.as_dict() for r in reports]}

    return [await ctx.run_recorded("eval", body, force=force)]
