"""The worker loop (qlass.runtime.workers) on a real SQLite store, with a stand-in for tree
growing: heartbeats keep a lease, a lost lease stops the tree at once, a graceful stop gives
the task back, a policy failure fails the task, and a worker waits for others' live leases
before it leaves (so that a dead worker's task is never orphaned)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from qlass.errors import ConfigError, PolicyCallError
from qlass.runtime.explore import TreeStats
from qlass.runtime.scheduler import StopSignal
from qlass.runtime.workers import WorkerSettings, run_worker
from qlass.storage import TaskRecord, TreeStore
from qlass.testing import new_run
from qlass.types import TaskSpec


async def _store(tmp_path: Path, tasks: int) -> tuple[TreeStore, int]:
    store = await TreeStore.open(tmp_path / "w.db")
    run, _ = await new_run(
        store, "r", [TaskSpec("corridor", "walk", i, "train") for i in range(tasks)]
    )
    return store, run.id


async def _wait_stopped(stop: StopSignal, limit_s: float) -> bool:
    """Sleep up to ``limit_s``, polling ``stop`` as the explorer does; True if stopped."""
    for _ in range(int(limit_s / 0.02)):
        if stop.requested:
            return True
        await asyncio.sleep(0.02)
    return False


class _Clock:
    """The store's clock for lease times (SQLite reads this machine's clock), moved by the
    test: leases expire when the test says, not when a busy machine gets round to it."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


async def _expiry(store: TreeStore, run_id: int) -> datetime:
    (task,) = await store.tasks.of_run(run_id)
    assert task.lease_expires_at is not None
    expiry = task.lease_expires_at
    return expiry if expiry.tzinfo else expiry.replace(tzinfo=UTC)


async def _renewed_after(store: TreeStore, run_id: int, when: datetime, lease_s: float) -> None:
    """Wait (however long the machine takes) for a heartbeat made at ``when``."""
    target = when + timedelta(seconds=lease_s)
    deadline = time.monotonic() + 60
    while await _expiry(store, run_id) < target:
        assert time.monotonic() < deadline, "no heartbeat renewed the lease"
        await asyncio.sleep(0.02)


