"""Shared-prefix scoring: the history that a state's candidates share is encoded once.

The M candidates of one step differ only in their last turn, so their token sequences
start with the same tokens (task, history, the candidate turn's opening). Scoring them the
plain way runs that prefix M times. Here it runs once, with the backbone's KV cache kept,
and then only each candidate's own tokens (its *suffix*) run, attending to the cached
prefix. The result equals the plain score up to float rounding: every suffix token sees
the same tokens at the same positions as in the whole sequence.

:func:`plan_shared_prefixes` finds the groups: sequences of the same state (same history)
whose common token prefix is at least ``min_shared`` tokens. Sequences are compared after
left truncation to ``max_length``, so where truncation cuts into the history (candidates
of different lengths then start at different history tokens) the prefix is not shared and
the group is scored the plain way; such groups are counted.

:class:`PrefixForward` runs the groups, batched twice over:

1. *prefix passes*: the prefixes of several groups in one forward pass (right padded,
   bucketed by length like the plain scorer), the KV cache kept;
2. *suffix passes*: the suffixes of many candidates in one forward pass; each row gets a
   copy of its group's cached prefix (its padding masked out) and position ids that
   continue the prefix. A pass holds at most ``max_items`` candidates and
   ``cache_budget`` attended tokens (rows x (longest prefix + longest suffix)), which
   bounds the memory of the copied cache.

It works with any transformers backbone that takes a ``DynamicCache`` (``cache`` in
transformers 5, ``past_key_values`` in 4.x) and position ids; :meth:`PrefixForward.probe`
checks a backbone on a short random input against the plain forward, and the scorer falls
back to plain scoring where the check fails.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
import torch
from transformers import DynamicCache

from qlass.qnet.encoding import bucket_by_length, pad_right
from qlass.qnet.model import QNet

__all__ = ["PassCounts", "PrefixForward", "PrefixGroup", "plan_shared_prefixes"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class PrefixGroup:
    """Candidates whose sequences all start with ``prefix``.

    ``members[i]`` is the position of a candidate in the batch and ``suffixes[i]`` its
    tokens after the prefix (never empty: the value is read at a candidate's last token).
    """

    prefix: list[int]
    members: list[int]
    suffixes: list[list[int]]


def _common_prefix_length(sequences: Sequence[list[int]]) -> int:
    """Length of the longest common prefix; slice comparisons (C speed), binary search."""
    first = sequences[0]
    low, high = 0, min(len(s) for s in sequences)
    while low < high:
        middle = (low + high + 1) // 2
        head = first[:middle]
        if all(s[:middle] == head for s in sequences[1:]):
            low = middle
        else:
            high = middle - 1
    return low


def plan_shared_prefixes(
    sequences: Sequence[list[int]], states: Sequence[Hashable], *, min_shared: int = 16
) -> tuple[list[PrefixGroup], list[int], int]:
    """Split a batch into shared-prefix groups and sequences to score the plain way.

    ``states[i]`` identifies the state sequence ``i`` was rendered from (its history):
    only sequences of one state are grouped. Returns the groups, the positions to score
    plainly (single candidates and fallbacks) and the number of fallbacks: groups of two or
    more candidates whose common prefix is shorter than ``min_shared`` tokens (mostly where
    left truncation cut into the history).
    """
    by_state: dict[Hashable, list[int]] = {}
    for index, state in enumerate(states):
        by_state.setdefault(state, []).append(index)
    groups: list[PrefixGroup] = []
    plain: list[int] = []
    fallbacks = 0
    for members in by_state.values():
        if len(members) < 2:
            plain.extend(members)
            continue
        seqs = [sequences[i] for i in members]
        # Every candidate keeps at least one token of its own: its value is read there.
        shared = min(_common_prefix_length(seqs), min(len(s) for s in seqs) - 1)
        if shared < max(1, min_shared):
            fallbacks += 1
            plain.extend(members)
            continue
        groups.append(PrefixGroup(seqs[0][:shared], members, [s[shared:] for s in seqs]))
    return groups, sorted(plain), fallbacks


@dataclass
class PassCounts:
    """Work done by :meth:`PrefixForward.values`: passes and tokens (real and padded)."""

    passes: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    values: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Row:
    """One candidate in a suffix pass: its prefix row in the cache, position, suffix."""

    cache_row: int
    member: int
    suffix: list[int]


def _cache_argument(backbone: Any) -> str | None:
    """The name under which the backbone's forward takes a KV cache, if it takes one."""
    parameters = inspect.signature(backbone.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    return None


def _layer_tensors(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) of each layer of a filled ``DynamicCache`` (transformers 5 or 4.x)."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))


class PrefixForward:
    """Runs :class:`PrefixGroup` s through a QNet: each prefix once, then the suffixes."""

    def __init__(self, qnet: QNet, *, device: torch.device, pad_id: int) -> None:
        self.qnet = qnet
        self.device = device
        self.pad_id = pad_id
        self._cache_arg = _cache_argument(qnet.backbone)

    def _cache(self, cache: DynamicCache) -> dict[str, DynamicCache]:
        """The keyword argument that hands ``cache`` to the backbone."""
        assert self._cache_arg is not None, "probe() said this backbone takes no cache"
        return {self._cache_arg: cache}

    def probe(self, *, seed: int = 0) -> str | None:
        """Compare shared-prefix and plain scores on a short random input.

        Returns None when they agree, else the reason (raised error or the difference),
        so that a backbone this does not fit is scored the plain way.
        """
        if self._cache_arg is None:
            return f"{type(self.qnet.backbone).__name__} takes no KV cache argument"
        embeddings = self.qnet.backbone.get_input_embeddings()
        assert isinstance(embeddings, torch.nn.Embedding)
        vocab = embeddings.num_embeddings
        generator = torch.Generator().manual_seed(seed)
        prefix = torch.randint(0, vocab, (9,), generator=generator).tolist()
        suffixes = [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in (3, 1)]
        group = PrefixGroup(prefix, [0, 1], suffixes)
        try:
            with torch.inference_mode():
                shared = self.values([group], max_items=8, token_budget=64, cache_budget=64)
                plain = []
                for suffix in suffixes:
                    ids = torch.tensor([prefix + suffix], device=self.device)
                    value = self.qnet(ids).value
                    assert value is not None
                    plain.append(float(value[0]))
        except Exception as exc:  # any failure means: do not use this path
            return f"{type(exc).__name__}: {exc}"
        exact = next(self.qnet.backbone.parameters()).dtype == torch.float32
        tolerance = 1e-4 if exact else 5e-2
        for index, want in enumerate(plain):
            got = shared.values[index]
            if not math.isclose(got, want, rel_tol=tolerance, abs_tol=tolerance):
                return f"shared-prefix score {got:.6g} differs from the plain score {want:.6g}"
        return None

    def values(
        self,
        groups: Sequence[PrefixGroup],
        *,
        max_items: int,
        token_budget: int,
        cache_budget: int,
        max_padding: float = 0.25,
    ) -> PassCounts:
        """Scores of every member of ``groups`` (in ``PassCounts.values``, by position).

        Call under ``torch.inference_mode``. Prefix passes hold at most ``max_items``
        prefixes and ``token_budget`` padded tokens; suffix passes at most ``max_items``
        candidates and ``cache_budget`` attended tokens (see the module docstring).
        """
        counts = PassCounts()
        buckets = bucket_by_length(
            [len(g.prefix) for g in groups],
            max_items=max_items,
            token_budget=token_budget,
            max_padding=max_padding,
        )
        for bucket in buckets:
            self._run_bucket([groups[i] for i in bucket], max_items, cache_budget, counts)
        return counts

    def _run_bucket(
        self, groups: list[PrefixGroup], max_items: int, cache_budget: int, counts: PassCounts
    ) -> None:
        input_ids, mask = pad_right([g.prefix for g in groups], self.pad_id)
        cache = DynamicCache()
        # Right padding: causal attention keeps every real token from seeing the pads, so
        # no mask is needed; the pads' cache entries are masked out in the suffix passes.
        self.qnet.backbone(
            input_ids=input_ids.to(self.device), use_cache=True, **self._cache(cache)
        )
        counts.passes += 1
        counts.tokens += int(mask.sum())
        counts.padded_tokens += mask.numel()
        layers = _layer_tensors(cache)
        prefix_lengths = [len(g.prefix) for g in groups]
        rows = [
            _Row(row, member, suffix)
            for row, group in enumerate(groups)
            for member, suffix in zip(group.members, group.suffixes, strict=True)
        ]
        rows.sort(key=lambda r: len(r.suffix))
        width = input_ids.shape[1]
        chunk: list[_Row] = []
        for row in rows:
            # Rows are sorted by suffix length: the newest row is the longest.
            attended = (len(chunk) + 1) * (width + len(row.suffix))
            if chunk and (len(chunk) >= max_items or attended > cache_budget):
                self._run_suffixes(chunk, layers, prefix_lengths, width, counts)
                chunk = []
            chunk.append(row)
        if chunk:
            self._run_suffixes(chunk, layers, prefix_lengths, width, counts)

    def _run_suffixes(
        self,
        chunk: list[_Row],
        layers: list[tuple[torch.Tensor, torch.Tensor]],
        prefix_lengths: list[int],
        width: int,
        counts: PassCounts,
    ) -> None:
        suffix_ids, suffix_mask = pad_right([r.suffix for r in chunk], self.pad_id)
        rows, span = len(chunk), suffix_ids.shape[1]
        lengths = torch.tensor([prefix_lengths[r.cache_row] for r in chunk])
        suffix_lengths = torch.tensor([len(r.suffix) for r in chunk])
        # Attend to the row's own prefix (not its padding up to `width`), then causally to
        # its suffix; positions continue the prefix (pads repeat the last real position,
        # so they never exceed the backbone's position limit).
        prefix_mask = (torch.arange(width)[None, :] < lengths[:, None]).to(torch.long)
        attention_mask = torch.cat([prefix_mask, suffix_mask], dim=1)
        steps = torch.minimum(torch.arange(span)[None, :], (suffix_lengths - 1)[:, None])
        position_ids = lengths[:, None] + steps
        index = torch.tensor([r.cache_row for r in chunk], device=self.device)
        cache = DynamicCache()
        for layer, (keys, values) in enumerate(layers):
            cache.update(keys.index_select(0, index), values.index_select(0, index), layer)
        hidden = self.qnet.backbone(
            input_ids=suffix_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            position_ids=position_ids.to(self.device),
            use_cache=True,
            **self._cache(cache),
        ).last_hidden_state
        last = hidden[
            torch.arange(rows, device=hidden.device), (suffix_lengths - 1).to(hidden.device)
        ]
        scores = self.qnet.head(last.float()).float().tolist()
        for row, score in zip(chunk, scores, strict=True):
            counts.values[row.member] = float(score)
        counts.passes += 1
        counts.tokens += int(suffix_mask.sum())
        counts.padded_tokens += suffix_mask.numel()
