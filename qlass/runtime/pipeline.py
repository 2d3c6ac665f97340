"""The whole method as stages over one tree store: gold -> bc -> explore -> label ->
train_qnet -> eval (-> self_train).

A :class:`Pipeline` keeps the run's bookkeeping: it opens the store, finds or creates the
run (refusing settings that would make its stored trees meaningless), builds the run's
parts through :class:`~qlass.runtime.resources.RunResources`, and records each stage in
the store with a fingerprint of the config sections it depends on. Running a stage whose
record is done with the same fingerprint does nothing (so ``qlass run`` resumes);
exploration and evaluation also resume inside the stage (trees from their committed nodes,
evaluation from the episodes already stored). Every stage records what it cost: tokens,
env steps and wall time. The stage bodies live in :mod:`qlass.runtime.stages`, one module
each, and :meth:`Pipeline.stage` dispatches to them through :data:`STAGE_RUNNERS`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any, Self

import structlog

from qlass._reproducibility import reproducibility_record
from qlass._version import code_version
from qlass.config import RunConfig
from qlass.envs.registry import list_tasks
from qlass.errors import ConfigError, StoreError
from qlass.runtime.checks import check_config, env_options
from qlass.runtime.holders import holder_name
from qlass.runtime.limits import RunBudget
from qlass.runtime.progress import NullProgress, Progress
from qlass.runtime.resources import RunResources, close_later
from qlass.runtime.scheduler import StopSignal
from qlass.runtime.stages import (
    DEPENDS,
    FROZEN,
    OPTIONAL_STAGES,
    STAGES,
    bc,
    evaluation,
    explore,
    gold,
    label,
    self_train,
    train_qnet,
)
from qlass.runtime.stages.base import StageBody, StageContext, StageResult
from qlass.storage import RunRecord, TreeStore
from qlass.types import TaskSpec

__all__ = [
    "OPTIONAL_STAGES",
    "STAGES",
    "STAGE_RUNNERS",
    "Pipeline",
    "StageResult",
    "drop_held_out",
    "variant_record_name",
]

log = structlog.get_logger(__name__)

StageRunner = Callable[..., Awaitable[list[StageResult]]]

# Stages a run has done when its status is "done" (gold and bc leave no record when the
# expert file or the policy is given).
_WHOLE_METHOD = ("explore", "label", "train_qnet", "eval")

STAGE_RUNNERS: Mapping[str, StageRunner] = {
    "gold": gold.run,
    "bc": bc.run,
    "explore": explore.run,
    "label": label.run,
    "train_qnet": train_qnet.run,
    "eval": evaluation.run,
    "self_train": self_train.run,
}
"""Each stage's ``run(ctx, *, force=False, ...)``, by stage name."""


def _runner(name: str) -> StageRunner:
    try:
        return STAGE_RUNNERS[name]
    except KeyError:
        known = ", ".join(STAGE_RUNNERS)
        raise ConfigError(f"unknown stage {name!r}; stages are {known}") from None


def variant_record_name(name: str, fingerprint: str) -> str:
    """The record name of stage ``name`` of one variant (``train_qnet@3fa9c1d2e0``)."""
    return f"{name}@{fingerprint[:10]}"


def drop_held_out(train: Sequence[TaskSpec], held_out: Sequence[TaskSpec]) -> list[TaskSpec]:
    """``train`` without the tasks whose (game, variation, params) is in ``held_out``."""
    evaluated = {(t.name, t.variation, t.params) for t in held_out}
    return [t for t in train if (t.name, t.variation, t.params) not in evaluated]


