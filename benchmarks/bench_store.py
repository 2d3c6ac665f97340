"""Tree-store benchmark: adding one trajectory with incremental Q relabelling vs recomputing.

Builds a store of ``--trees`` trees of 100 nodes each (paper-style shapes: binary to depth 3,
then one chain of about 10 steps from each depth-3 node to a leaf), all through the public
API, then measures in the same run (median over ``--reps``):

- inserting a 10-node trajectory (a new branch ending in a finished leaf) with no label set,
- the same with one label set maintained incrementally (the number that matters), for a
  leaf that changes nothing above its branch and for one that raises the tree's maximum
  (the walk goes up to the root),
- finishing an existing leaf (update + incremental relabel only),
- a full recompute of that tree's labels, and of the whole label set,
- exporting the training triples (max 300 per tree),
- and, on one extra wide tree of ``--big-tree`` nodes, the incremental insert against a
  recompute of that tree (the incremental cost must not grow with the tree);
- first, exploration's write pattern: 8 trees growing at once, one node per call
  (``add_child_if_absent``, group commit, a finished leaf every 10 nodes), in a store whose
  writes run in its writer thread (the default) beside one whose writes go through the
  async driver (``writer_thread=False``, as before): CPU per committed node and the ratio.

    .venv/bin/python -m benchmarks.bench_store            # 1000 trees = 100k nodes
    .venv/bin/python -m benchmarks.bench_store --trees 100 --reps 20
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from qlass.storage import NewNode, NodeRecord, TreeStore
from qlass.testing import full_tree, synthetic_node
from qlass.types import TaskSpec

CHAINS = (11, 11, 11, 11, 11, 10, 10, 10)  # 1 + 14 + 85 = 100 nodes per tree
TRAJECTORY = 10


def _node(rng: random.Random, depth: int, final: float | None = None) -> NewNode:
    return replace(synthetic_node(rng, depth, final), env_time_s=0.002, policy_time_s=0.03)


async def _build_tree(
    store: TreeStore, task_id: int, rng: random.Random, solvable: bool
) -> list[NodeRecord]:
    """Returns the depth-3 nodes (where new branches are attached later)."""
    level = await full_tree(
        store,
        task_id,
        lambda depth, _path: _node(rng, depth),
        observation="You are in the kitchen. " * 8,
        instruction="Find the coin.",
    )
    for parent, length in zip(level, CHAINS, strict=True):
        final = 1.0 if solvable and rng.random() < 0.3 else 0.0
        chain = [_node(rng, 4 + k) for k in range(length - 1)] + [_node(rng, 3 + length, final)]
        await store.trees.add_path(parent.id, chain)
    return level


async def _median_ms(
    reps: int, make: Callable[[int], Awaitable[Callable[[], Awaitable[object]]]]
) -> tuple[float, float]:
    """Median wall and CPU time (ms) of ``reps`` timed calls; ``make(i)`` prepares call ``i``.

    CPU time is the whole process's (event loop and the driver's thread): on a shared machine
    it is steadier than wall time, which includes waiting for a core.
    """
    wall, cpu = [], []
    for i in range(reps):
        call = await make(i)
        start, start_cpu = time.perf_counter(), time.process_time()
        await call()
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - start_cpu) * 1000)
    return statistics.median(wall), statistics.median(cpu)


async def _big_tree(
    store: TreeStore, run_id: int, label_set_id: int, size: int, reps: int, rng: random.Random
) -> list[tuple[str, tuple[float, float]]]:
    """One wide tree of ``size`` nodes: the incremental cost must not grow with the tree."""
    (task,) = await store.tasks.add_many(
        run_id, [TaskSpec("textworld_express", "coin", -1, "train")]
    )
    level = await full_tree(store, task.id, lambda depth, _path: _node(rng, depth))
    built = 15
    while built < size:
        chain = [_node(rng, 4 + k) for k in range(TRAJECTORY - 1)] + [_node(rng, 13, 0.0)]
        await store.trees.add_path(rng.choice(level).id, chain)
        built += TRAJECTORY
    print(f"built a single tree of {built} nodes")

    async def insert(_i: int) -> Callable[[], Awaitable[object]]:
        parent = rng.choice(level)
        chain = [_node(rng, 4 + k) for k in range(TRAJECTORY - 1)] + [_node(rng, 13, 1.0)]
        return lambda: store.trees.add_path(parent.id, chain)

    async def recompute(_i: int) -> Callable[[], Awaitable[object]]:
        return lambda: store.labels.recompute(label_set_id, task_id=task.id)

    return [
        (
            f"big tree ({built} nodes): insert 10-node trajectory + incremental relabel",
            await _median_ms(reps, insert),
        ),
        (
            f"big tree ({built} nodes): full recompute of the tree",
            await _median_ms(max(3, reps // 5), recompute),
        ),
    ]


async def _node_commits(db: Path, *, writer_thread: bool, trees: int = 8) -> tuple[float, float]:
    """Wall and CPU ms per node of exploration-like writes (see the module docstring): the
    median of 3 rounds of ``trees`` x 140 nodes, after a warm-up round."""
    rounds: list[tuple[float, float]] = []
    async with await TreeStore.open(db, writer_thread=writer_thread) as store:
        run = await store.runs.create("commits", config={}, seed=0)
        await store.labels.create_set(run.id)

        async def grow(task_id: int) -> None:
            root = await store.trees.add_root(task_id, "You are in the kitchen.")
            parent = root.id
            for i in range(140):
                final = 1.0 if i % 10 == 9 else None
                node = NewNode("You are in the kitchen. " * 8, "move east", final_reward=final)
                child, _ = await store.trees.add_child_if_absent(parent, node)
                parent = root.id if final is not None else child.id

        for round_ in range(4):
            specs = [
                TaskSpec("textworld_express", "coin", 100 * round_ + i, "train")
                for i in range(trees)
            ]
            tasks = await store.tasks.add_many(run.id, specs)
            start, start_cpu = time.perf_counter(), time.process_time()
            await asyncio.gather(*(grow(task.id) for task in tasks))
            nodes = trees * 140
            if round_:  # the first fills SQLAlchemy's statement caches
                rounds.append(
                    (
                        (time.perf_counter() - start) * 1000 / nodes,
                        (time.process_time() - start_cpu) * 1000 / nodes,
                    )
                )
    wall, cpu = zip(*rounds, strict=True)
    return statistics.median(wall), statistics.median(cpu)


async def compare_node_commits(folder: Path) -> None:
    """Print exploration's node writes through the writer thread against the async driver."""
    fast = await _node_commits(folder / "writer-thread.db", writer_thread=True)
    slow = await _node_commits(folder / "async-driver.db", writer_thread=False)
    print(
        f"\n{'8 trees growing at once, one node per call':<52} {'wall ms/node':>13} {'cpu ms/node':>12}"
    )
    print(f"{'writes in the store writer thread (sqlite3)':<52} {fast[0]:>13.2f} {fast[1]:>12.2f}")
    print(f"{'writes through the async driver (aiosqlite)':<52} {slow[0]:>13.2f} {slow[1]:>12.2f}")
    print(f"CPU per committed node: x{slow[1] / fast[1]:.1f} less in the writer thread\n")


