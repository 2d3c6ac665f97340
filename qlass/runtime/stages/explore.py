"""The explore stage: grow the exploration trees of the train split (resumes unfinished
trees), in this process or as one of several workers sharing the run."""

from __future__ import annotations

from typing import Any

from qlass._log import redact
from qlass.errors import StageFailedError
from qlass.runtime.context import Tally
from qlass.runtime.explore import ExploreSettings, TreeExplorer, TreeStats
from qlass.runtime.scheduler import StopSignal, bounded_map
from qlass.runtime.stages.base import StageContext, StageResult
from qlass.runtime.stages.label import label_set
from qlass.runtime.workers import TASK_FAILURES, WorkerSettings, ensure_stage, run_worker
from qlass.storage import TaskRecord

__all__ = ["run"]


async def _stored_tree_figures(ctx: StageContext, cannot: set[str] | None = None) -> dict[str, int]:
    """What the run's stored train trees hold: finished ``trees``, ``nodes``, finished
    ``leaves`` and ``unfinished_tasks`` (tasks in ``cannot``, ungeneratable, not counted)."""
    run_id = ctx.run_record.id
    tasks = await ctx.store.tasks.of_run(run_id, split="train")
    nodes, leaves = await ctx.store.trees.count(run_id, split="train")
    return {
        "trees": sum(t.status == "done" for t in tasks),
        "nodes": nodes,
        "leaves": leaves,
        "unfinished_tasks": sum(t.status != "done" and t.key not in (cannot or ()) for t in tasks),
    }


async def run(
    ctx: StageContext, *, force: bool = False, worker: WorkerSettings | None = None
) -> list[StageResult]:
    """Grow every unfinished tree of the train split.

    With ``worker``, this process is one of several sharing the run: it claims one task at
    a time under a lease (:mod:`qlass.runtime.workers`), and the stage is recorded done
    only once every task is finished.
    """
    config, store = ctx.config, ctx.store

    async def body() -> dict[str, Any]:
        run_id = ctx.run_record.id
        await label_set(ctx)  # exists before any leaf: labels stay incremental
        specs = await ctx.tasks("train", config.explore.tasks or config.env.train_tasks)
        gold = await store.stages.get(run_id, "gold")
        cannot = set(gold.metrics.get("ungeneratable") or ()) if gold else set()
        if cannot:  # they would fail at their first reset, every time
            ctx.progress.log(
                f"[yellow]explore: leaving out {len(cannot)} task(s) the gold stage found "
                f"the simulator cannot generate: {', '.join(sorted(cannot))}"
            )
            specs = [spec for spec in specs if spec.key not in cannot]
        await store.tasks.add_many(run_id, specs)
        todo = [
            t
            for t in await store.tasks.of_run(run_id)
            if t.status != "done" and t.key not in cannot
        ]
        policy, pool = await ctx.resources.policy(), await ctx.resources.env_pool()
        search = ctx.resources.search_context(policy, pool, None)
        before = pool.stats.snapshot()
        bar = ctx.progress.bar("exploring trees", len(todo))
        totals = Tally()
        # This invocation's work; "trees", "nodes" and "leaves" (below) count the stored
        # trees, which after a resume (or a kill) also hold the work of earlier invocations.
        counts = {
            "new_trees": 0,
            "new_nodes": 0,
            "new_leaves": 0,
            "duplicate_samples": 0,
            "failed_tasks": 0,
        }

        async def grow(task: TaskRecord, stop: StopSignal) -> TreeStats:
            settings = ExploreSettings(
                width=config.explore.width,
                max_depth=config.explore.max_depth,
                min_prune_depth=config.explore.min_prune_depth,
                temperature=config.explore.temperature,
                max_steps=ctx.resources.max_steps(task.spec),
                duplicate_actions=config.explore.duplicate_actions,
                resample_rounds=config.explore.resample_rounds,
            )
            explorer = TreeExplorer(store, search, settings, seed=config.seed, stop=stop)
            stats = await explorer.explore(task)
            counts["new_trees"] += not stats.stopped
            totals.merge(stats.tally)
            counts["new_nodes"] += stats.new_nodes
            counts["new_leaves"] += stats.leaves
            counts["duplicate_samples"] += stats.duplicate_samples
            bar.advance(
                nodes=counts["new_nodes"],
                tokens=totals.usage.completion_tokens,
                best=stats.best_score,
            )
            return stats

        first_failure: list[str] = []

        def failed(task: TaskRecord, error: str) -> None:
            counts["failed_tasks"] += 1
            if not first_failure:
                first_failure.append(f"{task.key}: {error}")
            ctx.progress.log(f"[red]{task.key}: {error}")

        async def grow_here(task: TaskRecord) -> TreeStats | None:
            await store.tasks.set_status(task.id, "running")
            try:
                stats = await grow(task, ctx.stop)
            except TASK_FAILURES as exc:
                error = redact(str(exc))  # a provider may echo the API key
                await store.tasks.set_status(task.id, "failed", error=error)
                failed(task, error)
                return None
            if not stats.stopped:
                await store.tasks.set_status(task.id, "done")
            return stats

        extra: dict[str, Any] = {}
        tried = len(todo)
        if worker is None:
            await bounded_map(
                grow_here, todo, concurrency=config.explore.concurrency, stop=ctx.stop
            )
        else:
            report = await run_worker(
                store,
                run_id,
                grow,
                worker,
                stop=ctx.stop,
                concurrency=config.explore.concurrency,
                on_failed=failed,
            )
            extra = {f"worker:{worker.worker_id}": report.as_dict()}
            tried = report.done + report.failed
        if first_failure and counts["failed_tasks"] == tried and not ctx.stop.requested:
            # Nothing for the stages after this one to work on: stop the run here, with
            # the cause, rather than label nothing and train on nothing.
            raise StageFailedError(
                f"explore: all {tried} task(s) it tried failed (rerun to retry them); the "
                f"first, {first_failure[0]}"
            )
        # Failed or unfinished trees keep the stage running: a rerun retries them.
        extra.update(await _stored_tree_figures(ctx, cannot))
        pool_stats = pool.stats.since(before)
        return {
            **counts,
            **totals.as_dict(),
            "env_steps": pool_stats.steps,
            "env_resets": pool_stats.resets,
            "replayed_steps": pool_stats.replayed_steps,
            "env_steps_per_node": (
                pool_stats.steps / counts["new_nodes"] if counts["new_nodes"] else 0
            ),
            **extra,
        }

    if worker is not None and not force:  # workers starting together
        await ensure_stage(store, ctx.run_record.id, "explore", ctx.fingerprint("explore"))
    return [await ctx.run_recorded("explore", body, force=force)]