class Pipeline:
    """Runs the stages of one :class:`RunConfig` against its tree store.

    Use as ``async with Pipeline(config) as pipeline: await pipeline.run()``; one stage at
    a time with :meth:`stage` (the CLI's ``qlass bc``, ``qlass explore``...). A pipeline is
    the :class:`~qlass.runtime.stages.base.StageContext` its stages work with.

    ``variant_records``: the stages after exploration (label, train_qnet, eval,
    self_train) record themselves as ``NAME@<fingerprint>``, one record per setting of
    the sections they depend on, so that several variants of one run (a sweep over
    ``labels.*``, ``qnet.*`` or ``search.*``) each keep their own record and resuming one
    never redoes another. Without it (a plain run) each stage has one record.

    ``holder`` names this pipeline among the processes working on the run at once (default
    ``host:pid:random``); see :meth:`~qlass.storage.runs.RunRepository.enter`.
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        progress: Progress | None = None,
        stop: StopSignal | None = None,
        variant_records: bool = False,
        holder: str | None = None,
    ) -> None:
        self.config = config
        self.progress = progress or NullProgress()
        self.stop = stop or StopSignal()
        self.variant_records = variant_records
        self._stack = AsyncExitStack()
        self._lease: asyncio.Task[None] | None = None
        self.holder = holder or holder_name()
        self._store: TreeStore | None = None
        self._run: RunRecord | None = None
        self._resources: RunResources | None = None
        self.budget = RunBudget(
            config.budget.tokens, config.budget.cost_usd, on_reached=self._budget_reached
        )

    def _budget_reached(self, message: str) -> None:
        self.progress.log(
            f"[yellow]{message}: finishing the work under way, then stopping; raise "
            "budget.tokens / budget.cost_usd and rerun to resume"
        )
        self.stop.request()

    # -- set-up ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(check_config, self.config)  # before anything is created
        await asyncio.to_thread(self.config.directory.mkdir, parents=True, exist_ok=True)
        store = self._store = await TreeStore.open(self.config.store_url)
        close_later(self._stack, store.aclose)  # closed last: the parts first
        self._resources = RunResources(
            self.config, cache=store.call_cache, stack=self._stack, budget=self.budget
        )
        self._run = await self._get_or_create_run()
        lease_s = self.config.store.run_lease_s
        await self.store.runs.enter(self._run.id, self.holder, lease_s=lease_s)
        self._lease = asyncio.create_task(self._renew_lease(self._run.id, lease_s))
        self.budget.spent_tokens = self._run.spent_tokens
        self.budget.spent_usd = self._run.spent_usd
        self.budget.check()  # spent already: nothing new starts
        return self

    async def __aexit__(self, _type: object, exc: BaseException | None, _tb: object) -> None:
        if self._lease is not None:
            self._lease.cancel()
        try:
            if self._run is not None and self._store is not None:
                await asyncio.shield(self._record_status(exc))
        except Exception as error:  # the store itself may be what failed: keep its error
            log.warning("run_status_not_saved", error=str(error))
        finally:
            await self.aclose()

    async def _renew_lease(self, run_id: int, lease_s: float) -> None:
        """Renew the run's lease while the pipeline is open (a heartbeat: a process
        killed outright stops renewing, and the run then reads as interrupted)."""
        while True:
            await asyncio.sleep(lease_s / 4)
            try:
                await self.store.runs.renew_lease(run_id, self.holder, lease_s=lease_s)
                await self.save_spend()  # the run's budget is shared by all its processes
            except Exception as error:  # a busy or lost store: the work itself will say so
                log.warning("run_lease_not_renewed", error=str(error))

    async def _record_status(self, exc: BaseException | None) -> None:
        """Leave the run's status saying how the work ended (see docs/reliability.md)."""
        stages = await self.store.stages.of_run(self.run_record.id)
        if self.stop.requested or isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
            status = "stopped"
        elif exc is not None:
            status = "failed"
        elif any(stage.status != "done" for stage in stages):
            status = "incomplete"  # unfinished tasks: a rerun retries them
        else:
            ran = {stage.name.split("@")[0] for stage in stages}
            status = "done" if ran >= set(_WHOLE_METHOD) else "incomplete"
        left = await self.store.runs.leave(self.run_record.id, self.holder, status)
        if left != status:  # other processes (workers, Ray actors) still work on the run
            log.debug("run_left_to_others", status=status, run_status=left)

    async def aclose(self) -> None:
        """Close envs, models and the store (in reverse order of opening)."""
        if self._run is not None and self._store is not None:
            await self.save_spend()
        await self._stack.aclose()

    async def save_spend(self) -> None:
        """Add what the run's policies spent since the last save to the run's record, and
        take the run's totals back into the budget: with several processes on one run
        (workers, Ray actors) each then sees what the others spent."""
        unsaved = self.budget.take_unsaved()
        try:
            totals = await self.store.runs.add_spend(self.run_record.id, unsaved)
        except BaseException:
            self.budget.unsaved += unsaved  # not recorded: the next save tries again
            raise
        self.budget.sync(*totals)

    @property
    def store(self) -> TreeStore:
        """The run's tree store."""
        if self._store is None:
            raise RuntimeError("use the pipeline inside 'async with'")
        return self._store

    @property
    def run_record(self) -> RunRecord:
        """The run in the store."""
        if self._run is None:
            raise RuntimeError("use the pipeline inside 'async with'")
        return self._run

    @property
    def resources(self) -> RunResources:
        """The run's policy, value model and env pool (built on first use)."""
        if self._resources is None:
            raise RuntimeError("use the pipeline inside 'async with'")
        return self._resources

    async def _get_or_create_run(self) -> RunRecord:
        config = self.config
        existing = await self.store.runs.find(config.name)
        if existing is None:
            try:
                return await self.store.runs.create(
                    config.name,
                    config=config.model_dump(mode="json"),
                    config_fingerprint=config.fingerprint(),
                    code_version=await asyncio.to_thread(code_version),
                    seed=config.seed,
                )
            except (ConfigError, StoreError):  # workers starting together: one creates it
                existing = await self.store.runs.find(config.name)
                if existing is None:
                    raise
        stored = RunConfig.model_validate(existing.config)
        changed = [
            stage
            for stage in FROZEN
            if stored.section_fingerprint(*DEPENDS[stage])
            != config.section_fingerprint(*DEPENDS[stage])
        ]
        if changed:
            raise ConfigError(
                f"run {config.name!r} exists with different settings for its {changed[0]} "
                f"stage (sections {', '.join(DEPENDS[changed[0]])}); its trees would not "
                "match. Use a new run name (--set name=...) or the stored settings."
            )
        return existing

    # -- bookkeeping -------------------------------------------------------------------

    def fingerprint(self, stage: str) -> str:
        """The fingerprint of the config sections ``stage`` depends on."""
        return self.config.section_fingerprint(*DEPENDS[stage])

    def record_name(self, name: str, fingerprint_of: str | None = None) -> str:
        """The name stage ``name`` is recorded under (see ``variant_records``)."""
        if not self.variant_records or name in FROZEN:
            return name
        return variant_record_name(name, self.fingerprint(fingerprint_of or name))

    async def run_recorded(
        self,
        name: str,
        body: StageBody,
        *,
        force: bool = False,
        fingerprint_of: str | None = None,
    ) -> StageResult:
        """Run ``body`` as stage ``name`` unless it is done for this config; record it.

        The fingerprint is that of ``fingerprint_of`` (default: ``name``), a key of the
        stage-dependency table.
        """
        run_id, fingerprint = self.run_record.id, self.fingerprint(fingerprint_of or name)
        record = self.record_name(name, fingerprint_of)
        if not force and await self.store.stages.is_done(run_id, record, fingerprint):
            stage = await self.store.stages.get(run_id, record)
            self.progress.log(f"[dim]{record}: already done for this config, skipped")
            return StageResult(name, True, dict(stage.metrics) if stage else {})
        await self.store.stages.start(run_id, record, fingerprint)
        started = time.perf_counter()
        try:
            metrics = await body()
        except BaseException:
            await asyncio.shield(self.store.stages.finish(run_id, record, failed=True))
            await asyncio.shield(self.save_spend())
            raise
        await self.save_spend()
        metrics["wall_time_s"] = round(time.perf_counter() - started, 2)
        metrics["reproducibility"] = await asyncio.to_thread(reproducibility_record)
        # The run keeps the config it was created with; a rerun may change the sections of
        # later stages, so each stage records the settings it ran with.
        metrics["settings"] = self.config.model_dump(
            mode="json", include=set(DEPENDS[fingerprint_of or name])
        )
        stopped = self.stop.requested
        # Stored metrics are merged into: a resumed stage that finishes clears the mark.
        metrics["stopped"] = True if stopped else None
        if stopped or metrics.get("unfinished_tasks"):  # stays running, to be resumed
            await self.store.stages.put(run_id, record, status="running", metrics=metrics)
        else:
            await self.store.stages.finish(run_id, record, metrics=metrics)
        return StageResult(name, False, metrics)

    async def tasks(self, split: str, limit: int | None) -> list[TaskSpec]:
        """The env's tasks of ``split`` (split files are read in a worker thread).

        Training tasks never include a game of the dev or test split: the paper's
        ScienceWorld files list 54 of the 194 "seen" (dev) variations in train too, and
        training on them would leak the evaluation set.
        """
        env = self.config.env
        games = list(env.games) if env.games else None
        _, listing = env_options(env)

        def listed(name: str, cap: int | None = None) -> list[TaskSpec]:
            return list_tasks(env.name, name, games=games, params=env.params, limit=cap, **listing)

        if split != "train":
            return await asyncio.to_thread(listed, split, limit)
        train = await asyncio.to_thread(listed, "train")
        held_out = await asyncio.to_thread(lambda: [*listed("dev"), *listed("test")])
        kept = drop_held_out(train, held_out)
        if len(kept) < len(train):
            log.warning("train_tasks_held_out", dropped=len(train) - len(kept), env=env.name)
        return kept[:limit] if limit is not None else kept

    # -- stages ------------------------------------------------------------------------

    async def stage(self, name: str, *, force: bool = False, **options: Any) -> list[StageResult]:
        """Run stage ``name`` (one result; one per round for ``self_train``).

        ``force`` runs it even if it is done for this config; ``options`` go to the
        stage's ``run`` (``explore`` takes ``worker=``, a
        :class:`~qlass.runtime.workers.WorkerSettings`).
        """
        context: StageContext = self
        return await _runner(name)(context, force=force, **options)

    async def run(self, stages: Sequence[str] = STAGES) -> list[StageResult]:
        """Run ``stages`` in order; stops early (cleanly) after a stop request."""
        runners = [_runner(name) for name in stages]  # every name checked before any work
        results: list[StageResult] = []
        for runner in runners:
            if self.stop.requested:
                break
            results.extend(await runner(self))
        return results

    # -- evaluation --------------------------------------------------------------------

    evaluate = evaluation.evaluate
    stored_trajectories = evaluation.stored_trajectories
