"""Per-episode limits (tokens, completion tokens, time, cost) and the run budget.

The time limit runs on an injected clock that only the test moves (a policy that "takes"
10 s a call), so nothing here depends on the wall clock or the machine's load.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

from qlass.backends.cache import CachedPolicy, InMemoryCallCache
from qlass.backends.scripted import ScriptedPolicy
from qlass.backends.wrappers import PolicyWrapper
from qlass.envs.pool import EnvPool
from qlass.runtime.context import SearchContext
from qlass.runtime.episode import play_episode
from qlass.runtime.evaluate import evaluate_strategy
from qlass.runtime.limits import (
    BudgetedPolicy,
    EpisodeLimits,
    EpisodeMeter,
    RunBudget,
)
from qlass.runtime.strategies import BeamSearch, BestOfN, Greedy
from qlass.types import Candidate, ChatMessage, StopReason, TaskSpec, Usage

from .toys import TASK, Corridor, FunctionValueModel

TOKENS_PER_TURN = 3  # "Action: move right" in the scripted policy's word count


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class SlowPricedPolicy(PolicyWrapper):
    """Each call "takes" ``seconds`` on ``clock`` and costs ``usd`` per candidate."""

    def __init__(self, inner: ScriptedPolicy, clock: ManualClock, seconds: float, usd: float):
        super().__init__(inner)
        self.clock, self.seconds, self.usd = clock, seconds, usd

    async def sample(self, messages: Sequence[ChatMessage], **kw: object) -> list[Candidate]:
        candidates = await self.inner.sample(messages, **kw)  # type: ignore[arg-type]
        self.clock.now += self.seconds
        return [replace(c, usage=replace(c.usage, cost_usd=self.usd)) for c in candidates]


def _ctx(
    limits: EpisodeLimits,
    *,
    length: int = 50,
    policy: object = None,
    clock: ManualClock | None = None,
    max_steps: int = 30,
) -> SearchContext:
    meter = EpisodeMeter(limits, clock or ManualClock())
    return SearchContext(
        policy=policy or ScriptedPolicy(actions=["move right"]),  # type: ignore[arg-type]
        envs=EnvPool.around(Corridor(length)),
        value_model=FunctionValueModel(lambda text: 0.5),
        max_steps=max_steps,
        meter=meter,
    )


async def test_an_episode_ends_with_done_or_the_step_limit_by_default() -> None:
    done = await Greedy().run(_ctx(EpisodeLimits(), length=3), TASK, 0)
    truncated = await Greedy().run(_ctx(EpisodeLimits(), max_steps=4), TASK, 0)
    assert (done.stop_reason, len(done.steps)) == (StopReason.DONE, 3)
    assert (truncated.stop_reason, len(truncated.steps)) == (StopReason.STEP_LIMIT, 4)


async def test_completion_token_limit_stops_before_the_step_after_crossing_it() -> None:
    limits = EpisodeLimits(completion_token_limit=2 * TOKENS_PER_TURN + 1)
    trajectory = await Greedy().run(_ctx(limits), TASK, 0)
    # 3 steps spent 9 >= 7 tokens; the third (which crossed the limit) completed.
    assert len(trajectory.steps) == 3
    assert trajectory.stop_reason == StopReason.TOKEN_LIMIT
    assert trajectory.usage.completion_tokens == 3 * TOKENS_PER_TURN


async def test_total_token_limit_counts_prompt_tokens_too() -> None:
    ctx = _ctx(EpisodeLimits(token_limit=40))
    trajectory = await Greedy().run(ctx, TASK, 0)
    assert trajectory.stop_reason == StopReason.TOKEN_LIMIT
    assert trajectory.usage.total_tokens >= 40
    before_last = trajectory.usage.total_tokens - (
        trajectory.steps[-1].candidate.usage.total_tokens
    )
    assert before_last < 40  # it stopped at the first step boundary past the limit


async def test_time_limit_uses_the_injected_clock() -> None:
    clock = ManualClock()
    policy = SlowPricedPolicy(ScriptedPolicy(actions=["move right"]), clock, 10.0, 0.0)
    ctx = _ctx(EpisodeLimits(time_limit_s=25), policy=policy, clock=clock)
    trajectory = await Greedy().run(ctx, TASK, 0)
    assert trajectory.stop_reason == StopReason.TIME_LIMIT
    assert len(trajectory.steps) == 3  # 30 s >= 25 s after the third call
    assert trajectory.wall_time_s == pytest.approx(30.0)  # the same clock measures it


async def test_cost_limit_uses_the_candidates_price() -> None:
    clock = ManualClock()
    policy = SlowPricedPolicy(ScriptedPolicy(actions=["move right"]), clock, 0.0, 0.01)
    ctx = _ctx(EpisodeLimits(cost_limit_usd=0.025), policy=policy, clock=clock)
    trajectory = await Greedy().run(ctx, TASK, 0)
    assert trajectory.stop_reason == StopReason.COST_LIMIT
    assert len(trajectory.steps) == 3
    assert trajectory.usage.cost_usd == pytest.approx(0.03)


async def test_best_of_n_rollouts_share_the_episode_limit() -> None:
    limit = 4 * TOKENS_PER_TURN
    unlimited = await BestOfN(n=3).run(_ctx(EpisodeLimits(), max_steps=10), TASK, 0)
    limited = await BestOfN(n=3).run(
        _ctx(EpisodeLimits(completion_token_limit=limit), max_steps=10), TASK, 0
    )
    assert unlimited.usage.completion_tokens == 3 * 10 * TOKENS_PER_TURN
    assert limited.stop_reason == StopReason.TOKEN_LIMIT
    # The limit is the episode's: all rollouts together, one step of overshoot each at most.
    assert limit <= limited.usage.completion_tokens <= limit + 3 * TOKENS_PER_TURN


async def test_beam_search_past_a_limit_is_cut_off_with_the_reason() -> None:
    ctx = _ctx(EpisodeLimits(completion_token_limit=1))
    trajectory = await play_episode(ctx, TASK, BeamSearch(width=2), 0, "beam:2")
    assert trajectory.stop_reason == StopReason.TOKEN_LIMIT
    assert trajectory.info["cut_off"] is True
    assert trajectory.steps == ()
    assert trajectory.usage.completion_tokens == 2 * TOKENS_PER_TURN  # the first expansion


async def test_each_evaluated_episode_has_its_own_limits() -> None:
    tasks = [TaskSpec("corridor", "walk", i, "dev") for i in range(3)]
    ctx = _ctx(EpisodeLimits(completion_token_limit=2 * TOKENS_PER_TURN))
    report, trajectories = await evaluate_strategy(Greedy(), tasks, ctx, concurrency=1, seed=0)
    assert [len(t.steps) for t in trajectories] == [2, 2, 2]
    assert report.stop_reasons == {"token_limit": 3}


def test_run_budget_announces_once_when_reached() -> None:
    reached: list[str] = []
    budget = RunBudget(tokens=100, spent_tokens=60, on_reached=reached.append)
    budget.charge(Usage(30, 0))
    assert budget.reached is None and reached == []
    budget.charge(Usage(5, 5))
    budget.charge(Usage(5, 5))
    assert reached == ["run budget reached: 100 of 100 tokens spent"]  # once, not twice
    assert budget.take_unsaved() == Usage(40, 10) and budget.take_unsaved() == Usage()


async def test_budgeted_policy_charges_fresh_calls_only() -> None:
    budget = RunBudget(cost_usd=1.0)
    inner = CachedPolicy(ScriptedPolicy(actions=["move right"]), InMemoryCallCache())
    policy = BudgetedPolicy(inner, budget)
    messages: list[ChatMessage] = [{"role": "user", "content": "go"}]
    first = await policy.sample(messages, n=2, seed=7)
    again = await policy.sample(messages, n=2, seed=7)  # answered by the cache: free
    assert all(c.cached for c in again) and not any(c.cached for c in first)
    assert budget.spent_tokens == sum(c.usage.total_tokens for c in first)
