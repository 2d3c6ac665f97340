"""A terminal's Ctrl-C (SIGINT to the whole foreground process group) reaches qlass alone:
the simulators' JVMs run in process groups of their own, so they keep running until qlass
closes them after its graceful stop, and no py4j traceback reaches the user. Whatever
ends qlass (Ctrl-C, SIGTERM, SIGKILL), no JVM outlives it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.reliability.harness import (
    Proc,
    assert_session_gone,
    child_env,
    kill,
    qlass_command,
    read_events,
    session_pids,
    settings,
    start,
    wait_for,
)

EXTRA = ["env.train_tasks=40", "env.max_steps=10", "explore.max_depth=6", "explore.concurrency=3"]


def _explore(tmp_path: Path, tag: str) -> Proc:
    db = tmp_path / f"{tag}.db"
    args = ["explore", "--db", str(db), *settings(tag, f"run_dir={tmp_path / tag}", *EXTRA)]
    proc = start(qlass_command(*args), tmp_path / "logs", tag, child_env())
    assert wait_for(proc, "explore.node", 10), proc.err()[-3000:]
    assert len(session_pids(proc.pid)) > 1  # its JVMs are running
    return proc


def test_ctrl_c_stops_qlass_which_then_closes_its_running_simulators(tmp_path: Path) -> None:
    proc = _explore(tmp_path, "ctrl-c")
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does: the whole process group
    assert proc.wait(timeout=60) == 130, proc.err()[-3000:]
    assert_session_gone(proc.pid, timeout=5)
    err = proc.err()
    assert "SIGINT: finishing the steps under way" in err
    assert "Traceback" not in err and "py4j" not in err, err[-3000:]
    events = read_events(proc.stderr)
    assert not [e for e in events if e.get("event") == "env_crashed"]
    closed = [e for e in events if e.get("event") == "env_closed"]
    assert closed, "no simulator was closed by qlass"
    # Each JVM was still running when qlass closed it: the Ctrl-C did not reach it.
    assert all(e["running_until_close"] for e in closed), closed


def test_no_simulator_outlives_a_killed_qlass(tmp_path: Path) -> None:
    proc = _explore(tmp_path, "killed")
    kill(proc, signal.SIGKILL)  # no clean-up at all: the JVMs exit on their broken pipe
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert_session_gone(proc.pid)
