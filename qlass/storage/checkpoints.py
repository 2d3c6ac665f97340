"""QNet checkpoints recorded against the run and label set they were trained on."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import select

from qlass.storage._db import Database, record
from qlass.storage.models import QNetCheckpoint, table, utcnow
from qlass.storage.records import CheckpointRecord

__all__ = ["CheckpointRepository"]

_CHECKPOINTS = table(QNetCheckpoint)


class CheckpointRepository:
    """Record trained QNet checkpoint directories and find the latest one."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(
        self,
        run_id: int,
        path: str | Path,
        *,
        label_set_id: int | None = None,
        metrics: Mapping[str, Any] | None = None,
    ) -> CheckpointRecord:
        """Record a checkpoint directory (stored as given; pass an absolute path to be safe)."""
        row = {
            "run_id": run_id,
            "label_set_id": label_set_id,
            "path": str(path),
            "metrics": dict(metrics or {}),
            "created_at": utcnow(),
        }
        async with self._db.write() as session:
            checkpoint_id = (
                await session.execute(
                    _CHECKPOINTS.insert().values(**row).returning(_CHECKPOINTS.c.id)
                )
            ).scalar_one()
        return record(CheckpointRecord, {**row, "id": checkpoint_id})

    async def latest(
        self, run_id: int, *, label_set_id: int | None = None
    ) -> CheckpointRecord | None:
        """The newest checkpoint of the run (of one label set if given), or ``None``."""
        query = select(_CHECKPOINTS).where(_CHECKPOINTS.c.run_id == run_id)
        if label_set_id is not None:
            query = query.where(_CHECKPOINTS.c.label_set_id == label_set_id)
        async with self._db.read() as session:
            row = (await session.execute(query.order_by(_CHECKPOINTS.c.id.desc()).limit(1))).first()
        return None if row is None else record(CheckpointRecord, row)

    async def of_run(self, run_id: int) -> list[CheckpointRecord]:
        """All checkpoints of the run, oldest first."""
        async with self._db.read() as session:
            rows = await session.execute(
                select(_CHECKPOINTS)
                .where(_CHECKPOINTS.c.run_id == run_id)
                .order_by(_CHECKPOINTS.c.id)
            )
            return [record(CheckpointRecord, row) for row in rows]
