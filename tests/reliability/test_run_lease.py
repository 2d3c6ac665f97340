"""A run whose process is killed outright reads as ``interrupted``, not ``running``: the
process renews the run's lease while it works, and a SIGKILL stops the renewals; where the
process ran on this machine, its absence is seen at once."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.reliability.harness import (
    assert_session_gone,
    child_env,
    kill,
    qlass_command,
    settings,
    start,
    wait_for,
)

NAME = "leased"
SMALL = ["env.train_tasks=4", "env.max_steps=6", "explore.max_depth=4"]
EXTRA = [*SMALL, "store.run_lease_s=1"]


def _runs(db: Path, *command: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "qlass", "runs", *command, "--db", str(db)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _runs_show(db: Path) -> str:
    return _runs(db, "show", NAME, "--no-config-json")


def _explore_then_kill(tmp_path: Path, *extra: str) -> Path:
    """Start ``qlass explore`` on a new store, SIGKILL it once it committed nodes; the store."""
    db = tmp_path / "lease.db"
    args = ["explore", "--db", str(db), *settings(NAME, f"run_dir={tmp_path / 'run'}", *extra)]
    proc = start(qlass_command(*args), tmp_path / "logs", "killed", child_env())
    assert wait_for(proc, "explore.node", 3), proc.err()[-4000:]
    kill(proc)
    proc.wait()
    assert_session_gone(proc.pid)
    return db


def test_a_killed_run_reads_as_interrupted_and_a_resume_clears_it(tmp_path: Path) -> None:
    db = _explore_then_kill(tmp_path, *EXTRA)
    # the 1 s lease lapses on its own; poll rather than sleep a guessed time
    deadline, shown = time.monotonic() + 60, ""
    while time.monotonic() < deadline:
        shown = _runs_show(db)
        if "status interrupted" in shown:
            break
        time.sleep(0.5)
    assert "status interrupted" in shown, shown
    assert "rerun the same command to continue" in shown
    assert "│ explore │ interrupted" in shown  # its stage too, not 'running'

    resumed = start(
        qlass_command("explore", "--resume", NAME, "--db", str(db)),
        tmp_path / "logs",
        "resumed",
        child_env(),
    )
    assert resumed.wait(timeout=300) == 0, resumed.err()[-4000:]
    shown = _runs_show(db)
    assert "status interrupted" not in shown and "status running" not in shown, shown


def test_a_run_killed_on_this_machine_reads_as_interrupted_before_its_lease_lapses(
    tmp_path: Path,
) -> None:
    db = _explore_then_kill(tmp_path, *SMALL)
    # The default lease (120 s) is live, but its holder's process is gone from this host.
    shown = _runs_show(db)
    assert "status interrupted" in shown, shown
    assert "│ explore │ interrupted" in shown and "running" not in shown, shown
    assert "interrupted" in _runs(db, "list")
