"""Group commit: concurrent ``add_child_if_absent`` calls share transactions and each caller
still gets exactly what one transaction of its own would have given it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from qlass.errors import StoreError, UnknownNameError
from qlass.storage import NewNode, Tree, TreeStore
from qlass.storage._group_commit import GroupCommit

from .conftest import new_run


class _Recorder:
    """A commit function that records its batches; item "bad" is that item's own error,
    item "boom" makes the whole batch fail (as a database error would)."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    async def __call__(self, items: Sequence[str]) -> list[str | Exception]:
        self.batches.append(list(items))
        await asyncio.sleep(0)  # a transaction takes a while: others queue meanwhile
        if "boom" in items:
            raise RuntimeError("the database failed")
        return [ValueError(item) if item == "bad" else item.upper() for item in items]


async def test_writers_that_arrive_together_share_one_commit() -> None:
    commit = _Recorder()
    group: GroupCommit[str, str] = GroupCommit(commit)
    results = await asyncio.gather(*(group.submit(f"n{i}") for i in range(10)))
    assert results == [f"N{i}" for i in range(10)]
    assert commit.batches == [[f"n{i}" for i in range(10)]]  # in submission order


async def test_a_lone_writer_gets_a_commit_per_item_and_max_batch_is_kept() -> None:
    commit = _Recorder()
    group: GroupCommit[str, str] = GroupCommit(commit, max_batch=4)
    assert await group.submit("a") == "A"
    assert await group.submit("b") == "B"
    await asyncio.gather(*(group.submit(f"n{i}") for i in range(10)))
    assert [len(batch) for batch in commit.batches] == [1, 1, 4, 4, 2]
    with pytest.raises(ValueError, match="at least 1"):
        group.max_batch = 0


async def test_an_item_error_reaches_only_its_writer() -> None:
    group: GroupCommit[str, str] = GroupCommit(_Recorder())
    results = await asyncio.gather(
        group.submit("a"), group.submit("bad"), group.submit("c"), return_exceptions=True
    )
    assert results[0] == "A" and results[2] == "C"
    assert isinstance(results[1], ValueError)


async def test_a_failed_batch_is_retried_item_by_item() -> None:
    commit = _Recorder()
    group: GroupCommit[str, str] = GroupCommit(commit)
    results = await asyncio.gather(
        group.submit("a"), group.submit("boom"), group.submit("c"), return_exceptions=True
    )
    assert results[0] == "A" and results[2] == "C"
    assert isinstance(results[1], RuntimeError)
    assert commit.batches == [["a", "boom", "c"], ["a"], ["boom"], ["c"]]


async def test_a_writer_cancelled_before_its_commit_gives_up_its_item() -> None:
    commit = _Recorder()
    group: GroupCommit[str, str] = GroupCommit(commit)
    first = asyncio.ensure_future(group.submit("a"))
    gone = asyncio.ensure_future(group.submit("gone"))
    await asyncio.sleep(0)  # both are queued; the drain has not run yet
    gone.cancel()
    assert await first == "A"
    await group.wait_idle()
    assert commit.batches == [["a"]]


def _node(action: str, sample: int, final: float | None = None) -> NewNode:
    return NewNode(
        observation=f"after {action}",
        action=action,
        text=f"Action: {action}",
        sample_index=sample,
        final_reward=final,
        done=final is not None,
    )


@contextmanager
def _counting_commits() -> Iterator[list[int]]:
    count = [0]

    def on_commit(_connection: object) -> None:
        count[0] += 1

    event.listen(Engine, "commit", on_commit)
    try:
        yield count
    finally:
        event.remove(Engine, "commit", on_commit)


async def _grow(store: TreeStore, root_id: int, variation: int) -> None:
    """A small binary tree of depth 3 grown concurrently, leaves' rewards from the path."""

    async def below(parent_id: int, depth: int, path: tuple[int, ...]) -> None:
        async def child(sample: int) -> None:
            leaf = depth == 3
            final = ((sum(path) + sample + variation) % 3) / 2 if leaf else None
            made, created = await store.trees.add_child_if_absent(
                parent_id, _node(f"a{path}{sample}", sample, final)
            )
            assert created
            if not leaf:
                await below(made.id, depth + 1, (*path, sample))

        await asyncio.gather(child(0), child(1))

    await below(root_id, 1, ())


def _shape(tree: Tree) -> set[tuple[tuple[int, ...], str | None, float | None]]:
    return {
        (tuple(n.sample_index for n in tree.path(node.id)[1:]), node.action, node.final_reward)
        for node in tree.nodes
    }


async def test_grouped_trees_and_labels_equal_one_transaction_per_node(store: TreeStore) -> None:
    trees: dict[str, list[Tree]] = {}
    labels: dict[str, list[dict[tuple[int, ...], float]]] = {}
    commits: dict[str, int] = {}
    for name, max_batch in (("alone", 1), ("grouped", 64)):
        store.trees.max_batch = max_batch
        run, tasks = await new_run(store, name, tasks=3)
        label_set = await store.labels.create_set(run.id, gamma=0.9, normalize=False)
        roots = [await store.trees.add_root(task.id, "start") for task in tasks]
        with _counting_commits() as count:
            await asyncio.gather(*(_grow(store, r.id, t) for t, r in enumerate(roots)))
        commits[name] = count[0]
        trees[name] = [await store.trees.load(task.id) for task in tasks]
        labels[name] = []
        for task, tree in zip(tasks, trees[name], strict=True):
            values = await store.labels.values(label_set.id, task.id)
            by_path = {
                tuple(n.sample_index for n in tree.path(node_id)[1:]): q
                for node_id, q in values.items()
            }
            labels[name].append(by_path)
    assert [_shape(t) for t in trees["grouped"]] == [_shape(t) for t in trees["alone"]]
    assert all(len(t.nodes) == 15 for t in trees["grouped"])
    assert labels["grouped"] == labels["alone"]
    assert labels["alone"][0][()] == pytest.approx(0.9**3)  # a reward-1 leaf below the root
    assert commits["alone"] == 3 * 14  # one transaction per node
    assert commits["grouped"] < commits["alone"] // 2


async def test_one_batch_keeps_each_callers_answer(store: TreeStore) -> None:
    _, (task,) = await new_run(store, "run")
    root = await store.trees.add_root(task.id, "start")
    (leaf,) = await store.trees.add_children(root.id, [_node("won", 5, final=1.0)])
    twin, other_twin, on_leaf, unknown = await asyncio.gather(
        store.trees.add_child_if_absent(root.id, _node("go", 0)),
        store.trees.add_child_if_absent(root.id, _node("go again", 0)),
        store.trees.add_child_if_absent(leaf.id, _node("after the end", 0)),
        store.trees.add_child_if_absent(10_000, _node("nowhere", 0)),
        return_exceptions=True,
    )
    assert isinstance(twin, tuple) and isinstance(other_twin, tuple)
    assert twin[1] and not other_twin[1]  # the first of one (parent, sample) creates it
    assert other_twin[0] == twin[0]
    assert isinstance(on_leaf, StoreError) and "is a leaf" in str(on_leaf)
    assert isinstance(unknown, UnknownNameError)
    # Stored before: found again, as a resume finds it.
    again, created = await store.trees.add_child_if_absent(root.id, _node("go", 0))
    assert not created and again == twin[0]
    assert len((await store.trees.load(task.id)).nodes) == 3
