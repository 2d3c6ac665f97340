"""Reports of a run, regenerated from the tree store: the results table (Markdown, CSV,
terminal), the compute table per stage, PNG plots (reward vs completion tokens, QNet on
its dev set, reward per self-training round), a static HTML tree viewer and a static
HTML page of the evaluation episodes (every step, candidate values, strategies side by side).

    async with await TreeStore.open("runs/demo/qlass.db") as store:
        await build_report(store, "demo")
        await build_viewer(store, "demo")
        await build_episode_viewer(store, "demo")

Layering: this package sits on top with the CLI; it reads the store and uses the runtime's
``summarise`` and the QNet scorer, and nothing below imports it.
"""

from qlass.report.episodes import EpisodeView, render_episodes
from qlass.report.generate import (
    EpisodeViewerResult,
    ReportResult,
    ViewerResult,
    build_episode_viewer,
    build_report,
    build_viewer,
)
from qlass.report.plots import reward_vs_tokens_series, self_training_series
from qlass.report.tables import ResultRow, StageRow, result_rows, stage_rows
from qlass.report.viewer import TreeView, chosen_path, render_viewer

__all__ = [
    "EpisodeView",
    "EpisodeViewerResult",
    "ReportResult",
    "ResultRow",
    "StageRow",
    "TreeView",
    "ViewerResult",
    "build_episode_viewer",
    "build_report",
    "build_viewer",
    "chosen_path",
    "render_episodes",
    "render_viewer",
    "result_rows",
    "reward_vs_tokens_series",
    "self_training_series",
    "stage_rows",
]
