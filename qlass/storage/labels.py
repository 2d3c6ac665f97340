"""Q-label sets: created once per (gamma, normalize, reward mode, kind), then kept up to
date.

Creating a set computes it fully for the run's existing trees. After that every insert of
a finished leaf (and :meth:`TreeRepository.finish_leaf`) calls :func:`relabel` inside the
same transaction: it loads the leaf's ancestor chain and their children's labels in two
queries, recomputes bottom-up in memory, and writes only the values that changed. A node
is recomputed only if it is dirty itself or one of its children changed, so the walk stops
at the first ancestor whose value stays the same. Raw values are stored; normalisation is
applied when reading (:mod:`qlass.storage.bellman`), so an update stays O(depth).

The value-signal baselines (kinds ``mc_mean`` and ``outcome``, see
:mod:`qlass.storage.bellman`) are not a max over children, so an update of such a set
recomputes the leaf's whole tree (one tree, not the run).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import structlog
from sqlalchemy import and_, delete, select, union_all
from sqlalchemy.orm import Session

from qlass.errors import ConfigError, UnknownNameError
from qlass.storage._db import Database, record, upsert
from qlass.storage.bellman import (
    LABEL_KINDS,
    LabelNode,
    minmax_normalize,
    node_value,
    tree_values,
)
from qlass.storage.models import LabelSet, Node, QLabel, Run, Task, table, utcnow
from qlass.storage.records import IntermediateReward, LabelKind, LabelSetRecord

__all__ = ["LabelRepository", "load_label_set", "lock_tree", "relabel"]

log = structlog.get_logger(__name__)

_NODES = table(Node)
_LABELS = table(QLabel)
_SETS = table(LabelSet)
_TASKS = table(Task)
_LABEL_NODE_COLUMNS = (
    _NODES.c.id,
    _NODES.c.parent_id,
    _NODES.c.depth,
    _NODES.c.reward,
    _NODES.c.final_reward,
)


def _label_node(row: Any) -> LabelNode:
    return LabelNode(row.id, row.parent_id, row.depth, row.reward, row.final_reward)


class LabelRepository:
    """Create, read and recompute Q-label sets."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_set(
        self,
        run_id: int,
        *,
        gamma: float = 0.9,
        normalize: bool = True,
        intermediate_reward: IntermediateReward = "zero",
        kind: LabelKind = "bellman",
    ) -> LabelSetRecord:
        """Get the run's label set with these options, creating and computing it if new.

        A new gamma (or reward mode, or kind) gives a new set; old sets stay as they are.
        """
        if kind not in LABEL_KINDS:
            raise ConfigError(f"labels.kind must be one of {', '.join(LABEL_KINDS)}, got {kind!r}")
        if not 0.0 <= gamma <= 1.0:
            raise ConfigError(f"labels.gamma must be in [0, 1], got {gamma}")
        if intermediate_reward not in ("zero", "env"):
            raise ConfigError(
                f"labels.intermediate_reward must be 'zero' or 'env', got {intermediate_reward!r}"
            )
        result, is_new, written = await self._db.run_write(
            _get_or_create_set,
            run_id,
            gamma=gamma,
            normalize=normalize,
            intermediate_reward=intermediate_reward,
            kind=kind,
        )
        if is_new:
            log.info(
                "label set created",
                run_id=run_id,
                label_set=result.id,
                gamma=gamma,
                kind=kind,
                labels=written,
            )
        elif written:
            log.warning(
                "label set had lost its labels: recomputed from the trees",
                run_id=run_id,
                label_set=result.id,
                labels=written,
            )
        return result

    async def get_set(self, label_set_id: int) -> LabelSetRecord:
        async with self._db.read() as session:
            return await session.run_sync(load_label_set, label_set_id)

    async def sets(self, run_id: int) -> list[LabelSetRecord]:
        """The run's label sets, oldest first."""
        async with self._db.read() as session:
            rows = await session.execute(
                select(table(LabelSet)).where(LabelSet.run_id == run_id).order_by(LabelSet.id)
            )
            return [record(LabelSetRecord, row) for row in rows]

    async def values(
        self, label_set_id: int, task_id: int, *, normalized: bool | None = None
    ) -> dict[int, float]:
        """Q values of one tree by node id; normalised if the set says so (or if asked)."""
        async with self._db.read() as session:
            label_set = await session.run_sync(load_label_set, label_set_id)
            rows = (
                await session.execute(
                    select(_NODES.c.id, _NODES.c.parent_id, _LABELS.c.q)
                    .join(_LABELS, _LABELS.c.node_id == _NODES.c.id)
                    .where(_NODES.c.task_id == task_id, _LABELS.c.label_set_id == label_set_id)
                )
            ).all()
        raw = {row.id: row.q for row in rows}
        if not (label_set.normalize if normalized is None else normalized):
            return raw
        return minmax_normalize(raw, [row.id for row in rows if row.parent_id is None])

    async def recompute(self, label_set_id: int, *, task_id: int | None = None) -> int:
        """Recompute a set from scratch (all trees, or one); returns how many rows changed.

        With incremental updates working this changes nothing; it exists to check them and
        to repair a store written by a buggy version.
        """
        return await self._db.run_write(_recompute_checked, label_set_id, task_id)


