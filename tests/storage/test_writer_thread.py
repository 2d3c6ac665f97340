"""The store's writer thread: a SQLite file's node and label writes run there, one
transaction per hand-off, and a cancelled caller never lets a second writer in while its
transaction still runs."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from qlass.errors import StoreError
from qlass.storage import NewNode, TreeStore
from qlass.storage.models import PolicyCall, table, utcnow

from .conftest import new_run

_CALLS = table(PolicyCall)


@contextmanager
def _node_inserts() -> Iterator[list[tuple[str, str]]]:
    """(driver, thread name) of every INSERT INTO nodes executed meanwhile."""
    seen: list[tuple[str, str]] = []

    def on_execute(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.startswith("INSERT INTO nodes"):
            seen.append((conn.dialect.driver, threading.current_thread().name))

    event.listen(Engine, "before_cursor_execute", on_execute)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", on_execute)


@pytest.mark.parametrize("writer_thread", [True, False])
async def test_node_writes_run_in_the_writer_thread_unless_it_is_turned_off(
    db_path: Path, writer_thread: bool
) -> None:
    async with await TreeStore.open(db_path, writer_thread=writer_thread) as store:
        _run, (task,) = await new_run(store, "writer")
        root = await store.trees.add_root(task.id, "start")
        with _node_inserts() as seen:
            child, created = await store.trees.add_child_if_absent(root.id, NewNode("o", "a"))
            await store.trees.add_path(child.id, [NewNode("p", "b", final_reward=1.0)])
        assert created
        tree = await store.trees.load(task.id)
    assert [node.action for node in tree.nodes] == [None, "a", "b"]
    if writer_thread:
        assert seen == [("pysqlite", "qlass-store-writer_0")] * 2
    else:
        assert {driver for driver, _thread in seen} == {"aiosqlite"}


async def test_a_cancelled_writer_holds_the_write_lock_until_its_transaction_ends(
    db_path: Path,
) -> None:
    started, release = threading.Event(), threading.Event()

    def slow_write(session: Session) -> None:
        session.execute(
            insert(_CALLS).values(key="slow", model="", response={}, created_at=utcnow())
        )
        started.set()
        release.wait(timeout=30)

    async with await TreeStore.open(db_path, busy_timeout_s=0.05) as store:
        slow = asyncio.ensure_future(store._db.run_write(slow_write))
        await asyncio.to_thread(started.wait, 30)
        slow.cancel()
        # The next writer queues behind the running transaction instead of meeting SQLite's
        # lock (which, with a 50 ms busy timeout, would fail it with "database is locked").
        second = asyncio.ensure_future(store.call_cache.put("second", {"v": 2}))
        await asyncio.sleep(0.2)
        assert not slow.done() and not second.done()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await slow
        await second
        async with store._db.read() as session:
            keys = set(await session.scalars(select(_CALLS.c.key)))
    assert keys == {"slow", "second"}  # the cancelled caller's transaction still committed


async def test_a_failed_write_in_the_thread_is_a_store_error_and_rolls_back(db_path: Path) -> None:
    def twice(session: Session) -> None:
        row = {"key": "k", "model": "", "response": {}, "created_at": utcnow()}
        session.execute(insert(_CALLS).values(**row))
        session.execute(insert(_CALLS).values(**row))  # the same primary key

    async with await TreeStore.open(db_path) as store:
        with pytest.raises(StoreError, match="constraint"):
            await store._db.run_write(twice)
        async with store._db.read() as session:
            count = await session.scalar(select(func.count()).select_from(_CALLS))
    assert count == 0


async def test_a_write_to_a_closed_store_is_refused_clearly(db_path: Path) -> None:
    store = await TreeStore.open(db_path)
    _run, (task,) = await new_run(store, "closed")
    root = await store.trees.add_root(task.id, "start")
    await store.aclose()
    with pytest.raises(StoreError, match="closed"):
        await store.trees.add_children(root.id, [NewNode("o", "a")])
