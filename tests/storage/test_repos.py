"""Runs, tasks, stages, episodes and checkpoints: what the runtime reads and writes."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC

import pytest

from qlass.errors import ConfigError, UnknownNameError
from qlass.storage import NewNode, TreeStore, trajectory_from_json
from qlass.types import (
    Candidate,
    ScoredCandidate,
    Step,
    StepResult,
    TaskSpec,
    Trajectory,
    Usage,
)

from .conftest import new_run


async def test_runs_create_get_and_list(store: TreeStore) -> None:
    config = {"name": "demo", "labels": {"gamma": 0.9}, "seed": 3}
    run = await store.runs.create(
        "demo", config=config, config_fingerprint="abc123", code_version="0.1.0+gdead", seed=3
    )
    assert run.created_at.tzinfo == UTC
    assert await store.runs.get("demo") == run
    assert await store.runs.get(run.id) == run
    assert await store.runs.get(str(run.id)) == run
    assert (await store.runs.get("demo")).config == config
    assert await store.runs.find("nope") is None
    with pytest.raises(UnknownNameError, match="demo"):  # the message lists known runs
        await store.runs.get("nope")
    with pytest.raises(ConfigError, match="exists already"):
        await store.runs.create("demo", config={})
    other = await store.runs.create("other", config={})
    assert [r.name for r in await store.runs.all()] == ["demo", "other"]
    await store.runs.set_status(other.id, "done")
    assert (await store.runs.get("other")).status == "done"


async def test_a_running_run_whose_lease_lapsed_reads_as_interrupted(store: TreeStore) -> None:
    await check_run_lease(store)


async def test_a_run_stays_running_until_its_last_holder_leaves(store: TreeStore) -> None:
    await check_run_holders(store)


async def check_run_lease(store: TreeStore) -> None:
    """Run status through a lease's life (also run on PostgreSQL's server clock)."""
    run = await store.runs.create("leased", config={})
    await store.runs.enter(run.id, "host:1", lease_s=3600)
    assert (await store.runs.get(run.id)).status == "running"
    await store.runs.enter(run.id, "host:1", lease_s=0.001)  # entering again: a new lease
    await asyncio.sleep(0.01)  # at least this long after the lease ran out, however busy
    assert (await store.runs.get(run.id)).status == "interrupted"
    assert [r.status for r in await store.runs.all()] == ["interrupted"]
    assert (await store.runs.find("leased")).status == "interrupted"  # type: ignore[union-attr]
    await store.runs.renew_lease(run.id, "host:1", lease_s=3600)  # a live process's heartbeat
    assert (await store.runs.get(run.id)).status == "running"
    assert await store.runs.leave(run.id, "host:1", "stopped") == "stopped"  # drops the lease
    assert (await store.runs.get(run.id)).status == "stopped"
    await store.runs.renew_lease(run.id, "host:1")  # a holder that left renews nothing
    assert (await store.runs.get(run.id)).status == "stopped"
    with pytest.raises(UnknownNameError):
        await store.runs.enter(99_999, "host:1")


async def check_run_holders(store: TreeStore) -> None:
    """Several processes on one run (explore workers, Ray actors, the driver): one that
    finishes does not end the run while another works; a dead one does not keep it running."""
    run = await store.runs.create("shared", config={})
    await store.runs.enter(run.id, "driver", lease_s=3600)
    await store.runs.enter(run.id, "worker", lease_s=3600)
    assert await store.runs.leave(run.id, "worker", "incomplete") == "running"
    assert (await store.runs.get(run.id)).status == "running"
    assert await store.runs.leave(run.id, "driver", "done") == "done"  # the last one out
    assert (await store.runs.get(run.id)).status == "done"

    await store.runs.enter(run.id, "driver", lease_s=3600)
    await store.runs.enter(run.id, "killed", lease_s=0.001)  # kill -9: never renews again
    await asyncio.sleep(0.01)
    assert await store.runs.live_holders(run.id) == ["driver"]
    assert await store.runs.leave(run.id, "driver", "failed") == "failed"
    assert (await store.runs.get(run.id)).status == "failed"
    # A holder that was only slow (its lease lapsed, the others finished) is live again.
    await store.runs.renew_lease(run.id, "killed", lease_s=3600)
    assert (await store.runs.get(run.id)).status == "running"
    assert await store.runs.leave(run.id, "killed", "done") == "done"

    # A Ray driver forgets its actors once their calls returned: a killed actor's lease
    # then no longer keeps the run running. Only names under the prefix go ("%" is literal).
    await store.runs.enter(run.id, "d1", lease_s=3600)
    await store.runs.enter(run.id, "d1/ray0@h:1", lease_s=3600)  # killed, never leaves
    await store.runs.enter(run.id, "d1%other", lease_s=3600)
    assert await store.runs.release_holders(run.id, "d1/") == 1
    assert await store.runs.release_holders(run.id, "d%") == 0
    assert await store.runs.leave(run.id, "d1", "done") == "running"  # d1%other still works
    assert await store.runs.leave(run.id, "d1%other", "done") == "done"


async def test_tasks_are_idempotent_and_track_status(store: TreeStore) -> None:
    run, tasks = await new_run(store, "tasks", tasks=3)
    again = await store.tasks.add(run.id, tasks[1].spec)
    assert again == tasks[1]
    assert again.spec == TaskSpec("textworld_express", "coin", 1, "train")
    assert await store.tasks.by_key(run.id, tasks[2].key) == tasks[2]
    await store.tasks.set_status(tasks[0].id, "running")
    await store.tasks.set_status(tasks[0].id, "done")
    await store.tasks.set_status(tasks[1].id, "running")
    await store.tasks.set_status(tasks[1].id, "failed", error="simulator died")
    await store.tasks.set_status(tasks[1].id, "running")
    done = await store.tasks.get(tasks[0].id)
    assert done.status == "done" and done.attempts == 1 and done.finished_at is not None
    retried = await store.tasks.get(tasks[1].id)
    assert retried.attempts == 2 and retried.finished_at is None
    assert [t.id for t in await store.tasks.unfinished(run.id)] == [tasks[1].id, tasks[2].id]
    assert [t.id for t in await store.tasks.of_run(run.id, statuses=["done"])] == [tasks[0].id]
    with pytest.raises(ConfigError):
        await store.tasks.set_status(tasks[0].id, "paused")  # type: ignore[arg-type]
    with pytest.raises(UnknownNameError):
        await store.tasks.set_status(99_999, "done")


async def test_stages_skip_only_when_done_with_the_same_fingerprint(store: TreeStore) -> None:
    run, _ = await new_run(store, "stages")
    assert await store.stages.get(run.id, "explore") is None
    started = await store.stages.start(run.id, "explore", "fp1")
    assert started.status == "running" and started.started_at is not None
    assert not await store.stages.is_done(run.id, "explore", "fp1")
    finished = await store.stages.finish(run.id, "explore", metrics={"env_steps": 120})
    assert finished.status == "done" and finished.metrics == {"env_steps": 120}
    assert finished.finished_at is not None and finished.finished_at >= started.started_at  # type: ignore[operator]
    assert await store.stages.is_done(run.id, "explore", "fp1")
    assert not await store.stages.is_done(run.id, "explore", "fp2")
    # an interrupted stage is recorded as still running and keeps its start time on resume
    interrupted = await store.stages.start(run.id, "train_qnet", "fp5")
    stopped = await store.stages.put(
        run.id, "train_qnet", status="running", metrics={"stopped": True}
    )
    assert stopped.started_at == interrupted.started_at and stopped.metrics == {"stopped": True}
    resumed = await store.stages.start(run.id, "train_qnet", "fp5")
    assert resumed.started_at == interrupted.started_at
    restarted = await store.stages.start(run.id, "explore", "fp2")  # finished: starts anew
    assert restarted.metrics == {} and restarted.finished_at is None
    assert restarted.started_at > started.started_at  # type: ignore[operator]
    await store.stages.finish(run.id, "explore", metrics={"env_steps": 7})
    await store.stages.start(run.id, "eval:greedy", "fp9")
    await store.stages.finish(run.id, "eval:greedy", failed=True, metrics={"error": "boom"})
    assert [(s.name, s.status) for s in await store.stages.of_run(run.id)] == [
        ("train_qnet", "running"),
        ("explore", "done"),
        ("eval:greedy", "failed"),
    ]
    with pytest.raises(UnknownNameError):
        await store.stages.finish(run.id, "never-started")


def _trajectory(key: int, score: float) -> Trajectory:
    candidate = Candidate(
        "Thought: north\nAction: move north", "move north", "north", Usage(100, 8, 0.001)
    )
    other = Candidate("Action: look", "look", None, Usage(100, 4))
    step = Step(
        candidate,
        StepResult("You see a coin.", 0.0, False, 0.5, False, ("take coin",), {"x": object()}),
        considered=(ScoredCandidate(candidate, 0.7), ScoredCandidate(other, None)),
        value=0.7,
    )
    return Trajectory(
        task=TaskSpec("textworld_express", "coin", key, "dev", "numLocations=5"),
        instruction="find the coin",
        initial_observation="hall",
        steps=(step,),
        final_score=score,
        success=score == 1.0,
        usage=Usage(100, 8, 0.001),
        env_steps=1,
        wall_time_s=0.25,
        info={"strategy": "best_of_n:2", "oracle_best_score": score, "values": [0.7, 0.1]},
    )


async def test_episodes_round_trip_and_summary(store: TreeStore) -> None:
    run, (task,) = await new_run(store, "episodes")
    first = await store.episodes.add(run.id, "eval:qlass", "qlass", _trajectory(0, 1.0))
    await store.episodes.add(run.id, "eval:qlass", "qlass", _trajectory(1, 0.0))
    await store.episodes.add(run.id, "eval:greedy", "greedy", _trajectory(0, 0.5))
    listed = await store.episodes.of_run(run.id, stage="eval:qlass")
    assert [e.id for e in listed] == [first.id, first.id + 1]
    assert first.steps == 1 and first.completion_tokens == 8 and first.split == "dev"
    rebuilt = trajectory_from_json(listed[0].trajectory)
    original = _trajectory(0, 1.0)
    assert rebuilt.steps[0].candidate == original.steps[0].candidate
    assert rebuilt.steps[0].considered == original.steps[0].considered
    assert rebuilt.steps[0].result.valid_actions == ("take coin",)
    assert rebuilt.task == original.task and rebuilt.usage == original.usage
    assert rebuilt.info == original.info
    assert await store.episodes.done_keys(run.id, "eval:qlass", "qlass") == {
        _trajectory(0, 1).task.key,
        _trajectory(1, 1).task.key,
    }

    checkpoint = await store.checkpoints.add(run.id, "/models/qnet-1", metrics={"dev_mse": 0.1})
    newer = await store.checkpoints.add(run.id, "/models/qnet-2")
    assert (await store.checkpoints.latest(run.id)) == newer
    assert [c.id for c in await store.checkpoints.of_run(run.id)] == [checkpoint.id, newer.id]
    label_set = await store.labels.create_set(run.id, gamma=0.9)
    tagged = await store.checkpoints.add(run.id, "/models/qnet-3", label_set_id=label_set.id)
    assert (await store.checkpoints.latest(run.id, label_set_id=label_set.id)) == tagged

    root = await store.trees.add_root(task.id, "start")
    await store.trees.add_children(root.id, [NewNode("o", action="a", final_reward=1.0)])
    await store.tasks.set_status(task.id, "done")
    await store.stages.start(run.id, "explore", "fp")
    summary = await store.runs.summary("episodes")
    assert summary.tasks_by_status == {"done": 1}
    assert (summary.nodes, summary.finished_leaves) == (2, 1)
    assert [(s.label_set.id, s.labelled_nodes) for s in summary.label_sets] == [(label_set.id, 2)]
    assert [s.name for s in summary.stages] == ["explore"]
    assert len(summary.checkpoints) == 3
    by_strategy = {(e.stage, e.strategy): e for e in summary.episodes}
    assert by_strategy[("eval:qlass", "qlass")].episodes == 2
    assert by_strategy[("eval:qlass", "qlass")].mean_score == 0.5
    assert by_strategy[("eval:qlass", "qlass")].success_rate == 0.5
    assert by_strategy[("eval:greedy", "greedy")].completion_tokens == 8


async def test_non_finite_floats_in_json_are_stored_as_null(store: TreeStore) -> None:
    """Best-of-N's unscored episodes have the value -inf: PostgreSQL's json type rejects
    ``-Infinity``, so every JSON column is written as strict JSON (inf and nan as null)."""
    run = await store.runs.create("inf", config={"x": [1.0, float("inf")]})
    await store.stages.start(run.id, "eval", "fp")
    metrics = {"values": [0.5, -math.inf], "nested": {"nan": math.nan}, "ok": 1.25}
    await store.stages.finish(run.id, "eval", metrics=metrics)
    stage = await store.stages.get(run.id, "eval")
    assert stage is not None
    assert stage.metrics == {"values": [0.5, None], "nested": {"nan": None}, "ok": 1.25}
    assert (await store.runs.get("inf")).config == {"x": [1.0, None]}
