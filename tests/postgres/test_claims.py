"""Task leases (store.claims) and concurrent explorers of one tree, on SQLite and on a real
PostgreSQL server: every task is claimed by one worker at a time, a dead worker's task comes
back when its lease expires, and no sample is ever stored twice."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from qlass.backends.cache import CachedPolicy
from qlass.backends.scripted import ScriptedPolicy
from qlass.envs.pool import EnvPool
from qlass.runtime.context import SearchContext
from qlass.runtime.explore import ExploreSettings, TreeExplorer
from qlass.storage import NewNode, NodeRecord, TaskRecord, Tree, TreeStore
from qlass.storage.trees import TreeRepository
from qlass.testing import new_run
from qlass.types import TaskSpec
from tests.runtime.toys import Corridor

from .conftest import PostgresServer


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "qlass.db")
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return await server.create_database_async()


@pytest.fixture
async def stores(url: str) -> AsyncIterator[list[TreeStore]]:
    """Four stores on one database: four workers, each with its own connections."""
    opened = [await TreeStore.open(url, busy_timeout_s=30)]
    opened += [await TreeStore.open(url) for _ in range(3)]
    yield opened
    for store in opened:
        await store.aclose()


async def _run_with_tasks(store: TreeStore, count: int) -> int:
    run, _ = await new_run(
        store, "r", [TaskSpec("corridor", "walk", i, "train") for i in range(count)]
    )
    return run.id


async def test_concurrent_claims_hand_out_each_task_once(stores: list[TreeStore]) -> None:
    run_id = await _run_with_tasks(stores[0], 12)

    async def worker(store: TreeStore, name: str) -> list[str]:
        got = []
        while (task := await store.claims.claim(run_id, name, lease_s=60)) is not None:
            got.append(task.key)
        return got

    results = await asyncio.gather(*(worker(s, f"w{i}") for i, s in enumerate(stores * 2)))
    claimed = [key for keys in results for key in keys]
    assert len(claimed) == 12
    assert Counter(claimed).most_common(1)[0][1] == 1
    tasks = await stores[0].tasks.of_run(run_id)
    assert {t.status for t in tasks} == {"running"}
    assert all(t.attempts == 1 and t.claimed_by and t.lease_expires_at for t in tasks)
    assert await stores[0].claims.live_leases(run_id) == 12


async def test_expired_lease_is_taken_over_and_the_old_owner_is_refused(
    stores: list[TreeStore],
) -> None:
    a, b = stores[0], stores[1]
    run_id = await _run_with_tasks(a, 1)
    task = await a.claims.claim(run_id, "A", lease_s=60)  # live whatever the machine's load
    assert task is not None
    assert await b.claims.claim(run_id, "B", lease_s=60) is None  # A's lease is live
    assert await b.claims.live_leases(run_id, exclude="B") == 1
    assert await a.claims.renew(task.id, "A", lease_s=0.2)  # A's last beat; then it dies
    deadline = time.monotonic() + 60
    while await b.claims.live_leases(run_id, exclude="B"):  # waits as long as expiry takes
        assert time.monotonic() < deadline, "the lease never expired"
        await asyncio.sleep(0.05)
    taken = await b.claims.claim(run_id, "B", lease_s=60)
    assert taken is not None and taken.id == task.id
    assert taken.attempts == 2 and taken.claimed_by == "B"
    # A comes back: its heartbeat, finish and release are all refused.
    assert not await a.claims.renew(task.id, "A", lease_s=60)
    assert not await a.claims.finish(task.id, "A")
    assert not await a.claims.release(task.id, "A")
    assert await b.claims.finish(task.id, "B")
    done = await a.tasks.get(task.id)
    assert done.status == "done" and done.finished_at is not None
    assert done.lease_expires_at is None
    assert await a.claims.claim(run_id, "A", lease_s=60) is None


async def test_release_max_attempts_and_failed_tasks(stores: list[TreeStore]) -> None:
    store = stores[0]
    run_id = await _run_with_tasks(store, 2)
    first = await store.claims.claim(run_id, "A", lease_s=60)
    assert first is not None
    assert await store.claims.release(first.id, "A")  # graceful stop: claimable at once
    again = await store.claims.claim(run_id, "B", lease_s=60)
    assert again is not None and again.id == first.id and again.attempts == 2
    assert await store.claims.finish(again.id, "B", status="failed", error="policy down")
    failed = await store.tasks.get(again.id)
    assert (failed.status, failed.error) == ("failed", "policy down")
    # A failed task is not claimed again; one claimed max_attempts times is left alone.
    second = await store.claims.claim(run_id, "A", lease_s=0.1, max_attempts=1)
    assert second is not None and second.id != first.id
    await asyncio.sleep(0.3)
    assert await store.claims.claim(run_id, "B", lease_s=60, max_attempts=1) is None
    assert (await store.claims.claim(run_id, "B", lease_s=60, max_attempts=2)).id == second.id  # type: ignore[union-attr]


SETTINGS = ExploreSettings(width=2, max_depth=3, min_prune_depth=1, max_steps=6)
RACED = [TaskSpec("corridor", "walk", i, "dev") for i in range(3)]


def _policy(delay_s: float) -> ScriptedPolicy:
    # Seed-driven samples (not index-driven rules): sample i of a call is the same whether
    # it is drawn in the call or alone after a partial cache hit, as with real backends.
    return ScriptedPolicy(actions=["move right", "move left"], delay_s=delay_s)


def _shape(tree: Tree) -> dict[tuple[int, ...], tuple[object, ...]]:
    return {
        tuple(n.sample_index for n in tree.path(node.id)[1:]): (
            node.action,
            node.observation,
            node.final_reward,
            node.is_leaf,
        )
        for node in tree.nodes
    }


async def _explore(store: TreeStore, task_id: int, delay_s: float) -> int:
    ctx = SearchContext(
        policy=CachedPolicy(_policy(delay_s), store.call_cache),
        envs=EnvPool.around(Corridor(3)),
    )
    task = await store.tasks.get(task_id)
    stats = await TreeExplorer(store, ctx, SETTINGS, seed=0).explore(task)
    return stats.new_nodes


class _ParkedTrees:
    """An explorer's tree repository that lets its first ``free`` child inserts through and
    parks every later one until ``release`` is set: a chosen point of the explorer's work,
    not a timer, decides when the other explorer gets the tree to itself."""

    def __init__(self, inner: TreeRepository, free: int) -> None:
        self._inner = inner
        self._free = free
        self.parked = asyncio.Event()
        self.release = asyncio.Event()
        self.lost = 0  # inserts that found the child already stored by the other explorer

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def add_child_if_absent(self, parent_id: int, node: NewNode) -> tuple[NodeRecord, bool]:
        if self._free > 0:
            self._free -= 1
            return await self._inner.add_child_if_absent(parent_id, node)
        self.parked.set()
        await self.release.wait()
        stored, created = await self._inner.add_child_if_absent(parent_id, node)
        self.lost += not created
        return stored, created


async def _check_tree(store: TreeStore, task: TaskRecord, made: int) -> None:
    tree = await store.trees.load(task.id)
    siblings = Counter((n.parent_id, n.sample_index) for n in tree.nodes if n.parent_id)
    assert max(siblings.values()) == 1  # no sample stored twice
    assert made == len(tree.nodes)  # each node created by exactly one explorer
    assert _shape(tree) == _shape(await _reference_tree(task.spec))


async def test_two_explorers_of_one_tree_store_each_sample_once(stores: list[TreeStore]) -> None:
    """A grows part of each tree and stops mid-way (parked before storing a child); B grows
    the whole rest; A then resumes, loses every remaining insert to B's stored nodes and
    continues from them. Both create nodes whatever the machine's load."""
    a, b = stores[0], stores[1]
    run = await a.runs.create("r", config={}, seed=0)
    labels = await a.labels.create_set(run.id, gamma=0.9, normalize=False)
    tasks = await a.tasks.add_many(run.id, RACED)
    trees = a.trees
    try:
        for task in tasks:
            parked = _ParkedTrees(trees, free=2)
            a.trees = parked  # type: ignore[assignment]
            first = asyncio.create_task(_explore(a, task.id, 0.0))
            waiting = asyncio.create_task(parked.parked.wait())
            await asyncio.wait({first, waiting}, return_when=asyncio.FIRST_COMPLETED)
            assert parked.parked.is_set() and not first.done()  # A stopped mid-tree
            made_b = await _explore(b, task.id, 0.0)
            parked.release.set()
            made_a = await first
            assert made_a == 3 and made_b >= 1  # A: the root and two children
            assert parked.lost >= 1  # A met B's nodes and continued from them
            await _check_tree(a, task, made_a + made_b)
    finally:
        a.trees = trees
    assert await a.labels.recompute(labels.id) == 0  # incremental labels stayed exact


async def test_two_explorers_racing_freely_store_each_sample_once(
    stores: list[TreeStore],
) -> None:
    """Both explorers at once, interleaved however the scheduler and the database let
    them: which one creates which node varies from run to run; the tree does not."""
    a, b = stores[0], stores[1]
    run = await a.runs.create("r", config={}, seed=0)
    labels = await a.labels.create_set(run.id, gamma=0.9, normalize=False)
    for task in await a.tasks.add_many(run.id, RACED):
        made_a, made_b = await asyncio.gather(
            _explore(a, task.id, 0.002), _explore(b, task.id, 0.003)
        )
        await _check_tree(a, task, made_a + made_b)
    assert await a.labels.recompute(labels.id) == 0


async def _reference_tree(spec: TaskSpec) -> Tree:
    async with await TreeStore.open("sqlite+aiosqlite:///:memory:") as store:
        run = await store.runs.create("r", config={}, seed=0)
        (task,) = await store.tasks.add_many(run.id, [spec])
        await _explore(store, task.id, 0.0)
        return await store.trees.load(task.id)
