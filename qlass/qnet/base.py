"""The ``ValueModel`` protocol: score candidate turns given a history.

The QNet is one implementation; a constant scorer (ablation), an LLM judge and the HTTP
client of ``qlass serve-qnet`` are others. Higher scores mean better candidates. Retries
and concurrency limits wrap a value model (:mod:`qlass.qnet.wrappers`), steered by the
``should_retry`` hook that :class:`BaseValueModel` declares.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, Self, runtime_checkable

from qlass.types import History

__all__ = ["BaseValueModel", "ValueModel", "ValueQuery", "should_retry"]


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
    """Optional base: ``async with`` support around ``aclose``, and the hook the wrappers ask.

    Implementations need not inherit from it (:class:`ValueModel` is structural); one that
    does not gets the default hook (no failure is transient).
    """

    def should_retry(self, exc: BaseException) -> bool:
        """Whether the failure ``exc`` is transient (worth another attempt). Default: no."""
        return False

    async def aclose(self) -> None:
        """Release resources (nothing by default). Idempotent."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def should_retry(model: ValueModel, exc: BaseException) -> bool:
    """``model``'s answer to its ``should_retry`` hook (False for a model without the base)."""
    return model.should_retry(exc) if isinstance(model, BaseValueModel) else False
