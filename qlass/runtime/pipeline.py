"""The whole method as stages over one tree store: gold -> bc -> explore -> label ->
train_qnet -> eval.

Each stage records itself in the store with a fingerprint of the config sections it
depends on. Running a stage whose record is done with the same fingerprint does nothing
(so ``qlass run`` resumes); exploration and evaluation also resume inside the stage (trees
from their committed nodes, evaluation from the episodes already stored). Every stage
records what it cost: tokens, env steps and wall time.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import structlog

from qlass._log import redact
from qlass._version import code_version
from qlass.backends.base import Policy
from qlass.backends.registry import build_policy
from qlass.config import RunConfig
from qlass.envs.gold import export_gold
from qlass.envs.pool import EnvPool
from qlass.envs.registry import env_prompt, list_tasks, task_max_steps
from qlass.errors import (
    ConfigError,
    MissingDataError,
    PolicyError,
    StoreError,
    TrainingStopped,
)
from qlass.qnet.base import ValueModel
from qlass.qnet.registry import create_value_model
from qlass.runtime.checks import check_config
from qlass.runtime.context import SearchContext, Tally
from qlass.runtime.evaluate import StrategyReport, evaluate_strategy, summarise
from qlass.runtime.explore import ExploreSettings, TreeExplorer, TreeStats
from qlass.runtime.progress import NullProgress, Progress, ProgressBar
from qlass.runtime.scheduler import StopSignal, bounded_map
from qlass.runtime.stages import DEPENDS, FROZEN, OPTIONAL_STAGES, STAGES
from qlass.runtime.strategies import SearchStrategy, make_strategy
from qlass.runtime.workers import WorkerSettings, ensure_stage, run_worker
from qlass.storage import LabelSetRecord, RunRecord, TaskRecord, TreeStore, trajectory_from_json
from qlass.types import TaskSpec, Trajectory

if TYPE_CHECKING:  # torch and transformers load only for the stages that train
    from qlass.qnet.train import TrainSettings

__all__ = [
    "OPTIONAL_STAGES",
    "STAGES",
    "Pipeline",
    "StageResult",
    "drop_held_out",
    "qnet_train_settings",
]

log = structlog.get_logger(__name__)


def drop_held_out(train: Sequence[TaskSpec], held_out: Sequence[TaskSpec]) -> list[TaskSpec]:
    """``train`` without the tasks whose (game, variation, params) is in ``held_out``."""
    evaluated = {(t.name, t.variation, t.params) for t in held_out}
    return [t for t in train if (t.name, t.variation, t.params) not in evaluated]


def qnet_train_settings(config: RunConfig, **overrides: Any) -> TrainSettings:
    """The QNet trainer's settings from a run config (``overrides`` win)."""
    from qlass.qnet.train import TrainSettings

    q = config.qnet
    settings: dict[str, Any] = {
        "output_dir": config.qnet_dir,
        "head_dim": q.head_dim,
        "batch_size": q.batch_size,
        "micro_batch_size": min(q.micro_batch_size, q.batch_size),
        "epochs": q.epochs,
        "lr": q.lr,
        "warmup_ratio": q.warmup_ratio,
        "max_length": q.max_length,
        "max_turns": q.max_turns,
        "dev_fraction": q.dev_fraction,
        "seed": config.seed,
    }
    return TrainSettings(**(settings | overrides))


def _bar_progress(bar: ProgressBar) -> Callable[[int, int, float | None], None]:
    """A trainer's progress callback (step, total, loss) that moves a progress bar."""

    def update(step: int, total: int, loss: float | None) -> None:
        bar.update(total=total, completed=step, loss=loss if loss is not None else float("nan"))

    return update


async def _import(module: str) -> None:
    """Import a module that loads torch and transformers, in a worker thread (importing
    reads many files). They are imported only by the stages that train, so that exploring
    with a remote or scripted policy starts in a second."""
    await asyncio.to_thread(importlib.import_module, module)


