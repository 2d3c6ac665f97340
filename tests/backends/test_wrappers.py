"""Wrappers: concurrency limit, rate limits (on a fake clock), retries, hook forwarding."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from qlass.backends.base import BasePolicy
from qlass.backends.cache import CachedPolicy, InMemoryCallCache
from qlass.backends.scripted import ScriptedPolicy
from qlass.backends.wrappers import (
    ConcurrencyLimitedPolicy,
    RateLimitedPolicy,
    RetryingPolicy,
    TokenBucket,
    estimate_tokens,
)
from qlass.errors import PolicyCallError, PolicyTimeoutError
from qlass.parsing import candidate_from_text
from qlass.types import Candidate, ChatMessage, Usage

MESSAGES: list[ChatMessage] = [{"role": "user", "content": "Observation: " + "word " * 40}]


class Gauge(BasePolicy):
    """A policy that records how many calls are inside it at once."""

    def __init__(self, requests_per_sample: bool = False, delay_s: float = 0.01) -> None:
        self.inside = 0
        self.peak = 0
        self.calls = 0
        self.per_sample = requests_per_sample
        self.delay_s = delay_s

    @property
    def model_name(self) -> str:
        return "gauge"

    def requests_for(self, n: int) -> int:
        return n if self.per_sample else 1

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
        self.calls += 1
        self.inside += 1
        self.peak = max(self.peak, self.inside)
        await asyncio.sleep(self.delay_s)
        self.inside -= 1
        return [candidate_from_text("Action: wait", Usage(100, 10)) for _ in range(n)]

    async def aclose(self) -> None:
        pass


async def test_concurrency_limit_is_respected_and_reached() -> None:
    gauge = Gauge()
    policy = ConcurrencyLimitedPolicy(gauge, 3)
    results = await asyncio.gather(*(policy.sample(MESSAGES) for _ in range(20)))
    assert len(results) == 20 and gauge.calls == 20
    assert gauge.peak == 3
    assert policy.peak_in_flight == 3
    assert policy.in_flight == 0


async def test_concurrency_limit_counts_requests_not_calls() -> None:
    gauge = Gauge(requests_per_sample=True)
    policy = ConcurrencyLimitedPolicy(gauge, 4)
    await asyncio.gather(*(policy.sample(MESSAGES, n=3) for _ in range(6)))
    assert gauge.peak == 1  # 3 + 3 > 4: one fan-out of 3 requests at a time
    await asyncio.gather(*(policy.sample(MESSAGES, n=9) for _ in range(2)))  # capped, no deadlock
    assert gauge.calls == 8


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


async def test_token_bucket_spaces_requests_and_carries_debt() -> None:
    clock = FakeClock()
    bucket = TokenBucket(60, clock=clock, sleep=clock.sleep)  # 1 a second, burst 1
    starts = []
    for _ in range(4):
        await bucket.acquire(1)
        starts.append(clock.now)
    assert starts == pytest.approx([0, 1, 2, 3])
    tokens = TokenBucket(600, clock=clock, sleep=clock.sleep)  # 10/s, capacity 10
    await tokens.acquire(50)  # a big request goes through, then is paid for
    begin = clock.now
    await tokens.acquire(5)
    assert clock.now - begin == pytest.approx(4.5)  # waits until the level is 5 again: 45/10


async def test_rpm_limit_spaces_concurrent_calls() -> None:
    clock = FakeClock()
    inner = ScriptedPolicy(actions=["look"])
    policy = RateLimitedPolicy(inner, rpm=120, clock=clock, sleep=clock.sleep)
    starts: list[float] = []

    async def one() -> None:
        await policy.sample(MESSAGES)
        starts.append(clock.now)

    await asyncio.gather(*(one() for _ in range(5)))
    # one second's worth (2 requests) may go at once, then one every 0.5 s
    assert sorted(starts) == pytest.approx([0, 0, 0.5, 1.0, 1.5])
    assert len(inner.calls) == 5


async def test_tpm_limit_uses_estimates_then_actual_usage() -> None:
    clock = FakeClock()
    gauge = Gauge(delay_s=0)
    policy = RateLimitedPolicy(gauge, tpm=6000, clock=clock, sleep=clock.sleep)  # 100/s
    estimate = estimate_tokens(MESSAGES, 1, 20)
    assert estimate == len(MESSAGES[0]["content"]) // 4 + 4 + 20
    await policy.sample(MESSAGES, max_tokens=20)
    assert policy.tokens is not None
    # the estimate was taken, then corrected to the 110 tokens really used
    assert policy.tokens.level == pytest.approx(100 - 110)
    await policy.sample(MESSAGES, max_tokens=20)
    assert clock.now == pytest.approx((estimate + 10) / 100)


async def test_retries_transient_errors_with_exponential_backoff() -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    inner = ScriptedPolicy(
        actions=["look"], errors=[PolicyTimeoutError("slow"), PolicyTimeoutError("slow")]
    )
    policy = RetryingPolicy(inner, retries=3, initial_wait_s=0.5, jitter_s=0, sleep=sleep)
    candidates = await policy.sample(MESSAGES)
    assert candidates[0].action == "look"
    assert len(inner.calls) == 3
    assert waits == [0.5, 1.0]


async def test_gives_up_with_the_same_error_type_and_attempt_count() -> None:
    inner = ScriptedPolicy(actions=["look"], errors=[PolicyTimeoutError("slow")] * 3)
    policy = RetryingPolicy(inner, retries=1, initial_wait_s=0, jitter_s=0)
    with pytest.raises(PolicyTimeoutError, match="gave up after 2 attempts") as info:
        await policy.sample(MESSAGES)
    assert isinstance(info.value.__cause__, PolicyTimeoutError)
    assert len(inner.calls) == 2


async def test_errors_the_backend_calls_permanent_are_not_retried() -> None:
    inner = ScriptedPolicy(actions=["look"], errors=[PolicyCallError("bad request")])
    policy = RetryingPolicy(inner, retries=3, initial_wait_s=0, jitter_s=0)
    with pytest.raises(PolicyCallError, match=r"^bad request$"):
        await policy.sample(MESSAGES)
    assert len(inner.calls) == 1


async def test_hooks_reach_through_a_wrapper_stack() -> None:
    class Hooked(Gauge):
        def should_retry(self, exc: BaseException) -> bool:
            return isinstance(exc, KeyError)

        def retry_after(self, exc: BaseException) -> float | None:
            return 7.0

    stack = CachedPolicy(
        RetryingPolicy(ConcurrencyLimitedPolicy(RateLimitedPolicy(Hooked(True), rpm=60), 2)),
        InMemoryCallCache(),
    )
    assert stack.should_retry(KeyError("x")) and not stack.should_retry(PolicyTimeoutError("t"))
    assert stack.retry_after(KeyError("x")) == 7.0
    assert stack.requests_for(5) == 5
    assert stack.model_name == "gauge"
    plain = RetryingPolicy(ScriptedPolicy(actions=["a"]))
    assert plain.should_retry(PolicyTimeoutError("t")) and not plain.should_retry(KeyError())
    assert plain.requests_for(4) == 1


async def test_a_policy_without_the_base_class_gets_the_default_hooks() -> None:
    class Structural:  # a Policy by shape only: its look-alike hook is not a declared one
        model_name = "structural"

        def should_retry(self, exc: BaseException) -> bool:
            return True

        async def sample(self, messages: Sequence[ChatMessage], **_: object) -> list[Candidate]:
            return [candidate_from_text("Action: wait", Usage(1, 1))]

        async def aclose(self) -> None:
            pass

    wrapped = RetryingPolicy(Structural())
    assert wrapped.should_retry(PolicyTimeoutError("t")) and not wrapped.should_retry(KeyError())
    assert wrapped.requests_for(3) == 1 and wrapped.retry_after(KeyError()) is None
