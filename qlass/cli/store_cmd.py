"""``qlass db`` and ``qlass runs``: create or migrate a tree store and look inside it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table

from qlass.cli._common import ConfigOption, DbOption, SetOption, db_url, resolve_config
from qlass.errors import MissingDataError
from qlass.runtime.holders import observed_status
from qlass.storage import RunSummary, SchemaState, TreeStore, head_revision
from qlass.storage.engine import make_engine, safe_url, sqlite_file
from qlass.storage.schema import load_migrations, read_revision

T = TypeVar("T")

RunArgument = Annotated[str, typer.Argument(help="Run name or id.", metavar="RUN")]


def _url(db: str | None, config: Path | None, overrides: list[str] | None) -> str:
    """``--db`` if given, else the store of the (default) run configuration."""
    if db is not None:
        return db_url(db)
    return resolve_config(config, overrides, None).store_url


def _existing(url: str) -> str:
    path = sqlite_file(url)
    if path is not None and not path.exists():
        raise MissingDataError(
            f"no tree store at {path}: pass --db PATH|URL, or create one with `qlass db upgrade`"
        )
    return url


async def _with_store(url: str, action: Callable[[TreeStore], Awaitable[T]]) -> T:
    async with await TreeStore.open(url, read_only=True) as store:
        return await action(store)


def _when(value: object) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if hasattr(value, "strftime") else "-"


def register(app: typer.Typer) -> None:
    db_group = typer.Typer(
        help="Create a tree store or migrate it to this qlass version's schema.",
        no_args_is_help=True,
    )
    app.add_typer(db_group, name="db")
    runs_group = typer.Typer(
        help="List the runs in a tree store and show what one holds.", no_args_is_help=True
    )
    app.add_typer(runs_group, name="runs")
    console = Console()

    @db_group.command("upgrade")
    def upgrade(db: DbOption = None, config: ConfigOption = None, set_: SetOption = None) -> None:
        """Create the store if it does not exist, or migrate it to the newest schema.

        Opening a store from `qlass run` does this too; use this command to migrate a store
        ahead of time (for example a shared PostgreSQL one) or to check that it works.
        """
        url = _url(db, config, set_)
        with console.status(f"Upgrading {safe_url(url)}..."):
            state = asyncio.run(_with_upgrade(url))
        if state.upgraded:
            console.print(
                f"[green]upgraded[/] {safe_url(url)}: {state.before or '(new)'} -> {state.after}"
            )
        else:
            console.print(f"{safe_url(url)} is already at the newest schema ({state.after})")

    @db_group.command("status")
    def status(db: DbOption = None, config: ConfigOption = None, set_: SetOption = None) -> None:
        """Print the store's schema revision and the newest one this qlass knows."""
        url = _existing(_url(db, config, set_))
        current = asyncio.run(_read_revision(url))
        head = head_revision()
        known = [rev.revision for rev in load_migrations().walk_revisions()]
        if current == head:
            verdict = "[green]up to date[/]"
        elif current is None:
            verdict = "[yellow]empty: run `qlass db upgrade`[/]"
        elif current in known:
            verdict = "[yellow]behind: run `qlass db upgrade`[/]"
        else:
            verdict = "[red]unknown to this qlass (written by a newer version?)[/]"
        console.print(f"{safe_url(url)}: revision {current or '-'}, head {head}: {verdict}")

    @runs_group.command("list")
    def list_runs(db: DbOption = None, config: ConfigOption = None, set_: SetOption = None) -> None:
        """One line per run: id, name, status, tasks, nodes, code version, creation time."""
        url = _existing(_url(db, config, set_))
        summaries = asyncio.run(_with_store(url, _all_summaries))
        table = Table(title=f"runs in {safe_url(url)}")
        for column in ("id", "name", "status", "tasks", "nodes", "code version", "created"):
            table.add_column(
                column, justify="right" if column in ("id", "tasks", "nodes") else "left"
            )
        for item in summaries:
            run = item.run
            table.add_row(
                str(run.id),
                run.name,
                run.status,
                str(sum(item.tasks_by_status.values())),
                str(item.nodes),
                run.code_version or "-",
                _when(run.created_at),
            )
        console.print(table if summaries else f"no runs in {safe_url(url)}")

    @runs_group.command("show")
    def show(
        run: RunArgument,
        db: DbOption = None,
        config: ConfigOption = None,
        set_: SetOption = None,
        show_config: Annotated[
            bool, typer.Option("--config-json/--no-config-json", help="Print the run's config.")
        ] = True,
    ) -> None:
        """Everything about one run: config, code version, tasks by status, tree nodes, label
        sets, stages, QNet checkpoints and evaluation episodes."""
        url = _existing(_url(db, config, set_))
        summary = asyncio.run(_with_store(url, lambda store: _summary(store, run)))
        _print_summary(console, summary, show_config)


