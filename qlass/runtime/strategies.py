"""Search strategies, all run by the same episode loop and the same budget accounting.

    greedy          the policy alone, temperature 0, one sample per step
    sampled         the policy alone, sampled at the search temperature
    best_of_n:N     N sampled episodes; the value model picks one (no oracle)
    qlass:M         Q-guided stepwise search: M candidates per step, execute the arg-max
    beam:B          beam search over Q: keep the B best partial episodes per step
    best_first:K    best-first search over Q, K nodes executed per step
    mcts:K          UCT tree search evaluated by Q, K iterations per step
                    (both in :mod:`qlass.runtime.tree_search`)
    rollout_oracle:M  DIAGNOSTIC: qlass:M's step-wise choice with each candidate valued by
                    sampled rollouts to the env's true reward (an upper bound for a value model)

Candidates that would end the episode are scored by the value model like every other
candidate. ``SearchContext.oracle_terminal_reward`` reproduces the authors' released code
(finished candidates scored by the true env reward) for comparison only.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar, Protocol

from qlass._registry import Registry
from qlass._seeding import derive_seed
from qlass.config import SearchConfig
from qlass.errors import UnknownNameError
from qlass.runtime.context import SearchContext, Tally
from qlass.runtime.episode import (
    Decision,
    EpisodeState,
    advance,
    execute,
    run_stepwise,
    run_until_done,
    start_episode,
    to_trajectory,
)
from qlass.runtime.tree_search import MCTS, BestFirst
from qlass.types import Candidate, ScoredCandidate, TaskSpec, Trajectory

__all__ = [
    "MCTS",
    "BeamSearch",
    "BestFirst",
    "BestOfN",
    "Greedy",
    "QGuided",
    "RolloutOracle",
    "Sampled",
    "SearchStrategy",
    "StrategyOptions",
    "make_strategy",
    "strategy_names",
]


class SearchStrategy(Protocol):
    """Plays one task to the end and returns the trajectory it chose."""

    needs_value: ClassVar[bool]
    """Whether the strategy scores candidates with a value model."""

    @property
    def name(self) -> str: ...

    async def run(self, ctx: SearchContext, task: TaskSpec, seed: int) -> Trajectory: ...


def _best(values: Sequence[float]) -> int:
    """Index of the largest value; the first one on ties (candidates come in sample order)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


@dataclass(frozen=True)
class Greedy:
    """The policy's most likely turn at every step."""

    needs_value: ClassVar[bool] = False

    name: str = "greedy"

    async def decide(self, ctx: SearchContext, state: EpisodeState, seed: int) -> Decision:
        (candidate,) = await ctx.propose(state.history, n=1, temperature=0.0, seed=seed)
        return Decision(candidate)

    async def run(self, ctx: SearchContext, task: TaskSpec, seed: int) -> Trajectory:
        return await run_stepwise(ctx, task, self, seed)


@dataclass(frozen=True)
class Sampled:
    """One sampled turn per step at ``temperature`` (the rollout policy of Best-of-N)."""

    needs_value: ClassVar[bool] = False

    temperature: float = 0.7
    name: str = "sampled"

    async def decide(self, ctx: SearchContext, state: EpisodeState, seed: int) -> Decision:
        (candidate,) = await ctx.propose(
            state.history, n=1, temperature=self.temperature, seed=seed
        )
        return Decision(candidate)

    async def run(self, ctx: SearchContext, task: TaskSpec, seed: int) -> Trajectory:
        return await run_stepwise(ctx, task, self, seed)


async def _oracle_values(
    ctx: SearchContext, state: EpisodeState, candidates: Sequence[Candidate], values: list[float]
) -> list[float]:
    """ABLATION: replace the value of candidates that end the episode by the true reward."""
    out = list(values)
    for i, candidate in enumerate(candidates):
        assert candidate.action is not None
        result = await execute(ctx, state, candidate.action)
        if result.done:
            out[i] = result.score
    return out


