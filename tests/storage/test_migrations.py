"""Schema versions: a fresh DB is upgraded to head, unknown or foreign DBs are refused, and
the Alembic revisions create exactly the schema the ORM models describe."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from argparse import Namespace
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text

from qlass.errors import DatabaseUnavailableError, SchemaVersionError
from qlass.storage import TreeStore, head_revision
from qlass.storage.engine import make_engine
from qlass.storage.models import Base
from qlass.storage.schema import MIGRATIONS_DIR
from qlass.testing import full_tree, new_run, synthetic_node


def _sqlite(path: Path, *statements: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:
        for statement in statements:
            conn.execute(statement)
    conn.close()


def _revision(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    conn.close()
    return [row[0] for row in rows]


async def test_fresh_database_is_upgraded_to_head(db_path: Path) -> None:
    async with await TreeStore.open(db_path) as store:
        assert store.schema.before is None
        assert store.schema.after == store.schema.head == head_revision()
        assert store.schema.upgraded
    assert _revision(db_path) == [head_revision()]
    async with await TreeStore.open(db_path) as store:  # second open: nothing to do
        assert store.schema.before == head_revision()
        assert not store.schema.upgraded


async def test_unknown_revision_is_refused_with_the_versions_named(store_url: str) -> None:
    async with await TreeStore.open(store_url) as store, store._db.write() as session:
        await session.execute(text("UPDATE alembic_version SET version_num = 'f00dcafe9999'"))
    with pytest.raises(SchemaVersionError) as info:
        await TreeStore.open(store_url)
    message = str(info.value)
    assert "f00dcafe9999" in message
    assert head_revision() in message
    assert "newer qlass" in message
    engine = make_engine(store_url)
    try:
        async with engine.connect() as connection:  # left untouched
            version = await connection.scalar(text("SELECT version_num FROM alembic_version"))
    finally:
        await engine.dispose()
    assert version == "f00dcafe9999"


async def test_file_that_is_not_a_database_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"this is a text file, not SQLite\n" * 200)
    with pytest.raises(DatabaseUnavailableError, match="not a usable database"):
        await TreeStore.open(path)
    assert path.read_bytes().startswith(b"this is a text file")


async def test_foreign_database_is_not_taken_over(db_path: Path) -> None:
    _sqlite(db_path, "CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    with pytest.raises(SchemaVersionError, match="not a qlass tree store"):
        await TreeStore.open(db_path)


async def test_open_without_upgrade_refuses_a_database_behind_head(db_path: Path) -> None:
    with pytest.raises(DatabaseUnavailableError, match="no tree store"):
        await TreeStore.open(db_path, upgrade=False)
    assert not await asyncio.to_thread(db_path.exists)  # nothing created
    _sqlite(db_path, "SELECT 1")  # an empty SQLite file
    with pytest.raises(SchemaVersionError, match="qlass db upgrade"):
        await TreeStore.open(db_path, upgrade=False)
    async with await TreeStore.open(db_path):
        pass
    async with await TreeStore.open(db_path, upgrade=False) as store:
        assert store.schema.after == head_revision()


async def test_unreachable_directory_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DatabaseUnavailableError, match="no tree store at"):
        await TreeStore.open(blocker / "sub" / "qlass.db", upgrade=False)
    with pytest.raises(DatabaseUnavailableError, match="cannot create the directory"):
        await TreeStore.open(blocker / "sub" / "qlass.db")


async def test_unreachable_server_is_unavailable() -> None:
    # a closed loopback port: the connection is refused at once
    # (ssl=disable: asyncpg otherwise looks for client certificates with blocking file I/O)
    url = "postgresql+asyncpg://qlass:s3cret-pw@127.0.0.1:9/qlass?ssl=disable"
    with pytest.raises(DatabaseUnavailableError, match="cannot reach database") as info:
        await TreeStore.open(url)
    assert "s3cret-pw" not in str(info.value)
    assert "127.0.0.1:9" in str(info.value)


async def test_migrations_create_exactly_the_model_schema(store_url: str) -> None:
    async with await TreeStore.open(store_url):
        pass
    engine = make_engine(store_url)

    def diff(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    try:
        async with engine.connect() as connection:
            differences = await connection.run_sync(diff)
    finally:
        await engine.dispose()
    assert differences == []


async def test_sqlite_pragmas_are_set(sqlite_store: TreeStore) -> None:
    store = sqlite_store
    async with store._db.read() as session:
        journal = await session.scalar(text("PRAGMA journal_mode"))
        foreign = await session.scalar(text("PRAGMA foreign_keys"))
        busy = await session.scalar(text("PRAGMA busy_timeout"))
    assert (journal, foreign, busy) == ("wal", 1, 30000)


def test_alembic_command_line_environment_works(tmp_path: Path) -> None:
    """The developer path (alembic.ini + env.py) upgrades too, and autogenerate sees no drift."""
    path = tmp_path / "dev.db"
    config = Config(str(MIGRATIONS_DIR / "alembic.ini"), cmd_opts=Namespace(x=[f"db={path}"]))
    command.upgrade(config, "head")
    assert _revision(path) == [head_revision()]
    command.check(config)  # raises if the models need a new revision


def _count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        (count,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    conn.close()
    return int(count)


def test_migrations_keep_the_rows_of_tables_they_rebuild(tmp_path: Path) -> None:
    """SQLite alters a table by rebuilding it; with foreign keys on, dropping the old
    ``label_sets`` cascaded to every Q label (revision 0004 emptied ``q_labels`` of stores
    made before it). Down to 0003 and up again, through both migration paths: every row
    stays. (Synchronous: Alembic's env.py runs its own event loop.)"""
    path = tmp_path / "old.db"

    async def fill() -> None:
        async with await TreeStore.open(path) as store:
            run, (task,) = await new_run(store, "labelled")
            await store.labels.create_set(run.id)
            leaves = await full_tree(
                store, task.id, lambda level, p: synthetic_node(random.Random(p), level), depth=2
            )
            final = synthetic_node(random.Random(0), 3, 1.0)
            await store.trees.add_children(leaves[0].id, [final])

    async def upgrade() -> str | None:  # qlass's own path
        async with await TreeStore.open(path) as store:
            assert store.schema.upgraded
            return store.schema.before

    def counts() -> dict[str, int]:
        return {table: _count(path, table) for table in ("q_labels", "label_sets", "nodes")}

    asyncio.run(fill())
    before = counts()
    assert before["q_labels"] > 0 and before["label_sets"] == 1

    config = Config(str(MIGRATIONS_DIR / "alembic.ini"), cmd_opts=Namespace(x=[f"db={path}"]))
    command.downgrade(config, "0003")  # the developer path (alembic.ini + env.py)
    assert _revision(path) == ["0003"]
    assert counts() == before

    assert asyncio.run(upgrade()) == "0003"
    assert _revision(path) == [head_revision()]
    assert counts() == before


def test_a_label_set_emptied_by_the_old_migration_is_recomputed(tmp_path: Path) -> None:
    path = tmp_path / "emptied.db"

    async def labelled() -> tuple[int, int]:
        async with await TreeStore.open(path) as store:
            run, (task,) = await new_run(store, "labelled")
            leaves = await full_tree(
                store, task.id, lambda level, p: synthetic_node(random.Random(p), level), depth=2
            )
            await store.trees.add_children(leaves[0].id, [synthetic_node(random.Random(0), 3, 1.0)])
            label_set = await store.labels.create_set(run.id)
            return run.id, label_set.id

    async def again(run_id: int) -> int:
        async with await TreeStore.open(path) as store:
            return (await store.labels.create_set(run_id)).id

    run_id, set_id = asyncio.run(labelled())
    before = _count(path, "q_labels")
    _sqlite(path, "DELETE FROM q_labels")  # what revision 0004 did to such a store
    assert _count(path, "q_labels") == 0
    assert asyncio.run(again(run_id)) == set_id
    assert _count(path, "q_labels") == before > 0
