"""The results and compute tables equal what the store holds (Markdown, CSV, terminal)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import statistics
from pathlib import Path

import pytest
from rich.console import Console

from qlass.errors import UnknownNameError
from qlass.report import build_report
from qlass.report.tables import print_tables

from .conftest import Stored
from .demo_run import NEW_STAGE, OLD_STAGE, STRATEGIES, EpisodeSpec


def _expected(episodes: tuple[EpisodeSpec, ...], stage: str) -> dict[str, dict[str, float]]:
    """Per strategy, the table's numbers computed directly from the stored episodes."""
    out: dict[str, dict[str, float]] = {}
    for strategy in dict.fromkeys(e.strategy for e in episodes if e.stage == stage):
        items = [e for e in episodes if e.stage == stage and e.strategy == strategy]
        n = len(items)
        out[strategy] = {
            "episodes": n,
            "avg_reward_x100": 100 * statistics.fmean(e.score for e in items),
            "success_rate_pct": 100 * statistics.fmean(float(e.success) for e in items),
            "avg_steps": statistics.fmean(e.steps for e in items),
            "completion_tokens_per_episode": sum(e.completion_tokens for e in items) / n,
            "prompt_tokens_per_episode": sum(e.prompt_tokens for e in items) / n,
            "env_steps_per_episode": sum(e.env_steps for e in items) / n,
            "seconds_per_episode": statistics.fmean(e.wall_time_s for e in items),
        }
        if items[0].oracle is not None:
            out[strategy]["oracle_best_reward_x100"] = 100 * statistics.fmean(
                e.oracle for e in items if e.oracle is not None
            )
    return out


async def test_results_table_equals_stored_episodes(stored: Stored, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = await build_report(stored.store, "demo", out_dir=out, qnet_scatter=False)
    assert result.stage == NEW_STAGE  # the newest evaluation stage by default
    assert [row.report.strategy for row in result.rows] == list(STRATEGIES)
    expected = _expected(stored.demo.episodes, NEW_STAGE)

    text = await asyncio.to_thread((out / "results.csv").read_text)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["strategy"] for r in rows] == list(STRATEGIES)
    for row in rows:
        want = expected[row["strategy"]]
        assert row["stage"] == NEW_STAGE and row["split"] == "dev"
        for key, value in want.items():
            assert float(row[key]) == pytest.approx(value, rel=1e-12), (row["strategy"], key)
        if "oracle_best_reward_x100" not in want:
            assert row["oracle_best_reward_x100"] == ""  # no bound for non-Best-of-N
    assert {r["strategy"]: r["budget"] for r in rows}["best_of_n:4"] == "4"
    assert {r["strategy"]: r["family"] for r in rows}["qlass:2"] == "qlass"

    markdown = await asyncio.to_thread((out / "results.md").read_text)
    greedy = expected["greedy"]
    line = next(ln for ln in markdown.splitlines() if ln.startswith("| greedy |"))
    assert f"| {greedy['avg_reward_x100']:.1f} |" in line
    assert f"| {greedy['success_rate_pct']:.1f} |" in line
    assert "upper bound" in markdown and OLD_STAGE in markdown  # the other stage is named
    assert "![reward_vs_tokens.png](reward_vs_tokens.png)" in markdown


async def test_an_older_stage_can_be_chosen_and_unknown_ones_are_refused(
    stored: Stored, tmp_path: Path
) -> None:
    result = await build_report(
        stored.store, "demo", out_dir=tmp_path, stage=OLD_STAGE, qnet_scatter=False
    )
    expected = _expected(stored.demo.episodes, OLD_STAGE)
    assert {r.report.strategy for r in result.rows} == {"greedy", "qlass:2"}
    for row in result.rows:
        assert 100 * row.report.avg_reward == pytest.approx(
            expected[row.report.strategy]["avg_reward_x100"]
        )
    with pytest.raises(UnknownNameError, match="eval:dev:nope"):
        await build_report(
            stored.store, "demo", out_dir=tmp_path, stage="eval:dev:nope", qnet_scatter=False
        )
    with pytest.raises(UnknownNameError, match="no run"):
        await build_report(stored.store, "missing", out_dir=tmp_path, qnet_scatter=False)


