"""A scripted policy: fixed or rule-based turns, for tests of the layers above backends.

It behaves like a real backend where the runtime can tell: it honours ``n`` and the seeding
rule of :func:`~qlass.backends.cache.sample_seed`, reports token usage (whitespace-split
word counts), parses its texts into candidates like every backend, and can be told to fail
its first calls with given exceptions. Every call is recorded in :attr:`ScriptedPolicy.calls`.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from qlass.backends.base import BasePolicy
from qlass.backends.cache import sample_seed
from qlass.parsing import candidate_from_text, format_turn
from qlass.types import Candidate, ChatMessage, Usage

__all__ = ["ScriptedCall", "ScriptedPolicy"]

Rule = Callable[[Sequence[ChatMessage], int], str]


@dataclass(frozen=True, slots=True)
class ScriptedCall:
    """One recorded ``sample`` call."""

    messages: tuple[ChatMessage, ...]
    n: int
    temperature: float
    max_tokens: int
    stop: tuple[str, ...]
    seed: int | None


def _words(text: str) -> int:
    return len(text.split())


class ScriptedPolicy(BasePolicy):
    """Answer from a script.

    Exactly one of:

    - ``texts``: raw model outputs. Unseeded calls take them in turn (cycling); a seeded
      call's sample ``i`` is ``texts[sample_seed(seed, i) % len(texts)]``.
    - ``actions``: like ``texts``, each rendered as ``"Action: <action>"``.
    - ``rule``: ``rule(messages, sample_index) -> text``, for rule-based behaviour.

    ``errors`` are raised by the first calls, one per call, before the script is used (to
    test retries and failure handling). ``delay_s`` makes each call take that long.
    """

    def __init__(
        self,
        texts: Sequence[str] | None = None,
        *,
        actions: Sequence[str] | None = None,
        rule: Rule | None = None,
        errors: Iterable[BaseException] = (),
        delay_s: float = 0.0,
        model_name: str = "scripted",
    ) -> None:
        given = [x is not None for x in (texts, actions, rule)]
        if sum(given) != 1:
            raise ValueError("give exactly one of texts, actions or rule")
        if actions is not None:
            texts = [format_turn(a) for a in actions]
        if texts is not None and not texts:
            raise ValueError("the script is empty")
        self._texts = list(texts) if texts is not None else None
        self._rule = rule
        self._cycle = itertools.cycle(range(len(self._texts))) if self._texts else None
        self._errors = list(errors)
        self._delay_s = delay_s
        self._model_name = model_name
        self.calls: list[ScriptedCall] = []
        self.closed = False

    @property
    def model_name(self) -> str:
        return self._model_name

    def _text(self, messages: Sequence[ChatMessage], index: int, seed: int | None) -> str:
        if self._rule is not None:
            return self._rule(messages, index)
        assert self._texts is not None and self._cycle is not None
        if seed is None:
            return self._texts[next(self._cycle)]
        return self._texts[sample_seed(seed, index) % len(self._texts)]

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
        """Return ``n`` scripted candidates (or raise the next scripted error)."""
        if self.closed:
            raise RuntimeError("policy is closed")
        self.calls.append(
            ScriptedCall(tuple(messages), n, temperature, max_tokens, tuple(stop or ()), seed)
        )
        if self._delay_s:
            await asyncio.sleep(self._delay_s)
        if self._errors:
            raise self._errors.pop(0)
        prompt_tokens = sum(_words(m["content"]) for m in messages)
        candidates = []
        for i in range(n):
            text = self._text(messages, i, seed)
            for s in stop or ():
                if s and s in text:
                    text = text[: text.index(s)]
            usage = Usage(prompt_tokens, _words(text))
            candidates.append(candidate_from_text(text, usage))
        return candidates

    async def aclose(self) -> None:
        self.closed = True
