"""Cross-cutting concerns as wrappers around any :class:`~qlass.backends.base.Policy`.

No backend re-implements concurrency limits, rate limits or retries; it declares the hooks
of :class:`~qlass.backends.base.BasePolicy` (by inheriting it) and these wrappers act
on them:

- ``should_retry(exc) -> bool``: is this failure transient (429, 5xx, timeout, connection)?
  By default only :class:`~qlass.errors.PolicyTimeoutError` is retried.
- ``retry_after(exc) -> float | None``: the wait the provider asked for (``Retry-After``).
- ``requests_for(n) -> int``: how many HTTP requests a call with ``n`` samples makes (1 with
  a provider's native ``n``, ``n`` otherwise); limits count requests, not calls.

The usual stack (what :func:`qlass.backends.registry.build_policy` builds) is, outermost
first: ``CachedPolicy`` → :class:`RetryingPolicy` → :class:`ConcurrencyLimitedPolicy` →
:class:`RateLimitedPolicy` → backend. Retries sit outside the limits so a backoff sleep holds
no slot; the rate limiter sits inside the concurrency limit so tokens are taken just before
a request is sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import structlog

from qlass._retry import Backoff, Sleep, call_with_retries
from qlass.backends.base import BasePolicy, Policy, hooks_of
from qlass.errors import PolicyError
from qlass.types import Candidate, ChatMessage

__all__ = [
    "ConcurrencyLimitedPolicy",
    "PolicyWrapper",
    "RateLimitedPolicy",
    "RetryingPolicy",
    "TokenBucket",
    "estimate_tokens",
]

log = structlog.get_logger(__name__)

Clock = Callable[[], float]


class PolicyWrapper(BasePolicy):
    """A policy that delegates to ``inner``; subclasses override :meth:`sample`.

    The backend hooks (``should_retry``, ``retry_after``, ``requests_for``) are forwarded,
    so a wrapper stack keeps the innermost backend's answers.
    """

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self._hooks = hooks_of(inner)

    @property
    def model_name(self) -> str:
        return self.inner.model_name

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
        return await self.inner.sample(
            messages, n=n, temperature=temperature, max_tokens=max_tokens, stop=stop, seed=seed
        )

    def should_retry(self, exc: BaseException) -> bool:
        return self._hooks.should_retry(exc)

    def retry_after(self, exc: BaseException) -> float | None:
        return self._hooks.retry_after(exc)

    def requests_for(self, n: int) -> int:
        return self._hooks.requests_for(n)

    async def aclose(self) -> None:
        await self.inner.aclose()


def estimate_tokens(messages: Sequence[ChatMessage], n: int, max_tokens: int) -> int:
    """A pre-call token estimate for rate limiting: ~4 characters per prompt token."""
    prompt = sum(len(m["content"]) for m in messages) // 4 + 4 * len(messages)
    return prompt + n * max_tokens


class _WeightedSemaphore:
    """A semaphore where one acquisition may take several units (FIFO, no starvation)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.in_use = 0
        self._cond = asyncio.Condition()

    async def acquire(self, units: int) -> int:
        units = max(1, min(units, self.capacity))
        async with self._cond:
            await self._cond.wait_for(lambda: self.in_use + units <= self.capacity)
            self.in_use += units
        return units

    async def release(self, units: int) -> None:
        async with self._cond:
            self.in_use -= units
            self._cond.notify_all()


class ConcurrencyLimitedPolicy(PolicyWrapper):
    """At most ``max_concurrency`` requests in flight through this wrapper.

    A call takes ``requests_for(n)`` units (capped at the limit), so a provider without
    native ``n`` that fans a call out into ``n`` requests is bounded by requests, not calls.
    """

    def __init__(self, inner: Policy, max_concurrency: int) -> None:
        super().__init__(inner)
        self._sem = _WeightedSemaphore(max_concurrency)
        self.peak_in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._sem.in_use

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
        units = await self._sem.acquire(self.requests_for(n))
        self.peak_in_flight = max(self.peak_in_flight, self._sem.in_use)
        try:
            return await self.inner.sample(
                messages, n=n, temperature=temperature, max_tokens=max_tokens, stop=stop, seed=seed
            )
        finally:
            await self._sem.release(units)


