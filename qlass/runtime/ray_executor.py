"""Exploration and evaluation on a Ray cluster (``qlass explore/eval/run --executor ray``).

Each Ray actor opens the run's pipeline in its own process (its own env pool, policy and
value clients). To explore, it is one explore worker (:mod:`qlass.runtime.workers`) and
claims the run's tasks under leases from the shared store until none is left. To evaluate,
actor ``i`` of ``n`` plays every strategy on the split's tasks ``i, i + n, ...`` and stores
each episode as it ends; the driver then reads the stored episodes as the eval stage (an
episode's seed depends on (seed, strategy, task) only, so the numbers are the ones a single
process gets).

Ray places the actors (``ray.cpus_per_actor`` for the simulators, ``ray.gpus_per_actor``
for a local QNet or policy) and restarts one whose process dies (``ray.max_restarts``); the
call is retried on the restarted actor (``max_task_retries=-1``), which claims tasks again
(or plays the episodes of its share not stored yet). The task the dead process held comes
back when its lease expires, and whichever actor claims it continues its tree from the
committed nodes (nothing committed is stepped or sampled again: node storage is
idempotent, the policy-call cache is in the store).

The store (PostgreSQL on a real cluster) stays the source of truth; Ray holds no state of
the run, so a driver that dies loses nothing either: rerun the command.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from tenacity import Retrying, retry_if_exception_message, stop_after_attempt

from qlass._log import configure_logging
from qlass.config import RunConfig
from qlass.errors import ConfigError, QlassError, RuntimeFailure
from qlass.runtime.scheduler import StopSignal
from qlass.runtime.stages.base import StageResult

if TYPE_CHECKING:
    from qlass.runtime.pipeline import Pipeline

__all__ = [
    "RaySettings",
    "RunActor",
    "evaluate_on_ray",
    "explore_on_ray",
    "import_ray",
    "run_on_ray",
]

log = structlog.get_logger(__name__)

_SUMMED = (
    "new_trees",
    "new_nodes",
    "new_leaves",
    "duplicate_samples",
    "failed_tasks",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "cached_completion_tokens",
    "policy_calls",
    "samples",
    "invalid_samples",
    "value_queries",
    "env_steps",
    "env_resets",
    "replayed_steps",
)
"""Stage metrics that add up over the actors."""


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--executor ray needs Ray: pip install 'qlass[ray]' (and 'qlass[postgres]' for "
            "a store every node can reach)"
        ) from None
    return ray


@dataclass(frozen=True, slots=True)
class RaySettings:
    """The claim settings each actor's worker uses (as ``qlass explore --worker``)."""

    lease_s: float = 60.0
    max_attempts: int | None = 5


class RunActor:
    """One process of the run in a Ray actor (an explore worker, or a share of the
    evaluation); made remote by :func:`explore_on_ray` and :func:`evaluate_on_ray`.

    Its ``worker_id`` is ``ray<index>@host:pid``: a restarted actor is a new process, so a
    new claimant, and the task its previous process held is taken over through its lease.
    """

    def __init__(
        self,
        config: dict[str, Any],
        index: int,
        settings: RaySettings,
        level: str | None,
        holder_prefix: str = "",
    ) -> None:
        if level is not None:  # the actor's process is ours: log as the driver does
            configure_logging(json_logs=True, level=level, route_libraries=True)
        self._config = RunConfig.model_validate(config)
        self._settings = settings
        self._stop = StopSignal()
        self.worker_id = f"ray{index}@{socket.gethostname()}:{os.getpid()}"
        # The driver forgets its actors' run holders once they are done (a killed one
        # cannot leave): the prefix names them.
        self._holder = f"{holder_prefix}{self.worker_id}"

    async def explore(self) -> dict[str, Any]:
        """Work as one worker of the run until no task is left; the stage's metrics."""
        from qlass.runtime.pipeline import Pipeline
        from qlass.runtime.workers import WorkerSettings

        worker = WorkerSettings(
            worker_id=self.worker_id,
            lease_s=self._settings.lease_s,
            max_attempts=self._settings.max_attempts,
        )
        restarted = _was_restarted()
        log.info("ray.actor_started", worker=self.worker_id, restarted=restarted)
        async with Pipeline(self._config, stop=self._stop, holder=self._holder) as pipeline:
            (result,) = await pipeline.stage("explore", worker=worker)
        return {
            "worker_id": self.worker_id,
            "restarted": restarted,
            "skipped": result.skipped,
            "metrics": result.metrics,
        }

    async def evaluate(
        self, strategies: list[str], split: str, share: int, shares: int
    ) -> dict[str, Any]:
        """Play ``strategies`` on the split's tasks ``share, share + shares, ...``, storing
        each episode (those stored already are not played again)."""
        from qlass.runtime.pipeline import Pipeline

        restarted = _was_restarted()
        log.info("ray.actor_started", worker=self.worker_id, restarted=restarted, work="eval")
        async with Pipeline(self._config, stop=self._stop, holder=self._holder) as pipeline:
            tasks = await pipeline.tasks(split, self._config.env.eval_tasks)
            mine = tasks[share::shares]
            await pipeline.evaluate(strategies, split=split, tasks=mine)
        return {"worker_id": self.worker_id, "restarted": restarted, "tasks": len(mine)}

    async def stop(self) -> None:
        """Stop gracefully: commit the steps under way, release the claimed tasks (an
        evaluation finishes the episodes under way and starts none)."""
        self._stop.request()


