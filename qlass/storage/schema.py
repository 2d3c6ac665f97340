"""Schema versions: check a database's Alembic revision and upgrade it to head.

The revisions live in ``migrations/versions`` inside the package and are run directly (no
``alembic.ini``, no ``env.py``), in one transaction that also holds the database's write
lock (``BEGIN IMMEDIATE`` on SQLite, an advisory lock on PostgreSQL), so two processes
opening the same fresh store do not both create it. Reading the revision files is blocking
file I/O, so it happens in a worker thread before the migration runs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import structlog
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from qlass.errors import SchemaVersionError
from qlass.storage.engine import WRITE_OPTION, safe_url
from qlass.storage.models import Base

__all__ = [
    "SchemaState",
    "check_foreign_keys",
    "ensure_schema",
    "head_revision",
    "load_migrations",
    "read_revision",
    "sqlite_foreign_keys",
]

log = structlog.get_logger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Any constant works; it only has to be the same for every qlass process.
_PG_MIGRATION_LOCK = 0x71A55


@dataclass(frozen=True, slots=True)
class SchemaState:
    """Where a database stands: its revision before and after :func:`ensure_schema`."""

    before: str | None
    after: str
    head: str

    @property
    def upgraded(self) -> bool:
        return self.before != self.after


@cache
def load_migrations() -> ScriptDirectory:
    """The package's revision scripts, fully loaded (blocking I/O: call from a thread)."""
    script = ScriptDirectory(str(MIGRATIONS_DIR))
    script.revision_map.heads  # noqa: B018 (loads every revision module now)
    return script


def head_revision() -> str:
    """The newest schema revision this version of qlass knows (blocking on first call)."""
    head = load_migrations().get_current_head()
    assert head is not None, "qlass ships at least one migration"
    return head


async def ensure_schema(engine: AsyncEngine, *, upgrade: bool = True) -> SchemaState:
    """Check the database's schema revision and, if ``upgrade``, migrate it to head.

    Raises:
        SchemaVersionError: the revision is unknown to this qlass (a newer qlass wrote it),
            the database holds other tables and no qlass revision, or it is behind head
            and ``upgrade`` is false.
    """
    script = await asyncio.to_thread(load_migrations)
    async with engine.execution_options(**{WRITE_OPTION: True}).connect() as connection:
        # Off before the transaction begins (SQLite ignores the pragma inside one), on again
        # after it ended, whatever happened in between.
        await connection.run_sync(sqlite_foreign_keys, False)
        try:
            async with connection.begin():
                state = await connection.run_sync(
                    _check_and_upgrade, script, upgrade, safe_url(engine.url)
                )
        finally:
            await connection.run_sync(sqlite_foreign_keys, True)
    if state.upgraded:
        log.info(
            "store schema upgraded",
            url=safe_url(engine.url),
            before=state.before,
            after=state.after,
        )
    return state


def sqlite_foreign_keys(connection: Connection, on: bool) -> None:
    """Turn SQLite's foreign-key enforcement on or off for ``connection`` (a no-op on other
    databases); call it outside a transaction.

    Migrations run with it off: SQLite alters a table by copying it and dropping the old
    one (Alembic's batch mode), and with foreign keys on, dropping a parent table deletes
    its rows first, cascading to every child row (revision 0004's rebuild of
    ``label_sets`` emptied ``q_labels`` that way). :func:`check_foreign_keys` verifies the
    result instead.
    """
    if connection.dialect.name != "sqlite":
        return
    cursor = connection.connection.cursor()
    try:
        cursor.execute(f"PRAGMA foreign_keys = {'ON' if on else 'OFF'}")
    finally:
        cursor.close()


def check_foreign_keys(connection: Connection, where: str) -> None:
    """Raise if a migration left rows whose parent is missing (SQLite, keys off)."""
    if connection.dialect.name != "sqlite":
        return
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        tables = sorted({row[0] for row in broken})
        raise SchemaVersionError(
            f"migrating {where} would leave {len(broken)} rows without their parent row (in "
            f"{', '.join(tables)}); nothing was changed"
        )


async def read_revision(engine: AsyncEngine) -> str | None:
    """The database's schema revision (``None``: no qlass schema), changing nothing."""
    async with engine.connect() as connection:
        heads = await connection.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_heads()
        )
    return ", ".join(heads) if heads else None


def _check_and_upgrade(
    connection: Connection, script: ScriptDirectory, upgrade: bool, where: str
) -> SchemaState:
    if upgrade and connection.dialect.name == "postgresql":  # only migrations need it
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
    head = script.get_current_head()
    assert head is not None
    known = [rev.revision for rev in script.walk_revisions()]
    current = MigrationContext.configure(connection).get_current_heads()
    unknown = [rev for rev in current if rev not in known]
    if unknown:
        raise SchemaVersionError(
            f"database {where} has schema revision {', '.join(unknown)}, unknown to this "
            f"version of qlass (it knows {', '.join(reversed(known))}; head {head}). It was "
            "probably written by a newer qlass: upgrade qlass to use it."
        )
    if len(current) > 1:
        raise SchemaVersionError(
            f"database {where} has several schema heads ({', '.join(current)}); expected one"
        )
    before = current[0] if current else None
    if before is None:
        tables = [t for t in inspect(connection).get_table_names() if t != "alembic_version"]
        if tables:
            raise SchemaVersionError(
                f"database {where} holds tables ({', '.join(sorted(tables)[:5])}...) but no "
                "qlass schema revision: it is not a qlass tree store"
            )
    if before == head:
        return SchemaState(before, head, head)
    if not upgrade:
        raise SchemaVersionError(
            f"database {where} is at schema revision {before or '(empty)'}, this qlass needs "
            f"{head}: run `qlass db upgrade --db ...` first"
        )

    def steps(rev: object, _context: MigrationContext) -> list[object]:
        # What `alembic upgrade head` runs, minus env.py (loaded from disk on every call).
        return list(script._upgrade_revs(head, rev))  # type: ignore[arg-type]

    with EnvironmentContext(Config(), script, fn=steps, destination_rev=head) as env:
        env.configure(connection=connection, target_metadata=Base.metadata)
        with env.begin_transaction():
            env.run_migrations()
    check_foreign_keys(connection, where)
    return SchemaState(before, head, head)
