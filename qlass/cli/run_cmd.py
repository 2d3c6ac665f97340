"""``qlass run`` and the single stages: ``qlass bc``, ``explore``, ``label``, ``eval``.

All of them build a :class:`~qlass.runtime.pipeline.Pipeline` from the config and call its
stages; a stage already done for the same config is skipped, so rerunning a command
resumes it. Ctrl-C (or SIGTERM) stops gracefully: the steps under way are committed and
the command prints how to resume.
"""

from __future__ import annotations

import asyncio
import gc
import shlex
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from qlass._log import redact
from qlass.cli._common import (
    ConfigOption,
    DbOption,
    SetOption,
    db_url,
    mask_passwords,
    resolve_config,
)
from qlass.config import RunConfig
from qlass.errors import ConfigError, UnknownNameError
from qlass.runtime.evaluate import StrategyReport
from qlass.runtime.stages import OPTIONAL_STAGES, STAGES

if TYPE_CHECKING:  # the pipeline imports models and simulators: only when a command runs
    from qlass.runtime.pipeline import Pipeline, StageResult
    from qlass.runtime.ray_executor import RaySettings

__all__ = [
    "load_run_config",
    "parse_stages",
    "print_reports",
    "print_stages",
    "register",
    "run_pipeline",
]

T = TypeVar("T")

ResumeOption = Annotated[
    str | None,
    typer.Option(
        "--resume",
        help="Continue the stored run with this name, with its stored config "
        "(the DB is --db, else runs/NAME/qlass.db).",
        metavar="RUN",
    ),
]


ForceOption = Annotated[
    bool, typer.Option(help="Run the stage even if it is done for this config.")
]

ExecutorOption = Annotated[
    str,
    typer.Option(
        "--executor",
        help="'local': this process. 'ray': on ray.actors Ray actors of the cluster of "
        "ray.address / $RAY_ADDRESS (else a local Ray), sharing the store (PostgreSQL on a "
        "cluster): exploration under task leases, evaluation a share of the tasks each.",
    ),
]


def _ray_settings(
    executor: str, *, lease_s: float = 60.0, max_attempts: int | None = 5
) -> RaySettings | None:
    """The Ray settings of ``--executor ray`` (``None`` for local; ``lease_s`` and
    ``max_attempts`` are the explore workers'), after checking that Ray can be imported:
    a clear message before anything is opened."""
    if executor not in ("local", "ray"):
        raise typer.BadParameter("must be 'local' or 'ray'", param_hint="--executor")
    if executor == "local":
        return None
    from qlass.runtime.ray_executor import RaySettings, import_ray

    import_ray()
    return RaySettings(lease_s=lease_s, max_attempts=max_attempts)


def load_run_config(
    config: Path | None, overrides: list[str] | None, db: str | None, resume: str | None
) -> RunConfig:
    """The config of a new run (file + overrides), or the stored one of ``--resume RUN``.

    ``--resume`` with ``--config`` or ``--set`` is refused: the stored config is what makes
    the resume continue the same run, so a change there would be silently ignored.
    """
    if resume is None:
        return resolve_config(config, overrides, db)
    if config is not None or overrides:
        given = " and ".join(
            name for name, used in (("--config", config), ("--set", overrides)) if used
        )
        raise ConfigError(
            f"--resume {resume} runs with the config stored with the run; {given} cannot "
            "be combined with it (to change settings, start a run under a new name with "
            "--config/--set)"
        )

    async def stored() -> RunConfig:
        from qlass.storage import TreeStore

        url = db_url(db or f"runs/{resume}/qlass.db")
        async with await TreeStore.open(url, read_only=True) as store:
            run = await store.runs.get(resume)
        data = dict(run.config)
        if db is not None:
            data.setdefault("store", {})["url"] = db_url(db)
        return RunConfig.model_validate(data)

    if db is None and not Path(f"runs/{resume}/qlass.db").exists():
        raise UnknownNameError(f"no run {resume!r} under runs/ (give its store with --db)")
    return asyncio.run(stored())