def _was_restarted() -> bool:
    """Whether this actor is a restart of one whose process died (False outside Ray)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return False
    with warnings.catch_warnings():  # Ray 2.60 reads its own deprecated actor_id inside
        warnings.simplefilter("ignore", DeprecationWarning)
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)


_LOCAL_OBJECT_STORE_BYTES = 128 * 1024**2
"""A local Ray's object store: the actors hand back only their metrics (Ray's default, 30%
of the memory, would be reserved in /dev/shm for nothing)."""

_LOCAL_START_ATTEMPTS = 3
"""Ray 2.60's raylet aborts when its Python agents take over 15 s to report their ports (a
fixed wait; on a loaded machine their imports alone can take that long), and ``ray.init``
then raises "The current node timed out during startup". A Ray installed without its
bytecode compiled makes that likely (docs/scale-out.md); otherwise a second start, once the
load has dropped, may succeed."""


def _ray_init(ray: Any, config: RunConfig) -> None:
    address = config.ray.address or os.environ.get("RAY_ADDRESS") or None
    # The actors' qlass records reach the driver's stderr at the driver's level (as a single
    # process's would); Ray's own notes only from WARNING up.
    options: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": True,
        "logging_level": logging.WARNING,
    }
    log.info("ray.init", address=address or "local")
    if address is not None:
        ray.init(address=address, **options)
        return
    # A local Ray for this command: room for every actor, no more.
    wanted = config.ray.actors * config.ray.cpus_per_actor
    options["num_cpus"] = max(1, int(wanted + 0.999))
    options["object_store_memory"] = _LOCAL_OBJECT_STORE_BYTES
    attempts = Retrying(
        retry=retry_if_exception_message(match=".*timed out during startup"),
        stop=stop_after_attempt(_LOCAL_START_ATTEMPTS),
        before_sleep=lambda state: _local_start_failed(ray, state.attempt_number),
        reraise=True,
    )
    try:
        for attempt in attempts:
            with attempt:
                ray.init(address="local", **options)  # None would join the last `ray start`
    except Exception as exc:
        if "timed out during startup" not in str(exc):
            raise
        raise RuntimeFailure(
            f"a local Ray did not start in {_LOCAL_START_ATTEMPTS} attempts (its raylet gives "
            "its agents 15 s to start; is the machine overloaded?): start one with "
            "`ray start --head` and set RAY_ADDRESS, or retry"
        ) from exc


def _local_start_failed(ray: Any, attempt: int) -> None:
    log.warning("ray.local_start_failed", attempt=attempt, retrying=True)
    # The failed start's processes are not Ray's global node, so shutdown() leaves them
    # (idle) until this command exits, when Ray's reaper ends its process group.
    ray.shutdown()


async def _results(ray: Any, refs: list[Any]) -> list[dict[str, Any]]:
    """The actors' reports; a qlass error raised in an actor as itself, Ray's as one line."""
    try:
        parts: list[dict[str, Any]] = await asyncio.to_thread(ray.get, refs)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, QlassError):
            raise exc.cause from None
        raise RuntimeFailure(f"a Ray actor failed: {_first_line(exc.cause)}") from exc
    except ray.exceptions.RayError as exc:  # an actor died more often than ray.max_restarts
        raise RuntimeFailure(
            f"a Ray actor was lost ({_first_line(exc)}); what it committed is kept: rerun "
            "the command to continue"
        ) from exc
    return parts


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {key: 0 for key in _SUMMED}
    for part in parts:
        metrics = part["metrics"]
        for key in _SUMMED:
            merged[key] += metrics.get(key) or 0
        worker = f"worker:{part['worker_id']}"
        merged[worker] = {**metrics.get(worker, {}), "restarted": part["restarted"]}
    new = merged["new_nodes"]
    merged["env_steps_per_node"] = merged["env_steps"] / new if new else 0
    # Each actor counts the stored trees when it leaves; the last to leave saw the end.
    for key in ("trees", "nodes", "leaves"):
        merged[key] = max(p["metrics"].get(key, 0) for p in parts)
    merged["unfinished_tasks"] = min(p["metrics"].get("unfinished_tasks", 0) for p in parts)
    merged["actors"] = len(parts)
    merged["restarted_actors"] = sum(p["restarted"] for p in parts)
    return merged


async def _on_actors(
    pipeline: Pipeline,
    settings: RaySettings,
    title: str,
    call: Callable[[Any, int], Any],
    progress: Callable[[], Awaitable[tuple[int, int]]],
) -> list[dict[str, Any]]:
    """Start ``config.ray.actors`` actors, make ``call(actor, index)`` on each, and wait for
    their reports; the bar shows ``progress()`` (done, total) read from the store, and the
    pipeline's stop signal (Ctrl-C, SIGTERM) stops every actor gracefully."""
    ray = import_ray()
    config = pipeline.config
    # The actors' processes may start elsewhere (another cwd, another machine).
    shipped = config.model_copy(update={"run_dir": config.directory.resolve()})
    _ray_init(ray, config)  # on the loop's thread (Ray's driver set-up wants the main one)
    try:
        remote = ray.remote(RunActor).options(
            num_cpus=config.ray.cpus_per_actor,
            num_gpus=config.ray.gpus_per_actor,
            max_restarts=config.ray.max_restarts,
            max_task_retries=-1,
        )
        level = logging.getLevelName(logging.getLogger("qlass").getEffectiveLevel())
        data = shipped.model_dump(mode="json")
        prefix = f"{pipeline.holder}/"
        actors = [remote.remote(data, i, settings, level, prefix) for i in range(config.ray.actors)]
        pending = [call(actor, i) for i, actor in enumerate(actors)]
        refs = list(pending)
        bar = pipeline.progress.bar(f"{title} on {len(actors)} Ray actors", None)
        stopping = False
        while pending:
            _, pending = await asyncio.to_thread(
                ray.wait, pending, num_returns=len(pending), timeout=1.0
            )
            done, total = await progress()
            bar.update(total=total, completed=done)
            if pipeline.stop.requested and not stopping:
                stopping = True
                for actor in actors:
                    actor.stop.remote()
        try:
            parts = await _results(ray, refs)
        finally:  # every actor's process has ended (or the actors are lost with the cluster)
            await _release_actors(pipeline, prefix)
    finally:
        ray.shutdown()
    for part in parts:
        log.info("ray.actor_finished", worker=part["worker_id"], restarted=part["restarted"])
    return parts


