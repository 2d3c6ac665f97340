"""``qlass demo``: the whole method on the embedded default, then its report.

CPU only, no network, no downloaded weights: expert trajectories from the simulator's gold
paths, a small policy trained from scratch (BC), exploration trees in SQLite, Q labels, a
small QNet, and greedy / Best-of-N / QLASS evaluated on held-out tasks, followed by the
results table, the plots, the tree viewer and the episode viewer in the run folder.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from qlass.cli._common import SetOption
from qlass.cli.run_cmd import print_reports, print_stages, run_pipeline
from qlass.cli.study_cmd import print_summary
from qlass.config import RunConfig, load_config
from qlass.runtime.evaluate import StrategyReport

if TYPE_CHECKING:
    from qlass.report.generate import ReportResult
    from qlass.report.study import StudySummary
    from qlass.runtime.pipeline import Pipeline, StageResult

__all__ = ["PRESETS", "preset_config", "register"]

PRESETS = {
    "textworld_express": ("demo.toml", "demo-quick.toml"),
    "scienceworld": ("demo-scienceworld.toml", "demo-scienceworld.toml"),
}


def preset_config(env: str, *, quick: bool, overrides: list[str] | None = None) -> RunConfig:
    """The packaged demo config for ``env`` (``--quick``: the 2-minute one), then the
    ``QLASS_*`` environment variables and the overrides."""
    if env not in PRESETS:
        raise typer.BadParameter(f"choose one of {', '.join(PRESETS)}", param_hint="--env")
    name = PRESETS[env][1 if quick else 0]
    with resources.as_file(resources.files("qlass") / "configs" / name) as path:
        return load_config(Path(path), overrides or [], environ=os.environ)


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        quick: Annotated[
            bool, typer.Option("--quick", help="A 2-minute run that shows every stage.")
        ] = False,
        env: Annotated[
            str,
            typer.Option(help="textworld_express (default, fast) or scienceworld (a slice)."),
        ] = "textworld_express",
        set_: SetOption = None,
        viewer_scores: Annotated[
            bool, typer.Option(help="Score the viewer's nodes with the QNet.")
        ] = True,
    ) -> None:
        """Run the whole QLASS method on the embedded default and write its report.

        Rerunning continues where an interrupted demo stopped. The run folder (printed at
        the end) holds the SQLite store, the models, results.md/csv, the plots and the
        tree and episode viewers (trees.html, episodes.html).
        """
        config = preset_config(env, quick=quick, overrides=set_)

        async def work(
            pipeline: Pipeline,
        ) -> tuple[list[StageResult], ReportResult | None, list[Path], StudySummary | None]:
            from qlass.report.generate import build_episode_viewer, build_report, build_viewer
            from qlass.report.study import summarise_episodes, write_study_report
            from qlass.runtime.stages.evaluation import eval_stage_label

            results = await pipeline.run()
            if pipeline.stop.requested:
                return results, None, [], None
            store, run = pipeline.store, pipeline.run_record
            report = await build_report(store, run.name, progress=pipeline.progress)
            viewer = await build_viewer(
                store, run.name, scores=viewer_scores, max_trees=20, progress=pipeline.progress
            )
            episodes = await build_episode_viewer(store, run.name)
            evaluated = await store.episodes.of_run(run.id, stage=eval_stage_label(config))
            summary = summarise_episodes(f"{run.name} (seed {run.seed})", run.seed, evaluated)
            files = await asyncio.to_thread(write_study_report, summary, config.directory)
            report = replace(report, files=(*report.files, *files))
            return results, report, [viewer.path, episodes.path], summary

        results, report, pages, summary = run_pipeline(config, work)
        print_stages(results)
        for result in results:
            if result.name == "eval" and "reports" in result.metrics:
                print_reports([StrategyReport(**r) for r in result.metrics["reports"]])
        if summary is not None:
            print_summary(summary)
        console = Console()
        if report is not None:
            for note in report.notes:
                console.print(f"[dim]{note}")
            console.print(f"\nrun folder: [bold]{report.directory}[/bold]")
            for path in report.files:
                console.print(f"  {path}")
        for page in pages:
            console.print(f"  {page}  (open in a browser)")
