"""The episode loop every strategy shares: state, one step, and the finished trajectory.

An unparsable model output is recorded as an invalid step (the model sees
:data:`INVALID_OBSERVATION`) and nothing is sent to the environment. The episode ends when
the environment says done, after ``max_steps`` steps, or when it reaches one of the
context's episode limits (tokens, cost, time: :mod:`qlass.runtime.limits`), checked before
each step; the trajectory's ``stop_reason`` says which.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol, cast

from qlass._seeding import derive_seed
from qlass.parsing import INVALID_OBSERVATION
from qlass.runtime.context import SearchContext
from qlass.runtime.limits import EpisodeLimitReached
from qlass.types import (
    Candidate,
    History,
    ScoredCandidate,
    Step,
    StepResult,
    StopReason,
    TaskSpec,
    Trajectory,
    Turn,
)

__all__ = [
    "INVALID_OBSERVATION",
    "Decision",
    "EpisodeState",
    "StepwiseStrategy",
    "advance",
    "play_episode",
    "run_stepwise",
    "start_episode",
    "to_trajectory",
]


@dataclass(frozen=True, slots=True)
class Decision:
    """The candidate a strategy chose for the next step, and what it considered."""

    chosen: Candidate
    considered: tuple[ScoredCandidate, ...] = ()
    value: float | None = None


@dataclass(frozen=True, slots=True)
class EpisodeState:
    """An episode so far. ``actions``/``observations`` locate the env state for replay."""

    task: TaskSpec
    history: History
    steps: tuple[Step, ...] = ()
    actions: tuple[str, ...] = ()
    observations: tuple[str, ...] = ()
    score: float = 0.0
    done: bool = False
    success: bool = False
    started: float = 0.0
    stop_reason: StopReason | None = None
    """Set when a limit stopped the episode before the env said done."""

    @property
    def depth(self) -> int:
        return len(self.steps)


class StepwiseStrategy(Protocol):
    """Chooses one next step from the current state (greedy, Q-guided, ...)."""

    @property
    def name(self) -> str: ...

    async def decide(self, ctx: SearchContext, state: EpisodeState, seed: int) -> Decision: ...


async def start_episode(ctx: SearchContext, task: TaskSpec) -> EpisodeState:
    """Reset an environment for ``task`` and return the initial state."""
    async with ctx.envs.session(task) as session:
        initial = session.initial
    history = History(initial.instruction, initial.text)
    return EpisodeState(task=task, history=history, started=ctx.meter.start())


async def execute(ctx: SearchContext, state: EpisodeState, action: str) -> StepResult:
    """Run ``action`` in an environment standing at ``state`` (live or replayed)."""
    async with ctx.envs.session(state.task, state.actions, state.observations) as session:
        return await ctx.timed_step(session, action)


async def advance(ctx: SearchContext, state: EpisodeState, decision: Decision) -> EpisodeState:
    """Execute ``decision`` from ``state``; an invalid candidate costs a step, no env call."""
    candidate = decision.chosen
    if candidate.action is None:
        result = StepResult(INVALID_OBSERVATION, 0.0, False, state.score, False)
        actions, observations = state.actions, state.observations
    else:
        result = await execute(ctx, state, candidate.action)
        actions = (*state.actions, candidate.action)
        observations = (*state.observations, result.observation)
    step = Step(candidate, result, decision.considered, decision.value)
    turn = Turn(candidate.text, candidate.action, result.observation)
    return replace(
        state,
        history=state.history.extend(turn),
        steps=(*state.steps, step),
        actions=actions,
        observations=observations,
        score=result.score,
        done=result.done,
        success=result.success,
    )


def to_trajectory(
    ctx: SearchContext, state: EpisodeState, info: dict[str, Any] | None = None
) -> Trajectory:
    """The finished (or truncated) episode, with the context's accounting."""
    usage = ctx.tally.usage + ctx.tally.cached_usage
    reason = state.stop_reason or (StopReason.DONE if state.done else StopReason.STEP_LIMIT)
    return Trajectory(
        task=state.task,
        instruction=state.history.instruction,
        initial_observation=state.history.initial_observation,
        steps=state.steps,
        final_score=state.score,
        success=state.success,
        usage=usage,
        env_steps=ctx.tally.env_steps,
        wall_time_s=ctx.meter.clock() - state.started,
        info=info or {},
        stop_reason=reason,
    )


async def run_until_done(
    ctx: SearchContext, state: EpisodeState, strategy: StepwiseStrategy, seed: int
) -> EpisodeState:
    """Apply ``strategy`` step by step until the episode ends, hits ``ctx.max_steps`` or
    reaches a limit of ``ctx.meter``."""
    while not state.done and state.depth < ctx.max_steps:
        reason = ctx.meter.exceeded()
        if reason is not None:
            return replace(state, stop_reason=reason)
        decision = await strategy.decide(ctx, state, derive_seed(seed, state.depth))
        state = await advance(ctx, state, decision)
    return state


async def run_stepwise(
    ctx: SearchContext, task: TaskSpec, strategy: StepwiseStrategy, seed: int
) -> Trajectory:
    """Play ``task`` with a step-wise strategy from reset to the end."""
    state = await run_until_done(ctx, await start_episode(ctx, task), strategy, seed)
    return to_trajectory(ctx, state, {"strategy": strategy.name})


async def play_episode(
    ctx: SearchContext, task: TaskSpec, strategy: object, seed: int, name: str
) -> Trajectory:
    """Play ``task`` with any strategy: one with ``run(ctx, task, seed)`` or a step-wise one.

    A strategy that loops by itself (beam search) and reaches a limit mid-way is cut off
    at its next policy call: its partial episode is not kept, and the trajectory returned
    has no steps, the tally's accounting and the limit as ``stop_reason``.
    """
    try:
        play = getattr(strategy, "run", None)
        if play is not None:
            trajectory: Trajectory = await play(ctx, task, seed)
            return trajectory
        return await run_stepwise(ctx, task, cast(StepwiseStrategy, strategy), seed)
    except EpisodeLimitReached as stop:
        state = EpisodeState(task, History("", ""), started=ctx.meter.start())
        cut = replace(state, stop_reason=stop.reason)
        return to_trajectory(ctx, cut, {"strategy": name, "cut_off": True})
