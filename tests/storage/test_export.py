"""Export of (history, candidate, Q) triples: real paths, the per-tree cap, determinism."""

from __future__ import annotations

import pytest

from qlass.storage import NewNode, TreeStore
from qlass.testing import full_tree
from qlass.types import LabelledStep, TaskSpec

from .conftest import new_run


def _node(label: str, **kw: object) -> NewNode:
    return NewNode(
        observation=f"obs after {label}",
        action=f"do {label}",
        text=f"Thought: try {label}\nAction: do {label}",
        **kw,  # type: ignore[arg-type]
    )


async def _grow(store: TreeStore, task_id: int, width: int, depth: int, tag: str) -> None:
    """A full ``width``-ary tree of ``depth`` levels; leaves score by their index."""

    def node(level: int, path: str) -> NewNode:
        index = int(path.rpartition(".")[2])
        return _node(f"{tag}{path}", final_reward=(index + 1) / width if level == depth else None)

    await full_tree(
        store,
        task_id,
        node,
        width=width,
        depth=depth,
        observation=f"start {tag}",
        instruction=f"goal {tag}",
    )


async def test_histories_are_the_real_paths(store: TreeStore) -> None:
    run, (task,) = await new_run(store, "paths")
    label_set = await store.labels.create_set(run.id, gamma=0.9, normalize=False)
    root = await store.trees.add_root(task.id, "you are in a hall", instruction="find the coin")
    a, b = await store.trees.add_children(root.id, [_node("a"), _node("b")])
    a1, a2 = await store.trees.add_path(a.id, [_node("a1"), _node("a2", final_reward=1.0)])
    invalid = await store.trees.add_child(
        b.id,
        NewNode("invalid action", text="no action here", status="invalid", final_reward=0.0),
    )
    failed = await store.trees.add_child(
        b.id, NewNode("", action="do crash", text="Action: crash", status="failed", is_leaf=True)
    )
    b1 = await store.trees.add_child(b.id, _node("b1", final_reward=0.0))

    triples = await store.export_triples(label_set.id)
    by_text = {t.candidate_text: t for t in triples}
    # the invalid node (no action) and the failed one give no triple; the root neither
    assert set(by_text) == {_node(x).text for x in ("a", "b", "a1", "a2", "b1")}
    assert invalid.id and failed.id
    t_a2 = by_text[_node("a2").text]
    assert t_a2.q == 1.0 and t_a2.tree_id == task.id and t_a2.task_key == task.key
    assert t_a2.history.instruction == "find the coin"
    assert t_a2.history.initial_observation == "you are in a hall"
    assert [turn.action for turn in t_a2.history.turns] == ["do a", "do a1"]
    assert [turn.observation for turn in t_a2.history.turns] == ["obs after a", "obs after a1"]
    assert t_a2.history.turns[0].text == _node("a").text
    assert by_text[_node("a").text].history.turns == ()
    assert by_text[_node("a").text].q == pytest.approx(0.81)
    assert [t.action for t in by_text[_node("b1").text].history.turns] == ["do b"]
    assert a1.id < a2.id and b1.id


async def test_cap_per_tree_is_deterministic_and_normalised(store: TreeStore) -> None:
    run, tasks = await new_run(store, "cap", tasks=3)
    label_set = await store.labels.create_set(run.id, gamma=0.9, normalize=True)
    for task in tasks:
        await _grow(store, task.id, width=3, depth=3, tag=task.key[-1])  # 39 non-root nodes
    everything = await store.export_triples(label_set.id, max_per_tree=1000)
    assert len(everything) == 3 * 39
    for task in tasks:
        qs = [t.q for t in everything if t.tree_id == task.id]
        assert min(qs) == 0.0 and max(qs) == 1.0  # per-tree min-max

    capped = await store.export_triples(label_set.id, max_per_tree=10, seed=7)
    assert [sum(t.tree_id == task.id for t in capped) for task in tasks] == [10, 10, 10]
    again = await store.export_triples(label_set.id, max_per_tree=10, seed=7)
    assert capped == again  # same seed, same sample (histories included)
    other_seed = await store.export_triples(label_set.id, max_per_tree=10, seed=8)
    assert {t.candidate_text for t in other_seed} != {t.candidate_text for t in capped}
    # a capped triple carries the same (normalised) value as in the full export
    full = {(t.tree_id, t.candidate_text): t.q for t in everything}
    assert all(full[(t.tree_id, t.candidate_text)] == t.q for t in capped)
    # one tree's sample does not depend on which other trees are exported
    only_first = await store.export_triples(
        label_set.id, max_per_tree=10, seed=7, tasks=[tasks[0].key]
    )
    assert only_first == [t for t in capped if t.tree_id == tasks[0].id]


