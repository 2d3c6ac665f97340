"""Studies: a base configuration, the runs of its seeds, and the last computed summary."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select, update

from qlass.errors import ConfigError, UnknownNameError
from qlass.storage._db import Database, record, upsert
from qlass.storage.engine import safe_url
from qlass.storage.models import Run, Study, StudyRun, table, utcnow
from qlass.storage.records import StudyMemberRecord, StudyRecord

__all__ = ["StudyRepository"]

_STUDIES = table(Study)
_MEMBERS = table(StudyRun)
_RUNS = table(Run)


class StudyRepository:
    """Create and find studies, record the run of each seed, keep the summary."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self,
        name: str,
        *,
        config: Mapping[str, Any],
        config_fingerprint: str,
        code_version: str,
        settings: Mapping[str, Any],
    ) -> StudyRecord:
        """Record a new study.

        Raises:
            ConfigError: a study with this name exists already.
        """
        now = utcnow()
        row = {
            "name": name,
            "config": dict(config),
            "config_fingerprint": config_fingerprint,
            "code_version": code_version,
            "settings": dict(settings),
            "status": "created",
            "summary": {},
            "created_at": now,
            "updated_at": now,
        }
        async with self._db.write() as session:
            taken = await session.scalar(select(_STUDIES.c.id).where(_STUDIES.c.name == name))
            if taken is not None:
                raise ConfigError(f"a study named {name!r} exists already (id {taken})")
            study_id = (
                await session.execute(_STUDIES.insert().values(**row).returning(_STUDIES.c.id))
            ).scalar_one()
        return record(StudyRecord, {**row, "id": study_id})

    async def find(self, name: str) -> StudyRecord | None:
        """The study with this name, or ``None``."""
        async with self._db.read() as session:
            row = (await session.execute(select(_STUDIES).where(_STUDIES.c.name == name))).first()
        return None if row is None else record(StudyRecord, row)

    async def get(self, name: str) -> StudyRecord:
        """The study with this name.

        Raises:
            UnknownNameError: no such study; the message lists the known ones.
        """
        found = await self.find(name)
        if found is None:
            known = ", ".join(s.name for s in await self.all()) or "none"
            raise UnknownNameError(f"no study {name!r} in the store (studies: {known})")
        return found

    async def all(self) -> list[StudyRecord]:
        """Every study, oldest first."""
        async with self._db.read() as session:
            rows = await session.execute(select(_STUDIES).order_by(_STUDIES.c.id))
            return [record(StudyRecord, row) for row in rows]

    async def update(
        self,
        study_id: int,
        *,
        settings: Mapping[str, Any] | None = None,
        status: str | None = None,
        summary: Mapping[str, Any] | None = None,
    ) -> None:
        """Change the study's settings, status or stored summary."""
        values: dict[str, Any] = {"updated_at": utcnow()}
        if settings is not None:
            values["settings"] = dict(settings)
        if status is not None:
            values["status"] = status
        if summary is not None:
            values["summary"] = dict(summary)
        async with self._db.write() as session:
            result = await session.execute(
                update(_STUDIES).where(_STUDIES.c.id == study_id).values(**values)
            )
            if result.rowcount == 0:  # type: ignore[attr-defined]
                # Say which store and what it holds: an id missing from the store the
                # caller created it in means the caller opened another database.
                names = await session.scalars(select(_STUDIES.c.name).order_by(_STUDIES.c.id))
                known = ", ".join(names) or "none"
                raise UnknownNameError(
                    f"no study with id {study_id} in {safe_url(self._db.engine.url)} "
                    f"(studies: {known})"
                )

    async def set_member(self, study_id: int, seed: int, run_id: int, eval_stage: str) -> None:
        """Record (or update) the run of ``seed`` and the stage of its evaluation episodes."""
        row = {"study_id": study_id, "seed": seed, "run_id": run_id, "eval_stage": eval_stage}
        await self._db.run_write(
            upsert, _MEMBERS, [row], ("study_id", "seed"), ("run_id", "eval_stage")
        )

    async def members(self, study_id: int) -> list[StudyMemberRecord]:
        """The study's runs, by seed."""
        query = (
            select(_MEMBERS, _RUNS.c.name.label("run_name"))
            .join(_RUNS, _RUNS.c.id == _MEMBERS.c.run_id)
            .where(_MEMBERS.c.study_id == study_id)
            .order_by(_MEMBERS.c.seed)
        )
        async with self._db.read() as session:
            return [record(StudyMemberRecord, row) for row in await session.execute(query)]