def parse_stages(text: str) -> list[str]:
    """The stage names of ``--stages``, checked: none unknown, at least one."""
    known = STAGES + OPTIONAL_STAGES
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    if not chosen:
        raise ConfigError(f"--stages is empty: name at least one of {', '.join(known)}")
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise UnknownNameError(
            f"--stages: unknown stage {unknown[0]!r}; stages are {', '.join(known)}"
        )
    return chosen


def run_pipeline(config: RunConfig, work: Callable[[Pipeline], Awaitable[T]]) -> T:
    """Run ``work`` on a pipeline with progress bars and graceful Ctrl-C handling."""
    from qlass.runtime.pipeline import Pipeline
    from qlass.runtime.progress import RichProgress
    from qlass.runtime.scheduler import StopSignal

    progress = RichProgress()

    async def main() -> tuple[T, bool]:
        stop = StopSignal()
        with stop.installed(), progress.running():
            async with Pipeline(config, progress=progress, stop=stop) as pipeline:
                result = await work(pipeline)
        return result, stop.requested

    # What the imports made lives as long as the process: out of the collector's full
    # passes, which paused the event loop for about 100 ms each with 200 episodes going.
    gc.freeze()
    try:
        result, stopped = asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        _resume_hint(config, aborted=True)
        raise typer.Exit(130) from None
    if stopped:
        _resume_hint(config, aborted=False)
        raise typer.Exit(130)
    return result


_RESUMABLE = ("run", "bc", "explore", "label", "eval", "self-train")


def _resume_hint(config: RunConfig, *, aborted: bool) -> None:
    """Print how to resume: the command as given, and the ``--resume`` form. Database
    passwords are masked and secret values redacted (this text ends up in logs)."""
    from qlass.storage.engine import safe_url

    what = "aborted" if aborted else "stopped"
    command = next((arg for arg in sys.argv[1:] if arg in _RESUMABLE), "run")  # demo: run
    argv = [mask_passwords(arg) for arg in sys.argv[1:]]
    again = ["qlass", *argv]
    resume = ["qlass", command, "--resume", config.name, "--db", safe_url(config.store_url)]
    if "--worker" in argv:
        resume.append("--worker")
    if "--executor" in argv[:-1]:  # on Ray again
        resume += ["--executor", argv[argv.index("--executor") + 1]]
    masked = any("***" in arg for arg in [*again, *resume])
    typer.secho(
        redact(
            f"{what}: every committed step is kept. Resume with:\n  {shlex.join(again)}\n"
            f"  (or: {shlex.join(resume)})"
            + ("\n  (the database password is masked: give it again)" if masked else "")
        ),
        err=True,
        fg=typer.colors.YELLOW,
    )


def print_reports(reports: Sequence[StrategyReport], console: Console | None = None) -> None:
    """A table of evaluation results: average final reward x100 (the paper's metric),
    success rate, and per episode: steps, completion tokens, env steps, seconds, cost."""
    splits = ", ".join(sorted({r.split for r in reports}))
    priced = any(r.cost_usd for r in reports)
    table = Table(title=f"evaluation on {splits} (per episode: steps, tokens, env steps, s)")
    table.add_column("strategy", no_wrap=True)
    columns = ["n", "reward", "success", "steps", "tokens", "env", "s"] + (["$"] if priced else [])
    for column in columns:
        table.add_column(column, justify="right")
    for r in reports:
        per_episode = r.episodes or 1
        row = [
            r.strategy,
            str(r.episodes),
            f"{100 * r.avg_reward:.1f}",
            f"{100 * r.success_rate:.0f}%",
            f"{r.avg_steps:.1f}",
            f"{r.completion_tokens_per_episode:.0f}",
            f"{r.env_steps / per_episode:.1f}",
            f"{r.seconds_per_episode:.1f}",
        ]
        if priced:
            row.append(f"{r.cost_usd / per_episode:.4f}")
        table.add_row(*row)
    (console or Console()).print(table)


