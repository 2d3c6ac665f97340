"""The ``Policy`` protocol: sample candidate next turns for a conversation.

Backends (LiteLLM, local transformers, scripted) implement ``sample``. Cross-cutting
concerns (request cache, concurrency and rate limits, retries) wrap a backend instead of
living inside it (:mod:`qlass.backends.wrappers`); a backend steers them through the hooks
declared by :class:`BasePolicy` (inherit it to override them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from qlass.errors import PolicyTimeoutError
from qlass.types import Candidate, ChatMessage

__all__ = ["BasePolicy", "CallCache", "Policy", "hooks_of"]


@runtime_checkable
class Policy(Protocol):
    """Something that proposes next turns. A failed call raises; it never returns ``""``."""

    @property
    def model_name(self) -> str:
        """The model's name as recorded in the DB and reports."""
        ...

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
        """Return ``n`` candidates for the next assistant turn after ``messages``."""
        ...

    async def aclose(self) -> None:
        """Release connections, threads and models. Idempotent."""
        ...


class BasePolicy:
    """Optional base of a policy backend: the hooks the wrappers ask, with defaults that
    suit a backend that declares nothing, and a no-op :meth:`aclose`.

    A backend implements :class:`Policy` (``model_name``, ``sample``) and overrides the
    hooks it knows better. A policy that does not inherit this base gets these answers
    (see :func:`hooks_of`).
    """

    def should_retry(self, exc: BaseException) -> bool:
        """Whether the failure ``exc`` is transient (429, 5xx, timeout, connection).

        By default only :class:`~qlass.errors.PolicyTimeoutError` is.
        """
        return isinstance(exc, PolicyTimeoutError)

    def retry_after(self, exc: BaseException) -> float | None:
        """The wait the provider asked for (its ``Retry-After``), if any."""
        return None

    def requests_for(self, n: int) -> int:
        """How many requests a call with ``n`` samples makes (limits count requests)."""
        return 1

    async def aclose(self) -> None:
        """Release connections, threads and models (nothing by default). Idempotent."""


_DEFAULT_HOOKS = BasePolicy()


def hooks_of(policy: Policy) -> BasePolicy:
    """The hooks ``policy`` declares (the defaults for a policy without the base)."""
    return policy if isinstance(policy, BasePolicy) else _DEFAULT_HOOKS


@runtime_checkable
class CallCache(Protocol):
    """A persistent map from a request key to a stored response (the tree store has one).

    A cache may also have ``async put_many(items: Sequence[tuple[str, dict]])`` that stores
    several responses in one transaction (the tree store's does): :class:`CachedPolicy`
    then stores the samples of one call together, so that a process killed while storing
    them leaves all or none, and a resume never re-asks one sample of a call alone.
    """

    async def get(self, key: str) -> dict[str, Any] | None: ...

    async def put(self, key: str, response: dict[str, Any]) -> None: ...
