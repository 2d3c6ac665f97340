"""Fitting a conversation into a local model's context (:mod:`qlass.backends.hf`).

With ``trim`` the oldest turns are dropped (an assistant turn with the observation after
it) while the system message, the first user message (task and first observation) and the
last message are kept; if even that does not fit beside ``max_tokens``, or without
``trim``, the call fails with :class:`~qlass.errors.PromptTooLongError`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qlass.errors import PromptTooLongError
from qlass.types import ChatMessage

__all__ = ["FittedPrompt", "fit_prompt"]


@dataclass(frozen=True, slots=True)
class FittedPrompt:
    """The prompt's token ids, the messages dropped to fit, and the untrimmed length."""

    ids: list[int]
    dropped_messages: int
    original_tokens: int


def fit_prompt(
    messages: Sequence[ChatMessage],
    encode: Callable[[Sequence[ChatMessage]], list[int]],
    *,
    max_context: int,
    max_tokens: int,
    trim: bool,
) -> FittedPrompt:
    """``messages`` encoded to fit ``max_context`` positions beside ``max_tokens``."""
    budget = max_context - max_tokens
    if budget < 1:
        raise PromptTooLongError(
            f"max_tokens={max_tokens} leaves no room for a prompt in the "
            f"model's context of {max_context} positions"
        )
    kept = list(messages)
    ids = encode(kept)
    original = len(ids)
    if original <= budget:
        return FittedPrompt(ids, 0, original)
    head = next((i + 1 for i, m in enumerate(kept) if m["role"] == "user"), 1)
    while trim and len(ids) > budget and len(kept) - head >= 3:
        kept = kept[:head] + kept[head + 2 :]
        ids = encode(kept)
    if len(ids) > budget:
        what = (
            ", even with only the system message, the task and the last message kept"
            if trim
            else " (no messages are dropped for this request)"
        )
        raise PromptTooLongError(
            f"prompt of {original} tokens does not fit the model's context of "
            f"{max_context} positions with max_tokens={max_tokens}{what}"
        )
    return FittedPrompt(ids, len(messages) - len(kept), original)