def print_stages(results: Sequence[StageResult]) -> None:
    table = Table(title="stages")
    for column in ("stage", "status", "wall s", "key figures"):
        table.add_column(column)
    keys = (
        "trajectories",
        "final_loss",
        "trees",
        "unfinished_tasks",
        "nodes",
        "env_steps_per_node",
        "dev_mse",
        "dev_spearman",
        "dev_sibling_accuracy",
        "dev_sibling_spread",
        "completion_tokens",
    )
    for result in results:
        figures = ", ".join(
            f"{k}={result.metrics[k]:.3g}"
            if isinstance(result.metrics[k], float)
            else f"{k}={result.metrics[k]}"
            for k in keys
            if k in result.metrics and result.metrics[k] is not None
        )
        table.add_row(
            result.name,
            "skipped"
            if result.skipped
            else "incomplete"
            if result.metrics.get("unfinished_tasks")
            else "done",
            str(result.metrics.get("wall_time_s", "")),
            figures,
        )
    Console().print(table)


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        config: ConfigOption = None,
        set_: SetOption = None,
        db: DbOption = None,
        resume: ResumeOption = None,
        stages: Annotated[
            str,
            typer.Option(
                help="Comma-separated stages to run, in order "
                f"({', '.join(STAGES + OPTIONAL_STAGES)})."
            ),
        ] = ",".join(STAGES),
        executor: ExecutorOption = "local",
    ) -> None:
        """The whole method: gold paths -> BC -> explore -> label -> QNet -> evaluation.

        Each stage already done for the same config is skipped, so rerunning continues an
        interrupted run. With --executor ray, explore and eval run on Ray actors, the other
        stages in this process.
        """
        chosen = parse_stages(stages)  # before anything is opened or created
        ray_settings = _ray_settings(executor)
        resolved = load_run_config(config, set_, db, resume)

        async def work(pipeline: Pipeline) -> list[StageResult]:
            if ray_settings is None:
                return await pipeline.run(chosen)
            from qlass.runtime.ray_executor import run_on_ray

            return await run_on_ray(pipeline, chosen, ray_settings)

        results = run_pipeline(resolved, work)
        print_stages(results)
        for result in results:
            if result.name == "eval" and "reports" in result.metrics:
                print_reports([StrategyReport(**r) for r in result.metrics["reports"]])

    def _stage_command(name: str, help_text: str) -> None:
        def command(
            config: ConfigOption = None,
            set_: SetOption = None,
            db: DbOption = None,
            resume: ResumeOption = None,
            force: ForceOption = False,
        ) -> None:
            resolved = load_run_config(config, set_, db, resume)

            async def work(pipeline: Pipeline) -> list[StageResult]:
                return await pipeline.stage(name, force=force)

            print_stages(run_pipeline(resolved, work))

        command.__doc__ = help_text
        app.command(name.replace("_", "-"))(command)

    _stage_command(
        "bc",
        "Behaviour cloning: train the policy on expert trajectories (exported from the "
        "simulator's gold paths first if needed).",
    )

    @app.command("explore")
    def explore(
        config: ConfigOption = None,
        set_: SetOption = None,
        db: DbOption = None,
        resume: ResumeOption = None,
        force: ForceOption = False,
        worker: Annotated[
            bool,
            typer.Option(
                "--worker",
                help="Be one of several workers sharing the run (any number of processes or "
                "machines on one PostgreSQL store): claim one task at a time under a lease, "
                "until no task is left. Without it, this process explores every unfinished "
                "task.",
            ),
        ] = False,
        worker_id: Annotated[
            str | None,
            typer.Option(
                "--worker-id",
                help="Name of this worker in the store's task claims (default host:pid).",
            ),
        ] = None,
        lease_s: Annotated[
            float,
            typer.Option(
                "--lease-s",
                min=1.0,
                help="Seconds a claim lasts without a heartbeat: the task of a worker that "
                "died is taken over after at most this long. Renewed every third of it.",
            ),
        ] = 60.0,
        max_attempts: Annotated[
            int,
            typer.Option(
                "--max-attempts",
                min=1,
                help="Leave alone a task already claimed this many times (its workers keep dying).",
            ),
        ] = 5,
        executor: ExecutorOption = "local",
    ) -> None:
        """Grow exploration trees on the train split, committing every node to the store.

        Rerun (or --resume RUN) to continue from the frontier. With --worker, start as many
        workers as you like against one store; each claims tasks until none is left.
        """
        from qlass.runtime.workers import WorkerSettings, default_worker_id

        if executor == "ray" and (worker or worker_id is not None):
            raise typer.BadParameter(
                "--executor ray starts the workers itself (one per Ray actor): leave out "
                "--worker/--worker-id",
                param_hint="--executor",
            )
        ray_settings = _ray_settings(executor, lease_s=lease_s, max_attempts=max_attempts)
        resolved = load_run_config(config, set_, db, resume)
        if ray_settings is not None:
            from qlass.runtime.ray_executor import explore_on_ray

            async def on_ray(pipeline: Pipeline) -> list[StageResult]:
                assert ray_settings is not None
                return await explore_on_ray(pipeline, ray_settings)

            print_stages(run_pipeline(resolved, on_ray))
            return
        settings = None
        if worker:
            settings = WorkerSettings(
                worker_id=worker_id or default_worker_id(),
                lease_s=lease_s,
                max_attempts=max_attempts,
            )
        elif worker_id is not None:
            raise typer.BadParameter("--worker-id needs --worker", param_hint="--worker-id")

        async def work(pipeline: Pipeline) -> list[StageResult]:
            return await pipeline.stage("explore", force=force, worker=settings)

        print_stages(run_pipeline(resolved, work))

    _stage_command("label", "Make the run's Q-label set (gamma, normalisation) from its trees.")

    @app.command("self-train")
    def self_train(
        config: ConfigOption = None,
        set_: SetOption = None,
        db: DbOption = None,
        resume: ResumeOption = None,
    ) -> None:
        """Self-training: collect Q-guided episodes on train tasks, fine-tune on the good ones.

        Each round is evaluated like the eval stage; self_train.rounds rounds in all.
        Finished rounds are kept, so a rerun continues with the next one.
        """
        resolved = load_run_config(config, set_, db, resume)

        async def work(pipeline: Pipeline) -> list[StageResult]:
            return await pipeline.stage("self_train")

        results = run_pipeline(resolved, work)
        print_stages(results)
        for result in results:
            if "reports" in result.metrics:
                Console().print(f"round {result.metrics.get('round')}")
                print_reports([StrategyReport(**r) for r in result.metrics["reports"]])

    @app.command("eval")
    def eval_(
        config: ConfigOption = None,
        set_: SetOption = None,
        db: DbOption = None,
        resume: ResumeOption = None,
        strategy: Annotated[
            list[str] | None,
            typer.Option(
                "--strategy",
                help="Strategy to evaluate (repeatable): greedy, sampled, best_of_n:N, "
                "qlass:M, beam:B, best_first:K, mcts:K; rollout_oracle:M is a diagnostic "
                "that reads the env's reward. Default: search.strategies.",
            ),
        ] = None,
        split: Annotated[
            str | None, typer.Option(help="dev (tune here) or test (report once).")
        ] = None,
        executor: ExecutorOption = "local",
    ) -> None:
        """Evaluate search strategies on a split; already stored episodes are reused.

        With --executor ray, Ray actors play the episodes (a share of the tasks each) and
        this process reports them.
        """
        ray_settings = _ray_settings(executor)
        resolved = load_run_config(config, set_, db, resume)

        async def work(pipeline: Pipeline) -> list[StrategyReport]:
            if ray_settings is not None:
                from qlass.runtime.ray_executor import evaluate_on_ray

                await evaluate_on_ray(pipeline, ray_settings, strategy, split=split)
                if pipeline.stop.requested:
                    return []
            return await pipeline.evaluate(strategy, split=split)

        print_reports(run_pipeline(resolved, work))
