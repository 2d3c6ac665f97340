"""A real PostgreSQL server for the multi-worker tests, started once per test session.

``postgres_server`` is a throwaway cluster (see :mod:`tests.postgres.server`), or the server
of ``QLASS_TEST_POSTGRES_URL`` when that is set. Without the server binaries
(``scripts/ensure-test-deps.sh`` installs Debian's ``postgresql`` package) the tests skip,
saying why.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.postgres.server import PostgresServer, PostgresUnavailable, running_postgres

__all__ = ["PostgresServer"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        with running_postgres() as server:
            yield server
    except PostgresUnavailable as why:
        pytest.skip(str(why))


@pytest.fixture
async def pg_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the test server."""
    return await postgres_server.create_database_async()
