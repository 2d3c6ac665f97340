"""Tree nodes: add (one node, siblings, or a path, each in one transaction) and read.

Every call commits before it returns, so a crash loses nothing that was acknowledged.
Adding a node with a ``final_reward``, or :meth:`TreeRepository.finish_leaf`, updates the
Q labels of the node's ancestors in the same transaction (:func:`qlass.storage.labels.relabel`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import fields
from typing import Any

from sqlalchemy import Select, bindparam, case, func, insert, select, update
from sqlalchemy.orm import Session

from qlass.errors import StoreError, UnknownNameError
from qlass.storage._db import Database, insert_ids, record
from qlass.storage._group_commit import GroupCommit
from qlass.storage.labels import lock_tree, relabel
from qlass.storage.models import Node, Task, table, utcnow
from qlass.storage.records import NewNode, NodeRecord, TaskRecord, Tree

__all__ = ["TreeRepository"]

_NODES = table(Node)
_TASKS = table(Task)
_NEW_NODE_FIELDS = tuple(f.name for f in fields(NewNode))


def _row(node: NewNode, *, task_id: int, parent_id: int | None, depth: int) -> dict[str, Any]:
    row = {name: getattr(node, name) for name in _NEW_NODE_FIELDS}
    row.update(
        task_id=task_id,
        parent_id=parent_id,
        depth=depth,
        is_leaf=node.is_leaf or node.final_reward is not None,
        created_at=utcnow(),
    )
    return row


def _usable_parent(parent_id: int, found: Any) -> Any:
    """``found`` (the row of ``parent_id`` from ``_parents``, None if absent) if a child
    can be added below it; else raises why not."""
    if found is None:
        raise UnknownNameError(f"no node with id {parent_id}")
    if found.is_leaf:
        raise StoreError(f"node {parent_id} is a leaf; it cannot have children")
    return found


def node_counts(run_id: int, *, split: str | None = None) -> Select[Any]:
    """A query of ``(nodes, finished leaves)`` in the trees of a run's tasks (of ``split``)."""
    finished = case((_NODES.c.final_reward.is_not(None), 1), else_=0)
    query = (
        select(func.count(_NODES.c.id), func.coalesce(func.sum(finished), 0))
        .join(_TASKS, _TASKS.c.id == _NODES.c.task_id)
        .where(_TASKS.c.run_id == run_id)
    )
    return query if split is None else query.where(_TASKS.c.split == split)


