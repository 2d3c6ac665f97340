"""``qlass study``: repeat a run over several seeds and compare strategies with confidence
intervals and paired differences (``run``, ``show``, ``list``)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from qlass.cli._common import ConfigOption, DbOption, SetOption, db_url, resolve_config
from qlass.runtime.stages import OPTIONAL_STAGES, STAGES

if TYPE_CHECKING:
    from qlass.report.study import StudySummary
    from qlass.storage import TreeStore

__all__ = ["print_summary", "register"]

app = typer.Typer(
    help="Studies: one config over several seeds; strategies compared with confidence "
    "intervals and paired differences on the same tasks.",
    no_args_is_help=True,
)

CompareOption = Annotated[
    list[str] | None,
    typer.Option(
        "--compare",
        help="A paired comparison A-B to report, e.g. qlass:2-best_of_n:2 (repeatable). "
        "Default: every strategy against greedy, and QLASS/beam against every Best-of-N.",
        metavar="A-B",
    ),
]
ResamplesOption = Annotated[
    int, typer.Option(min=100, help="Bootstrap resamples for the confidence intervals.")
]
LevelOption = Annotated[float, typer.Option(min=0.5, max=0.999, help="Confidence level.")]


def _table(title: str, rows: Sequence[dict[str, str]]) -> Table:
    table = Table(title=title)
    if not rows:
        table.add_column("(none)")
        return table
    for i, column in enumerate(rows[0]):
        table.add_column(column, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for row in rows:
        table.add_row(*row.values())
    return table


def print_summary(summary: StudySummary, console: Console | None = None) -> None:
    """Both tables of a study summary and its notes."""
    from qlass.report.study import pair_rows, strategy_rows

    console = console or Console()
    level = f"{100 * summary.level:.0f}%"
    scope = f"{len(summary.seeds)} seeds x {summary.tasks} {summary.split} tasks"
    console.print(_table(f"study {summary.study}: {scope}, {level} CI", strategy_rows(summary)))
    console.print(_table("paired differences (same seed, same task)", pair_rows(summary)))
    for note in summary.notes:
        console.print(f"[yellow]note:[/yellow] {note}")


async def _summarise(
    store: TreeStore,
    name: str,
    compare: list[str] | None,
    *,
    level: float,
    resamples: int,
    directory: Path,
) -> tuple[StudySummary, list[Path]]:
    from qlass.report.study import parse_pair, summarise_study, write_study_report

    try:
        pairs = [parse_pair(c) for c in compare] if compare else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--compare") from None
    summary = await summarise_study(store, name, pairs=pairs, level=level, resamples=resamples)
    study = await store.studies.get(name)
    await store.studies.update(study.id, summary=summary.as_dict())
    files = await asyncio.to_thread(write_study_report, summary, directory)
    return summary, files


def _parse_stages(stages: str) -> list[str]:
    chosen = [s.strip() for s in stages.split(",") if s.strip()]
    known = STAGES + OPTIONAL_STAGES
    unknown = [s for s in chosen if s not in known]
    if not chosen or unknown:
        raise typer.BadParameter(
            f"{'no stage given' if not chosen else f'unknown stage {unknown[0]!r}'}; "
            f"stages are {', '.join(known)}",
            param_hint="--stages",
        )
    return chosen


@app.command("run")
def run(
    config: ConfigOption = None,
    set_: SetOption = None,
    db: DbOption = None,
    seeds: Annotated[
        int, typer.Option(min=1, help="Number of seeds: the config's seed and the next ones.")
    ] = 3,
    seed_list: Annotated[
        str | None,
        typer.Option("--seed-list", help="Exact seeds instead, comma-separated (e.g. 0,4,7)."),
    ] = None,
    stages: Annotated[
        str,
        typer.Option(
            help=f"Comma-separated stages per seed ({', '.join(STAGES + OPTIONAL_STAGES)})."
        ),
    ] = ",".join(STAGES),
    compare: CompareOption = None,
    resamples: ResamplesOption = 10_000,
    level: LevelOption = 0.95,
) -> None:
    """Run the config's pipeline once per seed (resumable), then compare its strategies.

    The study is named by the config's ``name``; seed k's run is NAME-seed<k> in
    runs/NAME/seed<k>, all in one store (runs/NAME/qlass.db unless --db or store.url).
    Rerunning continues where it stopped; more seeds add runs. Writes study.md, study.csv
    and study_reward_vs_tokens.png into the study's folder.
    """
    from qlass.runtime.progress import RichProgress
    from qlass.runtime.scheduler import StopSignal
    from qlass.runtime.study import StudyRunner
    from qlass.runtime.study import seed_list as seed_list_of
    from qlass.storage import TreeStore

    base = resolve_config(config, set_, db)
    chosen_stages = _parse_stages(stages)
    if seed_list is not None:
        try:
            chosen_seeds = tuple(int(s) for s in seed_list.split(",") if s.strip())
        except ValueError:
            raise typer.BadParameter("seeds must be integers", param_hint="--seed-list") from None
    else:
        chosen_seeds = seed_list_of(base.seed, seeds)
    runner_progress = RichProgress()

    async def main() -> tuple[StudySummary | None, list[Path], bool]:
        stop = StopSignal()
        with stop.installed(), runner_progress.running():
            runner = StudyRunner(
                base, chosen_seeds, stages=chosen_stages, progress=runner_progress, stop=stop
            )
            result = await runner.run()
        if result.stopped:
            return None, [], True
        async with await TreeStore.open(base.store_url) as store:
            summary, files = await _summarise(
                store, base.name, compare, level=level, resamples=resamples,
                directory=base.directory,
            )  # fmt: skip
        return summary, files, False

    try:
        summary, files, stopped = asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        stopped, summary, files = True, None, []
    if stopped or summary is None:
        typer.secho(
            "stopped: every committed step is kept; run the same command again to continue.",
            err=True,
            fg=typer.colors.YELLOW,
        )
        raise typer.Exit(130)
    print_summary(summary)
    console = Console()
    console.print(f"\nstudy folder: [bold]{base.directory}[/bold]")
    for path in files:
        console.print(f"  {path}")


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Study name (the config's name).")],
    db: DbOption = None,
    compare: CompareOption = None,
    resamples: ResamplesOption = 10_000,
    level: LevelOption = 0.95,
    out: Annotated[
        Path | None,
        typer.Option(help="Folder for study.md/csv/png (default: the study's folder)."),
    ] = None,
) -> None:
    """Recompute a study's tables and plot from the stored episodes."""
    from qlass.config import RunConfig
    from qlass.storage import TreeStore

    url = db_url(db or f"runs/{name}/qlass.db")

    async def main() -> tuple[StudySummary, list[Path]]:
        async with await TreeStore.open(url, upgrade=False) as store:
            study = await store.studies.get(name)
            directory = out or RunConfig.model_validate(study.config).directory
            return await _summarise(
                store, name, compare, level=level, resamples=resamples, directory=directory
            )

    summary, files = asyncio.run(main())
    print_summary(summary)
    for path in files:
        Console().print(f"  {path}")


@app.command("list")
def list_(db: DbOption = None) -> None:
    """The studies of a store with their seeds and status."""
    from qlass.storage import TreeStore

    if db is None:
        raise typer.BadParameter("give the store with --db", param_hint="--db")

    async def main() -> list[tuple[str, str, str, str]]:
        async with await TreeStore.open(db_url(db), upgrade=False) as store:
            rows = []
            for study in await store.studies.all():
                members = await store.studies.members(study.id)
                rows.append(
                    (
                        study.name,
                        study.status,
                        ", ".join(str(m.seed) for m in members),
                        ", ".join(map(str, study.settings.get("seeds", []))),
                    )
                )
            return rows

    table = Table(title="studies")
    for column in ("study", "status", "seeds done", "seeds asked"):
        table.add_column(column)
    for row in asyncio.run(main()):
        table.add_row(*row)
    Console().print(table)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="study")
