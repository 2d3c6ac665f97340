"""Sessions of the store: short read transactions and one serialised writer path.

On SQLite all writes of this process go through one :class:`asyncio.Lock`, so concurrent
coroutines queue for the write lock in Python instead of racing for the file lock
(which is what produces "database is locked"); ``BEGIN IMMEDIATE`` plus the busy timeout
cover writers in other processes (see :mod:`qlass.storage.engine`). On other databases
(PostgreSQL) writes run concurrently and the database's own row locks order them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import Table, delete, exc, func, insert, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from qlass.errors import QlassError, StoreError
from qlass.storage.engine import WRITE_OPTION, sqlite_file, translate_error
from qlass.storage.models import utcnow

__all__ = ["Database", "insert_ids", "record", "upsert"]

R = TypeVar("R")


class Database:
    """The engine plus the two ways to use it: :meth:`read` and :meth:`write`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
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

    async def dispose(self) -> None:
        await self.engine.dispose()


def record(cls: type[R], row: Row[Any] | Mapping[str, Any]) -> R:
    """Build a frozen record from a row whose columns are named like the record's fields."""
    mapping = row._mapping if isinstance(row, Row) else row
    return cls(**{name: mapping[name] for name in cls.__dataclass_fields__})  # type: ignore[attr-defined]


async def upsert(
    session: AsyncSession,
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
        await session.execute(stmt, list(rows))
        return
    key_columns = [table.c[name] for name in keys]
    key_values = [tuple(row[name] for name in keys) for row in rows]
    if update:
        await session.execute(delete(table).where(tuple_(*key_columns).in_(key_values)))
        await session.execute(insert(table), list(rows))
        return
    for row in rows:  # insert-if-absent, one by one in a savepoint: the portable way
        try:
            async with session.begin_nested():
                await session.execute(insert(table).values(**row))
        except exc.IntegrityError:
            pass


async def insert_ids(
    session: AsyncSession, table: Table, rows: Sequence[Mapping[str, Any]]
) -> list[int]:
    """Insert ``rows`` in one statement (per 1000) and return their ids in ``rows`` order.

    SQLAlchemy can order RETURNING rows by parameter on PostgreSQL but on SQLite only by
    inserting row by row. On SQLite the store holds the write lock (``BEGIN IMMEDIATE``), so
    one multi-row insert gets consecutive rowids in VALUES order: sorting them is the order.
    """
    if not rows:
        return []
    if session.get_bind().dialect.name != "sqlite":
        stmt = insert(table).returning(table.c.id, sort_by_parameter_order=True)
        return list((await session.execute(stmt, list(rows))).scalars())
    ids = sorted((await session.execute(insert(table).returning(table.c.id), list(rows))).scalars())
    if len(ids) != len(rows) or ids[-1] - ids[0] != len(ids) - 1:
        raise StoreError(f"insert into {table.name} returned non-consecutive ids {ids[:5]}...")
    return ids
