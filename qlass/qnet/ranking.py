"""The optional sibling ranking objective of QNet training (``qnet.rank_weight`` > 0).

The paper trains the QNet with MSE only; a model can then predict the state's value for
every candidate and still reach a low MSE, which leaves Q-guided search's arg-max to chance.
This adds a hinge loss over the ordered pairs of candidates of one state, and a training
order that keeps those candidates in one batch so the pairs are seen.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from transformers import Trainer

from qlass.types import LabelledStep

__all__ = ["RankingTrainer", "SiblingGroupSampler", "sibling_groups", "sibling_margin_loss"]


def sibling_groups(steps: Sequence[LabelledStep]) -> list[int]:
    """A group number per step: steps of one state (same tree, same history) share one."""
    numbers: dict[tuple[int, Any], int] = {}
    return [numbers.setdefault((s.tree_id, s.history), len(numbers)) for s in steps]


def sibling_margin_loss(
    values: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor
) -> torch.Tensor:
    """Mean hinge loss over the ordered sibling pairs of a batch.

    For candidates ``i``, ``j`` of one state with ``q_i > q_j``, the loss is
    ``max(0, (q_i - q_j) - (v_i - v_j))``: the predicted gap must be at least the label gap,
    which is what the arg-max of Q-guided search needs (MSE alone lets a model predict the
    state's value for every candidate). Zero when the batch holds no such pair.
    """
    same = groups[:, None] == groups[None, :]
    gap = labels[:, None] - labels[None, :]
    pairs = same & (gap > 1e-6)
    if not bool(pairs.any()):
        return values.sum() * 0.0
    shortfall = gap - (values[:, None] - values[None, :])
    return torch.relu(shortfall)[pairs].mean()


class SiblingGroupSampler(torch.utils.data.Sampler[int]):
    """Training order with the candidates of one state next to each other: groups in a
    seeded random order (a new one each epoch), so most sibling pairs share a batch."""

    def __init__(self, groups: Sequence[int], seed: int) -> None:
        members: dict[int, list[int]] = defaultdict(list)
        for index, group in enumerate(groups):
            members[group].append(index)
        self._members = list(members.values())
        self._seed = seed
        self._epoch = 0
        self._length = len(groups)

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[int]:
        order = list(range(len(self._members)))
        random.Random(self._seed * 1_000_003 + self._epoch).shuffle(order)
        self._epoch += 1
        for group in order:
            yield from self._members[group]


class RankingTrainer(Trainer):
    """The Trainer with MSE + ``rank_weight`` x :func:`sibling_margin_loss`."""

    def __init__(self, *args: Any, rank_weight: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rank_weight = rank_weight

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        groups = getattr(dataset, "groups", None)
        if groups is None:
            return super()._get_train_sampler(train_dataset)
        return SiblingGroupSampler(groups, self.args.seed)

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        groups = inputs.pop("groups", None)
        outputs = model(**inputs)
        loss = outputs.loss
        if groups is not None and loss is not None:
            ranking = sibling_margin_loss(
                outputs.value,
                inputs["labels"].to(outputs.value.device),
                groups.to(outputs.value.device),
            )
            loss = loss + self.rank_weight * ranking
        return (loss, outputs) if return_outputs else loss