async def _release_actors(pipeline: Pipeline, prefix: str) -> None:
    """Forget the actors' run leases; a store that fails here keeps the actors' own error."""
    try:
        await pipeline.store.runs.release_holders(pipeline.run_record.id, prefix)
    except Exception as error:  # their leases then lapse on their own
        log.warning("ray.actor_leases_not_released", error=str(error))


async def explore_on_ray(pipeline: Pipeline, settings: RaySettings) -> list[StageResult]:
    """Grow the run's trees with ``config.ray.actors`` Ray actors (see the module docstring).

    The pipeline's run is created first, so that the actors find it; its progress bar
    counts the finished tasks. A stage done for this config starts no cluster.
    """
    store, run_id = pipeline.store, pipeline.run_record.id
    record = pipeline.record_name("explore")
    if await store.stages.is_done(run_id, record, pipeline.fingerprint("explore")):
        stage = await store.stages.get(run_id, record)
        pipeline.progress.log(f"[dim]{record}: already done for this config, skipped")
        return [StageResult("explore", skipped=True, metrics=dict(stage.metrics) if stage else {})]

    async def trees_done() -> tuple[int, int]:
        tasks = await store.tasks.of_run(run_id, split="train")
        return sum(t.status == "done" for t in tasks), len(tasks)

    parts = await _on_actors(
        pipeline, settings, "exploring trees", lambda a, _: a.explore.remote(), trees_done
    )
    if all(part["skipped"] for part in parts):
        return [StageResult("explore", skipped=True, metrics=parts[0]["metrics"])]
    return [StageResult("explore", skipped=False, metrics=_merge(parts))]


async def evaluate_on_ray(
    pipeline: Pipeline,
    settings: RaySettings,
    strategies: Sequence[str] | None = None,
    *,
    split: str | None = None,
) -> None:
    """Play and store the evaluation's episodes (``strategies`` on ``split``, defaults as in
    :func:`~qlass.runtime.stages.evaluation.evaluate`) on ``config.ray.actors`` Ray actors,
    each a share of the tasks. Read the results with ``pipeline.evaluate`` (or the eval
    stage) afterwards: every episode is stored, so nothing is played again. Starts no
    cluster when every episode is stored already."""
    from qlass.runtime.stages.evaluation import episode_progress

    config = pipeline.config
    names = list(strategies or config.search.strategies)
    split = split or config.eval.split

    tasks = await pipeline.tasks(split, config.env.eval_tasks)

    async def played() -> tuple[int, int]:
        return await episode_progress(pipeline, names, split=split, tasks=tasks)

    done, total = await played()
    if done == total:
        return
    shares = config.ray.actors
    await _on_actors(
        pipeline,
        settings,
        "evaluating",
        lambda actor, i: actor.evaluate.remote(names, split, i, shares),
        played,
    )


async def run_on_ray(
    pipeline: Pipeline, stages: Sequence[str], settings: RaySettings
) -> list[StageResult]:
    """``pipeline.run(stages)`` with exploration and evaluation on Ray actors; the other
    stages (gold, BC, labels, QNet training) run in this process."""
    results: list[StageResult] = []
    for name in stages:
        if pipeline.stop.requested:
            break
        if name == "explore":
            results.extend(await explore_on_ray(pipeline, settings))
            continue
        if name == "eval":
            await evaluate_on_ray(pipeline, settings)
            if pipeline.stop.requested:
                break
        results.extend(await pipeline.stage(name))
    return results
