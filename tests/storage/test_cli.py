"""``qlass db`` and ``qlass runs`` on a real store file."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from typer.testing import CliRunner

from qlass.cli import app
from qlass.storage import NewNode, TreeStore, head_revision
from qlass.types import TaskSpec


async def _populate(path: Path) -> None:
    async with await TreeStore.open(path) as store:
        run = await store.runs.create(
            "coin-demo",
            config={"labels": {"gamma": 0.9}, "seed": 5},
            config_fingerprint="fp-0123",
            code_version="0.1.0+gabc",
            seed=5,
        )
        specs = [TaskSpec("textworld_express", "coin", i, "train") for i in range(3)]
        tasks = await store.tasks.add_many(run.id, specs)
        await store.tasks.set_status(tasks[0].id, "done")
        label_set = await store.labels.create_set(run.id, gamma=0.9)
        root = await store.trees.add_root(tasks[0].id, "hall")
        await store.trees.add_children(
            root.id, [NewNode("won", action="take coin", final_reward=1.0), NewNode("x")]
        )
        await store.stages.start(run.id, "explore", "fp-explore")
        await store.stages.finish(run.id, "explore", metrics={"env_steps": 2})
        await store.checkpoints.add(run.id, "/ckpt/qnet", label_set_id=label_set.id)
        await store.runs.create("second", config={})


def test_db_upgrade_creates_and_is_idempotent(cli: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "new" / "store.db"
    first = cli.invoke(app, ["db", "upgrade", "--db", str(path)])
    assert first.exit_code == 0, first.output
    head = head_revision()
    assert "upgraded" in first.output and head in first.output
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(head,)]
    conn.close()
    second = cli.invoke(app, ["db", "upgrade", "--db", str(path)])
    assert "already at the newest schema" in second.output
    status = cli.invoke(app, ["db", "status", "--db", str(path)])
    assert f"revision {head}, head {head}" in status.output and "up to date" in status.output


def test_runs_list_and_show(cli: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    asyncio.run(_populate(path))
    listed = cli.invoke(app, ["runs", "list", "--db", str(path)], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    assert "coin-demo" in listed.output and "second" in listed.output
    assert "0.1.0+gabc" in listed.output
    shown = cli.invoke(
        app, ["runs", "show", "coin-demo", "--db", str(path)], env={"COLUMNS": "200"}
    )
    assert shown.exit_code == 0, shown.output
    out = shown.output
    assert "run 1: coin-demo" in out and "0.1.0+gabc" in out and "fp-0123" in out
    assert "1 done, 2 pending" in out
    assert "tree nodes: 3 (1 finished leaves)" in out
    assert "label sets" in out and "0.9" in out and "bellman" in out
    assert "explore" in out and "env_steps" in out
    assert "/ckpt/qnet" in out
    assert '"gamma": 0.9' in out  # the config
    by_id = cli.invoke(app, ["runs", "show", "2", "--db", str(path), "--no-config-json"])
    assert "run 2: second" in by_id.output


def test_read_commands_do_not_create_a_store(cli: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    result = cli.invoke(app, ["runs", "list", "--db", str(path)])
    assert result.exit_code != 0
    assert "no tree store" in str(result.exception)
    assert not path.exists()


def test_unknown_run_names_the_known_ones(cli: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    asyncio.run(_populate(path))
    result = cli.invoke(app, ["runs", "show", "nope", "--db", str(path)])
    assert result.exit_code != 0
    assert "coin-demo" in str(result.exception) and "second" in str(result.exception)


def test_help_texts_explain_the_commands(cli: CliRunner) -> None:
    for args, phrase in [
        (["db", "--help"], "migrate"),
        (["db", "upgrade", "--help"], "newest schema"),
        (["runs", "--help"], "List the runs"),
        (["runs", "show", "--help"], "label"),
    ]:
        result = cli.invoke(app, args, env={"COLUMNS": "200"})
        assert result.exit_code == 0 and phrase in result.output, result.output