class TreeRepository:
    """Grow and read the exploration trees (one per task)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._children_if_absent: GroupCommit[tuple[int, NewNode], tuple[NodeRecord, bool]] = (
            GroupCommit(self._commit_children_if_absent)
        )

    async def add_root(
        self, task_id: int, observation: str, *, instruction: str | None = None
    ) -> NodeRecord:
        """Add the root of a task's tree (the state after reset); also sets the instruction.

        Raises:
            StoreError: the task already has a root (load the tree to resume it).
        """
        async with self._db.write() as session:
            task = await session.execute(
                select(_TASKS.c.id).where(_TASKS.c.id == task_id).with_for_update()
            )
            if task.first() is None:
                raise UnknownNameError(f"no task with id {task_id}")
            existing = await session.scalar(
                select(_NODES.c.id).where(_NODES.c.task_id == task_id, _NODES.c.parent_id.is_(None))
            )
            if existing is not None:
                raise StoreError(f"task {task_id} already has a root node ({existing})")
            if instruction is not None:
                await session.execute(
                    update(_TASKS).where(_TASKS.c.id == task_id).values(instruction=instruction)
                )
            row = _row(NewNode(observation=observation), task_id=task_id, parent_id=None, depth=0)
            node_id = (
                await session.execute(insert(_NODES).values(**row).returning(_NODES.c.id))
            ).scalar_one()
        return record(NodeRecord, {**row, "id": node_id})

    async def add_child(self, parent_id: int, node: NewNode) -> NodeRecord:
        """Add one node below ``parent_id`` (and relabel if it is a finished leaf)."""
        return (await self.add_children(parent_id, [node]))[0]

    async def add_children(self, parent_id: int, nodes: Sequence[NewNode]) -> list[NodeRecord]:
        """Add sibling nodes below ``parent_id`` in one transaction (the W samples of a step)."""
        if not nodes:
            return []
        return await self._db.run_write(self._add_children, parent_id, nodes)

    def _add_children(
        self, session: Session, parent_id: int, nodes: Sequence[NewNode]
    ) -> list[NodeRecord]:
        task_id, run_id, depth = self._parent(session, parent_id)
        rows = [_row(node, task_id=task_id, parent_id=parent_id, depth=depth + 1) for node in nodes]
        ids = insert_ids(session, _NODES, rows)
        _relabel(session, run_id, task_id, rows, ids)
        return [record(NodeRecord, {**row, "id": i}) for row, i in zip(rows, ids, strict=True)]

    async def add_child_if_absent(self, parent_id: int, node: NewNode) -> tuple[NodeRecord, bool]:
        """Add ``node`` below ``parent_id`` unless the parent already has a child with its
        ``sample_index``; return the stored child and whether this call created it.

        The explorer adds its samples this way, so that two workers growing the same tree (a
        worker whose lease expired while it was still running, and the task's next owner)
        never store one sample twice. The check and the insert are one transaction under the
        tree lock (PostgreSQL) or the store's single writer (SQLite), so they cannot race.
        Calls made while another is being written share the next transaction (group commit,
        at most :attr:`max_batch` nodes); each returns once its node is committed.
        """
        return await self._children_if_absent.submit((parent_id, node))

    @property
    def max_batch(self) -> int:
        """How many concurrent :meth:`add_child_if_absent` calls one transaction holds at
        most (1: a transaction per node)."""
        return self._children_if_absent.max_batch

    @max_batch.setter
    def max_batch(self, value: int) -> None:
        self._children_if_absent.max_batch = value

    async def wait_idle(self) -> None:
        """Return once no group commit is pending (the store calls it before closing)."""
        await self._children_if_absent.wait_idle()

    async def _commit_children_if_absent(
        self, items: Sequence[tuple[int, NewNode]]
    ) -> list[tuple[NodeRecord, bool] | Exception]:
        return await self._db.run_write(self._write_children_if_absent, items)

    def _write_children_if_absent(
        self, session: Session, items: Sequence[tuple[int, NewNode]]
    ) -> list[tuple[NodeRecord, bool] | Exception]:
        """One transaction for a batch of :meth:`add_child_if_absent` calls, in order: an
        item whose (parent, sample index) is stored already, or was inserted by an earlier
        item of the batch, gets that child; a missing or finished parent is that item's
        error; the others are inserted in one statement and relabelled tree by tree."""
        outcomes: list[tuple[NodeRecord, bool] | Exception | None] = [None] * len(items)
        parents = self._parents(session, {parent_id for parent_id, _ in items})
        existing = self._child_ids(session, parents)
        rows: list[dict[str, Any]] = []
        inserted: list[int] = []  # item positions of ``rows``
        first: dict[tuple[int, int], int] = {}  # (parent, sample) -> item inserting it
        repeats: list[tuple[int, int]] = []  # (item, the earlier item of its sample)
        stored: list[tuple[int, int]] = []  # (item, the id of its stored child)
        for position, (parent_id, node) in enumerate(items):
            key = (parent_id, node.sample_index)
            try:
                found = _usable_parent(parent_id, parents.get(parent_id))
            except (UnknownNameError, StoreError) as refused:
                outcomes[position] = refused
                continue
            if key in existing:
                stored.append((position, existing[key]))
            elif key in first:
                repeats.append((position, first[key]))
            else:
                first[key] = position
                inserted.append(position)
                rows.append(
                    _row(node, task_id=found.task_id, parent_id=parent_id, depth=found.depth + 1)
                )
        ids = insert_ids(session, _NODES, rows)
        by_tree: dict[tuple[int, int], tuple[list[dict[str, Any]], list[int]]] = {}
        for row, node_id in zip(rows, ids, strict=True):
            tree = (parents[row["parent_id"]].run_id, row["task_id"])
            tree_rows, tree_ids = by_tree.setdefault(tree, ([], []))
            tree_rows.append(row)
            tree_ids.append(node_id)
        for (run_id, task_id), (tree_rows, tree_ids) in sorted(by_tree.items()):
            _relabel(session, run_id, task_id, tree_rows, tree_ids)
        if stored:  # a resume, or another explorer of the tree: read those children
            reread = session.execute(
                select(_NODES).where(_NODES.c.id.in_(sorted({i for _, i in stored})))
            )
            children = {row.id: record(NodeRecord, row) for row in reread}
            for position, child_id in stored:
                outcomes[position] = (children[child_id], False)
        for position, row, node_id in zip(inserted, rows, ids, strict=True):
            outcomes[position] = (record(NodeRecord, {**row, "id": node_id}), True)
        for position, earlier in repeats:
            made = outcomes[earlier]
            assert isinstance(made, tuple)
            outcomes[position] = (made[0], False)
        done = [outcome for outcome in outcomes if outcome is not None]
        assert len(done) == len(items)
        return done

    async def add_path(self, parent_id: int, nodes: Sequence[NewNode]) -> list[NodeRecord]:
        """Add a chain below ``parent_id`` in one transaction: each node the child of the
        previous one (a rollout to a leaf). Returns the records in path order."""
        if not nodes:
            return []
        for offset, node in enumerate(nodes[:-1]):
            if node.is_leaf or node.final_reward is not None:
                raise StoreError(f"node {offset} of the path is a leaf but is not the last")
        return await self._db.run_write(self._add_path, parent_id, nodes)

    def _add_path(
        self, session: Session, parent_id: int, nodes: Sequence[NewNode]
    ) -> list[NodeRecord]:
        task_id, run_id, depth = self._parent(session, parent_id)
        # Two statements whatever the length: insert all (ids come back in order), then
        # link each node to its predecessor, whose id was unknown before the insert.
        rows = [
            _row(
                node,
                task_id=task_id,
                parent_id=parent_id if offset == 0 else None,
                depth=depth + 1 + offset,
            )
            for offset, node in enumerate(nodes)
        ]
        ids = insert_ids(session, _NODES, rows)
        for row, parent in zip(rows[1:], ids, strict=False):
            row["parent_id"] = parent
        if len(ids) > 1:
            session.execute(
                update(_NODES)
                .where(_NODES.c.id == bindparam("node"))
                .values(parent_id=bindparam("parent")),
                [{"node": i, "parent": p} for i, p in zip(ids[1:], ids, strict=False)],
            )
        _relabel(session, run_id, task_id, rows, ids)
        return [record(NodeRecord, {**row, "id": i}) for row, i in zip(rows, ids, strict=True)]

    async def finish_leaf(self, node_id: int, final_reward: float) -> NodeRecord:
        """Give an existing node its outcome reward (it becomes a finished leaf) and relabel."""
        return await self._db.run_write(self._finish_leaf, node_id, final_reward)

    def _finish_leaf(self, session: Session, node_id: int, final_reward: float) -> NodeRecord:
        found = session.execute(
            select(_NODES.c.task_id, _TASKS.c.run_id)
            .join(_TASKS, _TASKS.c.id == _NODES.c.task_id)
            .where(_NODES.c.id == node_id)
        ).first()
        if found is None:
            raise UnknownNameError(f"no node with id {node_id}")
        if self._db.is_postgres:
            lock_tree(session, run_id=found.run_id, task_id=found.task_id)
        session.execute(
            update(_NODES)
            .where(_NODES.c.id == node_id)
            .values(final_reward=final_reward, is_leaf=True)
        )
        relabel(session, run_id=found.run_id, task_id=found.task_id, dirty=[node_id])
        return record(
            NodeRecord, session.execute(select(_NODES).where(_NODES.c.id == node_id)).one()
        )

    async def get(self, node_id: int) -> NodeRecord:
        async with self._db.read() as session:
            row = (await session.execute(select(_NODES).where(_NODES.c.id == node_id))).first()
        if row is None:
            raise UnknownNameError(f"no node with id {node_id}")
        return record(NodeRecord, row)

    async def children(self, node_id: int) -> list[NodeRecord]:
        """The children of a node, in insertion order."""
        async with self._db.read() as session:
            task_id = await session.scalar(select(_NODES.c.task_id).where(_NODES.c.id == node_id))
            if task_id is None:
                raise UnknownNameError(f"no node with id {node_id}")
            rows = await session.execute(
                select(_NODES)
                .where(_NODES.c.task_id == task_id, _NODES.c.parent_id == node_id)
                .order_by(_NODES.c.id)
            )
            return [record(NodeRecord, row) for row in rows]

    async def count(self, run_id: int, *, split: str | None = None) -> tuple[int, int]:
        """``(nodes, finished leaves)`` in the trees of a run's tasks (of ``split``)."""
        async with self._db.read() as session:
            nodes, leaves = (await session.execute(node_counts(run_id, split=split))).one()
        return int(nodes), int(leaves)

    async def step_statuses(self, run_id: int, *, split: str | None = None) -> dict[str, int]:
        """How many of the run's non-root nodes (of ``split``) have each status (``ok``,
        ``invalid``: the policy's text held no action, ``failed``)."""
        query = (
            select(_NODES.c.status, func.count())
            .join(_TASKS, _TASKS.c.id == _NODES.c.task_id)
            .where(_TASKS.c.run_id == run_id, _NODES.c.parent_id.is_not(None))
            .group_by(_NODES.c.status)
        )
        if split is not None:
            query = query.where(_TASKS.c.split == split)
        async with self._db.read() as session:
            return {status: int(count) for status, count in await session.execute(query)}

    async def load(self, task_id: int) -> Tree:
        """The whole tree of a task (one query for the nodes), as frozen records."""
        async with self._db.read() as session:
            task = (await session.execute(select(_TASKS).where(_TASKS.c.id == task_id))).first()
            if task is None:
                raise UnknownNameError(f"no task with id {task_id}")
            rows = await session.execute(
                select(_NODES).where(_NODES.c.task_id == task_id).order_by(_NODES.c.id)
            )
            nodes = tuple(record(NodeRecord, row) for row in rows)
        return Tree(record(TaskRecord, task), nodes)

    def _parent(self, session: Session, parent_id: int) -> tuple[int, int, int]:
        """The parent's task, run and depth; on PostgreSQL also lock its tree (see lock_tree)."""
        found = self._parents(session, [parent_id]).get(parent_id)
        parent = _usable_parent(parent_id, found)
        return parent.task_id, parent.run_id, parent.depth

    def _parents(self, session: Session, parent_ids: Collection[int]) -> dict[int, Any]:
        """Task, run, depth and leaf flag of each of ``parent_ids`` that exists, by id; on
        PostgreSQL also lock their trees (see lock_tree), in one order for every writer."""
        query = (
            select(_NODES.c.id, _NODES.c.task_id, _NODES.c.depth, _NODES.c.is_leaf, _TASKS.c.run_id)
            .join(_TASKS, _TASKS.c.id == _NODES.c.task_id)
            .where(_NODES.c.id.in_(sorted(parent_ids)))
        )
        found = {row.id: row for row in session.execute(query)}
        if found and self._db.is_postgres:
            for run_id, task_id in sorted({(row.run_id, row.task_id) for row in found.values()}):
                lock_tree(session, run_id=run_id, task_id=task_id)
            found = {row.id: row for row in session.execute(query)}  # as of the locks
        return found

    def _child_ids(
        self, session: Session, parents: Mapping[int, Any]
    ) -> dict[tuple[int, int], int]:
        """The id of the stored child of each (parent, sample index) below ``parents`` (the
        first if an older store holds two)."""
        if not parents:
            return {}
        keys = session.execute(
            select(_NODES.c.id, _NODES.c.parent_id, _NODES.c.sample_index)
            .where(
                _NODES.c.task_id.in_(sorted({row.task_id for row in parents.values()})),
                _NODES.c.parent_id.in_(sorted(parents)),
            )
            .order_by(_NODES.c.id)
        )
        first: dict[tuple[int, int], int] = {}
        for key in keys:
            first.setdefault((key.parent_id, key.sample_index), key.id)
        return first


def _relabel(
    session: Session, run_id: int, task_id: int, rows: Sequence[dict[str, Any]], ids: Sequence[int]
) -> None:
    """Relabel the tree after inserting ``rows`` (as ``ids``), if any of them is a finished leaf."""
    dirty = [i for row, i in zip(rows, ids, strict=True) if row["final_reward"] is not None]
    relabel(session, run_id=run_id, task_id=task_id, dirty=dirty)
