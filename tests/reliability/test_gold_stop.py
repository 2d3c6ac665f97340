"""Ctrl-C during the gold stage stops it; what it finished is kept and the next run goes on.

The gold stage used to ignore the stop signal: it ran to the end (4 minutes in the report),
and a stage whose record stayed unfinished was redone by the next run. Here a real SIGINT
reaches qlass's own handler (as Ctrl-C does) once the first expert path is written, on
real TextWorldExpress simulators and a real SQLite store.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from qlass.envs.gold import export_gold, partial_file
from qlass.runtime.pipeline import Pipeline
from qlass.runtime.progress import NullProgress, ProgressBar
from qlass.runtime.scheduler import StopSignal
from qlass.storage import TreeStore
from qlass.testing import tiny_run_config

TASKS = 6


class _Bar:
    def __init__(self, owner: _Counting) -> None:
        self._owner = owner

    def advance(self, amount: float = 1, **fields: Any) -> None:
        self._owner.advanced += 1
        if self._owner.interrupt and self._owner.advanced == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, after the first finished task

    def update(
        self, *, total: float | None = None, completed: float | None = None, **fields: Any
    ) -> None:
        return None


class _Counting(NullProgress):
    """Counts the tasks the gold stage finishes; optionally sends SIGINT after the first."""

    def __init__(self, *, interrupt: bool) -> None:
        self.interrupt = interrupt
        self.advanced = 0

    def bar(self, description: str, total: float | None) -> ProgressBar:
        return _Bar(self)


async def _status(url: str, name: str) -> str:
    async with await TreeStore.open(url, read_only=True) as store:
        return (await store.runs.get(name)).status


async def test_ctrl_c_stops_the_gold_stage_and_the_next_run_continues_it(tmp_path: Path) -> None:
    config = tiny_run_config(
        tmp_path / "run", "name=gold", f"env.train_tasks={TASKS}", "env.pool_size=2"
    )
    expert = config.directory / "expert.jsonl"
    stop, first = StopSignal(), _Counting(interrupt=True)
    with stop.installed():
        async with Pipeline(config, progress=first, stop=stop) as pipeline:
            results = await pipeline.run(["gold", "bc"])
            stage = await pipeline.store.stages.get(pipeline.run_record.id, "gold")
    assert stop.signals == 1
    assert [r.name for r in results] == ["gold"]  # BC did not start on a partial file
    assert stage is not None and stage.status == "running" and stage.metrics["stopped"]
    kept = stage.metrics["trajectories"]
    assert 1 <= kept == first.advanced < TASKS  # the tasks under way finished; no new one
    assert stage.metrics["unfinished_tasks"] == TASKS - kept
    assert not expert.exists()  # nothing takes the partial export for a whole one
    assert len(partial_file(expert).read_text().splitlines()) == kept
    assert await _status(config.store_url, "gold") == "stopped"

    second = _Counting(interrupt=False)
    async with Pipeline(config, progress=second) as pipeline:
        (gold,) = await pipeline.stage("gold")
        stage = await pipeline.store.stages.get(pipeline.run_record.id, "gold")
    assert not gold.skipped and second.advanced == TASKS - kept  # finished ones not redone
    assert stage is not None and stage.status == "done"
    assert stage.metrics["stopped"] is None and stage.metrics["trajectories"] == TASKS
    assert not partial_file(expert).exists()

    # The resumed export is the uninterrupted one, line for line.
    async with Pipeline(config) as pipeline:
        tasks = await pipeline.tasks("train", TASKS)
    reference = await export_gold(config.env.name, tasks, tmp_path / "reference.jsonl")
    assert reference.written == TASKS
    assert expert.read_text() == (tmp_path / "reference.jsonl").read_text()
