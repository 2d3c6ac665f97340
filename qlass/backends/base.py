"""The ``Policy`` protocol: sample candidate next turns for a conversation.

Backends (LiteLLM, local transformers, scripted) implement ``sample``. Cross-cutting
concerns (request cache, concurrency limits) wrap a backend instead of living inside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from qlass.types import Candidate, ChatMessage

__all__ = ["CallCache", "Policy"]


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


@runtime_checkable
class CallCache(Protocol):
    """A persistent map from a request key to a stored response (the tree store has one)."""

    async def get(self, key: str) -> dict[str, Any] | None: ...

    async def put(self, key: str, response: dict[str, Any]) -> None: ...
