"""SIGTERM / SIGINT to ``qlass explore``: the steps under way are committed, every simulator
is closed, exit code 130 and a resume command that works; a second signal aborts at once."""

from __future__ import annotations

import shlex
import signal
from pathlib import Path

from tests.reliability.campaign import finish_reference, start_reference
from tests.reliability.harness import (
    Proc,
    assert_session_gone,
    child_env,
    kill,
    qlass_command,
    settings,
    snapshot,
    start,
    trace_keys,
    wait_for,
)

NAME = "stopped"
EXTRA = ["env.train_tasks=4", "env.max_steps=6", "explore.max_depth=4"]


def _resume_command(proc: Proc) -> list[str]:
    """The ``qlass explore --resume ...`` command the process printed, as argv."""
    line = next(line for line in proc.err().splitlines() if "--resume" in line)
    text = line.strip().removeprefix("(or:").removesuffix(")").strip()
    argv = shlex.split(text)
    assert argv[:2] == ["qlass", "explore"]
    return qlass_command(*argv[1:])


def _interrupt(proc: Proc, *signals: signal.Signals, nodes: int) -> None:
    assert wait_for(proc, "explore.node", nodes)
    for signum in signals:
        kill(proc, signum)
    assert proc.wait(timeout=60) == 130, proc.err()[-3000:]
    # Every simulator was closed: nothing of the process's session is left.
    assert_session_gone(proc.pid, timeout=5)


def test_sigterm_and_sigint_stop_gracefully_and_the_printed_command_resumes(
    tmp_path: Path,
) -> None:
    reference, ref_db = start_reference(tmp_path, NAME, EXTRA)
    db = tmp_path / "stopped.db"
    args = ["explore", "--db", str(db), *settings(NAME, f"run_dir={tmp_path / 'run'}", *EXTRA)]
    logs = tmp_path / "logs"
    runs: list[Proc] = []

    first = start(qlass_command(*args), logs, "term", child_env())
    _interrupt(first, signal.SIGTERM, nodes=15)
    runs.append(first)
    assert "SIGTERM: finishing the steps under way" in first.err()
    assert "stopped: every committed step is kept. Resume with:" in first.err()
    resume = _resume_command(first)
    assert resume[-4:] == ["--resume", NAME, "--db", f"sqlite+aiosqlite:///{db}"]

    # Ctrl-C stops gracefully too, and a second signal aborts at once. (It is a SIGTERM:
    # two SIGINTs sent together would merge, the kernel keeps one pending per number.)
    second = start(resume, logs, "abort", child_env())
    _interrupt(second, signal.SIGINT, signal.SIGTERM, nodes=10)
    runs.append(second)
    assert "finishing the steps under way" in second.err()  # either signal may come first
    assert "aborted: every committed step is kept" in second.err()

    last = start(resume, logs, "final", child_env())
    assert last.wait(timeout=120) == 0, last.err()[-3000:]
    final = snapshot(str(db), NAME)

    # A graceful stop commits every step that finished: each stepped node is stored.
    assert set(trace_keys(first.events(), "explore.step")) <= final.key_set()
    # A resumed run never re-did a committed node.
    done_before: set[tuple[str, tuple[int, ...]]] = set()
    for proc in [*runs, last]:
        stepped = set(trace_keys(proc.events(), "explore.step"))
        assert not stepped & done_before
        done_before |= {
            (e["task"], tuple(e["path"])) for e in proc.events() if e.get("event") == "explore.node"
        }
    expected = finish_reference(reference, ref_db, NAME)
    assert final.content() == expected.content()
    assert final.labels == expected.labels
    assert set(final.task_status.values()) == {"done"}
