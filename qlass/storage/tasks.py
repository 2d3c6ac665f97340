"""Tasks of a run: add (idempotent per task key), read, and track their status."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from qlass.errors import ConfigError, UnknownNameError
from qlass.storage._db import Database, record, upsert
from qlass.storage.models import Task, table, utcnow
from qlass.storage.records import TaskRecord, TaskStatus
from qlass.types import TaskSpec

__all__ = ["TaskRepository"]

_TASKS = table(Task)
_STATUSES = ("pending", "running", "done", "failed")


class TaskRepository:
    """The tasks of runs. A task's key (``TaskSpec.key``) is unique within its run."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, run_id: int, spec: TaskSpec, *, instruction: str = "") -> TaskRecord:
        """Add a task, or return the existing one with the same key (resume-friendly)."""
        return (await self.add_many(run_id, [spec], instruction=instruction))[0]

    async def add_many(
        self, run_id: int, specs: Sequence[TaskSpec], *, instruction: str = ""
    ) -> list[TaskRecord]:
        """Add tasks in one transaction; existing keys are kept. Returns them in ``specs`` order."""
        if not specs:
            return []
        now = utcnow()
        rows = [
            {
                "run_id": run_id,
                "key": spec.key,
                "env": spec.env,
                "name": spec.name,
                "variation": spec.variation,
                "split": spec.split,
                "params": spec.params,
                "instruction": instruction,
                "status": "pending",
                "attempts": 0,
                "created_at": now,
            }
            for spec in specs
        ]
        keys = [spec.key for spec in specs]
        by_key = await self._db.run_write(_insert_if_absent, run_id, rows, keys)
        return [by_key[key] for key in keys]

    async def get(self, task_id: int) -> TaskRecord:
        async with self._db.read() as session:
            row = (await session.execute(select(_TASKS).where(_TASKS.c.id == task_id))).first()
        if row is None:
            raise UnknownNameError(f"no task with id {task_id}")
        return record(TaskRecord, row)

    async def by_key(self, run_id: int, key: str) -> TaskRecord | None:
        async with self._db.read() as session:
            row = (
                await session.execute(
                    select(_TASKS).where(_TASKS.c.run_id == run_id, _TASKS.c.key == key)
                )
            ).first()
        return None if row is None else record(TaskRecord, row)

    async def of_run(
        self,
        run_id: int,
        *,
        statuses: Sequence[TaskStatus] | None = None,
        split: str | None = None,
    ) -> list[TaskRecord]:
        """The run's tasks in insertion order, optionally only some statuses or one split."""
        query = select(_TASKS).where(_TASKS.c.run_id == run_id).order_by(_TASKS.c.id)
        if statuses is not None:
            query = query.where(_TASKS.c.status.in_(list(statuses)))
        if split is not None:
            query = query.where(_TASKS.c.split == split)
        async with self._db.read() as session:
            return [record(TaskRecord, row) for row in await session.execute(query)]

    async def unfinished(self, run_id: int) -> list[TaskRecord]:
        """Tasks still to do on resume: pending, or running when the last process stopped."""
        return await self.of_run(run_id, statuses=("pending", "running"))

    async def set_status(
        self, task_id: int, status: TaskStatus, *, error: str | None = None
    ) -> None:
        """Move a task to ``status``: 'running' counts an attempt, 'done'/'failed' stamp the
        finish time; ``error`` is kept for 'failed'."""
        if status not in _STATUSES:
            raise ConfigError(f"task status must be one of {_STATUSES}, got {status!r}")
        values: dict[str, object] = {"status": status, "error": error}
        if status == "running":
            values["attempts"] = _TASKS.c.attempts + 1
            values["finished_at"] = None
        elif status in ("done", "failed"):
            values["finished_at"] = utcnow()
        async with self._db.write() as session:
            result = await session.execute(
                update(_TASKS).where(_TASKS.c.id == task_id).values(**values)
            )
            if result.rowcount == 0:  # type: ignore[attr-defined]
                raise UnknownNameError(f"no task with id {task_id}")


def _insert_if_absent(
    session: Session, run_id: int, rows: Sequence[dict[str, Any]], keys: Sequence[str]
) -> dict[str, TaskRecord]:
    """Insert the task rows whose keys are new; every task of ``keys``, by key."""
    upsert(session, _TASKS, rows, ("run_id", "key"), ())
    found = session.execute(select(_TASKS).where(_TASKS.c.run_id == run_id, _TASKS.c.key.in_(keys)))
    return {row.key: record(TaskRecord, row) for row in found}
