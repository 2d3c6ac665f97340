"""What a search strategy works with: a policy, a value model, environments and a tally.

:class:`SearchContext` renders a history into the policy's prompt, samples candidates,
scores them with the value model, and counts every token, call and env step, so that every
strategy is run by the same code and compared on the same budget accounting.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

from qlass._seeding import derive_seed
from qlass.backends.base import Policy
from qlass.chat import policy_messages
from qlass.qnet.base import ValueModel, ValueQuery
from qlass.runtime.limits import EpisodeLimitReached, EpisodeMeter
from qlass.types import Candidate, History, Observation, StepResult, TaskSpec, Usage

__all__ = [
    "DistinctProposal",
    "EnvBranchProvider",
    "EnvProvider",
    "EnvSession",
    "SearchContext",
    "Tally",
    "action_key",
    "env_branch",
]


class EnvSession(Protocol):
    """An environment standing somewhere in an episode of one task."""

    @property
    def initial(self) -> Observation:
        """The observation the episode started from (after reset)."""
        ...

    async def step(self, action: str) -> StepResult: ...


class EnvProvider(Protocol):
    """Hands out environments positioned after a prefix of actions: an
    :class:`~qlass.envs.pool.EnvPool` does (``EnvPool.around(env)`` for one env of yours)."""

    def session(
        self, task: TaskSpec, actions: Sequence[str] = (), expected: Sequence[str] | None = None
    ) -> AbstractAsyncContextManager[EnvSession]: ...


class EnvBranchProvider(EnvProvider, Protocol):
    """The envs of one branch of a search: its sessions (one at a time) use one env that
    stays reserved for it between them (see :meth:`qlass.envs.pool.EnvPool.branch`)."""

    def release(self) -> None:
        """End the branch: nobody continues from where its env stands."""
        ...


@runtime_checkable
class _Branching(Protocol):
    def branch(self) -> AbstractContextManager[EnvBranchProvider]: ...


@dataclass(frozen=True)
class _Unbranched:
    """The branch of a provider that cannot reserve envs: every session is its own."""

    envs: EnvProvider

    def session(
        self, task: TaskSpec, actions: Sequence[str] = (), expected: Sequence[str] | None = None
    ) -> AbstractAsyncContextManager[EnvSession]:
        return self.envs.session(task, actions, expected)

    def release(self) -> None:
        pass


def env_branch(envs: EnvProvider) -> AbstractContextManager[EnvBranchProvider]:
    """A branch of ``envs`` (an env pool's :meth:`~qlass.envs.pool.EnvPool.branch`; for a
    provider without branches, one whose sessions are the provider's own)."""
    if isinstance(envs, _Branching):
        return envs.branch()
    return nullcontext(_Unbranched(envs))


@dataclass
class Tally:
    """Running totals of what a stage spent. Mutable; one per stage or per episode."""

    usage: Usage = Usage()
    cached_usage: Usage = Usage()
    policy_calls: int = 0
    samples: int = 0
    invalid_samples: int = 0
    value_queries: int = 0
    env_steps: int = 0
    policy_time_s: float = 0.0
    value_time_s: float = 0.0
    env_time_s: float = 0.0

    def add_candidates(self, candidates: Sequence[Candidate], elapsed_s: float) -> None:
        self.policy_calls += 1
        self.policy_time_s += elapsed_s
        for candidate in candidates:
            self.samples += 1
            self.invalid_samples += not candidate.is_valid
            if candidate.cached:
                self.cached_usage += candidate.usage
            else:
                self.usage += candidate.usage

    def merge(self, other: Tally) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, float]:
        return {
            "prompt_tokens": self.usage.prompt_tokens,
            "completion_tokens": self.usage.completion_tokens,
            "cost_usd": self.usage.cost_usd,
            "cached_completion_tokens": self.cached_usage.completion_tokens,
            "policy_calls": self.policy_calls,
            "samples": self.samples,
            "invalid_samples": self.invalid_samples,
            "value_queries": self.value_queries,
            "env_steps": self.env_steps,
            "policy_time_s": round(self.policy_time_s, 3),
            "value_time_s": round(self.value_time_s, 3),
            "env_time_s": round(self.env_time_s, 3),
        }


