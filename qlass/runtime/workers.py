"""Explore workers: several processes (on one or many machines) share the trees of one run.

Each worker loops: claim a task (:mod:`qlass.storage.claims`), grow its tree while a
heartbeat renews the lease, finish the task; until no task is claimable and no other worker
holds a live lease (a task whose worker dies comes back when its lease expires, and one of
the remaining workers continues its tree from the committed nodes). A worker runs
``concurrency`` such loops at once.

- Lease lost (the heartbeat finds another owner): the worker stops starting new steps on
  that tree at once; the steps under way are committed (the store keeps one child per
  parent and sample index, so nothing is stored twice) and the task is left to its owner.
- Graceful stop (Ctrl-C / SIGTERM): steps under way are committed and each claimed task is
  released (``pending``), so another worker can take it without waiting for the lease.
- A task whose policy fails (after the backend's retries) is finished ``failed`` with the
  error; a task claimed ``max_attempts`` times (its workers keep dying) is left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from qlass._log import redact
from qlass.errors import ConfigError, EnvError, PolicyError, StoreError
from qlass.runtime.explore import TreeStats
from qlass.runtime.scheduler import StopSignal
from qlass.storage import TaskRecord, TreeStore

__all__ = [
    "TASK_FAILURES",
    "LinkedStop",
    "WorkerReport",
    "WorkerSettings",
    "default_worker_id",
    "ensure_stage",
    "run_worker",
]

log = structlog.get_logger(__name__)

GrowFn = Callable[[TaskRecord, StopSignal], Awaitable[TreeStats]]
"""Grows one task's tree, honouring the stop signal; raises one of TASK_FAILURES when it fails."""

TASK_FAILURES: tuple[type[Exception], ...] = (PolicyError, EnvError)
"""Failures that end one task's tree (the policy or this task's simulator failed, or the
simulator is not deterministic for it): the task is recorded failed with the cause and the
others go on; a rerun retries it."""


