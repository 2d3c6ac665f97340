"""Grouped prefill for the local backend (:mod:`qlass.backends.hf`).

Padding a batch to its longest prompt wastes compute on short prompts (and attention is
quadratic in the padded width), so prompts of similar length are prefilled in groups of at
most a budget of padded tokens, and their per-layer KV caches are copied into one
left-padded cache for decoding. Models whose caches are not plain per-layer tensors
(sliding windows, other layer kinds) are prefilled as one padded batch instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import DynamicCache

__all__ = ["Forward", "length_groups", "prefill"]

# Prefills left-padded prompts as one batch: (KV cache, last-position logits).
Forward = Callable[[Sequence[Sequence[int]]], tuple[Any, torch.Tensor]]


def length_groups(lengths: Sequence[int], max_padded_tokens: int) -> list[list[int]]:
    """Rows by increasing length, cut into groups of at most ``max_padded_tokens`` padded."""
    groups: list[list[int]] = []
    current: list[int] = []
    for row in sorted(range(len(lengths)), key=lambda r: lengths[r]):
        if current and (len(current) + 1) * lengths[row] > max_padded_tokens:
            groups.append(current)
            current = []
        current.append(row)
    groups.append(current)
    return groups


def prefill(
    prompts: list[tuple[int, ...]],
    forward: Forward,
    *,
    device: torch.device,
    max_padded_tokens: int | None,
) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """KV cache left-padded to the longest prompt, last logits, and the attention mask;
    ``max_padded_tokens=None`` prefills all prompts as one padded batch."""
    width = max(len(p) for p in prompts)
    attention = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        attention[row, width - len(prompt) :] = 1
    groups = (
        [list(range(len(prompts)))]
        if max_padded_tokens is None
        else length_groups([len(p) for p in prompts], max_padded_tokens)
    )
    if len(groups) == 1:
        cache, logits = forward(prompts)
        return cache, logits, attention
    keys: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    logits = torch.empty(0)
    for group in groups:
        cache, group_logits = forward([prompts[r] for r in group])
        group_width = max(len(prompts[r]) for r in group)
        if logits.numel() == 0:
            logits = group_logits.new_empty((len(prompts), group_logits.shape[-1]))
        logits[group] = group_logits
        for layer, entry in enumerate(cache):
            k, v = entry[0], entry[1]
            if layer == len(keys):
                keys.append(k.new_zeros((len(prompts), k.shape[1], width, k.shape[3])))
                values.append(v.new_zeros((len(prompts), v.shape[1], width, v.shape[3])))
            for j, row in enumerate(group):
                n = len(prompts[row])
                keys[layer][row, :, width - n :] = k[j, :, group_width - n :]
                values[layer][row, :, width - n :] = v[j, :, group_width - n :]
    merged = DynamicCache()
    for layer, (k, v) in enumerate(zip(keys, values, strict=True)):
        merged.update(k, v, layer)
    return merged, logits, attention
