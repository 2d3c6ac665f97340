"""Stages that fail say why and stop; tasks that cannot be played fail alone.

- a stage whose every task failed (an unreachable ``policy.api_base``; no expert path for
  any gold task) fails the run with the first cause: the URL and the connection error, not
  "status 500", and the stages after it never run;
- a task the simulator cannot generate (TextWorldExpress mapreader with locations that
  cannot be that far apart) is left out of exploration when the gold stage found it, and
  is a failed task with a one-line reason, no Java stack trace, when exploration meets it;
- the run's status says how its last command ended (it stayed "created").

Real TextWorldExpress, real SQLite, real HTTP (a refused connection on a loopback port).
"""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import pytest

from qlass.cli import main
from qlass.errors import StageFailedError
from qlass.runtime.pipeline import Pipeline
from qlass.storage import TreeStore
from qlass.testing import tiny_run_config

# mapreader with 2 locations at most 4 apart: seed 1 of the train fold admits no game
# ("ERROR: No locations could be found that distance apart (4)."), seeds 0 and 2 do.
UNGENERATABLE = (
    "env.games=[mapreader]",
    "env.params=numLocations=2,maxDistanceApart=4,includeDoors=0",
)
UNGENERATABLE_VARIATION = 1
SCRIPTED = ("policy.backend=scripted", "policy.model=look around|move east|take coin")


def _closed_port() -> int:
    with socket.socket() as sock:  # bound, then closed: nobody listens on it
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _stages_and_status(db: Path | str, name: str) -> tuple[dict[str, str], str]:
    async with await TreeStore.open(db, read_only=True) as store:
        run = await store.runs.get(name)
        stages = await store.stages.of_run(run.id)
        return {s.name: s.status for s in stages}, run.status


def test_an_unreachable_policy_fails_the_run_naming_the_url_and_the_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    db = tmp_path / "q.db"
    pairs = [
        "name=down",
        f"run_dir={tmp_path / 'run'}",
        "env.games=[coin]",
        "env.params=numLocations=3,includeDoors=0",
        "env.train_tasks=2",
        "policy.backend=litellm",
        "policy.model=openai/nowhere",
        f"policy.api_base={url}",
        "policy.retries=0",
        "policy.prompt=none",
    ]
    overrides = [arg for pair in pairs for arg in ("--set", pair)]
    argv = ["qlass", "run", "--stages", "explore,label,train_qnet", "--db", str(db), *overrides]
    monkeypatch.setenv("OPENAI_API_KEY", "sk-unused")
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 1, err[-3000:]
    (line,) = [line for line in err.splitlines() if line.startswith("failed: ")]
    assert line.startswith("failed: explore: all 2 task(s) it tried failed")
    assert f"connection to {url} failed: ConnectionRefusedError" in line
    assert "500" not in line and "InternalServerError" not in line
    assert "run the explore stage first" not in err  # train_qnet never ran
    stages, status = asyncio.run(_stages_and_status(db, "down"))
    assert stages == {"explore": "failed"}  # label and train_qnet never started
    assert status == "failed"


async def test_a_gold_stage_without_any_trajectory_fails_the_run(tmp_path: Path) -> None:
    config = tiny_run_config(
        tmp_path / "run",
        "name=nogold",
        "env.games=[mapreader]",
        "env.params=numLocations=3,maxDistanceApart=5,includeDoors=0",  # seed 0: no game
        "env.train_tasks=1",
    )
    with pytest.raises(StageFailedError) as error:
        async with Pipeline(config) as pipeline:
            await pipeline.run(["gold", "bc"])
    message = str(error.value)
    assert message.startswith("gold: no expert trajectory for any of the 1 task(s)")
    assert "cannot generate textworld_express/mapreader" in message
    assert "No locations could be found that distance apart (5)." in message
    assert "\n" not in message
    stages, status = await _stages_and_status(config.store_url, "nogold")
    assert stages == {"gold": "failed"}  # BC never started on an empty file
    assert status == "failed"


async def test_tasks_the_simulator_cannot_generate_fail_alone_or_are_left_out(
    tmp_path: Path,
) -> None:
    settings = ("env.train_tasks=3", "explore.width=1", "explore.max_depth=2", *SCRIPTED)
    # Exploration alone meets the task: it fails with one line, the others finish.
    alone = tiny_run_config(tmp_path / "alone", "name=alone", *settings, base=UNGENERATABLE)
    async with Pipeline(alone) as pipeline:
        await pipeline.run(["explore"])
        tasks = await pipeline.store.tasks.of_run(pipeline.run_record.id)
    by_variation = {t.spec.variation: t for t in tasks}
    assert {v: t.status for v, t in by_variation.items()} == {0: "done", 1: "failed", 2: "done"}
    error = by_variation[UNGENERATABLE_VARIATION].error or ""
    assert error.startswith("TextWorldExpress cannot generate textworld_express/mapreader")
    assert error.endswith("No locations could be found that distance apart (4).")
    assert "\n" not in error and "java" not in error.lower()
    stages, status = await _stages_and_status(alone.store_url, "alone")
    assert stages == {"explore": "running"} and status == "incomplete"

    # After the gold stage found it, exploration leaves it out and finishes.
    full = tiny_run_config(tmp_path / "full", "name=full", *settings, base=UNGENERATABLE)
    async with Pipeline(full) as pipeline:
        (gold,) = await pipeline.stage("gold")
        (explore,) = await pipeline.stage("explore")
        tasks = await pipeline.store.tasks.of_run(pipeline.run_record.id)
    (cannot,) = gold.metrics["ungeneratable"]
    assert cannot.endswith(f"/train/{UNGENERATABLE_VARIATION}")
    assert gold.metrics["trajectories"] == 2
    assert sorted(t.spec.variation for t in tasks) == [0, 2]
    assert explore.metrics["trees"] == 2 and explore.metrics["unfinished_tasks"] == 0
    stages, status = await _stages_and_status(full.store_url, "full")
    assert stages == {"gold": "done", "explore": "done"}
    assert status == "incomplete"  # label, train_qnet and eval have not run