def _get_or_create_set(
    session: Session,
    run_id: int,
    *,
    gamma: float,
    normalize: bool,
    intermediate_reward: str,
    kind: str,
) -> tuple[LabelSetRecord, bool, int]:
    """The run's label set with these options, whether this call created it, and how many
    labels it wrote."""
    # Exclusive on the run: inserts (which share-lock it) wait until the set is full.
    run = session.execute(select(Run.id).where(Run.id == run_id).with_for_update())
    if run.first() is None:
        raise UnknownNameError(f"no run with id {run_id}")
    existing = session.scalar(
        select(LabelSet).where(
            LabelSet.run_id == run_id,
            LabelSet.gamma == gamma,
            LabelSet.normalize == normalize,
            LabelSet.intermediate_reward == intermediate_reward,
            LabelSet.kind == kind,
        )
    )
    if existing is not None:
        found = record(LabelSetRecord, existing.__dict__)
        if _lost_its_labels(session, found):
            # Stores upgraded to revision 0004 before the migrations turned SQLite's
            # foreign keys off lost every Q label (the rebuilt label_sets table
            # cascaded its delete); the trees are intact, so the labels come back.
            return found, False, _recompute(session, found, task_id=None)
        return found, False, 0
    label_set = LabelSet(
        run_id=run_id,
        gamma=gamma,
        normalize=normalize,
        intermediate_reward=intermediate_reward,
        kind=kind,
        created_at=utcnow(),
    )
    session.add(label_set)
    session.flush()
    result = record(LabelSetRecord, label_set.__dict__)
    return result, True, _recompute(session, result, task_id=None)


def _recompute_checked(session: Session, label_set_id: int, task_id: int | None) -> int:
    label_set = load_label_set(session, label_set_id)
    if task_id is not None:
        run_id = session.scalar(select(_TASKS.c.run_id).where(_TASKS.c.id == task_id))
        if run_id != label_set.run_id:
            raise UnknownNameError(
                f"task {task_id} is not a task of run {label_set.run_id} (label set {label_set_id})"
            )
    return _recompute(session, label_set, task_id=task_id)


def _lost_its_labels(session: Session, label_set: LabelSetRecord) -> bool:
    """True when the set holds no label while its run has tree nodes (a stored set always
    labels every node on a path to a finished leaf)."""
    has_label = session.scalar(
        select(_LABELS.c.node_id).where(_LABELS.c.label_set_id == label_set.id).limit(1)
    )
    if has_label is not None:
        return False
    has_leaf = session.scalar(
        select(_NODES.c.id)
        .join(Task, Task.id == _NODES.c.task_id)
        .where(Task.run_id == label_set.run_id, _NODES.c.final_reward.is_not(None))
        .limit(1)
    )
    return has_leaf is not None


def load_label_set(session: Session, label_set_id: int) -> LabelSetRecord:
    row = session.execute(select(table(LabelSet)).where(LabelSet.id == label_set_id)).first()
    if row is None:
        raise UnknownNameError(f"no label set with id {label_set_id}")
    return record(LabelSetRecord, row)


def _recompute(session: Session, label_set: LabelSetRecord, *, task_id: int | None) -> int:
    """Recompute the set over the run's trees (or one tree) and write the differences."""
    query = select(*_LABEL_NODE_COLUMNS, _LABELS.c.q).outerjoin(
        _LABELS, and_(_LABELS.c.node_id == _NODES.c.id, _LABELS.c.label_set_id == label_set.id)
    )
    if task_id is None:
        query = query.join(_TASKS, _TASKS.c.id == _NODES.c.task_id).where(
            _TASKS.c.run_id == label_set.run_id
        )
    else:  # the caller checked that the task belongs to the set's run
        query = query.where(_NODES.c.task_id == task_id)
    rows = session.execute(query).all()
    old = {row.id: row.q for row in rows if row.q is not None}
    new = tree_values(
        (_label_node(row) for row in rows),
        label_set.gamma,
        label_set.intermediate_reward,
        label_set.kind,
    )
    changed = [(node, q) for node, q in new.items() if old.get(node) != q]
    gone = [node for node in old if node not in new]
    _write(session, label_set.id, changed, gone)
    return len(changed) + len(gone)


def _write(
    session: Session,
    label_set_id: int,
    changed: Sequence[tuple[int, float]],
    gone: Collection[int],
) -> None:
    if changed:
        rows = [{"label_set_id": label_set_id, "node_id": node, "q": q} for node, q in changed]
        for start in range(0, len(rows), 5000):
            upsert(
                session, _LABELS, rows[start : start + 5000], ("label_set_id", "node_id"), ("q",)
            )
    if gone:
        session.execute(
            delete(_LABELS).where(
                _LABELS.c.label_set_id == label_set_id, _LABELS.c.node_id.in_(list(gone))
            )
        )


