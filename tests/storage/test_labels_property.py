"""Property: incremental Q labels equal a full recompute, whatever the tree and the order.

Hypothesis draws a random tree, which leaves get an outcome reward (and whether they get it
on insert or later through ``finish_leaf``), a random insertion order (parents first),
whether consecutive inserts are batched (siblings, paths), and one to three label sets
(random gamma and intermediate-reward mode) created at random points of the sequence. The
stored labels must equal an independent recursive computation, normalised values must equal
the min-max of those, and the store's own full recompute must find nothing to change.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qlass.storage import NewNode, TreeStore

from .conftest import new_run

_names = itertools.count()


@dataclass(frozen=True)
class Plan:
    parents: tuple[int | None, ...]  # parents[0] is None: node 0 is the root
    rewards: tuple[float, ...]
    finals: dict[int, float]  # leaf -> outcome; leaves absent here never finish
    order: tuple[int, ...]  # insertion order of nodes 1..n-1, parents first
    late: frozenset[int]  # finished leaves inserted unfinished and finished later
    finish_after: dict[int, int]  # late leaf -> finish it after this many inserts
    batch: bool
    sets: tuple[tuple[float, str, int], ...]  # (gamma, mode, create after this many ops)

    def children(self, node: int, present: set[int]) -> list[int]:
        return [c for c, p in enumerate(self.parents) if p == node and c in present]


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    n = draw(st.integers(2, 28))
    parents: list[int | None] = [None]
    for i in range(1, n):
        # bias towards recent nodes so trees get deep as well as wide
        parents.append(draw(st.integers(max(0, i - 6), i - 1)))
    has_child = {p for p in parents if p is not None}
    # the root is the state after reset: no action, no step reward
    rewards = (0.0, *(draw(st.sampled_from([0.0, 0.0, 0.1, 0.5, -0.2])) for _ in range(1, n)))
    outcome = st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(0, 1, allow_nan=False))
    finals = {
        i: draw(outcome)
        for i in range(1, n)
        if i not in has_child and draw(st.booleans() | st.just(True))
    }
    order: list[int] = []
    available = [c for c in range(1, n) if parents[c] == 0]
    while available:
        pick = available.pop(draw(st.integers(0, len(available) - 1)))
        order.append(pick)
        available.extend(c for c in range(1, n) if parents[c] == pick)
    late = frozenset(leaf for leaf in finals if draw(st.booleans()))
    finish_after = {
        leaf: draw(st.integers(order.index(leaf) + 1, len(order))) for leaf in sorted(late)
    }
    gamma = st.one_of(st.sampled_from([0.0, 0.5, 0.9, 1.0]), st.floats(0, 1, allow_nan=False))
    sets = tuple(
        (draw(gamma), draw(st.sampled_from(["zero", "env"])), draw(st.integers(0, len(order))))
        for _ in range(draw(st.integers(1, 3)))
    )
    return Plan(
        tuple(parents),
        rewards,
        finals,
        tuple(order),
        late,
        finish_after,
        draw(st.booleans()),
        sets,
    )


def reference(
    plan: Plan, present: set[int], finished: dict[int, float], gamma: float, mode: str
) -> dict[int, float]:
    """Q values by plain recursion over the nodes present (independent of the store)."""
    values: dict[int, float] = {}

    def q(node: int) -> float | None:
        if node in finished:
            values[node] = finished[node]
            return finished[node]
        kids = [v for c in plan.children(node, present) if (v := q(c)) is not None]
        if not kids:
            return None
        reward = plan.rewards[node] if mode == "env" else 0.0
        values[node] = reward + gamma * max(kids)
        return values[node]

    q(0)
    return values


def minmax(values: dict[int, float]) -> dict[int, float]:
    body = [v for node, v in values.items() if node != 0]
    if not body or max(body) == min(body):
        return values
    low, high = min(body), max(body)
    return {node: (v - low) / (high - low) for node, v in values.items()}


def _node(plan: Plan, i: int, *, finished: bool) -> NewNode:
    return NewNode(
        observation=f"obs {i}",
        action=f"act {i}",
        text=f"Thought: t{i}\nAction: act {i}",
        reward=plan.rewards[i],
        final_reward=plan.finals[i] if finished else None,
    )


async def _insert(store: TreeStore, plan: Plan, ids: dict[int, int], group: Sequence[int]) -> None:
    """Insert a group of plan nodes: siblings in one call, a chain in one call, or one."""
    finished_now = {i for i in group if i in plan.finals and i not in plan.late}
    nodes = [_node(plan, i, finished=i in finished_now) for i in group]
    first_parent = plan.parents[group[0]]
    assert first_parent is not None
    parent = ids[first_parent]
    if len(group) == 1:
        records = [await store.trees.add_child(parent, nodes[0])]
    elif all(plan.parents[i] == plan.parents[group[0]] for i in group):
        records = await store.trees.add_children(parent, nodes)
    else:
        records = await store.trees.add_path(parent, nodes)
    for i, rec in zip(group, records, strict=True):
        ids[i] = rec.id


def _groups(plan: Plan) -> list[list[int]]:
    """Consecutive inserts merged into sibling groups or chains when ``plan.batch``."""
    if not plan.batch:
        return [[i] for i in plan.order]
    groups: list[list[int]] = []
    for i in plan.order:
        if groups:
            last = groups[-1]
            siblings = all(plan.parents[j] == plan.parents[i] for j in last)
            chain = plan.parents[i] == last[-1] and all(
                plan.parents[b] == a for a, b in itertools.pairwise(last)
            )
            if siblings or chain:
                last.append(i)
                continue
        groups.append([i])
    return groups


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=plans())
async def test_incremental_labels_equal_full_recompute(store: TreeStore, plan: Plan) -> None:
    run, (task,) = await new_run(store, f"prop-{next(_names)}")
    root = await store.trees.add_root(task.id, "obs 0")
    ids: dict[int, int] = {0: root.id}
    finished: dict[int, float] = {}
    label_sets: list[tuple[int, float, str]] = []
    pending_sets = sorted(plan.sets, key=lambda s: s[2])
    inserted = 0

    async def catch_up() -> None:
        while pending_sets and pending_sets[0][2] <= inserted:
            gamma, mode, _ = pending_sets.pop(0)
            made = await store.labels.create_set(run.id, gamma=gamma, intermediate_reward=mode)  # type: ignore[arg-type]
            label_sets.append((made.id, gamma, mode))
        for leaf, after in plan.finish_after.items():
            if after <= inserted and leaf not in finished:
                await store.trees.finish_leaf(ids[leaf], plan.finals[leaf])
                finished[leaf] = plan.finals[leaf]

    await catch_up()
    for group in _groups(plan):
        await _insert(store, plan, ids, group)
        inserted += len(group)
        finished.update(
            {i: plan.finals[i] for i in group if i in plan.finals and i not in plan.late}
        )
        await catch_up()
    assert inserted == len(plan.order)

    present = set(range(len(plan.parents)))
    for set_id, gamma, mode in label_sets:
        expected = reference(plan, present, finished, gamma, mode)
        stored = await store.labels.values(set_id, task.id, normalized=False)
        assert stored == {ids[node]: q for node, q in expected.items()}
        normalised = await store.labels.values(set_id, task.id, normalized=True)
        assert normalised == pytest.approx({ids[n]: q for n, q in minmax(expected).items()})
        assert await store.labels.recompute(set_id) == 0