@dataclass(frozen=True)
class QGuided:
    """QLASS: sample ``candidates`` turns, score each with the value model, take the best."""

    needs_value: ClassVar[bool] = True

    candidates: int = 2
    temperature: float = 0.7
    resample_rounds: int = 0
    """Extra policy calls per step at most to get ``candidates`` different actions (0: the
    samples as drawn, duplicates included, as in the paper)."""

    @property
    def name(self) -> str:
        return f"qlass:{self.candidates}"

    async def decide(self, ctx: SearchContext, state: EpisodeState, seed: int) -> Decision:
        if self.resample_rounds:
            proposal = await ctx.propose_distinct(
                state.history,
                n=self.candidates,
                temperature=self.temperature,
                seed=seed,
                extra_rounds=self.resample_rounds,
            )
            proposed = proposal.candidates
        else:
            proposed = await ctx.propose(
                state.history, n=self.candidates, temperature=self.temperature, seed=seed
            )
        valid = list({c.text: c for c in proposed if c.is_valid}.values())
        if not valid:
            return Decision(proposed[0], tuple(ScoredCandidate(c) for c in proposed))
        values = await ctx.score(state.history, valid)
        if ctx.oracle_terminal_reward:
            values = await _oracle_values(ctx, state, valid, values)
        by_text = dict(zip((c.text for c in valid), values, strict=True))
        considered = tuple(ScoredCandidate(c, by_text.get(c.text)) for c in proposed)
        best = _best(values)
        return Decision(valid[best], considered, values[best])

    async def run(self, ctx: SearchContext, task: TaskSpec, seed: int) -> Trajectory:
        return await run_stepwise(ctx, task, self, seed)


@dataclass(frozen=True)
class RolloutOracle:
    """DIAGNOSTIC, not a method: QLASS's step-wise choice with a value model replaced by
    the simulator itself.

    Each step samples ``candidates`` turns exactly as ``qlass:M`` does; each distinct
    valid candidate is executed and followed by ``rollouts`` sampled episodes of the
    policy to the end, and its value is the mean of their true final scores (a
    Monte-Carlo estimate of the candidate's Q under the sampling policy). The arg-max is
    executed. This is what Q-guided search could reach with a value model as good as
    ``rollouts`` samples of the env's reward, so comparing it with ``qlass:M`` tells the
    QNet's shortfall from the limits of the policy's candidates. The rollouts run in the
    true env and so also know what the observation hides (in a partially observed game an
    upper bound no observation-based value model can reach). Every rollout's tokens
    and env steps are counted in the episode's accounting; it reads the env's reward, so
    it must never be reported as a method.
    """

    needs_value: ClassVar[bool] = False

    candidates: int = 2
    rollouts: int = 4
    temperature: float = 0.7

    @property
    def name(self) -> str:
        return f"rollout_oracle:{self.candidates}"

    async def decide(self, ctx: SearchContext, state: EpisodeState, seed: int) -> Decision:
        proposed = await ctx.propose(
            state.history, n=self.candidates, temperature=self.temperature, seed=seed
        )
        valid = list({c.text: c for c in proposed if c.is_valid}.values())
        if not valid:
            return Decision(proposed[0], tuple(ScoredCandidate(c) for c in proposed))
        values = await asyncio.gather(
            *(self._value(ctx, state, c, derive_seed(seed, i)) for i, c in enumerate(valid))
        )
        by_text = dict(zip((c.text for c in valid), values, strict=True))
        considered = tuple(ScoredCandidate(c, by_text.get(c.text)) for c in proposed)
        best = _best(values)
        return Decision(valid[best], considered, values[best])

    async def _value(
        self, ctx: SearchContext, state: EpisodeState, candidate: Candidate, seed: int
    ) -> float:
        sub = replace(ctx, tally=Tally())
        after = await advance(sub, state, Decision(candidate))
        if after.done or after.depth >= ctx.max_steps:
            ctx.tally.merge(sub.tally)
            return after.score
        rollout = Sampled(self.temperature)
        subs = [replace(ctx, tally=Tally()) for _ in range(self.rollouts)]
        finals = await asyncio.gather(
            *(run_until_done(s, after, rollout, derive_seed(seed, k)) for k, s in enumerate(subs))
        )
        for spent in (sub, *subs):
            ctx.tally.merge(spent.tally)
        return sum(f.score for f in finals) / len(finals)

    async def run(self, ctx: SearchContext, task: TaskSpec, seed: int) -> Trajectory:
        return await run_stepwise(ctx, task, self, seed)


