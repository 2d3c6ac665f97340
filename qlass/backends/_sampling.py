"""Token choice and log probabilities for the local backend (:mod:`qlass.backends.hf`).

``top_p`` (nucleus sampling) keeps the smallest set of most likely tokens whose probability
reaches ``top_p`` (after temperature). ``logprobs=k`` returns, per generated token, its log
probability under the model (the raw distribution, before temperature and ``top_p``, as
vLLM reports them) and the ``k`` most likely alternatives.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch

__all__ = [
    "RawLogprob",
    "TokenLogprob",
    "logprob_entries",
    "nucleus",
    "sample_token",
    "token_logprobs",
]

# (token id, its log probability, the best alternatives as (token id, log probability))
RawLogprob = tuple[int, float, list[tuple[int, float]]]


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token, its log probability, and the most likely alternatives."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


def sample_token(
    scores: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator
) -> int:
    """A token drawn from one row's ``scores`` at ``temperature`` (> 0) within ``top_p``."""
    probs = torch.softmax(scores / temperature, dim=-1)
    if top_p < 1.0:
        probs = nucleus(probs, top_p)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """``probs`` with every token outside the top-``top_p`` nucleus set to zero.

    The nucleus is the smallest set of most likely tokens whose probabilities sum to at
    least ``top_p`` (the most likely token is always kept). A stable sort keeps ties in
    token order, so a seeded row samples the same token on every run.
    """
    ordered, order = torch.sort(probs, descending=True, stable=True)
    before = torch.cumsum(ordered, dim=-1) - ordered  # mass of the tokens ranked above
    outside = before >= top_p
    outside[..., 0] = False
    ordered = ordered.masked_fill(outside, 0.0)
    return torch.zeros_like(probs).scatter(-1, order, ordered)


def token_logprobs(scores: torch.Tensor, token: int, top: int) -> RawLogprob:
    """The raw model log probability of ``token`` and of the ``top`` most likely tokens."""
    logprobs = torch.log_softmax(scores, dim=-1)
    best: list[tuple[int, float]] = []
    if top > 0:
        values, ids = torch.topk(logprobs, min(top, logprobs.shape[-1]))
        best = [(int(i), float(v)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
    return token, float(logprobs[token]), best


def logprob_entries(
    raw: list[RawLogprob],
    text: str,
    *,
    end_ids: Collection[int],
    decode: Callable[[list[int]], str],
    piece: Callable[[int], str],
) -> tuple[TokenLogprob, ...]:
    """Entries for the tokens that make up ``text`` (end-of-turn tokens and the tokens
    after a stop string's cut are not part of it); ``decode`` turns token ids into text as
    the completion was decoded, ``piece`` one token."""
    entries: list[TokenLogprob] = []
    ids: list[int] = []
    whole = decode([token for token, _, _ in raw]) == text
    for token, logprob, top in raw:
        if token in end_ids or (not whole and len(decode(ids)) >= len(text)):
            break
        ids.append(token)
        entries.append(
            TokenLogprob(piece(token), logprob, tuple((piece(alt), value) for alt, value in top))
        )
    return tuple(entries)
