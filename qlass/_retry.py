"""Retries with exponential backoff and jitter (tenacity), shared by the policy and value
model wrappers (:class:`~qlass.backends.wrappers.RetryingPolicy`,
:class:`~qlass.qnet.wrappers.RetryingValueModel`).

The wait before retry ``k`` (1-based) is ``initial_wait_s * 2**(k-1)`` plus a uniform jitter
in ``[0, jitter_s]``, at most ``max_wait_s``; a wait the server asked for (``Retry-After``)
raises it to at least that (capped at ``max_wait_s``). Which failures are transient is the
caller's ``should_retry``. After the last attempt the error is raised again, same type,
saying how many attempts were made, with the last failure as its cause.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from qlass.errors import QlassError

__all__ = ["Backoff", "Sleep", "call_with_retries"]

log = structlog.get_logger(__name__)

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Backoff:
    """How often and how long to wait between attempts."""

    retries: int = 4
    initial_wait_s: float = 1.0
    max_wait_s: float = 30.0
    jitter_s: float = 1.0

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError("retries must be >= 0")

    def wait_s(self, attempt: int, asked_s: float | None = None) -> float:
        """The wait after failed attempt ``attempt`` (1-based)."""
        exponential = self.initial_wait_s * 2 ** (attempt - 1)
        wait = min(self.max_wait_s, exponential + random.uniform(0, self.jitter_s))
        if asked_s is not None:
            wait = max(wait, min(asked_s, self.max_wait_s))
        return wait


def _failure(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome is not None else None


async def call_with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    backoff: Backoff,
    should_retry: Callable[[BaseException], bool],
    retry_after: Callable[[BaseException], float | None] = lambda _exc: None,
    gives_up: type[QlassError] = QlassError,
    event: str = "retry",
    log_fields: Mapping[str, Any] | None = None,
    sleep: Sleep = asyncio.sleep,
) -> T:
    """``await call()``, again after each transient failure, ``backoff.retries`` times at most.

    An error of type ``gives_up`` that outlives more than one attempt is raised again as the
    same type with "(gave up after N attempts)" added. Each retry logs a WARNING ``event``
    with ``log_fields``, the attempt, the error and the wait.
    """

    def wait(state: RetryCallState) -> float:
        exc = _failure(state)
        return backoff.wait_s(state.attempt_number, retry_after(exc) if exc else None)

    def before_sleep(state: RetryCallState) -> None:
        exc = _failure(state)
        log.warning(
            event,
            **(log_fields or {}),
            attempt=state.attempt_number,
            of=backoff.retries + 1,
            error=type(exc).__name__,
            detail=str(exc)[:200],
            wait_s=round(state.next_action.sleep if state.next_action else 0.0, 3),
        )

    retrying = AsyncRetrying(
        retry=retry_if_exception(should_retry),
        stop=stop_after_attempt(backoff.retries + 1),
        wait=wait,
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )
    attempts = 0
    try:
        async for attempt in retrying:
            with attempt:
                attempts = attempt.retry_state.attempt_number
                return await call()
    except gives_up as exc:
        if attempts > 1:
            raise type(exc)(f"{exc} (gave up after {attempts} attempts)") from exc
        raise
    raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover
