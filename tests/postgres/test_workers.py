"""Four ``qlass explore --worker`` processes share one run on a real PostgreSQL server; one
is SIGKILLed mid-tree. Every task is explored exactly once (its dead worker's tree taken
over and continued from the committed nodes), nothing is lost, nothing is stored twice, no
write fails on a lock, and the trees and Q labels equal a single uninterrupted run's."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.reliability.campaign import finish_reference, start_reference
from tests.reliability.harness import (
    Proc,
    assert_session_gone,
    child_env,
    duplicate_siblings,
    kill,
    qlass_command,
    settings,
    snapshot,
    start,
    trace_keys,
)

from .conftest import PostgresServer

NAME = "shared"
EXTRA = [
    "env.train_tasks=8",
    "env.max_steps=6",
    "explore.max_depth=4",
    "env.pool_size=3",
    "explore.concurrency=1",
]
LEASE_S = 3


def _claims(proc: Proc) -> list[str]:
    return [e["task"] for e in proc.events() if e.get("event") == "worker.claimed"]


def _wait_mid_tree(workers: list[Proc], timeout: float = 120) -> tuple[Proc, str]:
    """A worker that has committed a few nodes of a claimed task it has not finished."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in workers:
            events = proc.events()
            claimed = [e["task"] for e in events if e.get("event") == "worker.claimed"]
            done = {e["task"] for e in events if e.get("event") == "worker.done"}
            if not claimed or claimed[-1] in done:
                continue
            task = claimed[-1]
            made = sum(
                1
                for e in events
                if e.get("event") == "explore.node" and e.get("task") == task and e["created"]
            )
            if made >= 3:
                return proc, task
        time.sleep(0.01)
    raise TimeoutError("no worker got into a tree")


def _shared_run(tmp_path: Path, url: str) -> None:
    reference, ref_db = start_reference(tmp_path, NAME, EXTRA)
    args = ["explore", "--db", url, *settings(NAME, f"run_dir={tmp_path / 'run'}", *EXTRA)]
    workers = [
        start(
            qlass_command(*args, "--worker", "--worker-id", f"w{i}", "--lease-s", str(LEASE_S)),
            tmp_path / "logs",
            f"w{i}",
            child_env(),
        )
        for i in range(4)
    ]
    victim, task = _wait_mid_tree(workers)
    kill(victim, signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    assert_session_gone(victim.pid)
    at_kill = snapshot(url, NAME)
    survivors = [w for w in workers if w is not victim]
    for proc in survivors:
        assert proc.wait(timeout=240) == 0, proc.err()[-4000:]
    final = snapshot(url, NAME)
    expected = finish_reference(reference, ref_db, NAME)
    victim_id = f"w{workers.index(victim)}"

    # Every task done; the victim's task taken over once and finished by a survivor.
    assert set(final.task_status.values()) == {"done"}
    assert final.task_attempts[task] == 2
    assert final.claimed_by[task] not in (None, victim_id)
    takers = [w for w in survivors if task in _claims(w)]
    assert len(takers) == 1
    # Each other task was claimed once, by one worker.
    all_claims = Counter(t for w in workers for t in _claims(w))
    assert all(n == 1 for t, n in all_claims.items() if t != task)
    assert all_claims[task] == 2
    # Nothing the victim committed was lost, changed, stepped or sampled again.
    for node_id, row in at_kill.nodes.items():
        assert final.nodes[node_id] == row
    committed = {key for key in at_kill.key_set() if key[0] == task}
    assert committed  # the victim had made part of its tree
    for proc in takers:
        events = proc.events()
        assert not committed & set(trace_keys(events, "explore.step"))
        assert not committed & set(trace_keys(events, "explore.sample"))
    # Each node was created by exactly one worker; none stored twice.
    created = Counter(
        (e["task"], tuple(e["path"]))
        for w in workers
        for e in w.events()
        if e.get("event") == "explore.node" and e["created"]
    )
    assert max(created.values()) == 1
    assert set(created) <= final.key_set()
    unlogged = final.key_set() - set(created)  # committed just before the SIGKILL hit
    assert len(unlogged) <= 2 and all(key[0] == task for key in unlogged)
    assert duplicate_siblings(final) == []
    # The same trees and Q labels as one uninterrupted process.
    assert final.content() == expected.content()
    assert final.labels.keys() == expected.labels.keys()
    assert all(abs(final.labels[k] - expected.labels[k]) < 1e-9 for k in final.labels)
    # Concurrent writers: no write failed on a lock.
    for proc in workers:
        text = proc.err().lower()
        assert "database is locked" not in text and "deadlock" not in text


@pytest.mark.postgres
def test_four_workers_on_postgres_survive_a_killed_worker(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    _shared_run(tmp_path, postgres_server.create_database())


@pytest.mark.slow
def test_four_workers_on_one_sqlite_file_survive_a_killed_worker(tmp_path: Path) -> None:
    _shared_run(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}")
