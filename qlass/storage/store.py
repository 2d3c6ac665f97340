"""The :class:`TreeStore` facade: open a database, migrate it, and hand out repositories."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import structlog
from sqlalchemy import exc

from qlass.errors import DatabaseUnavailableError
from qlass.storage._db import Database
from qlass.storage.calls import PolicyCallCache
from qlass.storage.checkpoints import CheckpointRepository
from qlass.storage.claims import ClaimRepository
from qlass.storage.engine import (
    check_writable,
    make_engine,
    make_writer_engine,
    normalize_url,
    safe_url,
    sqlite_file,
    translate_error,
)
from qlass.storage.episodes import EpisodeRepository
from qlass.storage.export import export_triples
from qlass.storage.labels import LabelRepository
from qlass.storage.runs import RunRepository
from qlass.storage.schema import SchemaState, ensure_schema
from qlass.storage.stage_status import StageRepository
from qlass.storage.studies import StudyRepository
from qlass.storage.tasks import TaskRepository
from qlass.storage.trees import TreeRepository
from qlass.types import LabelledStep

__all__ = ["TreeStore"]

log = structlog.get_logger(__name__)


class TreeStore:
    """Exploration trees, Q labels, runs and the policy-call cache in one database.

    Open with ``store = await TreeStore.open(url)`` (or ``async with await
    TreeStore.open(url) as store``) and close with :meth:`aclose`. The store is safe to use
    from many coroutines at once. Its parts:

    - ``runs``: :class:`~qlass.storage.runs.RunRepository`
    - ``tasks``: :class:`~qlass.storage.tasks.TaskRepository`
    - ``claims``: :class:`~qlass.storage.claims.ClaimRepository` (task leases for workers)
    - ``trees``: :class:`~qlass.storage.trees.TreeRepository` (nodes; relabels on leaves)
    - ``labels``: :class:`~qlass.storage.labels.LabelRepository` (Q-label sets)
    - ``call_cache``: :class:`~qlass.storage.calls.PolicyCallCache` (a ``CallCache``)
    - ``checkpoints``, ``stages``, ``episodes``
    - ``studies``: :class:`~qlass.storage.studies.StudyRepository` (seeds of one config)
    """

    def __init__(self, db: Database, schema: SchemaState) -> None:
        self._db = db
        self.schema = schema
        self.runs = RunRepository(db)
        self.tasks = TaskRepository(db)
        self.claims = ClaimRepository(db)
        self.trees = TreeRepository(db)
        self.labels = LabelRepository(db)
        self.call_cache = PolicyCallCache(db)
        self.checkpoints = CheckpointRepository(db)
        self.stages = StageRepository(db)
        self.episodes = EpisodeRepository(db)
        self.studies = StudyRepository(db)
        self._closed = False

    @classmethod
    async def open(
        cls,
        url: str | Path,
        *,
        upgrade: bool = True,
        read_only: bool = False,
        busy_timeout_s: float = 30.0,
        writer_thread: bool = True,
        **engine_kwargs: Any,
    ) -> TreeStore:
        """Open the store at ``url`` (a SQLAlchemy URL or a SQLite file path).

        A missing SQLite file (and its directory) is created, and a SQLite store this
        process could not write (a read-only file or folder) is refused at once, before any
        work. The schema is migrated to the newest revision unless ``upgrade`` is false, in
        which case a store that is missing or not at head is refused. ``read_only`` (which
        implies ``upgrade=False``) is for commands that only look: the database is opened
        so that nothing can be written to it (see :mod:`qlass.storage.engine`).
        ``writer_thread=False`` sends a SQLite file's node and label writes through the
        async driver too instead of the store's writer thread (the same results, several
        times the CPU; for comparison, see ``benchmarks/bench_store.py``).

        Raises:
            DatabaseUnavailableError: the database cannot be reached, is locked, is
                read-only where it must be written, or the file is not a database.
            SchemaVersionError: the schema is newer than this qlass, or foreign.
        """
        parsed = normalize_url(url)
        path = sqlite_file(parsed)
        upgrade = upgrade and not read_only
        if path is not None and upgrade:
            try:
                await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
            except OSError as error:
                raise DatabaseUnavailableError(
                    f"cannot create the directory of {path}: {error.strerror or error}"
                ) from error
        elif path is not None and not await asyncio.to_thread(path.is_file):
            # Checked here rather than left to SQLite, which would create an empty file (and
            # aiosqlite's failed-connect clean-up can outlive the event loop).
            raise DatabaseUnavailableError(
                f"no tree store at {path}: create it with `qlass db upgrade --db {path}` "
                "(or open it with upgrade=True)"
            )
        if path is not None and not read_only:
            await asyncio.to_thread(check_writable, path)
        engine = await asyncio.to_thread(
            make_engine,
            parsed,
            busy_timeout_s=busy_timeout_s,
            read_only=read_only,
            **engine_kwargs,
        )
        try:
            schema = await ensure_schema(engine, upgrade=upgrade)
        except (exc.DBAPIError, exc.TimeoutError, OSError) as error:
            await engine.dispose()
            raise translate_error(error, parsed) from error
        except BaseException:
            await engine.dispose()
            raise
        writer = None
        if path is not None and not read_only and writer_thread:
            writer = make_writer_engine(parsed, busy_timeout_s=busy_timeout_s)
        log.debug("store opened", url=safe_url(parsed), revision=schema.after)
        return cls(Database(engine, writer), schema)

    @property
    def url(self) -> str:
        """The database URL with any password masked."""
        return safe_url(self._db.engine.url)

    @property
    def dialect(self) -> str:
        """'sqlite', 'postgresql', ..."""
        return self._db.dialect

    async def export_triples(
        self,
        label_set_id: int,
        *,
        max_per_tree: int = 300,
        seed: int = 0,
        tasks: Collection[str] | None = None,
        split: str | None = None,
    ) -> list[LabelledStep]:
        """QNet training triples of a label set (see :mod:`qlass.storage.export`)."""
        return await export_triples(
            self._db,
            label_set_id,
            max_per_tree=max_per_tree,
            seed=seed,
            tasks=tasks,
            split=split,
        )

    async def aclose(self) -> None:
        """Close every connection. Idempotent."""
        if not self._closed:
            self._closed = True
            await self.trees.wait_idle()
            await self._db.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"TreeStore({self.url!r}, revision={self.schema.after!r})"
