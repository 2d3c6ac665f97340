"""Task leases, so that several explore workers (processes, machines) share one run.

A worker *claims* a task: the task becomes ``running``, ``claimed_by`` the worker, with a
lease that expires ``lease_s`` seconds later and one more ``attempt``. While it works on the
tree, the worker *renews* the lease (a heartbeat); when the tree is complete it *finishes*
the task (``done`` or ``failed``), and on a graceful stop it *releases* it (back to
``pending``). A worker that dies stops renewing: once its lease has expired the task is
claimable again, and the next owner continues the tree from its committed nodes.

Every call is one short transaction. A claimable task is ``pending``, or ``running`` with an
expired lease or none (a single-process ``qlass explore`` that crashed leaves no lease).

- PostgreSQL: the claim is ``SELECT ... FOR UPDATE SKIP LOCKED`` over the claimable tasks,
  then an update in the same transaction, so concurrent workers never wait for each other
  and never get the same task. Lease times come from the database server's clock
  (``now()``), so workers on machines with skewed clocks agree on expiry.
- SQLite (one machine): there is no ``SKIP LOCKED``; the claim is the same read-then-update
  inside the store's write transaction (``BEGIN IMMEDIATE``: one writer at a time across
  processes), which no other claim can interleave. Times come from this machine's clock.

Renew, finish and release only act while the caller still owns the task (``claimed_by`` is
the caller and the task is ``running``) and return ``False`` otherwise: a worker whose lease
was taken over learns it at its next heartbeat and must stop working on that task.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.sql import ColumnElement

from qlass.errors import ConfigError
from qlass.storage._db import Database, record
from qlass.storage.models import Task, table, utcnow
from qlass.storage.records import TaskRecord

__all__ = ["ClaimRepository"]

_TASKS = table(Task)


class ClaimRepository:
    """Claim, renew, finish and release tasks of a run (see the module docstring)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def _claimable(self, now: Any) -> ColumnElement[bool]:
        return or_(
            _TASKS.c.status == "pending",
            and_(
                _TASKS.c.status == "running",
                or_(_TASKS.c.lease_expires_at.is_(None), _TASKS.c.lease_expires_at < now),
            ),
        )

    @staticmethod
    def _check_lease(lease_s: float) -> timedelta:
        if not lease_s > 0:
            raise ConfigError(f"lease_s must be positive, got {lease_s}")
        return timedelta(seconds=lease_s)

    async def claim(
        self,
        run_id: int,
        worker_id: str,
        *,
        lease_s: float,
        split: str | None = None,
        max_attempts: int | None = None,
    ) -> TaskRecord | None:
        """Claim the first claimable task of the run (in insertion order), or ``None``.

        ``split`` restricts the claim to one split; ``max_attempts`` skips tasks claimed
        that many times already (a task that keeps killing its workers is left alone).
        """
        lease = self._check_lease(lease_s)
        async with self._db.write() as session:
            now = self._db.now()
            query = (
                select(_TASKS.c.id)
                .where(_TASKS.c.run_id == run_id, self._claimable(now))
                .order_by(_TASKS.c.id)
                .limit(1)
            )
            if split is not None:
                query = query.where(_TASKS.c.split == split)
            if max_attempts is not None:
                query = query.where(_TASKS.c.attempts < max_attempts)
            if self._db.is_postgres:
                query = query.with_for_update(skip_locked=True)
            task_id = await session.scalar(query)
            if task_id is None:
                return None
            await session.execute(
                update(_TASKS)
                .where(_TASKS.c.id == task_id)
                .values(
                    status="running",
                    claimed_by=worker_id,
                    lease_expires_at=now + lease,
                    attempts=_TASKS.c.attempts + 1,
                    error=None,
                    finished_at=None,
                )
            )
            row = (await session.execute(select(_TASKS).where(_TASKS.c.id == task_id))).one()
        return record(TaskRecord, row)

    async def renew(self, task_id: int, worker_id: str, *, lease_s: float) -> bool:
        """Extend the lease to ``lease_s`` from now; ``False`` if the worker lost the task."""
        lease = self._check_lease(lease_s)
        async with self._db.write() as session:
            result = await session.execute(
                self._owned(task_id, worker_id).values(lease_expires_at=self._db.now() + lease)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    async def finish(
        self, task_id: int, worker_id: str, *, status: str = "done", error: str | None = None
    ) -> bool:
        """Mark the task ``done`` or ``failed`` (with ``error``); ``False`` if not owned."""
        if status not in ("done", "failed"):
            raise ConfigError(f"a claimed task finishes 'done' or 'failed', not {status!r}")
        async with self._db.write() as session:
            result = await session.execute(
                self._owned(task_id, worker_id).values(
                    status=status, error=error, lease_expires_at=None, finished_at=utcnow()
                )
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    async def release(self, task_id: int, worker_id: str) -> bool:
        """Give the task back (``pending``, claimable at once); ``False`` if not owned."""
        async with self._db.write() as session:
            result = await session.execute(
                self._owned(task_id, worker_id).values(
                    status="pending", claimed_by=None, lease_expires_at=None
                )
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    async def live_leases(self, run_id: int, *, exclude: str | None = None) -> int:
        """How many tasks of the run are held under an unexpired lease (by others than
        ``exclude``): work that may still finish, or come back when its worker dies."""
        query = select(func.count()).where(
            _TASKS.c.run_id == run_id,
            _TASKS.c.status == "running",
            _TASKS.c.lease_expires_at >= self._db.now(),
        )
        if exclude is not None:
            query = query.where(or_(_TASKS.c.claimed_by.is_(None), _TASKS.c.claimed_by != exclude))
        async with self._db.read() as session:
            return int(await session.scalar(query) or 0)

    @staticmethod
    def _owned(task_id: int, worker_id: str) -> Any:
        return update(_TASKS).where(
            _TASKS.c.id == task_id,
            _TASKS.c.claimed_by == worker_id,
            _TASKS.c.status == "running",
        )
