"""A store opened read-only on PostgreSQL reads everything and can write nothing."""

from __future__ import annotations

import pytest

from qlass.errors import StoreError
from qlass.storage import TreeStore

pytestmark = pytest.mark.postgres


async def test_read_only_store_reads_and_refuses_writes(pg_url: str) -> None:
    async with await TreeStore.open(pg_url) as store:
        await store.runs.create("r", config={}, seed=0)
    async with await TreeStore.open(pg_url, read_only=True) as store:
        assert [run.name for run in await store.runs.all()] == ["r"]
        with pytest.raises(StoreError, match="read-only transaction"):
            await store.runs.create("s", config={}, seed=0)
    async with await TreeStore.open(pg_url) as store:
        assert [run.name for run in await store.runs.all()] == ["r"]
