"""``qlass report`` and ``qlass view`` on a real store file."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qlass.cli import app
from qlass.errors import UnknownNameError
from qlass.storage import TreeStore

from .demo_run import NEW_STAGE, STRATEGIES, DemoRun, populate, task_key


def _store(db: Path, run_dir: Path) -> DemoRun:
    async def build() -> DemoRun:
        async with await TreeStore.open(db) as store:
            return await populate(store, run_dir)

    return asyncio.run(build())


def test_report_writes_tables_and_plots_and_prints_the_folder(
    cli: CliRunner, tmp_path: Path
) -> None:
    db, out = tmp_path / "store.db", tmp_path / "out"
    _store(db, tmp_path / "runs" / "demo")
    result = cli.invoke(
        app,
        ["report", "demo", "--db", str(db), "--out", str(out), "--no-qnet"],
        env={"COLUMNS": "250"},
    )
    assert result.exit_code == 0, result.output
    assert f"report written to {out}" in result.output
    for strategy in STRATEGIES:
        assert strategy in result.output
    assert "compute per stage" in result.output
    names = {p.name for p in out.iterdir()}
    assert {
        "results.md",
        "results.csv",
        "stages.csv",
        "reward_vs_tokens.png",
        "self_training.png",
    } <= names
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {row["stage"] for row in rows} == {NEW_STAGE}


def test_report_defaults_to_the_run_folder(cli: CliRunner, tmp_path: Path) -> None:
    db, run_dir = tmp_path / "store.db", tmp_path / "runs" / "demo"
    _store(db, run_dir)
    result = cli.invoke(app, ["report", "demo", "--db", str(db), "--no-qnet"])
    assert result.exit_code == 0, result.output
    assert (run_dir / "results.md").exists() and (run_dir / "reward_vs_tokens.png").exists()


def test_view_writes_one_tree_and_prints_its_path(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, run_dir = tmp_path / "store.db", tmp_path / "runs" / "demo"
    demo = _store(db, run_dir)
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", opened.append)
    key = task_key(2)
    result = cli.invoke(
        app, ["view", "demo", "--db", str(db), "--task", key, "--no-scores", "--open"]
    )
    assert result.exit_code == 0, result.output
    path = run_dir / f"tree-{demo.task_ids[2]}.html"
    assert result.output.strip().splitlines()[-1] == str(path)
    assert opened == [path.resolve().as_uri()]
    page = path.read_text()
    assert key in page and task_key(0) not in page


def test_unknown_run_and_missing_store_are_clear_errors(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "store.db"
    _store(db, tmp_path / "runs" / "demo")
    result = cli.invoke(app, ["report", "nope", "--db", str(db)])
    assert isinstance(result.exception, UnknownNameError)
    assert "no run 'nope'" in str(result.exception) and "demo" in str(result.exception)
    monkeypatch.chdir(tmp_path)  # no runs/demo/qlass.db here
    result = cli.invoke(app, ["view", "demo"])
    assert isinstance(result.exception, UnknownNameError)
    assert "no run 'demo'" in str(result.exception) and "--db" in str(result.exception)


def test_view_episodes_writes_the_episode_page(cli: CliRunner, tmp_path: Path) -> None:
    db, run_dir = tmp_path / "store.db", tmp_path / "runs" / "demo"
    _store(db, run_dir)
    result = cli.invoke(app, ["view", "demo", "--db", str(db), "--episodes"])
    assert result.exit_code == 0, result.output
    path = run_dir / "episodes.html"
    assert result.output.strip().splitlines()[-1] == str(path)
    assert f"10 episode(s) of 2 task(s), stage {NEW_STAGE}" in result.output
    assert '<template id="episode-' in path.read_text()
    result = cli.invoke(
        app, ["view", "demo", "--db", str(db), "--episodes", "--stage", "eval:nope"]
    )
    assert isinstance(result.exception, UnknownNameError)
