"""Explorer benchmark: qlass's concurrent explorer vs the reference's sequential replay.

Both grow the same exploration trees (the paper's shape: W samples per node, all children
expanded below the prune depth, beyond it the first expanded and the others rolled out)
with the runtime's own :class:`~qlass.runtime.explore.TreeExplorer`, the real tree store
(SQLite) and the same deterministic policy, so only the way environments are positioned
and work is scheduled differs. The policy is scripted (its choice depends on the last
observation and the sample index) and answers after ``--policy-latency`` seconds, standing
in for a served LLM (a vLLM server or an API: a request costs about the same whether or not
others are in flight); ``--policy-latency 0`` measures env and store overhead alone.

- **qlass**: an :class:`~qlass.envs.pool.EnvPool` of ``--pool`` simulators, ``--concurrency``
  trees at once, each node reached by continuing an env that stands at its parent (a
  sibling branch replays);
- **reference**: one simulator, one tree and one node at a time, every node reached by
  resetting the env and replaying its whole prefix (what the authors' code did).

Reported per explorer: trees, nodes, env steps (resets apart), env steps per new node
beside the fewest these trees allow (each leaf costs its depth: one reset per leaf),
wall time, CPU time of this process per new node, trees per hour, and the ratios. The
trees are checked to be identical. ``--linger`` adds a run of the pool's time-based grace
(sessions without env branches, as before env affinity), ``--hog N`` keeps N processes
burning CPU beside every run (a loaded machine).

    .venv/bin/python -m benchmarks.bench_explore                      # ScienceWorld
    .venv/bin/python -m benchmarks.bench_explore --env textworld_express --games coin
    .venv/bin/python -m benchmarks.bench_explore --env textworld_express --games coin \
        --linger --hog 2
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

from benchmarks.scaling import NodeCosts, predicted_nodes_per_s
from qlass._log import configure_logging
from qlass.backends.base import Policy
from qlass.backends.hf import HFPolicy
from qlass.backends.scripted import ScriptedPolicy
from qlass.backends.wrappers import ConcurrencyLimitedPolicy
from qlass.envs._jvm import java_child_pids
from qlass.envs.base import Env
from qlass.envs.pool import EnvPool
from qlass.envs.registry import create_env, list_tasks
from qlass.runtime.context import EnvSession, SearchContext
from qlass.runtime.explore import ExploreSettings, TreeExplorer
from qlass.runtime.scheduler import bounded_map
from qlass.storage import TreeStore
from qlass.types import ChatMessage, Observation, StepResult, TaskSpec

ACTIONS = {
    "scienceworld": [
        "look around",
        "inventory",
        "open door to hallway",
        "go to hallway",
        "open door to kitchen",
        "go to kitchen",
        "look at table",
        "focus on agent",
    ],
    "textworld_express": [
        "look around",
        "move north",
        "move south",
        "move east",
        "move west",
        "open door to north",
        "take coin",
        "inventory",
    ],
}


def _rule(actions: Sequence[str]):  # type: ignore[no-untyped-def]
    """A deterministic policy: the action depends on the last observation and the sample."""

    def choose(messages: Sequence[ChatMessage], index: int) -> str:
        # Lines sorted: ScienceWorld lists objects in an order that changes between resets.
        state = "\n".join(sorted(messages[-1]["content"].splitlines()))
        digest = hashlib.sha256(f"{state}|{index}".encode()).digest()
        return f"Action: {actions[digest[0] % len(actions)]}"

    return choose


@dataclass
class _Session:
    env: Env
    initial: Observation
    counter: list[int]

    async def step(self, action: str) -> StepResult:
        self.counter[0] += 1
        return await self.env.step(action)


class ReplayFromReset:
    """The reference's positioning: one env; every node is reached by reset + replay."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.steps = [0]
        self.resets = 0
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def _session(self, task: TaskSpec, actions: Sequence[str]) -> AsyncIterator[EnvSession]:
        async with self._lock:
            initial = await self.env.reset(task)
            self.resets += 1
            for action in actions:
                await self.env.step(action)
                self.steps[0] += 1
            yield _Session(self.env, initial, self.steps)

    def session(
        self, task: TaskSpec, actions: Sequence[str] = (), expected: Sequence[str] | None = None
    ) -> AbstractAsyncContextManager[EnvSession]:
        return self._session(task, actions)


