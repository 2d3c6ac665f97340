"""``qlass report``, ``qlass view`` and ``qlass export``: tables, plots, the HTML viewers and
Hugging Face datasets of a stored run.

All read the run's tree store only (nothing is re-run): ``report`` regenerates the
results table (terminal, Markdown, CSV), the compute table per stage and the PNG plots;
``view`` writes a self-contained HTML page of the exploration trees (or, with
``--episodes``, of the evaluation episodes) that opens in a browser with no server;
``export`` writes expert trajectories, Q-labelled triples and episodes as parquet datasets.
"""

from __future__ import annotations

import asyncio
import webbrowser
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from qlass.cli._common import DbOption
from qlass.cli.run_cmd import load_run_config
from qlass.runtime.progress import RichProgress

if TYPE_CHECKING:
    from qlass.storage import TreeStore

__all__ = ["register"]

T = TypeVar("T")

RunArgument = Annotated[
    str,
    typer.Argument(
        help="Run name (or id). Its store is --db, else runs/RUN/qlass.db.", metavar="RUN"
    ),
]
DeviceOption = Annotated[
    str, typer.Option(help="Where the QNet runs when scoring: auto, cpu or cuda[:n].")
]


def _with_store(
    run: str, db: str | None, work: Callable[[TreeStore, RichProgress], Awaitable[T]]
) -> T:
    """Open the run's store (found as ``qlass run --resume RUN`` finds it) and run ``work``
    with rich progress bars on stderr."""
    from qlass.storage import TreeStore

    config = load_run_config(None, None, db, run)
    progress = RichProgress()

    async def main() -> T:
        async with await TreeStore.open(config.store_url, read_only=True) as store:
            return await work(store, progress)

    with progress.running():
        return asyncio.run(main())