@dataclass(frozen=True)
class BestOfN:
    """Sample ``n`` whole episodes and keep the one the value model rates highest.

    An episode's value is the value model's score of its last step (the predicted outcome).
    The best true score among the ``n`` is recorded as ``oracle_best_score`` (an upper
    bound, never used for the choice).
    """

    needs_value: ClassVar[bool] = True

    n: int = 4
    temperature: float = 0.7

    @property
    def name(self) -> str:
        return f"best_of_n:{self.n}"

    async def run(self, ctx: SearchContext, task: TaskSpec, seed: int) -> Trajectory:
        start = await start_episode(ctx, task)
        rollout = Sampled(self.temperature)
        contexts = [replace(ctx, tally=Tally()) for _ in range(self.n)]
        finals = await asyncio.gather(
            *(
                run_until_done(sub, start, rollout, derive_seed(seed, i))
                for i, sub in enumerate(contexts)
            )
        )
        for sub in contexts:
            ctx.tally.merge(sub.tally)
        values = await self._values(ctx, finals)
        chosen = _best(values)
        info = {
            "strategy": self.name,
            "values": values,
            "scores": [s.score for s in finals],
            "chosen": chosen,
            "oracle_best_score": max(s.score for s in finals),
        }
        return to_trajectory(ctx, replace(finals[chosen], started=start.started), info)

    @staticmethod
    async def _values(ctx: SearchContext, finals: Sequence[EpisodeState]) -> list[float]:
        values = [-math.inf] * len(finals)
        scored = [i for i, s in enumerate(finals) if s.steps and s.steps[-1].candidate.is_valid]
        for i in scored:
            last = finals[i].steps[-1]
            before = finals[i].history.turns[:-1]
            history = replace(finals[i].history, turns=before)
            (values[i],) = await ctx.score(history, [last.candidate])
        return values


@dataclass(frozen=True)
class _Option:
    """A beam (``decision`` is None) or a scored continuation of one, not yet executed."""

    state: EpisodeState
    value: float
    decision: Decision | None = None


@dataclass(frozen=True)
class BeamSearch:
    """Beam search over Q: expand every live beam with ``candidates`` turns, keep the
    ``width`` highest-valued continuations (finished beams compete with their last value)."""

    needs_value: ClassVar[bool] = True

    width: int = 2
    candidates: int = 2
    temperature: float = 0.7

    @property
    def name(self) -> str:
        return f"beam:{self.width}"

    async def run(self, ctx: SearchContext, task: TaskSpec, seed: int) -> Trajectory:
        start = await start_episode(ctx, task)
        beams = [_Option(start, -math.inf)]
        for depth in range(ctx.max_steps):
            live = [b for b in beams if not b.state.done]
            if not live:
                break
            expansions = await asyncio.gather(
                *(
                    self._expand(ctx, b.state, derive_seed(seed, depth, i))
                    for i, b in enumerate(live)
                )
            )
            options = [b for b in beams if b.state.done]
            options += [option for group in expansions for option in group]
            kept = sorted(options, key=lambda o: o.value, reverse=True)[: self.width]
            beams = list(await asyncio.gather(*(self._realise(ctx, o) for o in kept)))
        best = max(beams, key=lambda b: b.value)
        info = {"strategy": self.name, "values": [b.value for b in beams]}
        return to_trajectory(ctx, replace(best.state, started=start.started), info)

    async def _expand(self, ctx: SearchContext, state: EpisodeState, seed: int) -> list[_Option]:
        proposed = await ctx.propose(
            state.history, n=self.candidates, temperature=self.temperature, seed=seed
        )
        valid = list({c.text: c for c in proposed if c.is_valid}.values())
        if not valid:
            return [_Option(state, -math.inf, Decision(proposed[0]))]
        values = await ctx.score(state.history, valid)
        considered = tuple(ScoredCandidate(c, v) for c, v in zip(valid, values, strict=True))
        return [
            _Option(state, v, Decision(c, considered, v))
            for c, v in zip(valid, values, strict=True)
        ]

    @staticmethod
    async def _realise(ctx: SearchContext, option: _Option) -> _Option:
        if option.decision is None:
            return option
        return _Option(await advance(ctx, option.state, option.decision), option.value)


