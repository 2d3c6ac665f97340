"""Engine set-up and error translation; the portable upsert fallback."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from qlass.errors import DatabaseUnavailableError
from qlass.storage import NewNode, TreeStore, make_engine, normalize_url
from qlass.storage._db import upsert
from qlass.storage.engine import safe_url, sqlite_file
from qlass.storage.models import PolicyCall, table, utcnow

from .conftest import new_run


def test_urls() -> None:
    assert str(normalize_url("runs/x.db")) == "sqlite+aiosqlite:///runs/x.db"
    assert str(normalize_url("sqlite:////abs/x.db")) == "sqlite+aiosqlite:////abs/x.db"
    assert normalize_url("postgresql://u:p@h/db").drivername == "postgresql+asyncpg"
    assert safe_url("postgresql+asyncpg://u:hunter22@h/db") == "postgresql+asyncpg://u:***@h/db"
    assert sqlite_file("sqlite+aiosqlite:///:memory:") is None
    assert sqlite_file("runs/x.db") == Path("runs/x.db")
    assert sqlite_file("postgresql://h/db") is None
    with pytest.raises(DatabaseUnavailableError, match="cannot use database URL"):
        make_engine("nosuchdb+nodriver://x/y")


async def test_held_write_lock_from_another_process_times_out_clearly(db_path: Path) -> None:
    async with await TreeStore.open(db_path, busy_timeout_s=0.2) as store:
        _run, (task,) = await new_run(store, "locked")
        root = await store.trees.add_root(task.id, "start")
        other = sqlite3.connect(db_path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            with pytest.raises(DatabaseUnavailableError, match="locked"):
                await store.trees.add_child(root.id, NewNode("o", action="a"))
            await store.trees.get(root.id)  # readers are not blocked (WAL)
        finally:
            other.execute("ROLLBACK")
            other.close()
        await store.trees.add_child(root.id, NewNode("o", action="a"))  # and it recovers
        assert len((await store.trees.load(task.id)).nodes) == 2


async def test_in_memory_store_works() -> None:
    async with await TreeStore.open("sqlite+aiosqlite:///:memory:") as store:
        run = await store.runs.create("mem", config={})
        assert (await store.runs.get("mem")).id == run.id


async def test_generic_upsert_fallback(sqlite_store: TreeStore) -> None:
    store = sqlite_store
    """The delete/insert path used for databases without ON CONFLICT keeps the same meaning."""
    calls = table(PolicyCall)
    row = {"key": "k", "model": "m", "request": None, "response": {"v": 1}, "created_at": utcnow()}

    def insert_twice(session: Session) -> None:
        upsert(session, calls, [row], ("key",), (), dialect="generic")
        upsert(session, calls, [{**row, "response": {"v": 2}}], ("key",), (), dialect="generic")

    await store._db.run_write(insert_twice)
    assert await store.call_cache.get("k") == {"v": 1}  # insert-if-absent kept the first
    await store._db.run_write(
        upsert, calls, [{**row, "response": {"v": 3}}], ("key",), ("response",), dialect="generic"
    )
    async with store._db.read() as session:
        assert (await session.execute(select(calls.c.response))).scalar_one() == {"v": 3}