async def _with_upgrade(url: str) -> SchemaState:
    async with await TreeStore.open(url, upgrade=True) as store:
        return store.schema


async def _read_revision(url: str) -> str | None:
    engine = await asyncio.to_thread(make_engine, url, read_only=True)
    try:
        return await read_revision(engine)
    finally:
        await engine.dispose()


async def _summary(store: TreeStore, run: int | str) -> RunSummary:
    """The run's summary, its status as read now (a killed process of this host reads as
    interrupted at once, not when its lease lapses)."""
    summary = await store.runs.summary(run)
    return dataclasses.replace(summary, run=await observed_status(store, summary.run))


async def _all_summaries(store: TreeStore) -> list[RunSummary]:
    return [await _summary(store, run.id) for run in await store.runs.all()]


def _print_summary(console: Console, summary: RunSummary, show_config: bool) -> None:
    run = summary.run
    console.print(f"[bold]run {run.id}: {run.name}[/]  status {run.status}")
    if run.status == "interrupted":
        console.print(
            "[yellow]its process stopped without recording how (killed outright, out of "
            "memory, power loss): what it committed is kept; rerun the same command to "
            "continue[/]"
        )
    console.print(
        f"code version {run.code_version or '-'}   seed {run.seed}   "
        f"config {run.config_fingerprint or '-'}   created {_when(run.created_at)}   "
        f"updated {_when(run.updated_at)}"
    )
    by_status = dict(summary.tasks_by_status)
    if run.status == "interrupted" and "running" in by_status:  # no process works on them
        by_status["interrupted"] = by_status.get("interrupted", 0) + by_status.pop("running")
    tasks = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items())) or "none"
    console.print(f"tasks: {tasks}")
    console.print(f"tree nodes: {summary.nodes} ({summary.finished_leaves} finished leaves)")
    if summary.label_sets:
        table = Table(title="label sets")
        for column in ("id", "kind", "gamma", "normalize", "intermediate reward", "labelled nodes"):
            table.add_column(column)
        for item in summary.label_sets:
            label_set = item.label_set
            table.add_row(
                str(label_set.id),
                label_set.kind,
                f"{label_set.gamma:g}",
                "yes" if label_set.normalize else "no",
                label_set.intermediate_reward,
                str(item.labelled_nodes),
            )
        console.print(table)
    if summary.stages:
        table = Table(title="stages")
        for column in ("stage", "status", "fingerprint", "started", "finished", "metrics"):
            table.add_column(column)
        for stage in summary.stages:
            dead = run.status == "interrupted" and stage.status == "running"
            table.add_row(
                stage.name,
                "interrupted" if dead else stage.status,
                stage.fingerprint,
                _when(stage.started_at),
                _when(stage.finished_at),
                json.dumps(dict(stage.metrics), sort_keys=True)[:80],
            )
        console.print(table)
    if summary.checkpoints:
        table = Table(title="QNet checkpoints")
        for column in ("id", "label set", "path", "metrics", "created"):
            table.add_column(column)
        for checkpoint in summary.checkpoints:
            table.add_row(
                str(checkpoint.id),
                str(checkpoint.label_set_id or "-"),
                checkpoint.path,
                json.dumps(dict(checkpoint.metrics), sort_keys=True)[:60],
                _when(checkpoint.created_at),
            )
        console.print(table)
    if summary.episodes:
        table = Table(title="episodes")
        for column in (
            "stage",
            "strategy",
            "episodes",
            "mean score",
            "success",
            "completion tokens",
        ):
            table.add_column(column)
        for episodes in summary.episodes:
            table.add_row(
                episodes.stage,
                episodes.strategy,
                str(episodes.episodes),
                f"{episodes.mean_score:.3f}",
                f"{episodes.success_rate:.1%}",
                str(episodes.completion_tokens),
            )
        console.print(table)
    if show_config:
        console.print(Syntax(json.dumps(dict(run.config), indent=2, sort_keys=True), "json"))
