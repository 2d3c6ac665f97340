"""Limits per episode and a budget per run, in the manner of inspect_ai's sample limits.

    EpisodeLimits   tokens (prompt + completion), completion tokens, wall time and cost of
                    one episode
    EpisodeMeter    what one episode has spent so far, checked against its limits; its
                    clock is injected, so time limits are tested without the wall clock
    RunBudget       the tokens and cost of a whole run; reaching it asks for a graceful stop
    BudgetedPolicy  a policy that charges every fresh (not cached) call to a run budget

An episode checks its limits before each step: once it has spent at least a limit it stops
with that :class:`~qlass.types.StopReason`. The step that crosses a limit completes (its
tokens are spent already), so an episode overshoots a limit by at most one step. Tokens
answered from the call cache count towards episode limits (they were spent when first
made, and a resumed run must stop where the first one did); the run budget counts only
what this run pays for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from qlass.backends.base import Policy
from qlass.backends.wrappers import PolicyWrapper
from qlass.types import Candidate, ChatMessage, StopReason, Usage

__all__ = [
    "BudgetedPolicy",
    "EpisodeLimitReached",
    "EpisodeLimits",
    "EpisodeMeter",
    "RunBudget",
]

log = structlog.get_logger(__name__)

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class EpisodeLimits:
    """What one episode may spend; ``None`` is no limit."""

    token_limit: int | None = None
    """Prompt plus completion tokens."""
    completion_token_limit: int | None = None
    time_limit_s: float | None = None
    """Wall time from reset, in seconds."""
    cost_limit_usd: float | None = None
    """Price of the policy calls (LiteLLM's pricing, :attr:`Usage.cost_usd`)."""

    def exceeded(self, usage: Usage, elapsed_s: float) -> StopReason | None:
        """The first limit that ``usage`` after ``elapsed_s`` seconds has reached, if any."""
        if self.token_limit is not None and usage.total_tokens >= self.token_limit:
            return StopReason.TOKEN_LIMIT
        if (
            self.completion_token_limit is not None
            and usage.completion_tokens >= self.completion_token_limit
        ):
            return StopReason.TOKEN_LIMIT
        if self.cost_limit_usd is not None and usage.cost_usd >= self.cost_limit_usd:
            return StopReason.COST_LIMIT
        if self.time_limit_s is not None and elapsed_s >= self.time_limit_s:
            return StopReason.TIME_LIMIT
        return None


class EpisodeLimitReached(Exception):
    """Raised by :meth:`SearchContext.propose` when a strategy that plays its own loop
    (beam search) asks for a step past a limit; the episode runner turns it into a stop."""

    def __init__(self, reason: StopReason) -> None:
        super().__init__(f"episode limit reached: {reason}")
        self.reason = reason


@dataclass
class EpisodeMeter:
    """One episode's spending against its limits. Mutable; shared by the sub-contexts of
    one episode (Best-of-N's rollouts), so that the limit is the episode's, not a rollout's.
    """

    limits: EpisodeLimits = EpisodeLimits()
    clock: Clock = time.perf_counter
    usage: Usage = Usage()
    started: float | None = None

    def start(self) -> float:
        """Start the episode's clock (once) and return the start time."""
        if self.started is None:
            self.started = self.clock()
        return self.started

    def charge(self, candidates: Sequence[Candidate]) -> None:
        """Count the candidates' usage (cached ones too)."""
        for candidate in candidates:
            self.usage += candidate.usage

    @property
    def elapsed_s(self) -> float:
        return 0.0 if self.started is None else self.clock() - self.started

    def exceeded(self) -> StopReason | None:
        """The limit the episode has reached, if any."""
        return self.limits.exceeded(self.usage, self.elapsed_s)

    def fresh(self) -> EpisodeMeter:
        """A meter for a new episode with the same limits and clock."""
        return EpisodeMeter(self.limits, self.clock)


@dataclass
class RunBudget:
    """The tokens (prompt + completion) and cost a run may spend over all its stages.

    ``spent_*`` start at what the run spent before (stored in its record) and grow with
    every fresh policy call; when a limit is reached, ``on_reached`` is called once (the
    pipeline requests a graceful stop: no new work starts, work under way finishes, nothing
    is lost, and a rerun with a higher budget resumes).
    """

    tokens: int | None = None
    cost_usd: float | None = None
    spent_tokens: int = 0
    spent_usd: float = 0.0
    on_reached: Callable[[str], None] | None = None
    unsaved: Usage = field(default_factory=Usage)
    """Spent since the last :meth:`take_unsaved` (what the store has not recorded yet)."""
    _announced: bool = False

    @property
    def reached(self) -> str | None:
        """A message naming the limit reached, or ``None``."""
        if self.tokens is not None and self.spent_tokens >= self.tokens:
            return f"run budget reached: {self.spent_tokens} of {self.tokens} tokens spent"
        if self.cost_usd is not None and self.spent_usd >= self.cost_usd:
            return f"run budget reached: ${self.spent_usd:.4f} of ${self.cost_usd:.4f} spent"
        return None

    def charge(self, usage: Usage) -> None:
        """Count fresh usage; announce the budget reached (once)."""
        self.spent_tokens += usage.total_tokens
        self.spent_usd += usage.cost_usd
        self.unsaved += usage
        self.check()

    def check(self) -> None:
        """Call ``on_reached`` if the budget is reached and it was not called yet."""
        message = self.reached
        if message is not None and not self._announced:
            self._announced = True
            log.warning("run_budget_reached", message=message)
            if self.on_reached is not None:
                self.on_reached(message)

    def sync(self, stored_tokens: int, stored_usd: float) -> None:
        """Set the spend to the run's stored totals (every process of the run, this one's
        saved part included) plus what this one has not saved; announce a limit reached."""
        self.spent_tokens = stored_tokens + self.unsaved.total_tokens
        self.spent_usd = stored_usd + self.unsaved.cost_usd
        self.check()

    def take_unsaved(self) -> Usage:
        """What was spent since the last call (to add to the stored total)."""
        unsaved, self.unsaved = self.unsaved, Usage()
        return unsaved


class BudgetedPolicy(PolicyWrapper):
    """Charges every fresh candidate's usage to a :class:`RunBudget` (cached ones are free)."""

    def __init__(self, inner: Policy, budget: RunBudget) -> None:
        super().__init__(inner)
        self.budget = budget

    async def sample(
        self,
        messages: Sequence[ChatMessage],
        *,
        n: int = 1,
        temperature: float = 0.7,
        max_tokens: int = 256,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> list[Candidate]:
        candidates = await self.inner.sample(
            messages, n=n, temperature=temperature, max_tokens=max_tokens, stop=stop, seed=seed
        )
        fresh = Usage()
        for candidate in candidates:
            if not candidate.cached:
                fresh += candidate.usage
        self.budget.charge(fresh)
        return candidates
