"""Fixtures of the tree-store tests: a real SQLite file per test, and a run with a task."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from qlass.storage import RunRecord, TaskRecord, TreeStore
from qlass.types import TaskSpec


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store" / "qlass.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[TreeStore]:
    async with await TreeStore.open(db_path) as opened:
        yield opened


@dataclass(frozen=True)
class RunAndTask:
    run: RunRecord
    task: TaskRecord


async def new_run(
    store: TreeStore, name: str, tasks: int = 1
) -> tuple[RunRecord, list[TaskRecord]]:
    """A run named ``name`` with ``tasks`` coin tasks (variations 0..tasks-1)."""
    run = await store.runs.create(name, config={"name": name}, code_version="test", seed=0)
    specs = [TaskSpec("textworld_express", "coin", i, "train") for i in range(tasks)]
    return run, await store.tasks.add_many(run.id, specs, instruction=f"find the coin ({name})")


@pytest.fixture
async def run_task(store: TreeStore) -> RunAndTask:
    run, tasks = await new_run(store, "run")
    return RunAndTask(run, tasks[0])
