"""Tree nodes: add (one node, siblings, or a path, each in one transaction) and read.

Every call commits before it returns, so a crash loses nothing that was acknowledged.
Adding a node with a ``final_reward``, or :meth:`TreeRepository.finish_leaf`, updates the
Q labels of the node's ancestors in the same transaction (:func:`qlass.storage.labels.relabel`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from sqlalchemy import Select, bindparam, case, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from qlass.errors import StoreError, UnknownNameError
from qlass.storage._db import Database, insert_ids, record
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
        async with self._db.write() as session:
            task_id, run_id, depth = await self._parent(session, parent_id)
            rows = [
                _row(node, task_id=task_id, parent_id=parent_id, depth=depth + 1) for node in nodes
            ]
            ids = await insert_ids(session, _NODES, rows)
            await self._relabel(session, run_id, task_id, rows, ids)
        return [record(NodeRecord, {**row, "id": i}) for row, i in zip(rows, ids, strict=True)]

    async def add_child_if_absent(self, parent_id: int, node: NewNode) -> tuple[NodeRecord, bool]:
        """Add ``node`` below ``parent_id`` unless the parent already has a child with its
        ``sample_index``; return the stored child and whether this call created it.

        The explorer adds its samples this way, so that two workers growing the same tree (a
        worker whose lease expired while it was still running, and the task's next owner)
        never store one sample twice. The check and the insert are one transaction under the
        tree lock (PostgreSQL) or the store's single writer (SQLite), so they cannot race.
        """
        async with self._db.write() as session:
            task_id, run_id, depth = await self._parent(session, parent_id)
            existing = (
                await session.execute(
                    select(_NODES)
                    .where(
                        _NODES.c.task_id == task_id,
                        _NODES.c.parent_id == parent_id,
                        _NODES.c.sample_index == node.sample_index,
                    )
                    .order_by(_NODES.c.id)
                    .limit(1)
                )
            ).first()
            if existing is not None:
                return record(NodeRecord, existing), False
            row = _row(node, task_id=task_id, parent_id=parent_id, depth=depth + 1)
            ids = await insert_ids(session, _NODES, [row])
            await self._relabel(session, run_id, task_id, [row], ids)
        return record(NodeRecord, {**row, "id": ids[0]}), True

    async def add_path(self, parent_id: int, nodes: Sequence[NewNode]) -> list[NodeRecord]:
        """Add a chain below ``parent_id`` in one transaction: each node the child of the
        previous one (a rollout to a leaf). Returns the records in path order."""
        if not nodes:
            return []
        for offset, node in enumerate(nodes[:-1]):
            if node.is_leaf or node.final_reward is not None:
                raise StoreError(f"node {offset} of the path is a leaf but is not the last")
        async with self._db.write() as session:
            task_id, run_id, depth = await self._parent(session, parent_id)
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
            ids = await insert_ids(session, _NODES, rows)
            for row, parent in zip(rows[1:], ids, strict=False):
                row["parent_id"] = parent
            if len(ids) > 1:
                await session.execute(
                    update(_NODES)
                    .where(_NODES.c.id == bindparam("node"))
                    .values(parent_id=bindparam("parent")),
                    [{"node": i, "parent": p} for i, p in zip(ids[1:], ids, strict=False)],
                )
            await self._relabel(session, run_id, task_id, rows, ids)
        return [record(NodeRecord, {**row, "id": i}) for row, i in zip(rows, ids, strict=True)]

    async def finish_leaf(self, node_id: int, final_reward: float) -> NodeRecord:
        """Give an existing node its outcome reward (it becomes a finished leaf) and relabel."""
        async with self._db.write() as session:
            found = (
                await session.execute(
                    select(_NODES.c.task_id, _TASKS.c.run_id)
                    .join(_TASKS, _TASKS.c.id == _NODES.c.task_id)
                    .where(_NODES.c.id == node_id)
                )
            ).first()
            if found is None:
                raise UnknownNameError(f"no node with id {node_id}")
            if self._db.is_postgres:
                await lock_tree(session, run_id=found.run_id, task_id=found.task_id)
            await session.execute(
                update(_NODES)
                .where(_NODES.c.id == node_id)
                .values(final_reward=final_reward, is_leaf=True)
            )
            await relabel(session, run_id=found.run_id, task_id=found.task_id, dirty=[node_id])
            row = (await session.execute(select(_NODES).where(_NODES.c.id == node_id))).one()
        return record(NodeRecord, row)

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

    async def _parent(self, session: AsyncSession, parent_id: int) -> tuple[int, int, int]:
        """The parent's task, run and depth; on PostgreSQL also lock its tree (see lock_tree)."""
        query = (
            select(_NODES.c.task_id, _NODES.c.depth, _NODES.c.is_leaf, _TASKS.c.run_id)
            .join(_TASKS, _TASKS.c.id == _NODES.c.task_id)
            .where(_NODES.c.id == parent_id)
        )
        found = (await session.execute(query)).first()
        if found is not None and self._db.is_postgres:
            await lock_tree(session, run_id=found.run_id, task_id=found.task_id)
            found = (await session.execute(query)).first()  # as of the lock
        if found is None:
            raise UnknownNameError(f"no node with id {parent_id}")
        if found.is_leaf:
            raise StoreError(f"node {parent_id} is a leaf; it cannot have children")
        return found.task_id, found.run_id, found.depth

    async def _relabel(
        self,
        session: AsyncSession,
        run_id: int,
        task_id: int,
        rows: Sequence[dict[str, Any]],
        ids: Sequence[int],
    ) -> None:
        dirty = [i for row, i in zip(rows, ids, strict=True) if row["final_reward"] is not None]
        await relabel(session, run_id=run_id, task_id=task_id, dirty=dirty)
