"""Fixtures of the tree-store tests: a real database per test, and a run with a task.

``store`` runs each test on a SQLite file and, when ``QLASS_TEST_POSTGRES_URL`` is set, also
on a fresh PostgreSQL database created for the test (and dropped after), for example::

    QLASS_TEST_POSTGRES_URL='postgresql+asyncpg://qlass:pw@127.0.0.1:5432/postgres?ssl=disable'

The URL names a maintenance database the user may create databases from. Give a password
and ``ssl=disable`` (or real certificates): without them asyncpg looks for ``~/.pgpass`` and
client certificates with blocking file I/O, which the blockbuster guard reports.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from qlass import testing
from qlass.storage import RunRecord, TaskRecord, TreeStore


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store" / "qlass.db"


POSTGRES_URL = os.environ.get("QLASS_TEST_POSTGRES_URL")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without ``QLASS_TEST_POSTGRES_URL`` the PostgreSQL variants are deselected (quietly)."""
    if POSTGRES_URL:
        return
    dropped = [
        item
        for item in items
        if getattr(getattr(item, "callspec", None), "params", {}).get("store_url") == "postgresql"
    ]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item not in dropped]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def store_url(request: pytest.FixtureRequest, db_path: Path) -> AsyncIterator[str]:
    """A URL of an empty database: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield str(db_path)
        return
    if not POSTGRES_URL:  # deselected above; kept for a direct -k selection
        pytest.skip("set QLASS_TEST_POSTGRES_URL to run the PostgreSQL variant")
    import asyncpg

    admin_url = make_url(POSTGRES_URL)
    dsn = admin_url.set(drivername="postgresql", query={}).render_as_string(hide_password=False)
    name = f"qlass_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield admin_url.set(database=name).render_as_string(hide_password=False)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[TreeStore]:
    async with await TreeStore.open(store_url) as opened:
        yield opened


@pytest.fixture
async def sqlite_store(db_path: Path) -> AsyncIterator[TreeStore]:
    """For the tests about SQLite itself (file locks, pragmas, processes)."""
    async with await TreeStore.open(db_path) as opened:
        yield opened


@dataclass(frozen=True)
class RunAndTask:
    run: RunRecord
    task: TaskRecord


async def new_run(
    store: TreeStore, name: str, tasks: int = 1
) -> tuple[RunRecord, list[TaskRecord]]:
    """A run named ``name`` with ``tasks`` coin tasks (variations 0..tasks-1)."""
    return await testing.new_run(store, name, tasks, instruction=f"find the coin ({name})")


@pytest.fixture
async def run_task(store: TreeStore) -> RunAndTask:
    run, tasks = await new_run(store, "run")
    return RunAndTask(run, tasks[0])
