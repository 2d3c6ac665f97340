"""``qlass run --stages explore,label,eval --executor ray`` with 2 actors on a local Ray and a
throwaway PostgreSQL store; during the evaluation, once an episode is stored, one actor's
process is SIGKILLed. Ray restarts it and it plays the episodes of its share that were not
stored; every episode is stored exactly once, the trees, labels and episodes equal those of
one local process (``qlass run`` without Ray, SQLite), and the run's status is the driver's.

Slow (two local Ray starts and five simulators): ``pytest -m 'slow and ray' tests/ray``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from qlass.storage import TreeStore
from tests.reliability.harness import (
    ray_actor_events,
    settings,
    snapshot,
)

from ..postgres.conftest import PostgresServer
from .driver import create_schema, played, ray_driver, run_locally, stored_episodes

pytest.importorskip("ray")

NAME = "runray"
EXTRA = [
    "env.train_tasks=4",
    "env.eval_tasks=8",
    "env.max_steps=6",
    "explore.max_depth=3",
    "env.pool_size=2",
    "search.strategies=[sampled,best_of_n:2]",
    "search.value_model=random",
    "eval.concurrency=1",
]
STAGES = "explore,label,eval"


async def _run_status(url: str) -> str:
    async with await TreeStore.open(url, upgrade=False) as store:
        return (await store.runs.get(NAME)).status


def _eval_actor(stderr: Path, url: str, driver_alive: Any, timeout: float = 600) -> int:
    """An evaluating actor's pid, once the run has a stored episode."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        evaluating = [
            pid
            for pid, events in ray_actor_events(stderr).items()
            if any(
                e.get("event") == "ray.actor_started" and e.get("work") == "eval" for e in events
            )
        ]
        if evaluating and stored_episodes(url, NAME):
            return evaluating[0]
        assert driver_alive(), "the driver exited before a kill"
        time.sleep(0.1)
    raise TimeoutError("no actor stored an episode")


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.postgres
def test_run_on_ray_survives_an_actor_killed_during_evaluation(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    url = postgres_server.create_database()
    create_schema(url)
    local_db = tmp_path / "local.db"
    run_locally(
        local_db,
        "run",
        "--stages",
        STAGES,
        *settings(NAME, f"run_dir={tmp_path / 'local'}", *EXTRA),
    )

    args = ["run", "--stages", STAGES, "--db", url, "--executor", "ray"]
    args += settings(NAME, f"run_dir={tmp_path / 'run'}", "ray.actors=2", *EXTRA)
    with ray_driver(args, tmp_path / "logs", "driver") as driver:
        pid = _eval_actor(driver.stderr, url, lambda: driver.popen.poll() is None)
        os.kill(pid, signal.SIGKILL)  # an actor's process: Ray's worker, not the driver
        assert driver.wait(timeout=900) == 0, driver.err()[-4000:]

    episodes = stored_episodes(url, NAME)
    expected = stored_episodes(str(local_db), NAME)
    counts = Counter((e.strategy, e.task_key) for e in episodes)
    assert len(counts) == 16 and set(counts.values()) == {1}  # every episode, none twice
    assert played(episodes) == played(expected)
    got, want = snapshot(url, NAME), snapshot(str(local_db), NAME)
    assert got.content() == want.content()
    assert got.labels.keys() == want.labels.keys()
    restarted = [
        e for events in ray_actor_events(driver.stderr).values() for e in events
        if e.get("event") == "ray.actor_started" and e.get("restarted")
    ]  # fmt: skip
    assert restarted, "Ray did not restart the killed actor"
    # explore, label and eval done, not the whole method; the actors left before the driver
    assert asyncio.run(_run_status(url)) == "incomplete"
    assert "evaluation on dev" in driver.out()
