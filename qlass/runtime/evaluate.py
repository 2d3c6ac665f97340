"""Evaluation: play a split's tasks with a strategy, many episodes at once, and summarise.

The paper's metric is the average final reward (score in [0, 1], shown x100); the success
rate is reported beside it, never instead of it. Tokens are the policy's prompt and
completion tokens, cached ones included (a cached answer cost tokens when it was made).
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field

from qlass._seeding import derive_seed
from qlass.runtime.context import SearchContext, Tally
from qlass.runtime.episode import play_episode
from qlass.runtime.scheduler import StopSignal, bounded_map
from qlass.runtime.strategies import SearchStrategy
from qlass.types import TaskSpec, Trajectory

__all__ = ["StrategyReport", "evaluate_strategy", "summarise"]

EpisodeHook = Callable[[Trajectory, Tally], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class StrategyReport:
    """One strategy's results on one split."""

    strategy: str
    split: str
    episodes: int
    avg_reward: float
    success_rate: float
    avg_steps: float
    prompt_tokens: int
    completion_tokens: int
    completion_tokens_per_episode: float
    env_steps: int
    seconds_per_episode: float
    oracle_best_reward: float | None = None
    cost_usd: float = 0.0
    """Total price of the policy calls (USD, where the provider has a price)."""
    stop_reasons: dict[str, int] = field(default_factory=dict)
    """How many episodes ended for each :class:`~qlass.types.StopReason` (done,
    step_limit, token_limit...; ``unknown`` for episodes stored before it was recorded)."""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def summarise(strategy: str, split: str, trajectories: Sequence[Trajectory]) -> StrategyReport:
    """Aggregate finished episodes into a :class:`StrategyReport`.

    ``seconds_per_episode`` is each episode's own wall time, averaged: comparable between
    strategies whatever the number of episodes run at once.
    """
    n = len(trajectories)
    oracle = [t.info["oracle_best_score"] for t in trajectories if "oracle_best_score" in t.info]
    completion = sum(t.usage.completion_tokens for t in trajectories)
    return StrategyReport(
        strategy=strategy,
        split=split,
        episodes=n,
        avg_reward=statistics.fmean(t.final_score for t in trajectories) if n else 0.0,
        success_rate=statistics.fmean(float(t.success) for t in trajectories) if n else 0.0,
        avg_steps=statistics.fmean(len(t.steps) for t in trajectories) if n else 0.0,
        prompt_tokens=sum(t.usage.prompt_tokens for t in trajectories),
        completion_tokens=completion,
        completion_tokens_per_episode=completion / n if n else 0.0,
        env_steps=sum(t.env_steps for t in trajectories),
        seconds_per_episode=statistics.fmean(t.wall_time_s for t in trajectories) if n else 0.0,
        oracle_best_reward=statistics.fmean(oracle) if oracle and len(oracle) == n else None,
        cost_usd=sum(t.usage.cost_usd for t in trajectories),
        stop_reasons=dict(
            sorted(Counter(t.stop_reason or "unknown" for t in trajectories).items())
        ),
    )


async def evaluate_strategy(
    strategy: SearchStrategy,
    tasks: Sequence[TaskSpec],
    ctx: SearchContext,
    *,
    concurrency: int,
    seed: int,
    max_steps: Callable[[TaskSpec], int] | None = None,
    on_episode: EpisodeHook | None = None,
    stop: StopSignal | None = None,
) -> tuple[StrategyReport, list[Trajectory]]:
    """Play every task once with ``strategy`` (``concurrency`` episodes at a time).

    Each episode gets its own tally and a seed derived from (seed, strategy, task), so the
    result of a task does not depend on which other episodes ran beside it. ``max_steps``
    gives a task's step limit (default: the context's). After a stop request no new
    episode starts; episodes under way finish.
    """

    async def play(task: TaskSpec) -> Trajectory:
        episode_ctx = ctx.for_episode()
        if max_steps is not None:
            episode_ctx.max_steps = max_steps(task)
        episode_seed = derive_seed(seed, "eval", strategy.name, task.key)
        trajectory = await play_episode(episode_ctx, task, strategy, episode_seed, strategy.name)
        ctx.tally.merge(episode_ctx.tally)
        if on_episode is not None:
            await on_episode(trajectory, episode_ctx.tally)
        return trajectory

    trajectories = await bounded_map(play, tasks, concurrency=concurrency, stop=stop)
    split = tasks[0].split if tasks else "dev"
    return summarise(strategy.name, split, trajectories), trajectories
