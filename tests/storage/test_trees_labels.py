"""Trees and Q labels on small hand-checked examples (the property test covers random ones)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from qlass.errors import ConfigError, StoreError, UnknownNameError
from qlass.storage import NewNode, TreeStore
from qlass.storage.bellman import minmax_normalize
from qlass.storage.models import QLabel
from qlass.types import TaskSpec

from .conftest import RunAndTask, new_run


def _step(name: str, **kw: object) -> NewNode:
    return NewNode(
        observation=f"saw {name}", action=name, text=f"Thought: ...\nAction: {name}", **kw
    )  # type: ignore[arg-type]


async def _two_branch_tree(store: TreeStore, task_id: int) -> dict[str, int]:
    """root -> a -> a1 (win, 1.0) ; root -> b -> b1 -> b2 (fail 0.0) ; b -> c (0.5)."""
    root = await store.trees.add_root(task_id, "start", instruction="find the coin")
    a, b = await store.trees.add_children(root.id, [_step("a"), _step("b", reward=0.5)])
    (a1,) = await store.trees.add_path(a.id, [_step("a1", done=True, final_reward=1.0)])
    b1, b2 = await store.trees.add_path(b.id, [_step("b1"), _step("b2", final_reward=0.0)])
    c = await store.trees.add_child(b.id, _step("c", final_reward=0.5))
    return {"root": root.id, "a": a.id, "b": b.id, "a1": a1.id, "b1": b1.id, "b2": b2.id, "c": c.id}


async def test_bellman_values_by_hand(store: TreeStore, run_task: RunAndTask) -> None:
    zero = await store.labels.create_set(run_task.run.id, gamma=0.9, normalize=False)
    env = await store.labels.create_set(
        run_task.run.id, gamma=0.9, normalize=False, intermediate_reward="env"
    )
    ids = await _two_branch_tree(store, run_task.task.id)
    q = await store.labels.values(zero.id, run_task.task.id)
    assert q[ids["a1"]] == 1.0
    assert q[ids["a"]] == pytest.approx(0.9)
    assert q[ids["b2"]] == 0.0 and q[ids["b1"]] == 0.0
    assert q[ids["c"]] == 0.5
    assert q[ids["b"]] == pytest.approx(0.45)  # max(b1=0, c=0.5) * 0.9
    assert q[ids["root"]] == pytest.approx(0.81)
    q_env = await store.labels.values(env.id, run_task.task.id)
    assert q_env[ids["b"]] == pytest.approx(0.5 + 0.45)  # b's own step reward counts
    assert q_env[ids["root"]] == pytest.approx(0.9 * 0.95)  # now b is the better branch


async def test_new_gamma_is_a_new_set_and_old_sets_stay(
    store: TreeStore, run_task: RunAndTask
) -> None:
    first = await store.labels.create_set(run_task.run.id, gamma=0.9)
    ids = await _two_branch_tree(store, run_task.task.id)
    second = await store.labels.create_set(run_task.run.id, gamma=0.5)  # computed fully now
    assert second.id != first.id
    assert await store.labels.create_set(run_task.run.id, gamma=0.9) == first  # get, not new
    assert [s.id for s in await store.labels.sets(run_task.run.id)] == [first.id, second.id]
    raw_first = await store.labels.values(first.id, run_task.task.id, normalized=False)
    raw_second = await store.labels.values(second.id, run_task.task.id, normalized=False)
    assert raw_first[ids["a"]] == pytest.approx(0.9)
    assert raw_second[ids["a"]] == pytest.approx(0.5)
    # both are maintained from now on
    d = await store.trees.add_child(ids["root"], _step("d", final_reward=1.0))
    assert (await store.labels.values(first.id, run_task.task.id))[d.id] == 1.0
    assert (await store.labels.values(second.id, run_task.task.id, normalized=False))[
        ids["root"]
    ] == pytest.approx(0.5)


async def test_normalisation_is_per_tree_min_max(store: TreeStore, run_task: RunAndTask) -> None:
    label_set = await store.labels.create_set(run_task.run.id, gamma=0.9, normalize=True)
    ids = await _two_branch_tree(store, run_task.task.id)
    norm = await store.labels.values(label_set.id, run_task.task.id)
    assert norm[ids["a1"]] == 1.0  # the max
    assert norm[ids["b2"]] == 0.0  # the min
    assert norm[ids["c"]] == pytest.approx(0.5)
    assert norm[ids["root"]] == pytest.approx(0.81)  # root: same transform, not in min/max
    # another tree of the same run is scaled on its own
    spec = TaskSpec("textworld_express", "coin", 99, "train")
    other = await store.tasks.add(run_task.run.id, spec)
    root = await store.trees.add_root(other.id, "s")
    p, q = await store.trees.add_children(
        root.id, [_step("p", final_reward=0.2), _step("q", final_reward=0.4)]
    )
    other_norm = await store.labels.values(label_set.id, other.id)
    assert other_norm == pytest.approx({p.id: 0.0, q.id: 1.0, root.id: (0.36 - 0.2) / 0.2})


def test_minmax_keeps_raw_values_when_there_is_no_spread() -> None:
    assert minmax_normalize({1: 0.5, 2: 0.0, 3: 0.0}, roots=[1]) == {1: 0.5, 2: 0.0, 3: 0.0}
    assert minmax_normalize({1: 0.0, 2: 0.2, 3: 0.6}, roots=[1]) == pytest.approx(
        {1: -0.5, 2: 0.0, 3: 1.0}
    )
    assert minmax_normalize({}, roots=[]) == {}


async def test_finish_leaf_relabels_only_changed_ancestors(
    store: TreeStore, run_task: RunAndTask
) -> None:
    label_set = await store.labels.create_set(run_task.run.id, gamma=0.5, normalize=False)
    root = await store.trees.add_root(run_task.task.id, "start")
    x, y = await store.trees.add_children(root.id, [_step("x"), _step("y")])
    x1 = await store.trees.add_child(x.id, _step("x1", final_reward=1.0))
    y1 = await store.trees.add_child(y.id, _step("y1"))  # truncated later
    values = await store.labels.values(label_set.id, run_task.task.id)
    assert y.id not in values and y1.id not in values  # no labelled leaf below y yet
    assert values[root.id] == 0.25
    finished = await store.trees.finish_leaf(y1.id, 0.2)
    assert finished.final_reward == 0.2 and finished.is_leaf
    values = await store.labels.values(label_set.id, run_task.task.id)
    assert values[y1.id] == 0.2 and values[y.id] == 0.1
    assert values[root.id] == 0.25  # unchanged: x still the better branch
    assert values[x1.id] == 1.0
    with pytest.raises(StoreError, match="leaf"):
        await store.trees.add_child(x1.id, _step("after the end"))


async def test_incremental_update_touches_only_the_changed_chain(
    store: TreeStore, run_task: RunAndTask
) -> None:
    """A worse leaf deep in a branch writes its own chain up to the first unchanged value."""
    label_set = await store.labels.create_set(run_task.run.id, gamma=0.9)
    root = await store.trees.add_root(run_task.task.id, "start")
    chain = await store.trees.add_path(
        root.id, [_step(f"s{i}") for i in range(5)] + [_step("win", final_reward=1.0)]
    )
    async with store._db.read() as session:
        before = await session.scalar(select(func.count()).select_from(QLabel))
    assert before == 7
    # a losing sibling at depth 3: it gets a label, its parent keeps the max, nothing above moves
    await store.trees.add_child(chain[2].id, _step("lose", final_reward=0.0))
    values = await store.labels.values(label_set.id, run_task.task.id, normalized=False)
    assert values[chain[2].id] == pytest.approx(0.9**3)
    assert await store.labels.recompute(label_set.id) == 0


async def test_tree_reads_are_frozen_records(store: TreeStore, run_task: RunAndTask) -> None:
    ids = await _two_branch_tree(store, run_task.task.id)
    tree = await store.trees.load(run_task.task.id)
    assert tree.root is not None and tree.root.id == ids["root"] and tree.root.depth == 0
    assert tree.task.instruction == "find the coin"
    assert [n.action for n in tree.children(ids["b"])] == ["b1", "c"]
    assert [n.action for n in await store.trees.children(ids["b"])] == ["b1", "c"]
    assert [n.depth for n in tree.path(ids["b2"])] == [0, 1, 2, 3]
    history = tree.history(ids["b2"])
    assert history.initial_observation == "start"
    assert history.actions == ("b", "b1", "b2")
    node = await store.trees.get(ids["b2"])
    assert node.final_reward == 0.0 and node.is_leaf and node.created_at.tzinfo is not None
    with pytest.raises(AttributeError):
        node.depth = 9  # type: ignore[misc]


async def test_tree_errors(store: TreeStore, run_task: RunAndTask) -> None:
    root = await store.trees.add_root(run_task.task.id, "start")
    with pytest.raises(StoreError, match="already has a root"):
        await store.trees.add_root(run_task.task.id, "again")
    with pytest.raises(UnknownNameError):
        await store.trees.add_child(10_000, _step("x"))
    with pytest.raises(UnknownNameError):
        await store.trees.add_root(10_000, "x")
    with pytest.raises(StoreError, match="not the last"):
        await store.trees.add_path(root.id, [_step("x", final_reward=1.0), _step("y")])
    assert len((await store.trees.load(run_task.task.id)).nodes) == 1  # nothing half-written


async def test_labels_of_one_run_do_not_touch_another(store: TreeStore) -> None:
    run_a, _ = await new_run(store, "a")
    run_b, (task_b,) = await new_run(store, "b")
    set_a = await store.labels.create_set(run_a.id, gamma=0.9)
    root_b = await store.trees.add_root(task_b.id, "start")
    await store.trees.add_child(root_b.id, _step("win", final_reward=1.0))
    assert await store.labels.values(set_a.id, task_b.id) == {}
    assert await store.labels.sets(run_b.id) == []
    with pytest.raises(UnknownNameError, match="not a task of run"):
        await store.labels.recompute(set_a.id, task_id=task_b.id)


async def test_value_signal_kinds_by_hand(store: TreeStore, run_task: RunAndTask) -> None:
    """Monte-Carlo mean of the leaves below and first-sampled outcome on the two-branch
    tree, kept up to date as leaves arrive and equal to a set computed afterwards."""
    run_id, task_id = run_task.run.id, run_task.task.id
    early = {
        kind: await store.labels.create_set(run_id, gamma=0.9, normalize=False, kind=kind)
        for kind in ("mc_mean", "outcome")
    }
    ids = await _two_branch_tree(store, task_id)
    mc = await store.labels.values(early["mc_mean"].id, task_id)
    assert mc[ids["a"]] == 1.0 and mc[ids["b1"]] == 0.0 and mc[ids["c"]] == 0.5
    assert mc[ids["b"]] == pytest.approx(0.25)  # leaves b2=0, c=0.5
    assert mc[ids["root"]] == pytest.approx(0.5)  # leaves 1, 0, 0.5 (not the children's mean)
    outcome = await store.labels.values(early["outcome"].id, task_id)
    assert outcome[ids["b"]] == 0.0  # b1 was sampled before c: its trajectory ends at b2=0
    assert outcome[ids["root"]] == 1.0  # a first: a -> a1 = 1
    assert outcome[ids["c"]] == 0.5
    # New leaves: the sets follow; b's first-sampled trajectory is still b1's.
    await store.trees.add_child(ids["root"], _step("d", final_reward=1.0))
    await store.trees.add_child(ids["b"], _step("e", final_reward=1.0))
    mc = await store.labels.values(early["mc_mean"].id, task_id)
    assert mc[ids["b"]] == pytest.approx(0.5)  # (0 + 0.5 + 1) / 3
    assert mc[ids["root"]] == pytest.approx(3.5 / 5)
    outcome = await store.labels.values(early["outcome"].id, task_id)
    assert outcome[ids["b"]] == 0.0 and outcome[ids["root"]] == 1.0
    for kind, made in early.items():
        late = await store.labels.create_set(run_id, gamma=0.5, normalize=False, kind=kind)
        assert late.kind == kind and late.id != made.id
        assert await store.labels.values(late.id, task_id) == pytest.approx(
            await store.labels.values(made.id, task_id)
        )  # gamma plays no part in these kinds
    bellman = await store.labels.create_set(run_id, gamma=0.9, normalize=False)
    assert bellman.kind == "bellman" and bellman.id not in {s.id for s in early.values()}
    with pytest.raises(ConfigError, match=r"labels\.kind"):
        await store.labels.create_set(run_id, kind="median")  # type: ignore[arg-type]
