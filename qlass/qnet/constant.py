"""Value models for ablations and tests: a constant score and a seeded random score.

With a constant score every candidate ties, so Q-guided search reduces to taking the
policy's first candidate; a random score picks uniformly among candidates. Both measure
what the QNet adds over no value signal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from qlass.qnet.base import BaseValueModel, ValueQuery

__all__ = ["ConstantValueModel", "RandomValueModel"]


class ConstantValueModel(BaseValueModel):
    """Scores every query ``value``."""

    def __init__(self, value: float = 0.0) -> None:
        self.value = float(value)
        self.calls = 0

    async def score(self, queries: Sequence[ValueQuery]) -> list[float]:
        self.calls += 1
        return [self.value] * len(queries)


class RandomValueModel(BaseValueModel):
    """A uniform score in ``[0, 1)`` that depends only on ``seed`` and the query.

    The score is a hash of the seed and the query's content, not a draw from a shared
    generator, so results do not depend on the order in which concurrent episodes ask.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def _value(self, query: ValueQuery) -> float:
        digest = hashlib.blake2b(digest_size=8, key=str(self.seed).encode())
        history = query.history
        for part in (history.instruction, history.initial_observation):
            digest.update(part.encode() + b"\x00")
        for turn in history.turns:
            digest.update(f"{turn.text}\x00{turn.observation}\x00".encode())
        digest.update(b"\x01" + query.candidate_text.encode())
        return int.from_bytes(digest.digest(), "big") / 2**64

    async def score(self, queries: Sequence[ValueQuery]) -> list[float]:
        return [self._value(q) for q in queries]
