"""Sessions of the store: short read transactions and one serialised writer path.

On SQLite all writes of this process go through one :class:`asyncio.Lock`, so concurrent
coroutines queue for the write lock in Python instead of racing for the file lock
(which is what produces "database is locked"); ``BEGIN IMMEDIATE`` plus the busy timeout
cover writers in other processes (see :mod:`qlass.storage.engine`). On other databases
(PostgreSQL) writes run concurrently and the database's own row locks order them.

The hot writes (tree nodes and their Q labels, :meth:`Database.run_write`) are plain
functions of a sync :class:`~sqlalchemy.orm.Session`. On a SQLite file the whole
transaction runs in the store's writer thread on the sync sqlite3 driver: one hand-off
between the event loop and a thread per transaction. Through the async driver every
cursor operation (create, execute, fetch, close) is such a hand-off, which measured about
7x the CPU of the same statement run synchronously (``benchmarks/bench_store.py``). On
PostgreSQL (asyncpg is natively async) and in-memory SQLite (one shared connection) the
same function runs in the async session through :meth:`AsyncSession.run_sync`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Table, delete, exc, func, insert, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine, Row
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from qlass.errors import QlassError, StoreError
from qlass.storage.engine import WRITE_OPTION, safe_url, sqlite_file, translate_error
from qlass.storage.models import utcnow

__all__ = ["Database", "insert_ids", "record", "upsert"]

R = TypeVar("R")
P = ParamSpec("P")


class Database:
    """The engine plus the ways to use it: :meth:`read`, :meth:`write` and :meth:`run_write`.

    ``writer`` is a sync engine on the same SQLite file (see
    :func:`qlass.storage.engine.make_writer_engine`) for :meth:`run_write`; without one,
    :meth:`run_write` uses the async engine.
    """

    def __init__(self, engine: AsyncEngine, writer: Engine | None = None) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._writer = writer
        self._sync_writes = sessionmaker(writer, expire_on_commit=False, autoflush=False)
        # One thread: SQLite has one writer per file anyway, and the connection stays in it.
        self._writer_thread = (
            ThreadPoolExecutor(1, thread_name_prefix="qlass-store-writer") if writer else None
        )
        self._reads = async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
        self._writes = async_sessionmaker(
            engine.execution_options(**{WRITE_OPTION: True}),
            expire_on_commit=False,
            autoflush=False,
        )
        sqlite = self.dialect == "sqlite"
        self._write_lock: asyncio.Lock | None = asyncio.Lock() if sqlite else None
        # An in-memory SQLite DB is one shared connection: reads must queue behind writes.
        self._shared_connection = sqlite and sqlite_file(engine.url) is None

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    def now(self) -> Any:
        """The current time as the database should compare it: the server's clock on
        PostgreSQL (so that processes on machines with skewed clocks agree), else this one's."""
        return func.now() if self.is_postgres else utcnow()

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for reads; its transaction ends when the block exits."""
        lock = self._write_lock if self._shared_connection else None
        async with lock or contextlib.nullcontext():
            try:
                async with self._reads() as session:
                    yield session
            except (exc.DBAPIError, exc.TimeoutError, OSError) as error:
                raise translate_error(error, self.engine.url) from error

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A write transaction, committed when the block exits without error."""
        async with self._write_lock or contextlib.nullcontext():
            try:
                async with self._writes.begin() as session:
                    yield session
            except QlassError:
                raise
            except (exc.DBAPIError, exc.TimeoutError, OSError) as error:
                raise translate_error(error, self.engine.url) from error

    async def run_write(
        self, fn: Callable[Concatenate[Session, P], R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """``fn(session, *args, **kwargs)`` in one write transaction, committed when it
        returns; its result. ``fn`` must not touch the event loop (it may run in a thread).

        A cancelled caller stops waiting only once the transaction has ended (committed or
        rolled back), so the write lock is never given up while a transaction still runs.
        """

        def call(session: Session) -> R:
            return fn(session, *args, **kwargs)

        if self._writer is None:
            async with self.write() as session:
                return await session.run_sync(call)
        if self._writer_thread is None:
            raise StoreError(f"the store at {safe_url(self.engine.url)} is closed")
        assert self._write_lock is not None  # a writer engine exists only on SQLite
        async with self._write_lock:
            done = self._writer_thread.submit(self._write_in_thread, call)
            try:
                return await asyncio.wrap_future(done)
            except asyncio.CancelledError:
                await _until_done(done)
                raise

    def _write_in_thread(self, call: Callable[[Session], R]) -> R:
        try:
            with self._sync_writes.begin() as session:
                return call(session)
        except QlassError:
            raise
        except (exc.DBAPIError, exc.TimeoutError, OSError) as error:
            raise translate_error(error, self.engine.url) from error

    async def dispose(self) -> None:
        if self._writer_thread is not None:
            assert self._writer is not None
            # In the writer's thread: the connection was made there.
            writer_thread, self._writer_thread = self._writer_thread, None
            await asyncio.wrap_future(writer_thread.submit(self._writer.dispose))
            writer_thread.shutdown(wait=False)
        await self.engine.dispose()


async def _until_done(future: Future[Any]) -> None:
    """Wait for a thread's ``future`` to finish, through any further cancellation."""
    waiting = asyncio.wrap_future(future)
    while not waiting.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([waiting])
    if not waiting.cancelled():
        waiting.exception()  # retrieved: the caller was cancelled, the outcome is moot


def record(cls: type[R], row: Row[Any] | Mapping[str, Any]) -> R:
    """Build a frozen record from a row whose columns are named like the record's fields."""
    mapping = row._mapping if isinstance(row, Row) else row
    return cls(**{name: mapping[name] for name in cls.__dataclass_fields__})  # type: ignore[attr-defined]


def upsert(
    session: Session,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    update: Sequence[str],
    *,
    dialect: str | None = None,
) -> None:
    """Insert ``rows``; where a row with the same ``keys`` exists, overwrite ``update`` columns.

    ``update=()`` keeps the existing row (insert-if-absent). SQLite and PostgreSQL use their
    native ``ON CONFLICT``; other databases (or ``dialect="generic"``, for tests) get
    delete-then-insert, or insert-per-row in a savepoint, inside the transaction.
    """
    if not rows:
        return
    dialect = dialect or session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        stmt = (sqlite_insert if dialect == "sqlite" else pg_insert)(table)
        if update:
            stmt = stmt.on_conflict_do_update(
                index_elements=list(keys),
                set_={name: stmt.excluded[name] for name in update},
            )
        else:
            stmt = stmt.on_conflict_do_nothing(index_elements=list(keys))
        session.execute(stmt, list(rows))
        return
    key_columns = [table.c[name] for name in keys]
    key_values = [tuple(row[name] for name in keys) for row in rows]
    if update:
        session.execute(delete(table).where(tuple_(*key_columns).in_(key_values)))
        session.execute(insert(table), list(rows))
        return
    for row in rows:  # insert-if-absent, one by one in a savepoint: the portable way
        try:
            with session.begin_nested():
                session.execute(insert(table).values(**row))
        except exc.IntegrityError:
            pass


def insert_ids(session: Session, table: Table, rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Insert ``rows`` in one statement (per 1000) and return their ids in ``rows`` order.

    SQLAlchemy can order RETURNING rows by parameter on PostgreSQL but on SQLite only by
    inserting row by row. On SQLite the store holds the write lock (``BEGIN IMMEDIATE``), so
    one multi-row insert gets consecutive rowids in VALUES order: sorting them is the order.
    """
    if not rows:
        return []
    if session.get_bind().dialect.name != "sqlite":
        stmt = insert(table).returning(table.c.id, sort_by_parameter_order=True)
        return list(session.execute(stmt, list(rows)).scalars())
    ids = sorted(session.execute(insert(table).returning(table.c.id), list(rows)).scalars())
    if len(ids) != len(rows) or ids[-1] - ids[0] != len(ids) - 1:
        raise StoreError(f"insert into {table.name} returned non-consecutive ids {ids[:5]}...")
    return ids
