"""Stage status of a run (the ``stages`` table): a rerun skips a stage done with the same config.

A stage is keyed by (run, name); its ``fingerprint`` is the hash of the configuration that
matters to it. :meth:`StageRepository.is_done` is true only for a stage finished with the
same fingerprint; starting a stage again resets it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select

from qlass.errors import ConfigError, UnknownNameError
from qlass.storage._db import Database, record
from qlass.storage.models import Stage, table, utcnow
from qlass.storage.records import StageRecord, StageStatus

__all__ = ["StageRepository"]

_STAGES = table(Stage)
_STATUSES = ("running", "done", "failed")


class StageRepository:
    """Get and put stage records (``bc``, ``explore``, ``train_qnet``, ``eval:greedy``...)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, run_id: int, name: str) -> StageRecord | None:
        async with self._db.read() as session:
            row = (
                await session.execute(
                    select(_STAGES).where(_STAGES.c.run_id == run_id, _STAGES.c.name == name)
                )
            ).first()
        return None if row is None else record(StageRecord, row)

    async def is_done(self, run_id: int, name: str, fingerprint: str) -> bool:
        """Whether the stage finished successfully with this configuration fingerprint."""
        stage = await self.get(run_id, name)
        return stage is not None and stage.status == "done" and stage.fingerprint == fingerprint

    async def put(
        self,
        run_id: int,
        name: str,
        *,
        status: StageStatus,
        fingerprint: str | None = None,
        metrics: Mapping[str, Any] | None = None,
    ) -> StageRecord:
        """Create or update a stage.

        'running' on a new stage, a finished ('done'/'failed') one, or with a different
        fingerprint (re)starts it: start time now, finish time and metrics cleared. 'running'
        on a stage already running with the same fingerprint (a resumed or interrupted stage)
        keeps its start time. 'done'/'failed' stamp the finish time. ``metrics`` are merged
        into the stored ones; ``fingerprint`` is required for a stage not stored yet.
        """
        if status not in _STATUSES:
            raise ConfigError(f"stage status must be one of {_STATUSES}, got {status!r}")
        now = utcnow()
        async with self._db.write() as session:
            stage = await session.get(Stage, (run_id, name), with_for_update=True)
            if stage is None:
                if fingerprint is None:
                    raise UnknownNameError(f"stage {name!r} of run {run_id} was never started")
                stage = Stage(run_id=run_id, name=name, fingerprint=fingerprint, metrics={})
                session.add(stage)
                restart = True
            else:
                restart = stage.status != "running" or (
                    fingerprint is not None and fingerprint != stage.fingerprint
                )
                if fingerprint is not None:
                    stage.fingerprint = fingerprint
            if status == "running" and restart:
                stage.started_at, stage.finished_at, stage.metrics = now, None, {}
            elif status != "running":
                stage.finished_at = now
            stage.status = status
            if metrics:
                stage.metrics = {**(stage.metrics or {}), **metrics}
            await session.flush()
            result = record(StageRecord, stage.__dict__)
        return result

    async def start(self, run_id: int, name: str, fingerprint: str) -> StageRecord:
        """Mark the stage running with this configuration fingerprint."""
        return await self.put(run_id, name, status="running", fingerprint=fingerprint)

    async def finish(
        self,
        run_id: int,
        name: str,
        *,
        metrics: Mapping[str, Any] | None = None,
        failed: bool = False,
    ) -> StageRecord:
        """Mark a started stage done (or failed), recording its metrics (tokens, time...)."""
        return await self.put(run_id, name, status="failed" if failed else "done", metrics=metrics)

    async def of_run(self, run_id: int) -> list[StageRecord]:
        """The run's stages in start order."""
        async with self._db.read() as session:
            rows = await session.execute(
                select(_STAGES)
                .where(_STAGES.c.run_id == run_id)
                .order_by(_STAGES.c.started_at, _STAGES.c.name)
            )
            return [record(StageRecord, row) for row in rows]