async def test_heartbeats_keep_a_lease_longer_than_its_length(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = _Clock()
    monkeypatch.setattr("qlass.storage._db.utcnow", clock)  # the clock leases are read by
    store, run_id = await _store(tmp_path, 1)
    settings = WorkerSettings("A", lease_s=0.3, heartbeat_s=0.05)
    thief = await TreeStore.open(tmp_path / "w.db")
    stolen: list[TaskRecord | None] = []

    async def grow(task: TaskRecord, stop: StopSignal) -> TreeStats:
        claimed_until = await _expiry(store, run_id)
        for _ in range(2):  # 0.4 s of lease time: longer than the lease
            clock.now += timedelta(seconds=0.2)
            await _renewed_after(store, run_id, clock.now, 0.3)
        assert clock.now > claimed_until  # without the heartbeats it would have expired
        stolen.append(await thief.claims.claim(run_id, "B", lease_s=60))
        return TreeStats()

    report = await run_worker(store, run_id, grow, settings, stop=StopSignal())
    assert (report.claimed, report.done, report.lost) == (1, 1, 0)
    assert stolen == [None]  # never claimable while A was working on it
    assert {t.status for t in await store.tasks.of_run(run_id)} == {"done"}
    await thief.aclose()
    await store.aclose()


async def test_a_lost_lease_stops_the_tree_and_leaves_the_task_to_its_owner(
    tmp_path: Path,
) -> None:
    store, run_id = await _store(tmp_path, 1)
    settings = WorkerSettings("A", lease_s=0.2, heartbeat_s=0.15)
    thief = await TreeStore.open(tmp_path / "w.db")
    stopped: list[bool] = []

    async def grow(task: TaskRecord, stop: StopSignal) -> TreeStats:
        # A loses the task (as after a long pause or a network partition: here it is taken
        # from A directly, so that no heartbeat of A's can win it back in between) and B
        # takes it over.
        assert await thief.claims.release(task.id, "A")
        assert await thief.claims.claim(run_id, "B", lease_s=60) is not None
        stopped.append(await _wait_stopped(stop, 60.0))  # A's next heartbeat notices
        assert await thief.claims.finish(task.id, "B")  # B completes the tree
        return TreeStats(stopped=stop.requested)

    report = await run_worker(store, run_id, grow, settings, stop=StopSignal())
    assert stopped == [True]
    assert (report.lost, report.done) == (1, 0)
    (task,) = await store.tasks.of_run(run_id)
    assert (task.status, task.claimed_by, task.attempts) == ("done", "B", 2)
    await thief.aclose()
    await store.aclose()


async def test_graceful_stop_releases_and_policy_failure_fails(tmp_path: Path) -> None:
    store, run_id = await _store(tmp_path, 3)
    stop = StopSignal()
    seen: list[str] = []

    async def grow(task: TaskRecord, task_stop: StopSignal) -> TreeStats:
        seen.append(task.key)
        if len(seen) == 1:
            raise PolicyCallError("openai/x: InternalServerError (gave up after 5 attempts)")
        stop.request()  # Ctrl-C while the second tree grows
        return TreeStats(stopped=task_stop.requested)

    failed: list[str] = []
    report = await run_worker(
        store,
        run_id,
        grow,
        WorkerSettings("A", lease_s=30),
        stop=stop,
        on_failed=lambda task, error: failed.append(error),
    )
    assert (report.failed, report.released, report.claimed) == (1, 1, 2)
    first, second, third = await store.tasks.of_run(run_id)
    assert first.status == "failed" and "gave up" in (first.error or "")
    assert failed == [first.error]
    assert (second.status, second.claimed_by, second.lease_expires_at) == ("pending", None, None)
    assert third.status == "pending" and third.attempts == 0  # never started
    await store.aclose()


async def test_a_worker_waits_for_live_leases_then_takes_over_a_dead_workers_task(
    tmp_path: Path,
) -> None:
    store, run_id = await _store(tmp_path, 1)
    dead = await store.claims.claim(run_id, "dead", lease_s=0.6)  # claimed, then silence
    assert dead is not None
    grown: list[int] = []

    async def grow(task: TaskRecord, stop: StopSignal) -> TreeStats:
        grown.append(task.attempts)
        return TreeStats()

    settings = WorkerSettings("A", lease_s=5, poll_s=0.1)
    report = await asyncio.wait_for(
        run_worker(store, run_id, grow, settings, stop=StopSignal()), timeout=120
    )
    assert grown == [2] and report.done == 1
    (task,) = await store.tasks.of_run(run_id)
    assert (task.status, task.claimed_by) == ("done", "A")
    await store.aclose()


async def test_a_lease_expiring_between_claim_and_count_is_not_orphaned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dead worker's lease runs out after A's claim found nothing and before A counts
    the live leases: A must still take the task, not leave because none is live."""
    clock = _Clock()
    monkeypatch.setattr("qlass.storage._db.utcnow", clock)  # the clock leases are read by
    store, run_id = await _store(tmp_path, 1)
    assert await store.claims.claim(run_id, "dead", lease_s=5) is not None
    count = store.claims.live_leases

    async def expiring_count(*args: object, **kwargs: object) -> int:
        clock.now += timedelta(seconds=10)  # the lease expires just now
        return await count(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store.claims, "live_leases", expiring_count)
    grown: list[int] = []

    async def grow(task: TaskRecord, stop: StopSignal) -> TreeStats:
        grown.append(task.attempts)
        return TreeStats()

    report = await run_worker(
        store, run_id, grow, WorkerSettings("A", lease_s=5), stop=StopSignal()
    )
    assert grown == [2] and report.done == 1
    await store.aclose()


def test_worker_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="lease"):
        WorkerSettings("A", lease_s=0)
    with pytest.raises(ConfigError, match="heartbeat"):
        WorkerSettings("A", lease_s=1, heartbeat_s=2)
    with pytest.raises(ConfigError, match="worker-id"):
        WorkerSettings("", lease_s=1)
    assert WorkerSettings("A", lease_s=30).heartbeat == 10