def register(app: typer.Typer) -> None:
    console = Console()

    @app.command("report")
    def report(
        run: RunArgument,
        db: DbOption = None,
        out: Annotated[
            Path | None,
            typer.Option(
                "--out",
                "-o",
                help="Folder for the files (default: the run's folder, runs/RUN).",
                file_okay=False,
            ),
        ] = None,
        stage: Annotated[
            str | None,
            typer.Option(
                help="Episode stage of the results table and the reward-vs-tokens plot, "
                "e.g. eval:dev:<fingerprint> (default: the latest evaluation).",
            ),
        ] = None,
        qnet: Annotated[
            bool,
            typer.Option(
                "--qnet/--no-qnet",
                help="Score the QNet's dev set with the newest checkpoint for the predicted "
                "vs true Q plot (loads the model; skip with --no-qnet).",
            ),
        ] = True,
        max_dev_points: Annotated[
            int, typer.Option(min=1, help="Dev steps scored for the QNet plot at most.")
        ] = 2000,
        device: DeviceOption = "auto",
    ) -> None:
        """Regenerate a run's results table and plots from its tree store.

        Writes results.md, results.csv (one row per strategy: avg reward x100, success,
        steps, tokens, env steps and seconds per episode, Best-of-N's oracle upper bound),
        stages.csv (tokens, env steps and wall time of every stage), episode_stages.csv
        (the same totals over the stored episodes of each episode stage), and the plots
        reward_vs_tokens.png (the paper's Figure 3), qnet_dev_scatter.png (QNet predicted
        vs true Q on its dev tasks) and self_training.png (when self-training rounds are
        stored). Prints the tables and the folder.
        """
        from qlass.report.generate import build_report, describe
        from qlass.report.tables import print_tables

        result = _with_store(
            run,
            db,
            lambda store, progress: build_report(
                store,
                run,
                out_dir=out,
                stage=stage,
                qnet_scatter=qnet,
                device=device,
                max_dev_points=max_dev_points,
                progress=progress,
            ),
        )
        print_tables(console, result.stage, result.rows, result.stages, result.episode_stages)
        if result.scatter is not None:
            rho = result.scatter.spearman
            console.print(
                f"QNet on dev: Spearman {rho:.3f}, MSE {result.scatter.mse:.4f} "
                f"({len(result.scatter.true_q)} steps)"
            )
        for note in result.notes:
            console.print(f"[dim]note: {escape(note)}")
        typer.echo(f"report written to {result.directory}: {describe(result.files)}")

    @app.command("view")
    def view(
        run: RunArgument,
        db: DbOption = None,
        episodes: Annotated[
            bool,
            typer.Option(
                "--episodes",
                help="Write the evaluation episodes' page (episodes.html: every step with "
                "the candidates and their values, filters, two strategies side by side) "
                "instead of the trees.",
            ),
        ] = False,
        task: Annotated[
            str | None,
            typer.Option(
                help="Only this task's tree or episodes (its key, e.g. "
                "textworld_express/coin\\[numLocations=5,includeDoors=0]/train/3)."
            ),
        ] = None,
        out: Annotated[
            Path | None,
            typer.Option(
                "--out",
                "-o",
                help="HTML file to write (default: runs/RUN/trees.html, tree-<task id>.html "
                "with --task, runs/RUN/episodes.html with --episodes).",
                dir_okay=False,
            ),
        ] = None,
        stage: Annotated[
            str | None,
            typer.Option(
                help="With --episodes: the episode stage to show, e.g. "
                "eval:dev:<fingerprint> (default: the latest evaluation)."
            ),
        ] = None,
        max_tasks: Annotated[
            int,
            typer.Option(
                min=1,
                help="With --episodes: tasks in the page at most, each with every "
                "strategy's episode (the page says how many were left out).",
            ),
        ] = 200,
        scores: Annotated[
            bool,
            typer.Option(
                "--scores/--no-scores",
                help="Trees: score every shown node with the newest QNet checkpoint (costs a "
                "model load and a forward pass per batch of nodes).",
            ),
        ] = True,
        label_set: Annotated[
            int | None,
            typer.Option(help="Trees: Q-label set id to show (default: the run config's set)."),
        ] = None,
        max_trees: Annotated[
            int, typer.Option(min=1, help="Trees put in the page at most (the page says so).")
        ] = 100,
        max_nodes: Annotated[
            int,
            typer.Option(
                min=1,
                help="Nodes shown per tree at most; the chosen path and the shallowest nodes "
                "are kept (the page says how many were left out).",
            ),
        ] = 2000,
        open_: Annotated[
            bool, typer.Option("--open", help="Open the page in the default web browser.")
        ] = False,
        device: DeviceOption = "auto",
    ) -> None:
        """Write a static HTML viewer of a run's exploration trees, or with --episodes of
        its evaluation episodes (no server needed).

        Trees: nodes expand and collapse on click and show the action (or the invalid
        output), observation, rewards, Q label (raw and normalised) and QNet score; the
        chosen path, from the root following the highest-Q child, is highlighted and open.
        Episodes: every step of every strategy's episode with the candidates proposed and
        their values, filters by strategy and outcome, and two strategies' episodes of one
        task side by side. Prints the file's path.
        """
        from qlass.report.generate import build_episode_viewer, build_viewer

        if episodes:
            page = _with_store(
                run,
                db,
                lambda store, _: build_episode_viewer(
                    store, run, out_file=out, stage=stage, task_key=task, max_tasks=max_tasks
                ),
            )
            for note in page.notes:
                console.print(f"[dim]note: {escape(note)}")
            console.print(
                f"{page.episodes} episode(s) of {page.tasks} task(s), stage {page.stage}: "
                f"{', '.join(page.strategies) or 'no strategies'}"
            )
            _print_path(page.path, open_)
            return
        result = _with_store(
            run,
            db,
            lambda store, progress: build_viewer(
                store,
                run,
                out_file=out,
                task_key=task,
                scores=scores,
                label_set_id=label_set,
                max_trees=max_trees,
                max_nodes=max_nodes,
                device=device,
                progress=progress,
            ),
        )
        for note in result.notes:
            console.print(f"[dim]note: {escape(note)}")
        console.print(
            f"{result.trees} tree(s), {result.nodes_shown} nodes shown, "
            f"{result.scored_nodes} scored by the QNet"
        )
        _print_path(result.path, open_)

    @app.command("export")
    def export(
        run: RunArgument,
        db: DbOption = None,
        out: Annotated[
            Path | None,
            typer.Option(
                "--out",
                "-o",
                help="Folder for the parquet files (default: runs/RUN/datasets).",
                file_okay=False,
            ),
        ] = None,
        label_set: Annotated[
            int | None,
            typer.Option(help="Q-label set of the triples (default: the run config's set)."),
        ] = None,
        max_triples_per_tree: Annotated[
            int | None,
            typer.Option(
                min=1,
                help="Triples per tree at most (default: the run's "
                "labels.max_triples_per_tree, what QNet training used).",
            ),
        ] = None,
    ) -> None:
        """Write the run's data as Hugging Face datasets (parquet) for training elsewhere.

        expert.parquet (the expert trajectories of behaviour cloning, as chat messages),
        triples.parquet (the QNet's Q-labelled state/candidate triples) and episodes.parquet
        (every stored episode with its steps, candidates and values), plus a README.md
        dataset card. Load one with datasets.load_dataset("parquet", data_files=...).
        Needs pip install 'qlass\\[datasets]'.
        """
        from qlass.report.datasets import export_datasets, load_datasets_module

        load_datasets_module()  # the missing-extra error before the store is opened
        result = _with_store(
            run,
            db,
            lambda store, _: export_datasets(
                store,
                run,
                out_dir=out,
                label_set_id=label_set,
                max_triples_per_tree=max_triples_per_tree,
            ),
        )
        for note in result.notes:
            console.print(f"[dim]note: {escape(note)}")
        for name, path in result.files.items():
            console.print(f"{name}: {result.rows[name]} rows  {escape(str(path))}")
        typer.echo(str(result.directory))


def _print_path(path: Path, open_: bool) -> None:
    """The page's path as the last line of output (scripts read it), then open it."""
    typer.echo(str(path))
    if open_:
        webbrowser.open(path.resolve().as_uri())