async def main(trees: int, reps: int, db: str | Path, big_tree: int) -> None:
    rng = random.Random(0)
    async with await TreeStore.open(db) as store:
        run = await store.runs.create("bench", config={"bench": True}, code_version="bench")
        specs = [TaskSpec("textworld_express", "coin", i, "train") for i in range(trees)]
        tasks = await store.tasks.add_many(run.id, specs)
        solvable = [rng.random() < 0.5 for _ in tasks]
        start = time.perf_counter()
        attach: list[list[NodeRecord]] = []
        for index, task in enumerate(tasks):
            attach.append(await _build_tree(store, task.id, rng, solvable[index]))
            if (index + 1) % 100 == 0:
                print(f"  built {index + 1}/{trees} trees", flush=True)
        build_s = time.perf_counter() - start
        nodes = (await store.runs.summary(run.id)).nodes
        print(f"built {nodes} nodes in {trees} trees in {build_s:.1f} s ({store.url})")

        def trajectory(final: float) -> list[NewNode]:
            return [_node(rng, 4 + k) for k in range(TRAJECTORY - 1)] + [
                _node(rng, 3 + TRAJECTORY, final)
            ]

        picks = [rng.randrange(trees) for _ in range(reps * 6)]

        async def insert_plain(i: int) -> Callable[[], Awaitable[object]]:
            tree = picks[i]
            parent = rng.choice(attach[tree])
            path = trajectory(0.0)
            return lambda: store.trees.add_path(parent.id, path)

        plain_ms = await _median_ms(reps, insert_plain)

        start, start_cpu = time.perf_counter(), time.process_time()
        label_set = await store.labels.create_set(run.id, gamma=0.9, normalize=True)
        create_ms = (
            (time.perf_counter() - start) * 1000,
            (time.process_time() - start_cpu) * 1000,
        )

        async def insert_no_change(i: int) -> Callable[[], Awaitable[object]]:
            tree = picks[reps + i]
            parent = rng.choice(attach[tree])
            path = trajectory(0.0)
            return lambda: store.trees.add_path(parent.id, path)

        unsolved = [i for i, ok in enumerate(solvable) if not ok]

        async def insert_new_max(i: int) -> Callable[[], Awaitable[object]]:
            # a tree whose leaves all failed gets its first success: every ancestor changes
            tree = unsolved[i % len(unsolved)]
            solvable[tree] = True
            parent = rng.choice(attach[tree])
            path = trajectory(1.0)
            return lambda: store.trees.add_path(parent.id, path)

        async def finish_leaf(i: int) -> Callable[[], Awaitable[object]]:
            tree = picks[2 * reps + i]
            parent = rng.choice(attach[tree])
            path = await store.trees.add_path(parent.id, [*trajectory(0.0)[:-1], _node(rng, 12)])
            return lambda: store.trees.finish_leaf(path[-1].id, 1.0)

        async def tree_recompute(i: int) -> Callable[[], Awaitable[object]]:
            task_id = tasks[picks[3 * reps + i]].id
            return lambda: store.labels.recompute(label_set.id, task_id=task_id)

        async def set_recompute(_i: int) -> Callable[[], Awaitable[object]]:
            return lambda: store.labels.recompute(label_set.id)

        async def export(_i: int) -> Callable[[], Awaitable[object]]:
            return lambda: store.export_triples(label_set.id, max_per_tree=300)

        no_change_ms = await _median_ms(reps, insert_no_change)
        new_max_ms = await _median_ms(min(reps, len(unsolved)), insert_new_max)
        finish_ms = await _median_ms(reps, finish_leaf)
        tree_ms = await _median_ms(reps, tree_recompute)
        full_ms = await _median_ms(3, set_recompute)
        export_ms = await _median_ms(1, export)
        changed = await store.labels.recompute(label_set.id)
        total = (await store.runs.summary(run.id)).nodes
        big = await _big_tree(store, run.id, label_set.id, big_tree, reps, rng) if big_tree else []

    rows = [
        ("insert 10-node trajectory, no label set", plain_ms),
        (
            "insert 10-node trajectory + incremental relabel (leaf changes nothing above)",
            no_change_ms,
        ),
        (
            "insert 10-node trajectory + incremental relabel (new tree maximum: walk to root)",
            new_max_ms,
        ),
        ("finish one leaf (update + incremental relabel)", finish_ms),
        ("full recompute of one tree (~100 nodes)", tree_ms),
        (f"full recompute of the label set ({total} nodes)", full_ms),
        ("create the label set (first full compute)", create_ms),
        ("export triples (max 300 per tree)", export_ms),
    ]
    rows.extend(big)
    base_wall, base_cpu = new_max_ms
    print()
    print(f"{'operation':<82} {'wall ms':>9} {'cpu ms':>8} {'x incr (wall)':>14}")
    for name, (wall, cpu) in rows:
        print(f"{name:<82} {wall:>9.2f} {cpu:>8.2f} {wall / base_wall:>13.1f}x")
    print()
    print(
        "full label-set recompute / incremental trajectory (walk to root): "
        f"{full_ms[0] / base_wall:.0f}x wall, {full_ms[1] / base_cpu:.0f}x cpu"
    )
    print(
        "one-tree recompute / incremental trajectory (walk to root): "
        f"{tree_ms[0] / base_wall:.1f}x wall, {tree_ms[1] / base_cpu:.1f}x cpu"
    )
    print(
        "relabel cost inside an insert (with - without label set): "
        f"{base_wall - plain_ms[0]:.2f} ms wall, {base_cpu - plain_ms[1]:.2f} ms cpu"
    )
    verdict = "met" if base_wall < 10 else "NOT met on wall time"
    print(f"target: one trajectory inserted + relabelled in under 10 ms -> {verdict}")
    print(f"labels changed by the final full recompute (must be 0): {changed}")


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trees", type=int, default=1000, help="trees of 100 nodes (default 1000)")
    parser.add_argument("--reps", type=int, default=30, help="repetitions per measurement")
    parser.add_argument(
        "--db",
        default=None,
        help="an empty store: SQLite file or SQLAlchemy URL (default: a file in a temp dir)",
    )
    parser.add_argument(
        "--big-tree", type=int, default=5000, help="nodes of one extra wide tree (0: skip)"
    )
    parser.add_argument(
        "--skip-node-commits",
        action="store_true",
        help="skip the writer-thread vs async-driver comparison of node commits",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_node_commits:
            asyncio.run(compare_node_commits(Path(tmp)))
        db = args.db if args.db is not None else Path(tmp) / "bench.db"
        asyncio.run(main(args.trees, args.reps, db, args.big_tree))


if __name__ == "__main__":
    cli()
