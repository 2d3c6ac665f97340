"""Several processes on one run (``qlass run`` beside ``qlass explore --worker``s, a Ray
driver and its actors): the run reads ``running`` until the last of them leaves, and that
one's ending is the run's status; they share the run's budget. Real TextWorldExpress and
SQLite, a scripted policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from qlass.errors import StoreError
from qlass.runtime.pipeline import Pipeline
from qlass.storage import TreeStore
from qlass.testing import tiny_run_config
from qlass.types import Usage
from tests.runtime.test_run_budget import SETTINGS  # one TextWorldExpress eval set-up


async def test_one_process_finishing_leaves_the_run_running_for_the_other(tmp_path: Path) -> None:
    config = tiny_run_config(tmp_path, *SETTINGS)
    async with Pipeline(config) as long_running:
        async with Pipeline(config) as worker:
            assert worker.run_record.id == long_running.run_record.id
            await worker.stage("eval")
        run = await long_running.store.runs.get(long_running.run_record.id)
        assert run.status == "running"  # the worker's "incomplete" waits for the other
        await long_running.stage("eval")  # stored already: nothing replayed
    async with await TreeStore.open(config.store_url) as store:
        run = await store.runs.get(config.name)
        episodes = await store.episodes.of_run(run.id)
    assert len(episodes) == 4
    assert run.status == "incomplete"  # eval done, not the whole method: the last one's word


async def test_processes_of_one_run_share_its_budget(tmp_path: Path) -> None:
    config = tiny_run_config(tmp_path, *SETTINGS, "budget.tokens=100")
    async with Pipeline(config) as first, Pipeline(config) as second:
        first.budget.charge(Usage(prompt_tokens=60))
        await first.save_spend()
        second.budget.charge(Usage(prompt_tokens=30))  # 30 of its own: under 100 alone
        assert not second.stop.requested
        await second.save_spend()  # the heartbeat's save brings the other's 60 in
        assert second.budget.spent_tokens == 90 and not second.stop.requested
        second.budget.charge(Usage(completion_tokens=15))
        assert second.stop.requested  # 105 of 100
        await second.save_spend()
        await first.save_spend()
        assert first.budget.spent_tokens == 105 and first.stop.requested

        async def store_down(*_args: object) -> None:
            raise StoreError("the store is unreachable")

        first.budget.charge(Usage(prompt_tokens=7))
        real = first.store.runs.add_spend
        first.store.runs.add_spend = store_down  # type: ignore[method-assign]
        with pytest.raises(StoreError):
            await first.save_spend()
        first.store.runs.add_spend = real  # type: ignore[method-assign]
        assert first.budget.unsaved.total_tokens == 7  # kept for the next save
        await first.save_spend()
    async with await TreeStore.open(config.store_url) as store:
        assert (await store.runs.get(config.name)).spent_tokens == 112
