"""Read-only commands leave a store's files as they were, and a store this user cannot
write is refused before any work, with a line that says why (file or folder).

The read-only cases run the real CLI in a subprocess without the capabilities that let
root ignore file permissions (``setpriv``), so they test what a normal user meets.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from qlass.cli import main
from qlass.errors import StoreError
from qlass.storage import TreeStore

ENV = {**os.environ, "COLUMNS": "200"}


def qlass(*args: str, unprivileged: bool = False) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "qlass", *args]
    if unprivileged and os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv (util-linux) is missing")
        command = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, env=ENV)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def siblings(path: Path) -> set[str]:
    return {p.name for p in path.parent.iterdir()}


def run_cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["qlass", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    code = exit_info.value.code
    return code if isinstance(code, int) else 1


def test_read_only_commands_do_not_touch_a_foreign_or_empty_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as connection:  # someone else's database, rollback journal
        connection.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        connection.execute("INSERT INTO notes (text) VALUES ('keep me')")
    empty = tmp_path / "empty.db"
    empty.touch()
    before = {foreign: digest(foreign), empty: digest(empty)}
    files = siblings(foreign)
    for db in (foreign, empty):
        for args in (
            ["runs", "list", "--db", str(db)],
            ["runs", "show", "r", "--db", str(db)],
            ["db", "status", "--db", str(db)],
            ["explore", "--resume", "r", "--db", str(db)],
            ["report", "r", "--db", str(db), "--no-qnet"],
        ):
            run_cli(monkeypatch, *args)
            assert "Traceback" not in capsys.readouterr().err, args
            assert digest(db) == before[db], args  # not switched to WAL, nothing written
            assert siblings(db) == files, args  # no -wal, -shm or journal left behind
    assert empty.stat().st_size == 0
    with sqlite3.connect(foreign) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert run_cli(monkeypatch, "runs", "list", "--db", str(foreign)) == 1
    assert "not a qlass tree store" in capsys.readouterr().err
    run_cli(monkeypatch, "runs", "list", "--db", str(empty))
    assert "qlass db upgrade" in capsys.readouterr().err


async def _store_with_run(path: Path) -> None:
    async with await TreeStore.open(path) as store:
        await store.runs.create("r", config={}, seed=0)


async def test_read_only_open_refuses_writes(tmp_path: Path) -> None:
    db = tmp_path / "qlass.db"
    await _store_with_run(db)
    before = await asyncio.to_thread(digest, db)
    async with await TreeStore.open(db, read_only=True) as store:
        assert [run.name for run in await store.runs.all()] == ["r"]
        with pytest.raises(StoreError, match="readonly"):
            await store.runs.create("s", config={}, seed=0)
    assert await asyncio.to_thread(digest, db) == before


def test_a_read_only_store_file_is_refused_before_any_work(tmp_path: Path) -> None:
    db = tmp_path / "qlass.db"
    asyncio.run(_store_with_run(db))
    db.chmod(0o444)
    before = digest(db)
    done = qlass(
        "explore",
        "--db",
        str(db),
        "--set",
        "policy.backend=scripted",
        "--set",
        f"run_dir={tmp_path / 'run'}",
        unprivileged=True,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"failed: the tree store {db} is read-only for this user" in done.stderr
    assert "Traceback" not in done.stderr
    assert digest(db) == before
    shown = qlass("runs", "show", "r", "--db", str(db), unprivileged=True)
    assert shown.returncode == 0 and "run 1: r" in shown.stdout


def test_a_read_only_folder_is_explained_and_can_still_be_read(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    db = folder / "qlass.db"
    asyncio.run(_store_with_run(db))  # WAL mode, closed cleanly: no -wal file left
    folder.chmod(0o555)
    try:
        shown = qlass("runs", "show", "r", "--db", str(db), unprivileged=True)
        assert shown.returncode == 0, shown.stderr[-2000:]
        assert "run 1: r" in shown.stdout
        listed = qlass("runs", "list", "--db", str(db), unprivileged=True)
        assert listed.returncode == 0 and "r" in listed.stdout
        done = qlass(
            "explore",
            "--db",
            str(db),
            "--set",
            "policy.backend=scripted",
            "--set",
            f"run_dir={tmp_path / 'run'}",
            unprivileged=True,
        )
        assert done.returncode == 1
        assert f"failed: the folder {folder} of the tree store qlass.db is read-only" in done.stderr
        assert "SQLite writes its journal files" in done.stderr
        assert siblings(db) == {"qlass.db"}
    finally:
        folder.chmod(0o755)
