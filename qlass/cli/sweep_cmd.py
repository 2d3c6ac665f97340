"""``qlass sweep``: ablations as one command: a study per point of a grid of config values,
sharing every stage whose inputs did not change (``run``, ``show``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from qlass.cli._common import ConfigOption, DbOption, SetOption, db_url, resolve_config
from qlass.cli.study_cmd import LevelOption, ResamplesOption, _parse_stages, print_summary
from qlass.errors import ConfigError
from qlass.runtime.stages import OPTIONAL_STAGES, STAGES

if TYPE_CHECKING:
    from qlass.report.sweep import SweepSummary
    from qlass.storage import TreeStore

__all__ = ["register"]

app = typer.Typer(
    help="Sweeps: a study per point of a grid over config fields (ablations), sharing the "
    "stages a point does not change; tables and a plot with confidence intervals.",
    no_args_is_help=True,
)


async def _report(
    store: TreeStore, name: str, *, level: float, resamples: int, directory: Path
) -> tuple[SweepSummary, list[Path]]:
    from qlass.report.compute import COMPUTE_MD, render_compute_markdown, sweep_compute
    from qlass.report.sweep import summarise_sweep, write_sweep_report

    sweep = await summarise_sweep(store, name, level=level, resamples=resamples)
    record = await store.studies.get(name)
    await store.studies.update(record.id, summary=sweep.as_dict())
    files = await asyncio.to_thread(write_sweep_report, sweep, directory)
    compute = directory / COMPUTE_MD
    text = render_compute_markdown(name, await sweep_compute(store, name))
    await asyncio.to_thread(compute.write_text, text, encoding="utf-8")
    return sweep, [*files, compute]


def _print(sweep: SweepSummary, files: list[Path]) -> None:
    console = Console()
    grid = "; ".join(f"{field} = {', '.join(values)}" for field, values in sweep.grid)
    console.print(f"[bold]sweep {sweep.sweep}[/bold]: {grid} (base point {sweep.base})")
    print_summary(sweep.summary, console)
    for path in files:
        console.print(f"  {path}")


@app.command("run")
def run(
    grid: Annotated[
        list[str],
        typer.Option(
            "--grid",
            help="A field and its values, e.g. labels.gamma=0.5,0.9,0.99,1.0 (repeatable: "
            "every combination is a point).",
            metavar="FIELD=V1,V2",
        ),
    ],
    config: ConfigOption = None,
    set_: SetOption = None,
    db: DbOption = None,
    seeds: Annotated[
        int, typer.Option(min=1, help="Number of seeds: the config's seed and the next ones.")
    ] = 3,
    stages: Annotated[
        str,
        typer.Option(
            help=f"Comma-separated stages per point ({', '.join(STAGES + OPTIONAL_STAGES)})."
        ),
    ] = ",".join(STAGES),
    resamples: ResamplesOption = 10_000,
    level: LevelOption = 0.95,
) -> None:
    """Run every point of the grid over the seeds (resumable), then compare the points.

    The sweep is named by the config's ``name``; everything goes into one store
    (runs/NAME/qlass.db unless --db or store.url). A point changing only search.* or
    eval.* settings reuses the trees and the QNet; labels.* or qnet.* reuses the trees;
    explore.* reuses gold and BC; bc.* reuses gold. Writes sweep.md, sweep.csv,
    sweep_reward.png and compute.md (every stage's tokens, env steps and wall time per
    point) into the sweep's folder.
    """
    from qlass.runtime.progress import RichProgress
    from qlass.runtime.scheduler import StopSignal
    from qlass.runtime.study import seed_list
    from qlass.runtime.sweep import SweepRunner, parse_grid
    from qlass.storage import TreeStore

    base = resolve_config(config, set_, db)
    chosen_stages = _parse_stages(stages)
    try:
        axes = [parse_grid(g) for g in grid]
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="--grid") from None
    progress = RichProgress()

    async def main() -> tuple[SweepSummary | None, list[Path]]:
        stop = StopSignal()
        with stop.installed(), progress.running():
            runner = SweepRunner(
                base,
                axes,
                seed_list(base.seed, seeds),
                stages=chosen_stages,
                progress=progress,
                stop=stop,
            )
            result = await runner.run()
        if result.stopped:
            return None, []
        async with await TreeStore.open(base.store_url) as store:
            return await _report(
                store, base.name, level=level, resamples=resamples, directory=base.directory
            )

    try:
        sweep, files = asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        sweep, files = None, []
    if sweep is None:
        typer.secho(
            "stopped: every committed step is kept; run the same command again to continue.",
            err=True,
            fg=typer.colors.YELLOW,
        )
        raise typer.Exit(130)
    _print(sweep, files)


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Sweep name (the config's name).")],
    db: DbOption = None,
    resamples: ResamplesOption = 10_000,
    level: LevelOption = 0.95,
    out: Annotated[
        Path | None,
        typer.Option(help="Folder for sweep.md/csv/png (default: the sweep's folder)."),
    ] = None,
) -> None:
    """Recompute a sweep's tables and plot from the stored episodes."""
    from qlass.config import RunConfig
    from qlass.storage import TreeStore

    url = db_url(db or f"runs/{name}/qlass.db")

    async def main() -> tuple[SweepSummary, list[Path]]:
        async with await TreeStore.open(url, upgrade=False) as store:
            record = await store.studies.get(name)
            directory = out or RunConfig.model_validate(record.config).directory
            return await _report(store, name, level=level, resamples=resamples, directory=directory)

    _print(*asyncio.run(main()))


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="sweep")
