"""Several processes on one run (``qlass run`` beside ``qlass explore --worker``s, a Ray
driver and its actors): the run reads ``running`` until the last of them leaves, and that
one's ending is the run's status. Real TextWorldExpress and SQLite, a scripted policy."""

from __future__ import annotations

from pathlib import Path

from qlass.runtime.pipeline import Pipeline
from qlass.storage import TreeStore
from qlass.testing import tiny_run_config

SETTINGS = (
    "env.name=textworld_express",
    "env.pool_size=1",
    "env.eval_tasks=2",
    "env.max_steps=3",
    "policy.backend=scripted",
    "policy.model=look around|move north|take coin",
    "policy.prompt=none",
    "search.strategies=[sampled]",
    "search.value_model=constant",
    "eval.concurrency=1",
)


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
    assert len(episodes) == 2
    assert run.status == "incomplete"  # eval done, not the whole method: the last one's word
