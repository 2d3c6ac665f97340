"""Runs: a named configuration with its code version and seed; plus the run summary."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy import Select, and_, case, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from qlass.config import StoreConfig
from qlass.errors import ConfigError, UnknownNameError
from qlass.storage._db import Database, record
from qlass.storage.models import (
    Episode,
    LabelSet,
    QLabel,
    QNetCheckpoint,
    Run,
    RunHolder,
    Stage,
    Task,
    table,
    utcnow,
)
from qlass.storage.records import (
    CheckpointRecord,
    EpisodeSummary,
    LabelSetRecord,
    LabelSetSummary,
    RunRecord,
    RunSummary,
    StageRecord,
)
from qlass.storage.trees import node_counts
from qlass.types import Usage

__all__ = ["RUN_LEASE_S", "RunRepository"]

_RUNS = table(Run)
_HOLDERS = table(RunHolder)

RUN_LEASE_S: float = StoreConfig.model_fields["run_lease_s"].default
"""How long a run counts as running after its process last renewed the lease (default:
the config's ``store.run_lease_s``)."""


class RunRepository:
    """Create, find and summarise runs. Run names are unique within a store."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def _select(self) -> Select[Any]:
        """Every run column, with a ``running`` run whose lease has lapsed read as
        ``interrupted`` (runs from before leases existed have none and read as stored)."""
        lapsed = and_(_RUNS.c.status == "running", _RUNS.c.lease_expires_at < self._db.now())
        status = case((lapsed, "interrupted"), else_=_RUNS.c.status).label("status")
        return select(*(c for c in _RUNS.c if c.name != "status"), status)

    async def create(
        self,
        name: str,
        *,
        config: Mapping[str, Any],
        config_fingerprint: str = "",
        code_version: str = "",
        seed: int = 0,
        status: str = "created",
    ) -> RunRecord:
        """Record a new run. ``config`` is the resolved configuration as JSON-able data.

        Raises:
            ConfigError: a run with this name exists already.
        """
        now = utcnow()
        row = {
            "name": name,
            "config": dict(config),
            "config_fingerprint": config_fingerprint,
            "code_version": code_version,
            "seed": seed,
            "status": status,
            "spent_tokens": 0,
            "spent_usd": 0.0,
            "created_at": now,
            "updated_at": now,
        }
        async with self._db.write() as session:
            taken = await session.scalar(select(_RUNS.c.id).where(_RUNS.c.name == name))
            if taken is not None:
                raise ConfigError(
                    f"a run named {name!r} exists already (id {taken}); pick another name "
                    "or resume that run"
                )
            run_id = (
                await session.execute(_RUNS.insert().values(**row).returning(_RUNS.c.id))
            ).scalar_one()
        return record(RunRecord, {**row, "id": run_id})

    async def find(self, name: str) -> RunRecord | None:
        """The run with this name, or ``None``."""
        async with self._db.read() as session:
            row = (await session.execute(self._select().where(_RUNS.c.name == name))).first()
        return None if row is None else record(RunRecord, row)

    async def get(self, ref: int | str) -> RunRecord:
        """A run by id or by name (a string of digits is tried as a name, then as an id).

        Raises:
            UnknownNameError: no such run; the message lists the known names.
        """
        query = self._select()
        if isinstance(ref, int):
            query = query.where(_RUNS.c.id == ref)
        elif ref.isdigit():
            query = query.where((_RUNS.c.name == ref) | (_RUNS.c.id == int(ref))).order_by(
                _RUNS.c.name != ref
            )
        else:
            query = query.where(_RUNS.c.name == ref)
        async with self._db.read() as session:
            row = (await session.execute(query)).first()
            if row is None:
                names = (await session.scalars(select(_RUNS.c.name).order_by(_RUNS.c.id))).all()
        if row is None:
            known = ", ".join(names[-20:]) if names else "none"
            raise UnknownNameError(f"no run {ref!r} in the store (runs: {known})")
        return record(RunRecord, row)

    async def all(self) -> list[RunRecord]:
        """Every run, oldest first."""
        async with self._db.read() as session:
            rows = await session.execute(self._select().order_by(_RUNS.c.id))
            return [record(RunRecord, row) for row in rows]

    async def set_status(self, run_id: int, status: str, *, lease_s: float = RUN_LEASE_S) -> None:
        """Record the run's status; ``running`` takes a lease of ``lease_s`` seconds (renew
        it with :meth:`renew_lease` while the work goes on), any other status drops it."""
        lease = self._db.now() + timedelta(seconds=lease_s) if status == "running" else None
        async with self._db.write() as session:
            result = await session.execute(
                update(_RUNS)
                .where(_RUNS.c.id == run_id)
                .values(status=status, updated_at=utcnow(), lease_expires_at=lease)
            )
            if result.rowcount == 0:  # type: ignore[attr-defined]
                raise UnknownNameError(f"no run with id {run_id}")

    async def enter(self, run_id: int, holder: str, *, lease_s: float = RUN_LEASE_S) -> None:
        """Record that ``holder`` (one process) works on the run: the run reads as
        ``running`` while this or any other holder's lease is live. Renew it with
        :meth:`renew_lease`; end it with :meth:`leave`."""
        expires = self._db.now() + timedelta(seconds=lease_s)
        async with self._db.write() as session:
            await self._lock(session, run_id)
            held = and_(_HOLDERS.c.run_id == run_id, _HOLDERS.c.holder == holder)
            await session.execute(delete(_HOLDERS).where(held))
            await session.execute(
                _HOLDERS.insert().values(run_id=run_id, holder=holder, expires_at=expires)
            )
            await session.execute(
                update(_RUNS)
                .where(_RUNS.c.id == run_id)
                .values(status="running", updated_at=utcnow(), lease_expires_at=expires)
            )

    async def renew_lease(self, run_id: int, holder: str, *, lease_s: float = RUN_LEASE_S) -> None:
        """Extend ``holder``'s lease and the run's to ``lease_s`` seconds from now (a
        heartbeat). A holder that has left renews nothing; one whose lease had lapsed, and
        the run been finished by the others meanwhile, makes the run ``running`` again."""
        expires = self._db.now() + timedelta(seconds=lease_s)
        async with self._db.write() as session:
            renewed = await session.execute(
                update(_HOLDERS)
                .where(_HOLDERS.c.run_id == run_id, _HOLDERS.c.holder == holder)
                .values(expires_at=expires)
            )
            if renewed.rowcount:  # type: ignore[attr-defined]
                await session.execute(
                    update(_RUNS)
                    .where(_RUNS.c.id == run_id)
                    .values(status="running", lease_expires_at=expires)
                )

    async def leave(self, run_id: int, holder: str, status: str) -> str:
        """End ``holder``'s work on the run. The last live holder to leave records
        ``status``; while others still hold live leases the run stays ``running``.
        Returns the run's status after this call."""
        async with self._db.write() as session:
            await self._lock(session, run_id)
            await session.execute(
                delete(_HOLDERS).where(_HOLDERS.c.run_id == run_id, _HOLDERS.c.holder == holder)
            )
            others = await session.scalar(
                select(func.count())
                .select_from(_HOLDERS)
                .where(_HOLDERS.c.run_id == run_id, _HOLDERS.c.expires_at > self._db.now())
            )
            if others:
                return "running"
            await session.execute(
                update(_RUNS)
                .where(_RUNS.c.id == run_id)
                .values(status=status, updated_at=utcnow(), lease_expires_at=None)
            )
        return status

    async def live_holders(self, run_id: int) -> list[str]:
        """The names of the holders whose leases are live, in name order."""
        async with self._db.read() as session:
            names = await session.scalars(
                select(_HOLDERS.c.holder)
                .where(_HOLDERS.c.run_id == run_id, _HOLDERS.c.expires_at > self._db.now())
                .order_by(_HOLDERS.c.holder)
            )
            return list(names)

    async def release_holders(self, run_id: int, prefix: str) -> int:
        """Forget the holders whose names start with ``prefix``: processes the caller knows
        have ended (Ray actors whose calls returned, a killed one's restarted process
        included), so that their lapsing leases do not keep the run reading ``running``.
        Returns how many were forgotten."""
        async with self._db.write() as session:
            result = await session.execute(
                delete(_HOLDERS).where(
                    _HOLDERS.c.run_id == run_id,
                    _HOLDERS.c.holder.startswith(prefix, autoescape=True),
                )
            )
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def _lock(self, session: AsyncSession, run_id: int) -> None:
        """Take the run's row lock (PostgreSQL; SQLite's write transaction holds the whole
        file), so that holders entering and leaving at once see each other.

        Raises:
            UnknownNameError: no such run.
        """
        found = await session.scalar(
            select(_RUNS.c.id).where(_RUNS.c.id == run_id).with_for_update()
        )
        if found is None:
            raise UnknownNameError(f"no run with id {run_id}")

    async def add_spend(self, run_id: int, usage: Usage) -> tuple[int, float]:
        """Add fresh policy usage to the run's recorded spend (an atomic increment, so
        workers of one run add up); returns the run's totals (tokens, USD) after it, which
        include what the run's other processes recorded."""
        spent = (_RUNS.c.spent_tokens, _RUNS.c.spent_usd)
        async with self._db.write() as session:
            if not usage.total_tokens and not usage.cost_usd:
                row = (await session.execute(select(*spent).where(_RUNS.c.id == run_id))).first()
            else:
                row = (
                    await session.execute(
                        update(_RUNS)
                        .where(_RUNS.c.id == run_id)
                        .values(
                            spent_tokens=_RUNS.c.spent_tokens + usage.total_tokens,
                            spent_usd=_RUNS.c.spent_usd + usage.cost_usd,
                        )
                        .returning(*spent)
                    )
                ).first()
        if row is None:
            raise UnknownNameError(f"no run with id {run_id}")
        return int(row[0]), float(row[1])

    async def summary(self, ref: int | str) -> RunSummary:
        """Counts over everything the run holds (what ``qlass runs show`` prints)."""
        run = await self.get(ref)
        async with self._db.read() as session:
            status_rows = await session.execute(
                select(Task.status, func.count()).where(Task.run_id == run.id).group_by(Task.status)
            )
            by_status = {status: int(count) for status, count in status_rows}
            nodes, leaves = (await session.execute(node_counts(run.id))).one()
            label_rows = await session.execute(
                select(table(LabelSet), func.count(QLabel.node_id).label("labelled"))
                .outerjoin(QLabel, QLabel.label_set_id == LabelSet.id)
                .where(LabelSet.run_id == run.id)
                .group_by(*table(LabelSet).c)
                .order_by(LabelSet.id)
            )
            label_sets = tuple(
                LabelSetSummary(record(LabelSetRecord, row), row.labelled) for row in label_rows
            )
            stages = tuple(
                record(StageRecord, row)
                for row in await session.execute(
                    select(table(Stage))
                    .where(Stage.run_id == run.id)
                    .order_by(Stage.started_at, Stage.name)
                )
            )
            checkpoints = tuple(
                record(CheckpointRecord, row)
                for row in await session.execute(
                    select(table(QNetCheckpoint))
                    .where(QNetCheckpoint.run_id == run.id)
                    .order_by(QNetCheckpoint.id)
                )
            )
            episode_rows = await session.execute(
                select(
                    Episode.stage,
                    Episode.strategy,
                    func.count(),
                    func.avg(Episode.final_score),
                    func.avg(case((Episode.success, 1.0), else_=0.0)),
                    func.sum(Episode.completion_tokens),
                )
                .where(Episode.run_id == run.id)
                .group_by(Episode.stage, Episode.strategy)
                .order_by(Episode.stage, Episode.strategy)
            )
            episodes = tuple(
                EpisodeSummary(stage, strategy, n, float(score), float(rate), int(tokens))
                for stage, strategy, n, score, rate, tokens in episode_rows
            )
        return RunSummary(
            run=run,
            tasks_by_status=by_status,
            nodes=int(nodes),
            finished_leaves=int(leaves),
            label_sets=label_sets,
            stages=stages,
            checkpoints=checkpoints,
            episodes=episodes,
        )