def default_worker_id() -> str:
    """``host:pid``: unique among live workers, readable in ``tasks.claimed_by``."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """How a worker claims tasks.

    ``lease_s``: how long a claim lasts without a heartbeat (a dead worker's task comes back
    after at most this long). ``heartbeat_s``: how often the lease is renewed (default a
    third of the lease). ``poll_s``: how long to wait, when nothing is claimable but other
    workers hold leases, before looking again (default ``min(lease_s / 4, 1)``).
    """

    worker_id: str = field(default_factory=default_worker_id)
    lease_s: float = 60.0
    heartbeat_s: float | None = None
    poll_s: float | None = None
    max_attempts: int | None = 5

    def __post_init__(self) -> None:
        if not self.worker_id:
            raise ConfigError("--worker-id must not be empty")
        if not self.lease_s > 0:
            raise ConfigError(f"--lease-s must be positive, got {self.lease_s}")
        if self.heartbeat_s is not None and not 0 < self.heartbeat_s < self.lease_s:
            raise ConfigError("the heartbeat interval must be positive and shorter than the lease")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1, got {self.max_attempts}")

    @property
    def heartbeat(self) -> float:
        return self.heartbeat_s if self.heartbeat_s is not None else self.lease_s / 3

    @property
    def poll(self) -> float:
        return self.poll_s if self.poll_s is not None else min(self.lease_s / 4, 1.0)


class LinkedStop(StopSignal):
    """A stop signal for one task: requested when the worker's stop is, or on its own
    (the lease was lost)."""

    def __init__(self, parent: StopSignal) -> None:
        super().__init__()
        self._parent = parent

    @property
    def requested(self) -> bool:
        return self._parent.requested or super().requested


@dataclass
class WorkerReport:
    """What one worker did."""

    worker_id: str
    claimed: int = 0
    done: int = 0
    failed: int = 0
    released: int = 0
    lost: int = 0
    stats: list[TreeStats] = field(default_factory=list)

    def as_dict(self) -> dict[str, int | str]:
        return {
            "worker_id": self.worker_id,
            "claimed": self.claimed,
            "done": self.done,
            "failed": self.failed,
            "released": self.released,
            "leases_lost": self.lost,
        }


async def run_worker(
    store: TreeStore,
    run_id: int,
    grow: GrowFn,
    settings: WorkerSettings,
    *,
    stop: StopSignal,
    concurrency: int = 1,
    split: str | None = "train",
    on_failed: Callable[[TaskRecord, str], None] | None = None,
) -> WorkerReport:
    """Claim and grow the run's tasks, ``concurrency`` at a time, until none is left (see
    the module docstring). ``on_failed(task, error)`` is told of each task that failed.
    """
    report = WorkerReport(settings.worker_id)
    log.info("worker.started", worker=settings.worker_id, run_id=run_id, lease_s=settings.lease_s)

    async def loop() -> None:
        while not stop.requested:
            task = await store.claims.claim(
                run_id,
                settings.worker_id,
                lease_s=settings.lease_s,
                split=split,
                max_attempts=settings.max_attempts,
            )
            if task is None:
                if await store.claims.live_leases(run_id, exclude=settings.worker_id):
                    await _sleep_unless_stopped(stop, settings.poll)
                    continue
                # A lease that expired between the claim and the count made its task
                # claimable: claim once more before leaving, or that task is orphaned.
                task = await store.claims.claim(
                    run_id,
                    settings.worker_id,
                    lease_s=settings.lease_s,
                    split=split,
                    max_attempts=settings.max_attempts,
                )
                if task is None:
                    return
            report.claimed += 1
            await _work_on(store, task, grow, settings, stop, report, on_failed)

    try:
        async with asyncio.TaskGroup() as group:  # an error stops every loop of the worker
            for _ in range(concurrency):
                group.create_task(loop())
    except BaseExceptionGroup as errors:
        first = errors.exceptions[0]
        raise first from first.__cause__
    log.info("worker.finished", **report.as_dict())
    return report


async def _work_on(
    store: TreeStore,
    task: TaskRecord,
    grow: GrowFn,
    settings: WorkerSettings,
    stop: StopSignal,
    report: WorkerReport,
    on_failed: Callable[[TaskRecord, str], None] | None,
) -> None:
    worker = settings.worker_id
    log.info("worker.claimed", worker=worker, task=task.key, attempt=task.attempts)
    task_stop = LinkedStop(stop)
    lost = asyncio.Event()
    heartbeat = asyncio.create_task(_heartbeat(store, task, settings, task_stop, lost))
    try:
        stats = await grow(task, task_stop)
    except TASK_FAILURES as exc:
        error = redact(str(exc))  # a provider may echo the API key in its error
        if await store.claims.finish(task.id, worker, status="failed", error=error):
            report.failed += 1
        log.warning("worker.task_failed", worker=worker, task=task.key, error=error)
        if on_failed is not None:
            on_failed(task, error)
        return
    finally:
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
    report.stats.append(stats)
    if lost.is_set():
        report.lost += 1
        return
    if stats.stopped:
        if await store.claims.release(task.id, worker):
            report.released += 1
            log.info("worker.released", worker=worker, task=task.key)
        return
    if await store.claims.finish(task.id, worker, status="done"):
        report.done += 1
        log.info("worker.done", worker=worker, task=task.key, nodes=stats.new_nodes)
    else:  # the lease expired and was taken over between the last heartbeat and now
        report.lost += 1
        log.warning("worker.lease_lost", worker=worker, task=task.key, when="finishing")


async def _heartbeat(
    store: TreeStore,
    task: TaskRecord,
    settings: WorkerSettings,
    task_stop: LinkedStop,
    lost: asyncio.Event,
) -> None:
    while True:
        await asyncio.sleep(settings.heartbeat)
        try:
            owned = await store.claims.renew(task.id, settings.worker_id, lease_s=settings.lease_s)
        except StoreError as exc:  # a busy or unreachable DB: try again at the next beat
            log.warning("worker.heartbeat_failed", task=task.key, error=str(exc))
            continue
        if not owned:
            lost.set()
            task_stop.request()
            log.warning("worker.lease_lost", worker=settings.worker_id, task=task.key)
            return


async def _sleep_unless_stopped(stop: StopSignal, seconds: float) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not stop.requested:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            return
        await asyncio.sleep(min(left, 0.2))


async def ensure_stage(store: TreeStore, run_id: int, name: str, fingerprint: str) -> None:
    """Make sure the stage's row exists before workers start it: of two concurrent first
    inserts one fails, and the row is there then."""
    if await store.stages.get(run_id, name) is not None:
        return
    try:
        await store.stages.start(run_id, name, fingerprint)
    except StoreError:
        if await store.stages.get(run_id, name) is None:
            raise
