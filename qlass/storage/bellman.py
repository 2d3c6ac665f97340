"""Bellman Q values on an exploration tree (pure functions; the store keeps them up to date).

``Q(leaf) = final_reward``; ``Q(node) = r + gamma * max over labelled children``, where
``r = 0`` in the paper's ``"zero"`` intermediate-reward mode and the node's own step reward
in ``"env"`` mode. A node with a final reward is a leaf whatever its children. A node
without a final reward and without a labelled child has no value yet.

Normalisation (the paper's per-tree min-max) maps the values of one tree's labelled
non-root nodes to [0, 1]: ``(q - min) / (max - min)``. When ``max == min`` (one labelled
node, or all equal, as in a tree whose leaves all failed) there is no scale to recover, so
the raw values are kept. The root takes no part in min/max (it is no (state, action) pair
to train on) but is transformed with the same min and max.

Two other kinds of value signal are computed from the same trees, for the value-signal
baselines (:func:`tree_values` with ``kind``); both ignore ``gamma`` and the intermediate
reward, and a node with a final reward is a leaf for them too:

- ``"mc_mean"`` (Math-Shepherd's soft estimate, PRM by rollouts): the mean final reward
  of the finished leaves in the node's subtree (each leaf counted once).
- ``"outcome"`` (ORM style): the final reward of one trajectory through the node,
  propagated to each of its steps. The trajectory is the node's *first-sampled* one:
  from the node, always go to the child created first (lowest node id) among those with
  a finished leaf below, down to a leaf. This is the trajectory a single rollout from the
  node would have given, so it is what an outcome-reward labeller sees; a node with one
  leaf below gets that leaf's reward whatever the rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from qlass.storage.records import IntermediateReward

__all__ = ["LABEL_KINDS", "LabelNode", "minmax_normalize", "node_value", "tree_values"]

LABEL_KINDS = ("bellman", "mc_mean", "outcome")
"""The value signals a label set can hold (see the module's docstring)."""


@dataclass(frozen=True, slots=True)
class LabelNode:
    """What labelling needs to know about a node."""

    id: int
    parent_id: int | None
    depth: int
    reward: float
    final_reward: float | None


def node_value(
    node: LabelNode,
    child_values: Iterable[float | None],
    gamma: float,
    intermediate_reward: IntermediateReward | str,
) -> float | None:
    """The node's Q value from its children's values (``None``: not labelled)."""
    if node.final_reward is not None:
        return node.final_reward
    labelled = [value for value in child_values if value is not None]
    if not labelled:
        return None
    reward = node.reward if intermediate_reward == "env" else 0.0
    return reward + gamma * max(labelled)


def tree_values(
    nodes: Iterable[LabelNode],
    gamma: float,
    intermediate_reward: IntermediateReward | str,
    kind: str = "bellman",
) -> dict[int, float]:
    """Values of all labelled nodes of ``kind``, computed from scratch (several trees may
    be mixed)."""
    ordered = sorted(nodes, key=lambda node: -node.depth)
    children: dict[int, list[int]] = {}
    for node in ordered:
        if node.parent_id is not None:
            children.setdefault(node.parent_id, []).append(node.id)
    if kind == "mc_mean":
        return _mc_mean(ordered, children)
    if kind == "outcome":
        return _outcome(ordered, children)
    if kind != "bellman":
        raise ValueError(f"unknown label kind {kind!r}; kinds are {', '.join(LABEL_KINDS)}")
    values: dict[int, float] = {}
    for node in ordered:  # deepest first: children are done before their parent
        kids = children.get(node.id, ())
        value = node_value(node, (values.get(kid) for kid in kids), gamma, intermediate_reward)
        if value is not None:
            values[node.id] = value
    return values


def _mc_mean(ordered: Iterable[LabelNode], children: Mapping[int, list[int]]) -> dict[int, float]:
    totals: dict[int, tuple[float, int]] = {}  # node -> (sum of leaf rewards, leaves)
    for node in ordered:  # deepest first
        if node.final_reward is not None:
            totals[node.id] = (node.final_reward, 1)
            continue
        below = [totals[kid] for kid in children.get(node.id, ()) if kid in totals]
        if below:
            totals[node.id] = (sum(s for s, _ in below), sum(n for _, n in below))
    return {node: total / count for node, (total, count) in totals.items()}


def _outcome(ordered: Iterable[LabelNode], children: Mapping[int, list[int]]) -> dict[int, float]:
    values: dict[int, float] = {}
    for node in ordered:  # deepest first
        if node.final_reward is not None:
            values[node.id] = node.final_reward
            continue
        labelled = [kid for kid in children.get(node.id, ()) if kid in values]
        if labelled:
            values[node.id] = values[min(labelled)]  # the first-sampled child
    return values


def minmax_normalize(values: Mapping[int, float], roots: Iterable[int] = ()) -> dict[int, float]:
    """Min-max normalise one tree's values; ``roots`` are excluded from min and max."""
    excluded = set(roots)
    scale_over = [value for node, value in values.items() if node not in excluded]
    if not scale_over:
        return dict(values)
    low, high = min(scale_over), max(scale_over)
    if high == low:
        return dict(values)
    span = high - low
    return {node: (value - low) / span for node, value in values.items()}