@dataclass
class StageResult:
    """What a stage did (or that it was skipped) and what it cost."""

    name: str
    skipped: bool
    metrics: dict[str, Any] = field(default_factory=dict)


class Pipeline:
    """Runs the stages of one :class:`RunConfig` against its tree store.

    Use as ``async with Pipeline(config) as pipeline: await pipeline.run()``. Stages can
    also be called one at a time (the CLI's ``qlass bc``, ``qlass explore``...).
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        progress: Progress | None = None,
        stop: StopSignal | None = None,
    ) -> None:
        self.config = config
        self.progress = progress or NullProgress()
        self.stop = stop or StopSignal()
        self._store: TreeStore | None = None
        self._run: RunRecord | None = None
        self._pool: EnvPool | None = None
        self._value: ValueModel | None = None
        self._closers: list[Callable[[], Awaitable[None]]] = []

    # -- set-up ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(check_config, self.config)  # before anything is created
        await asyncio.to_thread(self.config.directory.mkdir, parents=True, exist_ok=True)
        self._store = await TreeStore.open(self.config.store_url)
        self._closers.append(self._store.aclose)
        self._run = await self._get_or_create_run()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close envs, models and the store (in reverse order of opening)."""
        while self._closers:
            closer = self._closers.pop()
            try:
                await closer()
            except Exception as error:  # closing must not hide the original error
                log.warning("close_failed", error=repr(error))

    @property
    def store(self) -> TreeStore:
        if self._store is None:
            raise RuntimeError("use the pipeline inside 'async with'")
        return self._store

    @property
    def run_record(self) -> RunRecord:
        if self._run is None:
            raise RuntimeError("use the pipeline inside 'async with'")
        return self._run

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

    def fingerprint(self, stage: str) -> str:
        return self.config.section_fingerprint(*DEPENDS[stage])

    async def run_stage(
        self,
        name: str,
        body: Callable[[], Awaitable[dict[str, Any]]],
        *,
        force: bool = False,
        fingerprint_of: str | None = None,
    ) -> StageResult:
        """Run ``body`` as stage ``name`` unless it is done for this config; record it.

        The fingerprint is that of ``fingerprint_of`` (default: ``name``), a key of the
        stage-dependency table.
        """
        run_id, fingerprint = self.run_record.id, self.fingerprint(fingerprint_of or name)
        if not force and await self.store.stages.is_done(run_id, name, fingerprint):
            stage = await self.store.stages.get(run_id, name)
            self.progress.log(f"[dim]{name}: already done for this config, skipped")
            return StageResult(name, True, dict(stage.metrics) if stage else {})
        await self.store.stages.start(run_id, name, fingerprint)
        started = time.perf_counter()
        try:
            metrics = await body()
        except BaseException:
            await asyncio.shield(self.store.stages.finish(run_id, name, failed=True))
            raise
        metrics["wall_time_s"] = round(time.perf_counter() - started, 2)
        # The run keeps the config it was created with; a rerun may change the sections of
        # later stages, so each stage records the settings it ran with.
        metrics["settings"] = self.config.model_dump(
            mode="json", include=set(DEPENDS[fingerprint_of or name])
        )
        stopped = self.stop.requested
        if stopped or metrics.get("unfinished_tasks"):  # stays running, to be resumed
            if stopped:
                metrics["stopped"] = True
            await self.store.stages.put(run_id, name, status="running", metrics=metrics)
        else:
            await self.store.stages.finish(run_id, name, metrics=metrics)
        return StageResult(name, False, metrics)

    # -- shared pieces -----------------------------------------------------------------

    async def tasks(self, split: str, limit: int | None) -> list[TaskSpec]:
        """The env's tasks of ``split`` (split files are read in a worker thread).

        Training tasks never include a game of the dev or test split: the paper's
        ScienceWorld files list 54 of the 194 "seen" (dev) variations in train too, and
        training on them would leak the evaluation set.
        """
        env = self.config.env
        games = list(env.games) if env.games else None

        def listed(name: str, cap: int | None = None) -> list[TaskSpec]:
            return list_tasks(env.name, name, games=games, params=env.params, limit=cap)

        if split != "train":
            return await asyncio.to_thread(listed, split, limit)
        train = await asyncio.to_thread(listed, "train")
        held_out = await asyncio.to_thread(lambda: [*listed("dev"), *listed("test")])
        kept = drop_held_out(train, held_out)
        if len(kept) < len(train):
            log.warning("train_tasks_held_out", dropped=len(train) - len(kept), env=env.name)
        return kept[:limit] if limit is not None else kept

    def max_steps(self, task: TaskSpec) -> int:
        return self.config.env.max_steps or task_max_steps(task) or 30

    def system_prompt(self) -> str | None:
        mode = self.config.policy.prompt
        if mode == "none":
            return None
        return env_prompt(self.config.env.name).render(with_example=mode == "full")

    def expert_file(self) -> Path:
        return self.config.bc.expert_file or self.config.directory / "expert.jsonl"

    async def shared_pool(self) -> EnvPool:
        """The pipeline's env pool (one for all stages; closed with the pipeline)."""
        if self._pool is None:
            env = self.config.env
            self._pool = EnvPool.for_env(
                env.name,
                size=env.pool_size,
                step_timeout_s=env.step_timeout_s,
                max_steps=self.max_steps,
            )
            self._closers.append(self._pool.aclose)
        return self._pool

    async def policy(self, model_dir: Path | None = None) -> Policy:
        """The run's policy (the BC policy unless policy.model says otherwise), or the local
        model in ``model_dir``, wrapped with limits, retries and the store's call cache."""
        config = self.config.policy
        if model_dir is not None:
            config = config.model_copy(update={"backend": "hf", "model": str(model_dir)})
        elif config.model is None:
            if config.backend != "hf":
                raise ConfigError(f"policy.model must be set for backend {config.backend!r}")
            if not await asyncio.to_thread(self.config.policy_dir.exists):
                raise MissingDataError(
                    f"no policy at {self.config.policy_dir}: run the bc stage first "
                    "(qlass bc) or set policy.model"
                )
            config = config.model_copy(update={"model": str(self.config.policy_dir)})
        policy = await asyncio.to_thread(build_policy, config, cache=self.store.call_cache)
        self._closers.append(policy.aclose)
        return policy

    async def shared_value_model(self) -> ValueModel:
        """The configured value model, loaded once per pipeline."""
        if self._value is None:
            self._value = await self._load_value_model()
        return self._value

    async def _load_value_model(self) -> ValueModel:
        search = self.config.search
        options: dict[str, Any] = {}
        if search.value_model == "qnet":
            path = (
                Path(search.value_model_path) if search.value_model_path else self.config.qnet_dir
            )
            if not await asyncio.to_thread(path.exists):
                raise MissingDataError(f"no QNet at {path}: run the train_qnet stage first")
            options = {"directory": path, "max_batch": self.config.qnet.max_batch}
        elif search.value_model == "qnet-server":
            if not search.value_model_path:
                raise ConfigError("search.value_model_path must be the scorer URL for qnet-server")
            options = {"url": search.value_model_path}
        value = await asyncio.to_thread(create_value_model, search.value_model, **options)
        self._closers.append(value.aclose)
        return value

    def context(self, policy: Policy, envs: EnvPool, value: ValueModel | None) -> SearchContext:
        config = self.config
        return SearchContext(
            policy=policy,
            envs=envs,
            value_model=value,
            system_prompt=self.system_prompt(),
            max_tokens=config.policy.max_tokens,
            max_turns_in_prompt=config.policy.max_turns_in_prompt,
            temperature=config.search.temperature,
            seed=config.seed,
            oracle_terminal_reward=config.search.oracle_terminal_reward,
        )

    # -- stages ------------------------------------------------------------------------

    async def gold(self, *, force: bool = False) -> StageResult:
        """Export expert trajectories of the train split from the simulator's gold paths."""

        async def body() -> dict[str, Any]:
            config = self.config
            tasks = await self.tasks("train", config.env.train_tasks)
            bar = self.progress.bar("gold paths", len(tasks))
            report = await export_gold(
                config.env.name,
                tasks,
                self.expert_file(),
                workers=min(config.env.pool_size, 4),
                tries=config.env.gold_tries,
                on_task=lambda _task, _ok: bar.advance(),
            )
            return {
                "trajectories": report.written,
                "skipped": len(report.skipped),
                "env_steps": report.env_steps,
                "file": str(report.path),
            }

        if self.config.bc.expert_file is not None:
            return StageResult("gold", True, {"file": str(self.config.bc.expert_file)})
        return await self.run_stage("gold", body, force=force)

    async def bc(self, *, force: bool = False) -> StageResult:
        """Behaviour cloning of the policy on the expert trajectories."""
        config = self.config
        if config.policy.backend != "hf" or config.policy.model is not None:
            self.progress.log("[dim]bc: the policy is given by policy.model; skipped")
            return StageResult("bc", True, {})

        async def body() -> dict[str, Any]:
            await _import("qlass.runtime.bc")
            from qlass.runtime.bc import load_conversations, train_policy

            if not await asyncio.to_thread(self.expert_file().exists):
                await self.gold()
            conversations = await asyncio.to_thread(
                load_conversations, self.expert_file(), config.bc.examples
            )
            bar = self.progress.bar("behaviour cloning", None)
            try:
                result = await asyncio.to_thread(
                    train_policy,
                    conversations,
                    config.bc,
                    output_dir=config.policy_dir,
                    system_prompt=self.system_prompt(),
                    max_turns=config.policy.max_turns_in_prompt,
                    seed=config.seed,
                    progress=_bar_progress(bar),
                    should_stop=lambda: self.stop.requested,
                )
            except TrainingStopped as stopped:
                return {"note": str(stopped)}
            return {
                "conversations": result.conversations,
                "examples": result.examples,
                "train_tokens": result.train_tokens,
                "steps": result.steps,
                "final_loss": result.final_loss,
                "model_dir": str(result.model_dir),
            }

        return await self.run_stage("bc", body, force=force)

    async def explore(
        self, *, force: bool = False, worker: WorkerSettings | None = None
    ) -> StageResult:
        """Grow the exploration trees of the train split (resumes unfinished trees).

        With ``worker``, this process is one of several sharing the run: it claims one task
        at a time under a lease (:mod:`qlass.runtime.workers`), and the stage is recorded
        done only once every task is finished.
        """
        config = self.config

        async def body() -> dict[str, Any]:
            run = self.run_record
            await self.label_set()  # exists before any leaf: labels stay incremental
            specs = await self.tasks("train", config.explore.tasks or config.env.train_tasks)
            await self.store.tasks.add_many(run.id, specs)
            todo = [t for t in await self.store.tasks.of_run(run.id) if t.status != "done"]
            policy, pool = await self.policy(), await self.shared_pool()
            ctx = self.context(policy, pool, None)
            before = pool.stats.snapshot()
            bar = self.progress.bar("exploring trees", len(todo))
            totals = Tally()
            counts = {"trees": 0, "nodes": 0, "leaves": 0, "failed_tasks": 0}

            async def grow(task: TaskRecord, stop: StopSignal) -> TreeStats:
                settings = ExploreSettings(
                    width=config.explore.width,
                    max_depth=config.explore.max_depth,
                    min_prune_depth=config.explore.min_prune_depth,
                    temperature=config.explore.temperature,
                    max_steps=self.max_steps(task.spec),
                )
                explorer = TreeExplorer(self.store, ctx, settings, seed=config.seed, stop=stop)
                stats = await explorer.explore(task)
                counts["trees"] += not stats.stopped
                totals.merge(stats.tally)
                counts["nodes"] += stats.new_nodes
                counts["leaves"] += stats.leaves
                bar.advance(
                    nodes=counts["nodes"],
                    tokens=totals.usage.completion_tokens,
                    best=stats.best_score,
                )
                return stats

            def failed(task: TaskRecord, error: str) -> None:
                counts["failed_tasks"] += 1
                self.progress.log(f"[red]{task.key}: {error}")

            async def grow_here(task: TaskRecord) -> TreeStats | None:
                await self.store.tasks.set_status(task.id, "running")
                try:
                    stats = await grow(task, self.stop)
                except PolicyError as exc:
                    error = redact(str(exc))  # a provider may echo the API key
                    await self.store.tasks.set_status(task.id, "failed", error=error)
                    failed(task, error)
                    return None
                if not stats.stopped:
                    await self.store.tasks.set_status(task.id, "done")
                return stats

            extra: dict[str, Any] = {}
            if worker is None:
                await bounded_map(
                    grow_here, todo, concurrency=config.explore.concurrency, stop=self.stop
                )
            else:
                report = await run_worker(
                    self.store,
                    run.id,
                    grow,
                    worker,
                    stop=self.stop,
                    concurrency=config.explore.concurrency,
                    on_failed=failed,
                )
                extra = {f"worker:{worker.worker_id}": report.as_dict()}
            # Failed or unfinished trees keep the stage running: a rerun retries them.
            tasks = await self.store.tasks.of_run(run.id, split="train")
            extra["unfinished_tasks"] = sum(t.status != "done" for t in tasks)
            pool_stats = pool.stats.since(before)
            return {
                **counts,
                **totals.as_dict(),
                "env_steps": pool_stats.steps,
                "env_resets": pool_stats.resets,
                "replayed_steps": pool_stats.replayed_steps,
                "env_steps_per_node": pool_stats.steps / counts["nodes"] if counts["nodes"] else 0,
                **extra,
            }

        if worker is not None and not force:  # workers starting together
            await ensure_stage(
                self.store, self.run_record.id, "explore", self.fingerprint("explore")
            )
        return await self.run_stage("explore", body, force=force)

    async def label_set(self) -> LabelSetRecord:
        labels = self.config.labels
        return await self.store.labels.create_set(
            self.run_record.id,
            gamma=labels.gamma,
            normalize=labels.normalize,
            intermediate_reward=labels.intermediate_reward,
        )

    async def label(self, *, force: bool = False) -> StageResult:
        """Make sure the run's Q-label set exists (it is updated incrementally)."""

        async def body() -> dict[str, Any]:
            label_set = await self.label_set()
            return {"label_set": label_set.id, "gamma": label_set.gamma}

        return await self.run_stage("label", body, force=force)

    async def train_qnet(self, *, force: bool = False) -> StageResult:
        """Train the QNet on the labelled trees (split by task) and record the checkpoint."""
        config = self.config

        async def body() -> dict[str, Any]:
            await _import("qlass.qnet.train")
            from qlass.qnet.train import train_qnet

            label_set = await self.label_set()
            triples = await self.store.export_triples(
                label_set.id,
                max_per_tree=config.labels.max_triples_per_tree,
                seed=config.seed,
                split="train",
            )
            if not triples:
                raise MissingDataError("no labelled triples: run the explore stage first")
            init = config.qnet.base_model or str(config.policy_dir)
            settings = qnet_train_settings(config)
            bar = self.progress.bar("training the QNet", None)
            try:
                result = await asyncio.to_thread(
                    train_qnet,
                    triples,
                    init,
                    settings,
                    on_progress=_bar_progress(bar),
                    should_stop=lambda: self.stop.requested,
                )
            except TrainingStopped as stopped:
                return {"note": str(stopped)}
            metrics = result.metrics() | {
                "max_triples_per_tree": config.labels.max_triples_per_tree
            }
            await self.store.checkpoints.add(
                self.run_record.id,
                await asyncio.to_thread(config.qnet_dir.resolve),
                label_set_id=label_set.id,
                metrics=metrics,
            )
            return {"triples": len(triples), **metrics}

        return await self.run_stage("train_qnet", body, force=force)

    async def evaluate(
        self,
        strategies: Sequence[str] | None = None,
        *,
        split: str | None = None,
        tasks: Sequence[TaskSpec] | None = None,
        policy: Policy | None = None,
        stage: str | None = None,
    ) -> list[StrategyReport]:
        """Evaluate strategies on a split; episodes already stored are not played again.

        ``tasks``, ``policy`` and ``stage`` (the episodes' stage label) default to the eval
        split's tasks, the run's policy and ``eval:<split>:<fingerprint>``.
        """
        config = self.config
        split = split or config.eval.split
        names = list(strategies or config.search.strategies)
        parsed = [make_strategy(name, temperature=config.search.temperature) for name in names]
        needs_value = any(s.needs_value for s in parsed)
        tasks = list(tasks) if tasks is not None else await self.tasks(split, config.env.eval_tasks)
        policy = policy or await self.policy()
        pool = await self.shared_pool()
        value = await self.shared_value_model() if needs_value else None
        ctx = self.context(policy, pool, value)
        stage = stage or f"eval:{split}:{self.fingerprint('eval')}"
        # Strategies run side by side: the local policy and the QNet batch their requests.
        await asyncio.gather(*(self._play(strategy, tasks, ctx, stage) for strategy in parsed))
        if self.stop.requested:
            return []
        return [await self._report(stage, strategy.name, split) for strategy in parsed]

    async def _play(
        self, strategy: SearchStrategy, tasks: Sequence[TaskSpec], ctx: SearchContext, stage: str
    ) -> None:
        run_id = self.run_record.id
        done = await self.store.episodes.done_keys(run_id, stage, strategy.name)
        todo = [t for t in tasks if t.key not in done]
        bar = self.progress.bar(f"eval {strategy.name}", len(tasks))
        bar.advance(len(tasks) - len(todo))

        async def record(trajectory: Trajectory, _tally: Tally) -> None:
            await self.store.episodes.add(run_id, stage, strategy.name, trajectory)
            bar.advance(reward=trajectory.final_score)

        await evaluate_strategy(
            strategy,
            todo,
            ctx,
            concurrency=self.config.eval.concurrency,
            seed=self.config.seed,
            max_steps=self.max_steps,
            on_episode=record,
            stop=self.stop,
        )

    async def stored_trajectories(self, stage: str, strategy: str) -> list[Trajectory]:
        """The episodes stored for (stage, strategy), decoded."""
        episodes = await self.store.episodes.of_run(
            self.run_record.id, stage=stage, strategy=strategy
        )
        return [trajectory_from_json(e.trajectory) for e in episodes]

    async def _report(self, stage: str, strategy: str, split: str) -> StrategyReport:
        return summarise(strategy, split, await self.stored_trajectories(stage, strategy))

    async def eval(self, *, force: bool = False) -> StageResult:
        """The eval stage: every configured strategy on the configured split."""

        async def body() -> dict[str, Any]:
            reports = await self.evaluate()
            return {"reports": [r.as_dict() for r in reports]}

        return await self.run_stage("eval", body, force=force)

    async def self_train(self) -> list[StageResult]:
        """Self-training rounds (see :mod:`qlass.runtime.selftrain`)."""
        await _import("qlass.runtime.selftrain")
        from qlass.runtime.selftrain import self_train

        return await self_train(self)

    async def run(self, stages: Sequence[str] = STAGES) -> list[StageResult]:
        """Run ``stages`` in order; stops early (cleanly) after a stop request."""
        known = STAGES + OPTIONAL_STAGES
        unknown = [s for s in stages if s not in known]
        if unknown:
            raise ConfigError(f"unknown stage {unknown[0]!r}; stages are {', '.join(known)}")
        results: list[StageResult] = []
        for name in stages:
            if self.stop.requested:
                break
            if name == "self_train":
                results.extend(await self.self_train())
            else:
                method: Callable[[], Awaitable[StageResult]] = getattr(self, name)
                results.append(await method())
        return results
