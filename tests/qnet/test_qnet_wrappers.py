"""Value-model wrappers: retries driven by the model's hook, a concurrency limit."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from qlass.errors import ValueModelError
from qlass.qnet.base import BaseValueModel, ValueQuery
from qlass.qnet.wrappers import Backoff, ConcurrencyLimitedValueModel, RetryingValueModel
from tests.qnet.qnet_helpers import varied_queries


class Flaky(BaseValueModel):
    """Fails its first ``failures`` calls; transient failures say 'busy'."""

    def __init__(self, failures: int, message: str = "busy") -> None:
        self.failures = failures
        self.message = message
        self.calls = 0

    def should_retry(self, exc: BaseException) -> bool:
        return "busy" in str(exc)

    async def score(self, queries: Sequence[ValueQuery]) -> list[float]:
        self.calls += 1
        if self.calls <= self.failures:
            raise ValueModelError(self.message)
        return [0.5] * len(queries)


async def _no_sleep(_seconds: float) -> None:
    return None


async def test_transient_failures_are_retried_with_doubling_waits() -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    inner = Flaky(failures=2)
    model = RetryingValueModel(inner, Backoff(3, initial_wait_s=0.5, jitter_s=0), sleep=sleep)
    assert await model.score(varied_queries(2)) == [0.5, 0.5]
    assert inner.calls == 3 and waits == [0.5, 1.0]


async def test_retries_give_up_saying_how_many_attempts() -> None:
    inner = Flaky(failures=9)
    model = RetryingValueModel(inner, Backoff(retries=2), sleep=_no_sleep)
    with pytest.raises(ValueModelError, match=r"^busy \(gave up after 3 attempts\)$"):
        await model.score(varied_queries(1))
    assert inner.calls == 3


async def test_permanent_failures_and_models_without_the_hook_are_not_retried() -> None:
    permanent = Flaky(failures=1, message="bad checkpoint")
    with pytest.raises(ValueModelError, match=r"^bad checkpoint$"):
        await RetryingValueModel(permanent, sleep=_no_sleep).score(varied_queries(1))
    assert permanent.calls == 1

    class Structural:  # a ValueModel by shape, without BaseValueModel's hook
        calls = 0

        async def score(self, queries: Sequence[ValueQuery]) -> list[float]:
            self.calls += 1
            raise ValueModelError("busy")

        async def aclose(self) -> None:
            pass

    structural = Structural()
    with pytest.raises(ValueModelError):
        await RetryingValueModel(structural, sleep=_no_sleep).score(varied_queries(1))
    assert structural.calls == 1


async def test_concurrency_limit_bounds_calls_in_flight() -> None:
    class Gauge(BaseValueModel):
        inside = peak = 0

        async def score(self, queries: Sequence[ValueQuery]) -> list[float]:
            self.inside += 1
            self.peak = max(self.peak, self.inside)
            await asyncio.sleep(0.01)
            self.inside -= 1
            return [0.0] * len(queries)

    gauge = Gauge()
    limited = ConcurrencyLimitedValueModel(gauge, 2)
    await asyncio.gather(*(limited.score(varied_queries(1)) for _ in range(6)))
    assert gauge.peak == 2