def action_key(candidate: Candidate) -> str:
    """What makes two candidates the same move: the action, case and spacing folded.
    Every unparsable output is one move (the env is not called; the state is the same)."""
    if candidate.action is None:
        return "\x00invalid"
    return " ".join(candidate.action.lower().split())


@dataclass(frozen=True, slots=True)
class DistinctProposal:
    """Candidates with pairwise different actions, and how many duplicates were drawn."""

    candidates: list[Candidate]
    duplicates: int
    calls: int


@dataclass
class SearchContext:
    """Everything a strategy needs for one task; counts into ``tally``.

    ``oracle_terminal_reward`` reproduces the authors' released code (finished candidates
    scored by the true env reward). It leaks test reward and exists only as a labelled
    ablation; it is off by default.

    ``meter`` holds the episode's limits and clock (see :mod:`qlass.runtime.limits`);
    :meth:`for_episode` gives each episode its own tally and meter.
    """

    policy: Policy
    envs: EnvProvider
    value_model: ValueModel | None = None
    system_prompt: str | None = None
    max_steps: int = 30
    max_tokens: int = 64
    max_turns_in_prompt: int | None = None
    temperature: float = 0.7
    seed: int = 0
    oracle_terminal_reward: bool = False
    tally: Tally = field(default_factory=Tally)
    meter: EpisodeMeter = field(default_factory=EpisodeMeter)

    def for_episode(self) -> SearchContext:
        """This context with a fresh tally and meter, for one new episode."""
        return replace(self, tally=Tally(), meter=self.meter.fresh())

    async def propose(
        self, history: History, *, n: int, temperature: float, seed: int | None
    ) -> list[Candidate]:
        """Sample ``n`` candidate next turns for ``history``.

        Raises:
            EpisodeLimitReached: the episode has reached one of its limits (the step loop
                checks before each step; this stops strategies that loop by themselves).
        """
        reason = self.meter.exceeded()
        if reason is not None:
            raise EpisodeLimitReached(reason)
        messages = policy_messages(history, self.system_prompt, max_turns=self.max_turns_in_prompt)
        started = time.perf_counter()
        candidates = await self.policy.sample(
            messages, n=n, temperature=temperature, max_tokens=self.max_tokens, seed=seed
        )
        self.tally.add_candidates(candidates, time.perf_counter() - started)
        self.meter.charge(candidates)
        return candidates

    async def propose_distinct(
        self, history: History, *, n: int, temperature: float, seed: int, extra_rounds: int
    ) -> DistinctProposal:
        """Up to ``n`` candidates whose actions differ (:func:`action_key`), in sample order.

        The first call asks for ``n`` samples with ``seed``; while duplicates leave fewer
        than ``n`` distinct actions, up to ``extra_rounds`` further calls (seeds derived from
        ``seed``) ask for the missing number. Every sample counts in the tally, duplicates
        included, so strategies that resample pay for it. Deterministic for a given seed
        (a resume replays the same calls from the call cache).
        """
        distinct: dict[str, Candidate] = {}
        duplicates = calls = 0
        for round_ in range(extra_rounds + 1):
            want = n - len(distinct)
            if want <= 0:
                break
            round_seed = seed if round_ == 0 else derive_seed(seed, "distinct", round_)
            for candidate in await self.propose(
                history, n=want, temperature=temperature, seed=round_seed
            ):
                key = action_key(candidate)
                if key in distinct:
                    duplicates += 1
                else:
                    distinct[key] = candidate
            calls += 1
        return DistinctProposal(list(distinct.values()), duplicates, calls)

    async def score(self, history: History, candidates: Sequence[Candidate]) -> list[float]:
        """Value-model scores of ``candidates`` (all of them, finished or not)."""
        if self.value_model is None:
            raise ValueError("this strategy needs a value model; none is configured")
        queries = [ValueQuery(history, c.text) for c in candidates]
        started = time.perf_counter()
        scores = await self.value_model.score(queries)
        self.tally.value_time_s += time.perf_counter() - started
        self.tally.value_queries += len(queries)
        return scores

    async def timed_step(self, session: EnvSession, action: str) -> StepResult:
        started = time.perf_counter()
        result = await session.step(action)
        self.tally.env_time_s += time.perf_counter() - started
        self.tally.env_steps += 1
        return result