async def test_cap_keeps_sibling_groups_and_takes_branching_states_first(
    store: TreeStore,
) -> None:
    run, (task,) = await new_run(store, "siblings")
    label_set = await store.labels.create_set(run.id, gamma=0.9, normalize=False)
    root = await store.trees.add_root(task.id, "start", instruction="goal")
    # Three branching states (root, a, b: 2 candidates each) and six single-child chains.
    a, b = await store.trees.add_children(root.id, [_node("a"), _node("b")])
    for parent, tag in ((a, "a"), (b, "b")):
        kids = await store.trees.add_children(parent.id, [_node(f"{tag}1"), _node(f"{tag}2")])
        for kid in kids:
            chain = [_node(f"{kid.id}.{i}") for i in range(2)]
            chain.append(_node(f"{kid.id}.end", final_reward=float(kid.id % 2)))
            await store.trees.add_path(kid.id, chain)
    capped = await store.export_triples(label_set.id, max_per_tree=7, seed=3)
    assert len(capped) == 7
    groups: dict[object, int] = {}
    for triple in capped:
        groups[triple.history] = groups.get(triple.history, 0) + 1
    # All six candidates of the three branching states, then one chain step.
    assert sorted(groups.values()) == [1, 2, 2, 2]
    # A cap that splits a group still keeps part of it, and exactly the cap.
    assert len(await store.export_triples(label_set.id, max_per_tree=5, seed=3)) == 5


async def test_export_filters_by_split_and_skips_unlabelled(store: TreeStore) -> None:
    run = await store.runs.create("splits", config={}, seed=0)
    train, dev = await store.tasks.add_many(
        run.id,
        [
            TaskSpec("textworld_express", "coin", 0, "train"),
            TaskSpec("textworld_express", "coin", 1, "dev"),
        ],
    )
    label_set = await store.labels.create_set(run.id, gamma=0.9)
    for task in (train, dev):
        root = await store.trees.add_root(task.id, "start")
        await store.trees.add_children(root.id, [_node("w", final_reward=1.0), _node("open")])
    train_only = await store.export_triples(label_set.id, split="train")
    assert {t.task_key for t in train_only} == {train.key}
    assert [t.candidate_text for t in train_only] == [_node("w").text]  # "open" has no label
    assert await store.export_triples(label_set.id, tasks=["no/such/task"]) == []


async def test_triples_do_not_depend_on_the_order_nodes_were_stored(store: TreeStore) -> None:
    """Concurrent exploration commits the nodes of a tree in an order that changes from run
    to run; the QNet's triples (their sample and their order) must not."""
    labels = []
    for name, depth_first in (("breadth", False), ("depth", True)):
        run, (task,) = await new_run(store, name)
        labels.append(await store.labels.create_set(run.id, gamma=0.9, normalize=True))
        root = await store.trees.add_root(task.id, "start", instruction="goal")
        pending = [(root.id, "", 0)]
        while pending:  # a full binary tree of depth 3, stored in two different orders
            parent, name_so_far, level = pending.pop() if depth_first else pending.pop(0)
            for i in (1, 0) if depth_first else (0, 1):
                label = f"{name_so_far}.{i}"
                final = (len(label) % 3) / 2 if level == 2 else None
                child = await store.trees.add_child(
                    parent, _node(label, sample_index=i, final_reward=final)
                )
                if level < 2:
                    pending.append((child.id, label, level + 1))

    def content(triples: list[LabelledStep]) -> list[tuple[object, ...]]:
        return [(t.task_key, t.history, t.candidate_text, t.q) for t in triples]

    for cap in (1000, 5):
        first, second = [
            content(await store.export_triples(label_set.id, max_per_tree=cap, seed=3))
            for label_set in labels
        ]
        assert first == second and len(first) == min(cap, 14)