@dataclass(frozen=True)
class Result:
    name: str
    trees: int
    nodes: int
    env_steps: int
    resets: int
    seconds: float
    cpu_s: float
    leaf_depths: int
    shapes: tuple[frozenset[tuple[tuple[int, ...], str | None, str]], ...]
    jvm_cpu_s: float
    requests: int

    @property
    def steps_per_node(self) -> float:
        return self.env_steps / max(1, self.nodes - self.trees)

    @property
    def fewest_steps_per_node(self) -> float:
        return self.leaf_depths / max(1, self.nodes - self.trees)

    @property
    def cpu_ms_per_node(self) -> float:
        return 1000 * self.cpu_s / max(1, self.nodes - self.trees)

    @property
    def trees_per_hour(self) -> float:
        return 3600 * self.trees / self.seconds

    @property
    def new_nodes(self) -> int:
        return max(1, self.nodes - self.trees)

    def costs(self, latency_s: float, trees_in_flight: int) -> NodeCosts:
        """Per-node costs for the scaling model; branches per tree by Little's law."""
        in_flight = self.requests * latency_s / self.seconds
        return NodeCosts(
            py_cpu_s=self.cpu_s / self.new_nodes,
            env_cpu_s=self.jvm_cpu_s / self.new_nodes,
            requests=self.requests / self.new_nodes,
            branches_per_tree=in_flight / trees_in_flight,
        )


class _Grown(NamedTuple):
    seconds: float
    cpu_s: float
    nodes: int
    leaf_depths: int
    shapes: tuple[frozenset[tuple[tuple[int, ...], str | None, str]], ...]
    jvm_cpu_s: float
    requests: int


def _jvm_cpu_s() -> float:
    """CPU seconds used so far by this process's live JVMs (user + system, from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in java_child_pids():
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


async def _grow(
    name: str,
    provider: object,
    tasks: Sequence[TaskSpec],
    settings: ExploreSettings,
    concurrency: int,
    actions: Sequence[str],
    db: Path,
    latency: float,
    policy_dir: Path | None,
    max_batch: int = 64,
) -> _Grown:
    async with await TreeStore.open(db) as store:
        store.trees.max_batch = max_batch
        run = await store.runs.create(name, config={}, seed=0)
        await store.labels.create_set(run.id)
        records = await store.tasks.add_many(run.id, list(tasks))
        policy: Policy
        scripted: ScriptedPolicy | None = None
        if policy_dir is not None:
            policy = await asyncio.to_thread(HFPolicy, str(policy_dir), device="cpu")
        else:
            policy = scripted = ScriptedPolicy(rule=_rule(actions), delay_s=latency)
        if concurrency == 1:  # the reference: one request at a time, as its loop did
            policy = ConcurrencyLimitedPolicy(policy, 1)
        ctx = SearchContext(policy=policy, envs=provider)  # type: ignore[arg-type]
        explorer = TreeExplorer(store, ctx, settings, seed=0)
        jvm = await asyncio.to_thread(_jvm_cpu_s)
        started, cpu = time.perf_counter(), time.process_time()
        await bounded_map(explorer.explore, records, concurrency=concurrency)
        seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu
        jvm = await asyncio.to_thread(_jvm_cpu_s) - jvm
        requests = len(scripted.calls) if scripted is not None else 0
        await policy.aclose()
        shapes = []
        nodes = leaf_depths = 0
        for record in records:
            tree = await store.trees.load(record.id)
            nodes += len(tree.nodes)
            leaf_depths += sum(
                sum(n.action is not None and n.status == "ok" for n in tree.path(leaf.id))
                for leaf in tree.nodes
                if leaf.is_leaf
            )
            shapes.append(
                frozenset(
                    (
                        tuple(n.sample_index for n in tree.path(node.id)[1:]),
                        node.action,
                        # ScienceWorld's object order changes between resets (same state).
                        "\n".join(sorted(node.observation.splitlines())),
                    )
                    for node in tree.nodes
                )
            )
    return _Grown(seconds, cpu_s, nodes, leaf_depths, tuple(shapes), jvm, requests)


def _result(name: str, trees: int, grown: _Grown, steps: int, resets: int) -> Result:
    return Result(
        name,
        trees,
        grown.nodes,
        steps,
        resets,
        grown.seconds,
        grown.cpu_s,
        grown.leaf_depths,
        grown.shapes,
        grown.jvm_cpu_s,
        grown.requests,
    )


class _Plain:
    """The pool's sessions without env branches: idle envs kept by the linger grace."""

    def __init__(self, pool: EnvPool) -> None:
        self.session = pool.session


