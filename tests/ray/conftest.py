"""The Ray tests reuse the throwaway PostgreSQL server of tests/postgres."""

from tests.postgres.conftest import pg_url, postgres_server

__all__ = ["pg_url", "postgres_server"]