async def test_stage_table_accounts_for_every_stage(stored: Stored) -> None:
    result = await build_report(stored.store, "demo", qnet_scatter=False)
    assert result.directory == stored.run_dir  # the stored config's run folder by default
    raw = {s.name: s.metrics for s in await stored.store.stages.of_run(stored.demo.run_id)}
    by_name = {row.name: row for row in result.stages}
    assert list(by_name) == list(raw)
    explore = by_name["explore"]
    assert explore.prompt_tokens == raw["explore"]["prompt_tokens"]
    assert explore.completion_tokens == raw["explore"]["completion_tokens"]
    assert explore.env_steps == raw["explore"]["env_steps"]
    assert explore.wall_time_s == raw["explore"]["wall_time_s"]
    assert explore.figures["trees"] == 3
    evaluation = by_name["eval"]  # an eval stage sums its strategies' reports
    assert evaluation.prompt_tokens == sum(r["prompt_tokens"] for r in raw["eval"]["reports"])
    assert evaluation.env_steps == sum(r["env_steps"] for r in raw["eval"]["reports"])
    assert by_name["train_qnet"].figures["dev_mse"] == 0.05

    text = await asyncio.to_thread((stored.run_dir / "stages.csv").read_text)
    rows = {r["stage"]: r for r in csv.DictReader(io.StringIO(text))}
    assert int(rows["explore"]["prompt_tokens"]) == raw["explore"]["prompt_tokens"]
    assert float(rows["eval"]["wall_time_s"]) == 9.0
    assert json.loads(rows["train_qnet"]["figures"])["dev_spearman"] == 0.7
    assert rows["train_qnet"]["prompt_tokens"] == ""  # unknown, not zero

    # Episode stages: totals over the stored episodes, per stage.
    by_stage = {row.stage: row for row in result.episode_stages}
    assert list(by_stage) == [OLD_STAGE, NEW_STAGE]
    for name, row in by_stage.items():
        items = [e for e in stored.demo.episodes if e.stage == name]
        assert row.episodes == len(items)
        assert row.prompt_tokens == sum(e.prompt_tokens for e in items)
        assert row.completion_tokens == sum(e.completion_tokens for e in items)
        assert row.env_steps == sum(e.env_steps for e in items)
        assert row.episode_seconds == pytest.approx(sum(e.wall_time_s for e in items))
    assert by_stage[NEW_STAGE].strategies == STRATEGIES
    text = await asyncio.to_thread((stored.run_dir / "episode_stages.csv").read_text)
    csv_rows = {r["stage"]: r for r in csv.DictReader(io.StringIO(text))}
    assert int(csv_rows[OLD_STAGE]["completion_tokens"]) == by_stage[OLD_STAGE].completion_tokens

    console = Console(record=True, width=250)
    print_tables(console, result.stage, result.rows, result.stages, result.episode_stages)
    shown = console.export_text()
    assert "best_of_n:4" in shown and "compute per stage" in shown
    assert "compute per episode stage" in shown and OLD_STAGE in shown
    total_env = sum(r.env_steps or 0 for r in result.stages)
    assert f"{total_env:,}" in next(ln for ln in shown.splitlines() if "total" in ln)


async def test_a_run_without_episodes_still_gets_its_stage_table(
    stored: Stored, tmp_path: Path
) -> None:
    await stored.store.runs.create("empty", config={"name": "empty", "run_dir": str(tmp_path)})
    result = await build_report(stored.store, "empty", qnet_scatter=False)
    assert result.stage is None and result.rows == ()
    assert {p.name for p in result.files} == {
        "results.md",
        "results.csv",
        "stages.csv",
        "episode_stages.csv",
    }
    markdown = await asyncio.to_thread((tmp_path / "results.md").read_text)
    assert "No evaluation episodes" in markdown