@contextmanager
def _hogs(count: int) -> Iterator[None]:
    """``count`` processes burning CPU while the block runs (a loaded machine)."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


async def main(args: argparse.Namespace) -> None:
    configure_logging(level="WARNING")
    tasks = list_tasks(args.env, "train", games=args.games, limit=args.trees)
    settings = ExploreSettings(
        width=args.width,
        max_depth=args.max_depth,
        min_prune_depth=args.prune_depth,
        max_steps=args.max_steps,
    )
    actions = ACTIONS[args.env]
    results: list[Result] = []
    variants = [("qlass (pool, env branches)", True, 64)]
    if args.per_node_commit:
        variants.append(("qlass, a transaction per node", True, 1))
    if args.linger:
        variants.append((f"qlass (pool, linger {args.linger_s:g} s)", False, 64))
    with tempfile.TemporaryDirectory() as tmp, _hogs(args.hog):
        for label, branches, max_batch in variants:
            pool = EnvPool.for_env(
                args.env, size=args.pool, max_steps=args.max_steps, linger_s=args.linger_s
            )
            try:
                # Warm the JVMs (start-up is not exploration).
                async def warm(task: TaskSpec, pool: EnvPool = pool) -> None:
                    async with pool.at(task) as handle:
                        handle.finish()

                await asyncio.gather(*(warm(t) for t in tasks[: args.pool]))

                async def grow(
                    name: str,
                    db: str,
                    provider: object = pool if branches else _Plain(pool),
                    max_batch: int = max_batch,
                ) -> _Grown:
                    return await _grow(
                        name,
                        provider,
                        tasks,
                        settings,
                        args.concurrency,
                        actions,
                        Path(tmp) / db,
                        args.policy_latency,
                        args.policy_dir,
                        max_batch,
                    )

                if args.warm_up:  # the JVMs' JIT and Python's caches, not exploration
                    await grow("warm-up", f"warm-up-{len(results)}.db")
                before = pool.stats.snapshot()
                grown = await grow(label, f"{len(results)}.db")
                stats = pool.stats.since(before)
                results.append(_result(label, len(tasks), grown, stats.steps, stats.resets))
            finally:
                await pool.aclose()

        env = create_env(args.env)
        try:
            reference = ReplayFromReset(env)
            await env.reset(tasks[0])
            if args.warm_up:
                await _grow(
                    "warm-up",
                    reference,
                    tasks[:1],
                    settings,
                    1,
                    actions,
                    Path(tmp) / "warm-up-reference.db",
                    args.policy_latency,
                    args.policy_dir,
                )
                reference.steps[0] = reference.resets = 0
            grown = await _grow(
                "reference",
                reference,
                tasks,
                settings,
                1,
                actions,
                Path(tmp) / "reference.db",
                args.policy_latency,
                args.policy_dir,
            )
            results.append(
                _result(
                    "reference (1 env, replay from reset)",
                    len(tasks),
                    grown,
                    reference.steps[0],
                    reference.resets,
                )
            )
        finally:
            await env.close()

    fast, slow = results[0], results[-1]
    same = all(r.shapes == slow.shapes for r in results)
    print(
        f"\n{args.env}: {len(tasks)} trees, W={args.width}, depth {args.max_depth}, "
        f"prune {args.prune_depth}, step limit {args.max_steps}, pool {args.pool}, "
        f"{args.concurrency} trees at once, policy latency {args.policy_latency:g} s, "
        f"{args.hog} CPU hogs; identical trees: {same}\n"
    )
    print(
        f"{'explorer':40} {'nodes':>7} {'env steps':>10} {'resets':>7} {'steps/node':>11} "
        f"{'fewest':>7} {'seconds':>9} {'CPU ms/node':>12} {'trees/hour':>11}"
    )
    for r in results:
        print(
            f"{r.name:40} {r.nodes:7d} {r.env_steps:10d} {r.resets:7d} {r.steps_per_node:11.2f} "
            f"{r.fewest_steps_per_node:7.2f} {r.seconds:9.1f} {r.cpu_ms_per_node:12.2f} "
            f"{r.trees_per_hour:11.1f}"
        )
    print(
        f"\ntrees per hour: x{fast.trees_per_hour / slow.trees_per_hour:.1f}   "
        f"env steps per node: {slow.steps_per_node / fast.steps_per_node:.1f}x fewer"
    )
    if args.policy_dir is None:
        _print_model(args, fast, slow)
    if not same:
        raise SystemExit("the explorers built different trees")


def _print_model(args: argparse.Namespace, fast: Result, slow: Result) -> None:
    """The scaling model (benchmarks.scaling) fed with this run's costs: checked against
    this run, then its predictions for bigger machines."""
    latency = args.policy_latency
    costs = fast.costs(latency, args.concurrency)
    reference = slow.costs(latency, 1)
    reference_rate = slow.new_nodes / slow.seconds
    cores = len(os.sched_getaffinity(0))
    per_tree = fast.new_nodes / fast.trees
    print(
        "\nscaling model (benchmarks/scaling.py), per new node: qlass CPU "
        f"{1000 * costs.py_cpu_s:.2f} ms, JVM CPU {1000 * costs.env_cpu_s:.2f} ms, "
        f"{costs.requests:.2f} policy requests, {costs.branches_per_tree:.2f} branches per tree "
        f"waiting on the policy; reference JVM CPU {1000 * reference.env_cpu_s:.2f} ms"
    )
    if latency > 0 and costs.branches_per_tree * args.concurrency >= 0.9 * args.pool:
        print("  (the pool capped the branches in flight: branches per tree is a lower bound)")
    rate, bound = predicted_nodes_per_s(
        costs, cores=cores, pool=args.pool, trees=args.concurrency, latency_s=latency
    )
    measured = fast.new_nodes / fast.seconds
    load = os.getloadavg()[0]
    print(
        f"  this run, {cores} cores (load average {load:.1f}; the model assumes them idle): measured {measured:.1f} nodes/s, predicted {rate:.1f} "
        f"({bound} bound; measured/predicted {measured / rate:.2f}); reference "
        f"{reference_rate:.1f} (sequential: the same on any machine)"
    )
    # Not circular like the check above: the most this machine and pool allow, with every
    # env of the pool holding a branch that waits on the policy (the CPU bounds otherwise).
    saturated = replace(costs, branches_per_tree=args.pool / args.concurrency)
    best, best_bound = predicted_nodes_per_s(
        saturated, cores=cores, pool=args.pool, trees=args.concurrency, latency_s=latency
    )
    print(
        f"  the bound {cores} cores and a pool of {args.pool} allow: {best:.1f} nodes/s "
        f"({best_bound} bound, x{best / reference_rate:.1f} the reference); measured "
        f"x{measured / reference_rate:.1f}, {100 * measured / best:.0f}% of the bound"
    )
    for machine in args.predict_cores:
        pool, trees = 2 * machine, 4 * machine
        rate, bound = predicted_nodes_per_s(
            costs, cores=machine, pool=pool, trees=trees, latency_s=latency
        )
        ratio = rate / reference_rate
        print(
            f"  predicted, {machine} cores (pool {pool}, {trees} trees in flight): "
            f"{3600 * rate / per_tree:.0f} trees/hour ({bound} bound), x{ratio:.1f} the reference"
        )


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="scienceworld", choices=sorted(ACTIONS))
    parser.add_argument("--games", nargs="*", default=None)
    parser.add_argument("--trees", type=int, default=4)
    parser.add_argument("--width", type=int, default=2)
    parser.add_argument("--max-depth", type=int, default=6)
    parser.add_argument("--prune-depth", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=12)
    parser.add_argument("--pool", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--policy-latency", type=float, default=0.2, help="seconds per policy request"
    )
    parser.add_argument(
        "--linger", action="store_true", help="also run the pool's time-based grace (before)"
    )
    parser.add_argument("--linger-s", type=float, default=0.5)
    parser.add_argument(
        "--per-node-commit",
        action="store_true",
        help="also run qlass with one store transaction per node (before group commit)",
    )
    parser.add_argument("--hog", type=int, default=0, help="CPU-burning processes beside it")
    parser.add_argument(
        "--warm-up",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="grow the trees once, unmeasured, before each explorer's measured run (the "
        "reference: one tree), so that no explorer pays the JVM's JIT or cold caches",
    )
    parser.add_argument(
        "--predict-cores",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[16, 64],
        help="machines the scaling model predicts for (pool 2 per core, 4 trees per core)",
    )
    parser.add_argument(
        "--policy-dir",
        type=Path,
        default=None,
        help="use this local model (e.g. runs/demo/policy) instead of the scripted policy",
    )
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
