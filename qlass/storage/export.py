"""Export (prefix, candidate action, Q) training triples for the QNet.

For each tree of the label set's run, every labelled non-root node whose action is valid
(``action`` set, status ``ok``) gives one :class:`~qlass.types.LabelledStep`: the history
of the path root→parent (the state the action was taken from), the node's raw model text
as the candidate, and its Q value (normalised per tree if the label set says so; min and
max are taken over all the tree's labelled non-root nodes, before sampling). At most
``max_per_tree`` triples are kept per tree: whole sibling groups (the candidates of one
state), states with several candidates first, chosen by an RNG seeded from ``seed`` and the
task key, so a tree's sample does not depend on which other trees are exported. Within a
tree, triples come in the order of their nodes' paths (the sample indices from the root),
not of their ids: concurrent exploration commits nodes in an order that changes from run
to run, and the QNet's training data (its sample and order) must not. Trees are read
whole, up to 50 per query; histories are built by walking the loaded tree.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import and_, select

from qlass.errors import ConfigError
from qlass.storage._db import Database, record
from qlass.storage.bellman import minmax_normalize
from qlass.storage.labels import load_label_set
from qlass.storage.models import Node, QLabel, Task, table
from qlass.storage.records import LabelSetRecord, TaskRecord
from qlass.types import History, LabelledStep, Turn

__all__ = ["export_triples"]

_NODES = table(Node)
_LABELS = table(QLabel)
_TASKS = table(Task)
_TREES_PER_QUERY = 50


async def export_triples(
    db: Database,
    label_set_id: int,
    *,
    max_per_tree: int = 300,
    seed: int = 0,
    tasks: Collection[str] | None = None,
    split: str | None = None,
) -> list[LabelledStep]:
    """Training triples of a label set; see the module docstring.

    Args:
        tasks: only these task keys (``TaskSpec.key``); ``None`` for all.
        split: only tasks of this split ('train', 'dev', 'test').
    """
    if max_per_tree < 1:
        raise ConfigError(f"max_per_tree must be at least 1, got {max_per_tree}")
    async with db.read() as session:
        label_set = await session.run_sync(load_label_set, label_set_id)
        query = select(_TASKS).where(_TASKS.c.run_id == label_set.run_id).order_by(_TASKS.c.id)
        if split is not None:
            query = query.where(_TASKS.c.split == split)
        task_records = [record(TaskRecord, row) for row in await session.execute(query)]
    if tasks is not None:
        wanted = set(tasks)
        task_records = [task for task in task_records if task.key in wanted]
    # Trees are read whole, a group of them per query, and turned into triples in a worker
    # thread (building histories is CPU work that would otherwise stall the event loop).
    triples: list[LabelledStep] = []
    for start in range(0, len(task_records), _TREES_PER_QUERY):
        chunk = task_records[start : start + _TREES_PER_QUERY]
        async with db.read() as session:  # one short read per group of whole trees
            rows = (
                await session.execute(
                    select(
                        _NODES.c.id,
                        _NODES.c.task_id,
                        _NODES.c.parent_id,
                        _NODES.c.sample_index,
                        _NODES.c.action,
                        _NODES.c.text,
                        _NODES.c.observation,
                        _NODES.c.status,
                        _LABELS.c.q,
                    )
                    .outerjoin(
                        _LABELS,
                        and_(
                            _LABELS.c.node_id == _NODES.c.id,
                            _LABELS.c.label_set_id == label_set_id,
                        ),
                    )
                    .where(_NODES.c.task_id.in_([task.id for task in chunk]))
                    .order_by(_NODES.c.task_id, _NODES.c.id)
                )
            ).all()
        triples.extend(
            await asyncio.to_thread(_chunk_triples, chunk, rows, label_set, max_per_tree, seed)
        )
    return triples


def _chunk_triples(
    tasks: Sequence[TaskRecord],
    rows: Sequence[Any],
    label_set: LabelSetRecord,
    max_per_tree: int,
    seed: int,
) -> list[LabelledStep]:
    by_task: dict[int, list[Any]] = {}
    for row in rows:
        by_task.setdefault(row.task_id, []).append(row)
    triples: list[LabelledStep] = []
    for task in tasks:
        if task.id in by_task:
            triples.extend(_tree_triples(task, by_task[task.id], label_set, max_per_tree, seed))
    return triples


def _tree_triples(
    task: TaskRecord,
    rows: Sequence[Any],
    label_set: LabelSetRecord,
    max_per_tree: int,
    seed: int,
) -> list[LabelledStep]:
    by_id = {row.id: row for row in rows}
    paths: dict[int, tuple[int, ...]] = {}
    for row in rows:  # by id: parents before children
        paths[row.id] = () if row.parent_id is None else (*paths[row.parent_id], row.sample_index)
    raw = {row.id: row.q for row in rows if row.q is not None}
    roots = [row.id for row in rows if row.parent_id is None]
    values = minmax_normalize(raw, roots) if label_set.normalize else raw
    candidates = sorted(
        (
            row
            for row in rows
            if row.parent_id is not None
            and row.q is not None
            and row.action is not None
            and row.status == "ok"
        ),
        key=lambda row: paths[row.id],
    )
    if len(candidates) > max_per_tree:
        rng = random.Random(f"{seed}/{task.key}")
        kept = {row.id for row in _sample_by_state(candidates, max_per_tree, rng)}
        candidates = [row for row in candidates if row.id in kept]
    histories: dict[int, History] = {}

    def history_at(node_id: int) -> History:
        """The history in the state of ``node_id`` (memoised, walking up iteratively)."""
        pending: list[int] = []
        current: int | None = node_id
        while current is not None and current not in histories:
            pending.append(current)
            current = by_id[current].parent_id
        for item in reversed(pending):
            row = by_id[item]
            if row.parent_id is None:
                histories[item] = History(task.instruction, row.observation)
            else:
                histories[item] = histories[row.parent_id].extend(
                    Turn(row.text, row.action, row.observation)
                )
        return histories[node_id]

    return [
        LabelledStep(
            tree_id=task.id,
            task_key=task.key,
            history=history_at(row.parent_id),
            candidate_text=row.text,
            q=values[row.id],
        )
        for row in candidates
    ]


def _sample_by_state(candidates: Sequence[Any], limit: int, rng: random.Random) -> list[Any]:
    """``limit`` of a tree's candidates, whole sibling groups at a time, branching states first
    (``candidates`` in a fixed order: the groups are shuffled from it).

    Q-guided search only ever compares the candidates of one state, and only the states
    where exploration sampled several candidates show the QNet how they differ; sampling
    nodes one by one would split most sibling groups and leave those contrasts out.
    """
    by_state: dict[int, list[Any]] = {}
    for row in candidates:
        by_state.setdefault(row.parent_id, []).append(row)
    groups = list(by_state.values())
    rng.shuffle(groups)
    groups.sort(key=lambda group: len(group) < 2)  # stable: shuffled within each kind
    kept: list[Any] = []
    for group in groups:
        room = limit - len(kept)
        if room <= 0:
            break
        kept.extend(group if len(group) <= room else rng.sample(group, room))
    return kept
