"""Alembic environment for developers running the ``alembic`` command (see alembic.ini).

qlass itself does not go through this file: :mod:`qlass.storage.schema` runs the revisions
in ``versions/`` directly when a store is opened. The database comes from ``-x db=PATH|URL``
(default ``qlass.db``).
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection

from qlass.storage.engine import make_engine, normalize_url
from qlass.storage.models import Base
from qlass.storage.schema import check_foreign_keys, sqlite_foreign_keys

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return context.get_x_argument(as_dictionary=True).get("db", "qlass.db")


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    # As qlass.storage.schema does: SQLite's table rebuilds must not cascade deletes.
    sqlite_foreign_keys(connection, False)
    try:
        with context.begin_transaction():
            context.run_migrations()
            check_foreign_keys(connection, _url())
    finally:
        sqlite_foreign_keys(connection, True)


async def _run_online() -> None:
    engine = make_engine(_url(), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=normalize_url(_url()).render_as_string(hide_password=False),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