def lock_tree(session: Session, *, run_id: int, task_id: int) -> None:
    """Lock a tree for a write that may relabel it (PostgreSQL; no-op SQL elsewhere).

    Call it before inserting: a node insert takes a key-share lock on its task row (the
    foreign key), so taking the tree lock only afterwards deadlocks two writers of one tree.
    The run row is key-share locked so that a label set being created (which locks the run
    exclusively) is either complete before this write or sees it.
    """
    session.execute(
        select(Run.id).where(Run.id == run_id).with_for_update(read=True, key_share=True)
    )
    session.execute(select(Task.id).where(Task.id == task_id).with_for_update(key_share=True))


def relabel(session: Session, *, run_id: int, task_id: int, dirty: Collection[int]) -> int:
    """Update every label set of the run after ``dirty`` nodes got (or changed) a final reward.

    Runs inside the caller's write transaction, which on PostgreSQL must hold
    :func:`lock_tree`. Returns the number of labels written.
    """
    if not dirty:
        return 0
    # One query: the root and every child of a dirty node or of one of its ancestors (the
    # affected nodes are among them, flagged), once per label set of the run, each with its
    # label in that set. No label set: no rows, nothing to do.
    chain_ids = select(_ancestor_chain(dirty).c.id)
    near = union_all(  # two index lookups on (task_id, parent_id), not a scan of the tree
        select(*_LABEL_NODE_COLUMNS).where(
            _NODES.c.task_id == task_id, _NODES.c.parent_id.in_(chain_ids)
        ),
        select(*_LABEL_NODE_COLUMNS).where(
            _NODES.c.task_id == task_id, _NODES.c.parent_id.is_(None)
        ),
    ).subquery("near")
    rows = session.execute(
        select(
            near,
            near.c.id.in_(chain_ids).label("affected"),
            _SETS.c.id.label("set_id"),
            _SETS.c.gamma,
            _SETS.c.intermediate_reward,
            _SETS.c.kind,
            _LABELS.c.q,
        )
        .select_from(near.join(_SETS, _SETS.c.run_id == run_id))
        .outerjoin(
            _LABELS,
            and_(_LABELS.c.node_id == near.c.id, _LABELS.c.label_set_id == _SETS.c.id),
        )
    )
    sets: dict[int, tuple[float, str]] = {}
    whole_tree: set[int] = set()  # sets of a kind recomputed tree by tree
    affected: dict[int, LabelNode] = {}
    children: dict[int, dict[int, None]] = {}  # parent -> ordered set of child ids
    labels: dict[tuple[int, int], float] = {}
    for row in rows:  # one row per (node, label set)
        sets[row.set_id] = (row.gamma, row.intermediate_reward)
        if row.kind != "bellman":
            whole_tree.add(row.set_id)
        if row.affected:
            affected[row.id] = _label_node(row)
        if row.parent_id is not None:
            children.setdefault(row.parent_id, {})[row.id] = None
        if row.q is not None:
            labels[(row.set_id, row.id)] = row.q
    order = sorted(affected.values(), key=lambda node: -node.depth)
    written = 0
    for set_id, (gamma, mode) in sets.items():
        if set_id in whole_tree:
            label_set = load_label_set(session, set_id)
            written += _recompute(session, label_set, task_id=task_id)
            continue
        changed, gone = _walk(order, children, labels, set(dirty), set_id, gamma, mode)
        _write(session, set_id, changed, gone)
        written += len(changed) + len(gone)
    return written


def _ancestor_chain(dirty: Iterable[int]) -> Any:
    """A recursive CTE of the dirty nodes and all their ancestors (ids)."""
    start = (
        select(_NODES.c.id, _NODES.c.parent_id)
        .where(_NODES.c.id.in_(list(dirty)))
        .cte("chain", recursive=True)
    )
    up = select(_NODES.c.id, _NODES.c.parent_id).join(start, _NODES.c.id == start.c.parent_id)
    return start.union(up)


def _walk(
    order: Sequence[LabelNode],
    children: Mapping[int, Iterable[int]],
    labels: Mapping[tuple[int, int], float],
    dirty: set[int],
    set_id: int,
    gamma: float,
    mode: str,
) -> tuple[list[tuple[int, float]], list[int]]:
    """Recompute affected nodes deepest first; only those dirty or with a changed child."""
    current: dict[int, float | None] = {}
    changed_nodes: set[int] = set()
    changed: list[tuple[int, float]] = []
    gone: list[int] = []
    for node in order:
        kids = tuple(children.get(node.id, ()))
        if node.id not in dirty and not any(kid in changed_nodes for kid in kids):
            continue
        kid_values = (current[kid] if kid in current else labels.get((set_id, kid)) for kid in kids)
        value = node_value(node, kid_values, gamma, mode)
        current[node.id] = value
        if value == labels.get((set_id, node.id)):
            continue
        changed_nodes.add(node.id)
        if value is None:
            gone.append(node.id)
        else:
            changed.append((node.id, value))
    return changed, gone