@dataclass(frozen=True, slots=True)
class StrategyOptions:
    """Settings of the strategies beyond their count (``search.*`` in a run's config)."""

    temperature: float = 0.7
    resample_rounds: int = 0
    """qlass:M: extra policy calls per step to get M different actions."""
    tree_branching: int = 2
    """best_first and mcts: children sampled per expanded node."""
    lookahead: int = 2
    """best_first: steps below the current state it expands."""
    mcts_exploration: float = 1.0
    """mcts: UCT exploration constant."""
    oracle_rollouts: int = 4
    """rollout_oracle: sampled rollouts that value each candidate."""

    @classmethod
    def from_config(cls, search: SearchConfig) -> StrategyOptions:
        """The options a run's ``search`` section sets."""
        return cls(
            temperature=search.temperature,
            resample_rounds=search.resample_rounds,
            tree_branching=search.tree_branching,
            lookahead=search.lookahead,
            mcts_exploration=search.mcts_exploration,
            oracle_rollouts=search.oracle_rollouts,
        )


_STRATEGIES: Registry[Callable[[int | None, StrategyOptions], SearchStrategy]] = Registry(
    "strategy",
    {
        "greedy": lambda _k, _o: Greedy(),
        "sampled": lambda _k, o: Sampled(o.temperature),
        "best_of_n": lambda k, o: BestOfN(k or 4, o.temperature),
        "qlass": lambda k, o: QGuided(k or 2, o.temperature, o.resample_rounds),
        "beam": lambda k, o: BeamSearch(width=k or 2, temperature=o.temperature),
        "best_first": lambda k, o: BestFirst(
            budget=k or 4,
            branching=o.tree_branching,
            lookahead=o.lookahead,
            temperature=o.temperature,
        ),
        "mcts": lambda k, o: MCTS(
            iterations=k or 4,
            branching=o.tree_branching,
            exploration=o.mcts_exploration,
            temperature=o.temperature,
        ),
        "rollout_oracle": lambda k, o: RolloutOracle(k or 2, o.oracle_rollouts, o.temperature),
    },
)


def strategy_names() -> list[str]:
    """The strategy names ``make_strategy`` knows, sorted."""
    return sorted(_STRATEGIES)


def make_strategy(
    spec: str,
    *,
    temperature: float = 0.7,
    resample_rounds: int = 0,
    options: StrategyOptions | None = None,
) -> SearchStrategy:
    """Build a strategy from ``name`` or ``name:K`` (``best_of_n:8``, ``qlass:4``).

    ``resample_rounds``: extra policy calls per step that step-wise value-guided strategies
    may make to get K different actions (see :class:`QGuided`). ``options``, when given,
    holds every setting (its temperature and resample rounds win over the two arguments).
    """
    name, _, k = spec.partition(":")
    factory = _STRATEGIES[name]
    try:
        count = int(k) if k else None
    except ValueError:
        raise UnknownNameError(f"strategy {spec!r}: the part after ':' must be a number") from None
    if count is not None and count < 1:
        raise UnknownNameError(f"strategy {spec!r}: the count must be at least 1")
    if options is None:
        options = StrategyOptions(temperature=temperature, resample_rounds=resample_rounds)
    return factory(count, options)
