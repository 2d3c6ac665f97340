"""The ``ValueModel`` protocol: score candidate turns given a history.

The QNet is one implementation; a constant scorer (ablation), an LLM judge and the HTTP
client of ``qlass serve-qnet`` are others. Higher scores mean better candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, Self, runtime_checkable

from qlass.types import History

__all__ = ["BaseValueModel", "ValueModel", "ValueQuery"]


@dataclass(frozen=True, slots=True)
class ValueQuery:
    """One thing to score: the state (``history``) and a candidate turn's full text."""

    history: History
    candidate_text: str


@runtime_checkable
class ValueModel(Protocol):
    """Scores (history, candidate) pairs; the list returned matches ``queries`` in order."""

    async def score(self, queries: Sequence[ValueQuery]) -> list[float]: ...

    async def aclose(self) -> None: ...


class BaseValueModel:
    """Optional convenience base: ``async with`` support around ``aclose``.

    Implementations need not inherit from it; :class:`ValueModel` is structural.
    """

    async def aclose(self) -> None:
        """Release resources (nothing by default). Idempotent."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
