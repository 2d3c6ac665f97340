"""Run leases on PostgreSQL, where lease times come from the server's clock."""

from __future__ import annotations

import pytest

from qlass.storage import TreeStore
from tests.storage.test_repos import check_run_holders, check_run_lease

pytestmark = pytest.mark.postgres


async def test_a_lapsed_run_lease_reads_as_interrupted(pg_url: str) -> None:
    async with await TreeStore.open(pg_url) as store:
        await check_run_lease(store)


async def test_a_run_stays_running_until_its_last_holder_leaves(pg_url: str) -> None:
    async with await TreeStore.open(pg_url) as store:
        await check_run_holders(store)
