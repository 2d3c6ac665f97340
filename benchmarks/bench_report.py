"""Report and viewer benchmark: what generating them costs over reading their data.

Builds a store through the public API: ``--trees`` trees of about 100 nodes (binary to
depth 3, then a chain to a finished leaf from each depth-3 node) and ``--episodes``
evaluation episodes spread over five strategies. Then measures, in the same run (median
over ``--reps``):

- reading every tree with its Q labels (raw and normalised): the viewer's baseline;
- ``build_viewer`` without QNet scores (read + render + write), and rendering alone;
- reading every episode of the run: the baseline of the report and the episode viewer;
- ``build_report`` without the QNet scatter (tables + Figure 3 + CSV/Markdown);
- ``build_episode_viewer`` of every task (read + render + write; QLASS episodes carry their
  M scored candidates per step, Best-of-N its N rollout values);
- scoring ``--queries`` node queries with a tiny QNet (built from scratch) the way the
  viewer does (batched chunks through the micro-batching scorer) against one query per
  ``score`` call.

    .venv/bin/python -m benchmarks.bench_report
    .venv/bin/python -m benchmarks.bench_report --trees 50 --episodes 500 --reps 3
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from qlass.config import RunConfig
from qlass.report import build_episode_viewer, build_report, build_viewer, render_viewer
from qlass.report.scoring import node_queries, score_queries
from qlass.report.viewer import load_tree_views
from qlass.storage import TreeStore
from qlass.testing import full_tree, synthetic_node
from qlass.types import (
    Candidate,
    ScoredCandidate,
    Step,
    StepResult,
    TaskSpec,
    Trajectory,
    Usage,
)

STRATEGIES = ("greedy", "best_of_n:2", "best_of_n:4", "qlass:2", "qlass:4")
CHAIN = 11  # 1 + 2 + 4 + 8 nodes to depth 3, then 8 chains of 11: 103 nodes per tree


async def _tree(store: TreeStore, task_id: int, rng: random.Random) -> None:
    level = await full_tree(
        store,
        task_id,
        lambda depth, _path: synthetic_node(rng, depth),
        observation="You are in the kitchen. " * 8,
        instruction="Find it.",
    )
    for parent in level:
        chain = [synthetic_node(rng, 4 + i) for i in range(CHAIN - 1)]
        chain.append(synthetic_node(rng, 4 + CHAIN, final=rng.choice([0.0, 0.25, 1.0])))
        await store.trees.add_path(parent.id, chain)


def _trajectory(rng: random.Random, strategy: str, variation: int, budget: int) -> Trajectory:
    steps = rng.randint(3, 12)
    score = rng.choice([0.0, 0.5, 1.0])
    guided = strategy.startswith("qlass")

    def step(i: int) -> Step:
        chosen = Candidate(f"Thought: {i}\nAction: move north", "move north", usage=Usage(400, 18))
        considered = (
            tuple(
                ScoredCandidate(
                    chosen if k == 0 else Candidate(f"Thought: {k}\nAction: look", "look"),
                    0.9 - 0.1 * k,
                )
                for k in range(budget)
            )
            if guided
            else ()
        )
        result = StepResult("You are in a room. " * 10, 0.0, i == steps - 1, score)
        return Step(chosen, result, considered, 0.9 if guided else None)

    info: dict[str, object] = {}
    if strategy.startswith("best_of_n"):
        info = {
            "values": [0.1 * k for k in range(budget)],
            "scores": [score] * budget,
            "chosen": budget - 1,
            "oracle_best_score": 1.0,
        }
    return Trajectory(
        task=TaskSpec("textworld_express", "coin", variation, "dev"),
        instruction="Find the coin.",
        initial_observation="kitchen " * 20,
        steps=tuple(step(i) for i in range(steps)),
        final_score=score,
        success=score == 1.0,
        usage=Usage(400 * steps * budget, 18 * steps * budget),
        env_steps=steps * budget,
        wall_time_s=rng.uniform(0.5, 3.0),
        info=info,
    )


async def _populate(store: TreeStore, run_dir: Path, trees: int, episodes: int) -> None:
    rng = random.Random(0)
    config = RunConfig(name="bench", run_dir=run_dir)
    run = await store.runs.create("bench", config=config.model_dump(mode="json"))
    await store.labels.create_set(run.id, gamma=0.9)
    specs = [TaskSpec("textworld_express", "coin", i, "train") for i in range(trees)]
    for task in await store.tasks.add_many(run.id, specs):
        await _tree(store, task.id, rng)
    for i in range(episodes):
        strategy = STRATEGIES[i % len(STRATEGIES)]
        budget = int(strategy.partition(":")[2] or 1)
        trajectory = _trajectory(rng, strategy, i // len(STRATEGIES), budget)
        await store.episodes.add(run.id, "eval:dev:bench", strategy, trajectory)


async def _median(fn: Callable[[], Awaitable[object]], reps: int) -> float:
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def _tiny_scorer(directory: Path) -> object:
    from qlass.backends.tiny import new_tiny_model, save_model, train_tokenizer
    from qlass.qnet.model import QNet, load_tokenizer
    from qlass.qnet.scorer import QNetScorer

    def build() -> QNetScorer:
        corpus = ["You are in room 3. Thought: step 4, I will move north.\nAction: move north"] * 50
        tokenizer = train_tokenizer(corpus, vocab_size=400)
        model = new_tiny_model(tokenizer, layers=2, width=64, heads=2, max_positions=1024)
        backbone = save_model(model, tokenizer, directory / "tiny")
        qnet = QNet.from_backbone(backbone, head_dim=64, max_length=1024, seed=0)
        path = qnet.save_pretrained(directory / "qnet", tokenizer=load_tokenizer(backbone))
        return QNetScorer.from_pretrained(path, device="cpu", cache_size=0)

    return await asyncio.to_thread(build)


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        started = time.perf_counter()
        async with await TreeStore.open(base / "qlass.db") as store:
            await _populate(store, base / "run", args.trees, args.episodes)
        print(
            f"store: {args.trees} trees (~{args.trees * 103} nodes), {args.episodes} episodes, "
            f"built in {time.perf_counter() - started:.1f} s"
        )
        async with await TreeStore.open(base / "qlass.db") as store:
            run = await store.runs.get("bench")
            (label_set,) = await store.labels.sets(run.id)

            async def read_trees() -> object:
                return await load_tree_views(
                    store, run.id, label_set=label_set, max_trees=args.trees
                )

            views, _ = await read_trees()

            async def render() -> object:
                return render_viewer("bench", views, label_set=label_set, qnet_note="none")

            async def viewer() -> object:
                return await build_viewer(store, "bench", scores=False, max_trees=args.trees)

            async def read_episodes() -> object:
                return await store.episodes.of_run(run.id)

            async def report() -> object:
                return await build_report(store, "bench", qnet_scatter=False)

            async def episode_page() -> object:
                return await build_episode_viewer(store, "bench", max_tasks=args.episodes)

            rows = []
            base_trees = await _median(read_trees, args.reps)
            rows.append(("read trees + Q labels (baseline)", base_trees, base_trees))
            rows.append(("render viewer HTML only", await _median(render, args.reps), base_trees))
            rows.append(
                ("build_viewer (read+render+write)", await _median(viewer, args.reps), base_trees)
            )
            base_eps = await _median(read_episodes, args.reps)
            rows.append(("read episodes (baseline)", base_eps, base_eps))
            rows.append(("build_report (tables+plots)", await _median(report, args.reps), base_eps))
            rows.append(
                (
                    "build_episode_viewer (read+render+write)",
                    await _median(episode_page, args.reps),
                    base_eps,
                )
            )
            size = (base / "run" / "trees.html").stat().st_size
            episodes_size = (base / "run" / "episodes.html").stat().st_size

            if args.queries:
                scorer = await _tiny_scorer(base)
                queries = []
                for view in views:
                    queries += node_queries(view.tree, sorted(view.shown)).values()
                    if len(queries) >= args.queries:
                        break
                queries = queries[: args.queries]

                async def one_by_one() -> object:
                    return [await scorer.score([q]) for q in queries]  # type: ignore[attr-defined]

                async def batched() -> object:
                    return await score_queries(scorer, queries)  # type: ignore[arg-type]

                base_q = await _median(one_by_one, args.reps)
                rows.append(
                    (f"QNet: {len(queries)} node queries one per call (baseline)", base_q, base_q)
                )
                rows.append(
                    (
                        f"QNet: {len(queries)} node queries batched (viewer)",
                        await _median(batched, args.reps),
                        base_q,
                    )
                )
                await scorer.aclose()  # type: ignore[attr-defined]

    width = max(len(name) for name, _, _ in rows)
    print(f"\n{'measure':<{width}}  {'seconds':>9}  {'x baseline':>10}")
    for name, seconds, baseline in rows:
        print(f"{name:<{width}}  {seconds:>9.3f}  {seconds / baseline:>10.2f}")
    print(f"\ntrees.html: {size / 1e6:.1f} MB for {len(views)} trees")
    print(f"episodes.html: {episodes_size / 1e6:.1f} MB for {args.episodes} episodes")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", type=int, default=200)
    parser.add_argument("--episodes", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=96, help="0 skips the QNet part")
    parser.add_argument("--reps", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