class TokenBucket:
    """A token bucket refilled at ``per_minute / 60`` per second, holding ``burst_s`` worth.

    :meth:`acquire` waits until the bucket holds ``min(amount, capacity)``, then takes the
    whole ``amount`` (the level may go negative: a large request is paid for by later
    waits), so the long-run rate never exceeds ``per_minute``. Waiters are served in order.
    ``clock`` and ``sleep`` are injectable so tests can run on a fake clock.
    """

    def __init__(
        self,
        per_minute: float,
        *,
        burst_s: float = 1.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be positive")
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_s)
        self.level = self.capacity
        self._clock = clock
        self._sleep = sleep
        self._updated = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._updated) * self.rate)
        self._updated = now

    async def acquire(self, amount: float) -> float:
        """Take ``amount`` tokens, waiting as needed; return the seconds waited."""
        waited = 0.0
        async with self._lock:
            need = min(amount, self.capacity)
            self._refill()
            while self.level < need:
                delay = (need - self.level) / self.rate
                await self._sleep(delay)
                waited += delay
                self._refill()
            self.level -= amount
        return waited

    def adjust(self, amount: float) -> None:
        """Take ``amount`` more tokens (or give back, if negative) after the fact."""
        self._refill()
        self.level = min(self.capacity, self.level - amount)


class RateLimitedPolicy(PolicyWrapper):
    """Keep requests per minute (``rpm``) and tokens per minute (``tpm``) under limits.

    Tokens are taken before a call from :func:`estimate_tokens` and corrected afterwards
    with the usage the backend reported.
    """

    def __init__(
        self,
        inner: Policy,
        *,
        rpm: float | None = None,
        tpm: float | None = None,
        burst_s: float = 1.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        super().__init__(inner)
        self.requests = TokenBucket(rpm, burst_s=burst_s, clock=clock, sleep=sleep) if rpm else None
        self.tokens = TokenBucket(tpm, burst_s=burst_s, clock=clock, sleep=sleep) if tpm else None

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
        waited = 0.0
        if self.requests is not None:
            waited += await self.requests.acquire(self.requests_for(n))
        estimate = estimate_tokens(messages, n, max_tokens)
        if self.tokens is not None:
            waited += await self.tokens.acquire(estimate)
        if waited > 0:
            log.debug("policy.rate_limited", model=self.model_name, waited_s=round(waited, 3))
        try:
            candidates = await self.inner.sample(
                messages, n=n, temperature=temperature, max_tokens=max_tokens, stop=stop, seed=seed
            )
        except BaseException:
            if self.tokens is not None:
                self.tokens.adjust(-estimate)  # nothing (or nothing we know of) was used
            raise
        if self.tokens is not None:
            used = sum(c.usage.total_tokens for c in candidates)
            self.tokens.adjust(used - estimate)
        return candidates


class RetryingPolicy(PolicyWrapper):
    """Retry transient failures with exponential backoff and jitter (:mod:`qlass._retry`).

    The wait before retry ``k`` (1-based) is ``initial_wait_s * 2**(k-1)`` plus a uniform
    jitter in ``[0, jitter_s]``, at most ``max_wait_s``.

    What is transient is the backend's ``should_retry`` hook; a ``Retry-After`` the provider
    sent (``retry_after`` hook) raises the wait to at least that (capped at ``max_wait_s``).
    After the last attempt the error is raised again, same type, saying how many attempts
    were made, with the last failure as its cause.
    """

    def __init__(
        self,
        inner: Policy,
        *,
        retries: int = 4,
        initial_wait_s: float = 1.0,
        max_wait_s: float = 30.0,
        jitter_s: float = 1.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        super().__init__(inner)
        self.backoff = Backoff(retries, initial_wait_s, max_wait_s, jitter_s)
        self._sleep = sleep

    @property
    def retries(self) -> int:
        return self.backoff.retries

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
        return await call_with_retries(
            lambda: self.inner.sample(
                messages, n=n, temperature=temperature, max_tokens=max_tokens, stop=stop, seed=seed
            ),
            backoff=self.backoff,
            should_retry=self.should_retry,
            retry_after=self.retry_after,
            gives_up=PolicyError,
            event="policy.retry",
            log_fields={"model": self.model_name},
            sleep=self._sleep,
        )
