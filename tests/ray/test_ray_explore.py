"""``qlass explore --executor ray`` with 2 actors on a local Ray cluster and a throwaway
PostgreSQL store; one actor's process is SIGKILLed mid-tree (once it has committed a few
nodes of a task it holds). Ray restarts it; every task is explored exactly once (the
victim's task taken over once, continued from its committed nodes), nothing committed is
lost or changed, nothing is stored twice, and the trees and Q labels equal a single
uninterrupted process's.

Slow (a Ray cluster and three simulators' JVMs): run with
``pytest -m 'slow and ray' tests/ray`` after ``pip install -e '.[ray,postgres]'``.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.reliability.campaign import finish_reference, start_reference
from tests.reliability.harness import (
    Snapshot,
    duplicate_siblings,
    ray_actor_events,
    snapshot,
    trace_keys,
)

from ..postgres.conftest import PostgresServer
from .driver import create_schema, ray_driver, ray_explore_args

pytest.importorskip("ray")

NAME = "onray"
EXTRA = ["env.train_tasks=6", "env.max_steps=6", "explore.max_depth=4", "env.pool_size=2"]
LEASE_S = 3


def _victim(
    url: str, driver_alive: Callable[[], bool], timeout: float = 600
) -> tuple[int, str, Snapshot]:
    """An actor's pid and the task it holds once that tree has 3 committed nodes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = snapshot(url, NAME)
        for task, owner in snap.claimed_by.items():
            if owner is None or snap.task_status[task] != "running":
                continue
            made = sum(1 for key in snap.key_set() if key[0] == task)
            if owner.startswith("ray") and made >= 4:  # the root and 3 children
                return int(owner.rsplit(":", 1)[1]), task, snap
        assert driver_alive(), "the driver exited before a kill"
        time.sleep(0.05)
    raise TimeoutError("no actor got into a tree")


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.postgres
def test_two_ray_actors_survive_a_killed_actor(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    url = postgres_server.create_database()
    create_schema(url)
    reference, ref_db = start_reference(tmp_path, NAME, EXTRA)
    args = ray_explore_args(NAME, url, tmp_path / "run", "ray.actors=2", *EXTRA)
    args += ["--lease-s", str(LEASE_S)]
    with ray_driver(args, tmp_path / "logs", "driver") as driver:
        pid, task, _ = _victim(url, lambda: driver.popen.poll() is None)
        os.kill(pid, signal.SIGKILL)  # an actor's process: Ray's worker, not the driver
        at_kill = snapshot(url, NAME)
        assert driver.wait(timeout=900) == 0, driver.err()[-4000:]
    final = snapshot(url, NAME)
    expected = finish_reference(reference, ref_db, NAME)

    # Every task done; the victim's task taken over once, by another process.
    assert set(final.task_status.values()) == {"done"}
    assert final.task_attempts[task] == 2
    assert all(n == 1 for t, n in final.task_attempts.items() if t != task)
    taker = final.claimed_by[task]
    assert taker is not None and not taker.endswith(f":{pid}")
    # Ray restarted the killed actor and the restarted one reported back.
    restarted = [
        e for e in driver.events() if e.get("event") == "ray.actor_finished" and e["restarted"]
    ]
    assert len(restarted) == 1
    # Nothing the victim committed was lost or changed; nothing stored twice.
    for node_id, row in at_kill.nodes.items():
        assert final.nodes[node_id] == row
    assert duplicate_siblings(final) == []
    # No other process stepped or sampled again what the victim had committed; each node
    # was created by one process (Ray forwards the actors' trace to the driver).
    by_actor = ray_actor_events(driver.stderr)
    assert pid in by_actor and len(by_actor) == 3  # the two actors and the restarted one
    committed = {key for key in at_kill.key_set() if key[0] == task}
    for other, events in by_actor.items():
        if other != pid:
            assert not committed & set(trace_keys(events, "explore.step"))
            assert not committed & set(trace_keys(events, "explore.sample"))
    created = Counter(
        (e["task"], tuple(e["path"]))
        for events in by_actor.values()
        for e in events
        if e.get("event") == "explore.node" and e["created"]
    )
    assert max(created.values()) == 1 and set(created) <= final.key_set()
    # The same trees and Q labels as one uninterrupted process.
    assert final.content() == expected.content()
    assert final.labels.keys() == expected.labels.keys()
    assert all(abs(final.labels[k] - expected.labels[k]) < 1e-9 for k in final.labels)
