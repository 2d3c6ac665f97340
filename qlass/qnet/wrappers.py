"""Cross-cutting concerns as wrappers around any :class:`~qlass.qnet.base.ValueModel`, as
:mod:`qlass.backends.wrappers` does for policies.

- :class:`RetryingValueModel`: transient failures (the model's ``should_retry`` hook: a
  scorer server unreachable, slow or answering 5xx) are retried with exponential backoff
  (:mod:`qlass._retry`, the policies' retry code);
- :class:`ConcurrencyLimitedValueModel`: at most ``max_concurrency`` score calls at once.

:func:`qlass.qnet.registry.create_value_model` puts these around the kinds that reach a
server. The LLM judge needs none of its own: it asks its LLM through a policy stack.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from qlass._retry import Backoff, Sleep, call_with_retries
from qlass.errors import ValueModelError
from qlass.qnet.base import BaseValueModel, ValueModel, ValueQuery, should_retry

__all__ = [
    "SCORER_BACKOFF",
    "Backoff",
    "ConcurrencyLimitedValueModel",
    "RetryingValueModel",
    "ValueModelWrapper",
]


SCORER_BACKOFF = Backoff(retries=3, initial_wait_s=0.5, jitter_s=0.0)
"""The default waits of a remote value model: 3 retries after 0.5, 1 and 2 s."""


class ValueModelWrapper(BaseValueModel):
    """A value model that delegates to ``inner`` and forwards its ``should_retry`` hook."""

    def __init__(self, inner: ValueModel) -> None:
        self.inner = inner

    async def score(self, queries: Sequence[ValueQuery]) -> list[float]:
        return await self.inner.score(queries)

    def should_retry(self, exc: BaseException) -> bool:
        return should_retry(self.inner, exc)

    async def aclose(self) -> None:
        await self.inner.aclose()


class RetryingValueModel(ValueModelWrapper):
    """Retry what the inner model calls transient, waiting as ``backoff`` says (default:
    :data:`SCORER_BACKOFF`). The last failure is raised again saying how many attempts were
    made."""

    def __init__(
        self,
        inner: ValueModel,
        backoff: Backoff = SCORER_BACKOFF,
        *,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        super().__init__(inner)
        self.backoff = backoff
        self._sleep = sleep

    async def score(self, queries: Sequence[ValueQuery]) -> list[float]:
        return await call_with_retries(
            lambda: self.inner.score(queries),
            backoff=self.backoff,
            should_retry=self.should_retry,
            gives_up=ValueModelError,
            event="value_model.retry",
            log_fields={"value_model": type(self.inner).__name__},
            sleep=self._sleep,
        )


class ConcurrencyLimitedValueModel(ValueModelWrapper):
    """At most ``max_concurrency`` score calls in flight through this wrapper."""

    def __init__(self, inner: ValueModel, max_concurrency: int) -> None:
        super().__init__(inner)
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self._semaphore = asyncio.Semaphore(max_concurrency)

    async def score(self, queries: Sequence[ValueQuery]) -> list[float]:
        async with self._semaphore:
            return await self.inner.score(queries)
