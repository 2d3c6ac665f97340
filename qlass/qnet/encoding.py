"""How a (history, candidate) pair becomes QNet input, shared by training and scoring.

The text is the tokenizer's chat template applied to :func:`qlass.chat.value_messages`
(task, history, candidate turn; no system prompt). Sequences longer than ``max_length``
are cut from the left, so the candidate and the most recent turns are always kept.
Batches are padded on the right to the longest sequence in the batch; the QNet reads the
hidden state of the last real token, so right padding leaves every sequence's positions
and its causal context exactly as they are when it is scored alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import structlog
import torch

from qlass.chat import value_messages
from qlass.types import History

__all__ = [
    "FALLBACK_CHAT_TEMPLATE",
    "bucket_by_length",
    "encode_texts",
    "ensure_chat_template",
    "pad_right",
    "render",
    "text_key",
]

log = structlog.get_logger(__name__)

# Used only for tokenizers that ship without a chat template (base, non-chat checkpoints).
# It is saved with the QNet checkpoint, so scoring renders exactly what training rendered.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] + ': ' + message['content'] + '\n' }}"
    "{% endfor %}"
)


def ensure_chat_template(tokenizer: Any) -> None:
    """Give ``tokenizer`` :data:`FALLBACK_CHAT_TEMPLATE` if it has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        log.warning("tokenizer has no chat template; using the plain 'role: content' fallback")
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE


def render(
    tokenizer: Any, history: History, candidate_text: str, max_turns: int | None = None
) -> str:
    """The exact text the QNet reads for ``candidate_text`` after ``history``.

    ``max_turns`` keeps the task and only the most recent turns (None: the whole history,
    as in the paper); it is part of the checkpoint so scoring renders what training did.
    """
    text = tokenizer.apply_chat_template(
        value_messages(history, candidate_text, max_turns=max_turns),
        tokenize=False,
        add_generation_prompt=False,
    )
    assert isinstance(text, str)
    return text


def text_key(text: str) -> str:
    """A short stable hash of a rendered text (the scorer cache key)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def encode_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, left-truncated to the last ``max_length`` tokens.

    Special tokens come from the chat template itself (as in ``apply_chat_template``), so
    none are added here.
    """
    if not texts:
        return []
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    out = []
    for ids in encoded:
        if not ids:
            raise ValueError("a rendered query produced no tokens")
        out.append(list(ids[-max_length:]))
    return out


def pad_right(batch: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` padded on the right to the longest sequence."""
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


def bucket_by_length(
    lengths: Sequence[int], *, max_items: int, token_budget: int, max_padding: float = 0.25
) -> list[list[int]]:
    """Group indices into sub-batches of similar length.

    Indices are sorted by length, then cut greedily: a group holds at most ``max_items``
    items, at most ``token_budget`` padded tokens (``items x longest``; a single sequence
    longer than the budget gets a group of its own), and at most ``max_padding`` pad
    tokens per real token, so that little compute goes to padding.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    real = 0
    for index in order:
        longest = lengths[index]  # ascending order: the newest item is the longest
        padded = (len(current) + 1) * longest
        if current and (
            len(current) >= max_items
            or padded > token_budget
            or padded > (1.0 + max_padding) * (real + longest)
        ):
            groups.append(current)
            current, real = [], 0
        current.append(index)
        real += longest
    if current:
        groups.append(current)
    return groups
