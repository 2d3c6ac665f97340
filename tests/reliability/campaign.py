"""The kill campaign: SIGKILL ``qlass explore`` at seeded random points, resume it, and
check that nothing committed was lost, changed or done twice.

Used by tests/reliability/test_kill_resume.py (a short campaign by default, 20+ kills in
the slow suite) and by benchmarks/bench_reliability.py.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.reliability.harness import (
    NodeKey,
    Proc,
    Snapshot,
    assert_session_gone,
    child_env,
    duplicate_siblings,
    kill,
    qlass_command,
    settings,
    snapshot,
    start,
    trace_keys,
    wait_for,
)


@dataclass
class CampaignReport:
    """What a campaign did and what its checks found (all problem counts must be 0)."""

    kills: int = 0
    runs: int = 0
    nodes: int = 0
    reference_nodes: int = 0
    lost_nodes: int = 0  # committed before a kill, missing afterwards
    changed_nodes: int = 0  # committed before a kill, different afterwards
    repeated_steps: int = 0  # env steps for a node already committed
    repeated_samples: int = 0  # uncached policy samples for a node already committed
    duplicate_nodes: int = 0  # (parent, sample index) stored twice
    redone_steps: int = 0  # steps made in a killed run but not committed, made again
    tree_mismatches: int = 0  # nodes that differ from the uninterrupted run
    label_mismatches: int = 0
    wall_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "problems"}


def run_explore(args: list[str], log_dir: Path, tag: str, cwd_env: dict[str, str]) -> Proc:
    return start(qlass_command(*args), log_dir, tag, cwd_env)


def start_reference(tmp: Path, name: str, extra: list[str]) -> tuple[Proc, str]:
    """Start an uninterrupted run of the same config into its own store."""
    db = tmp / "reference.db"
    args = ["explore", "--db", str(db), *settings(name, f"run_dir={tmp / 'ref-run'}", *extra)]
    return run_explore(args, tmp / "logs", "reference", child_env()), str(db)


def reference_run(tmp: Path, name: str, extra: list[str]) -> Snapshot:
    """An uninterrupted run of the same config, to compare with."""
    proc, db = start_reference(tmp, name, extra)
    return finish_reference(proc, db, name)


def finish_reference(proc: Proc, db: str, name: str) -> Snapshot:
    code = proc.wait(timeout=300)
    assert code == 0, proc.err()[-4000:]
    return snapshot(db, name)


def kill_campaign(
    tmp: Path,
    *,
    kills: int,
    seed: int,
    extra: list[str],
    per_run: int,
    reference: Callable[[], Snapshot],
    name: str = "crash",
) -> CampaignReport:
    """Start, SIGKILL and resume ``qlass explore`` ``kills`` times, then let it finish.

    Each run is killed after a random number of new nodes, uniform in [1, 2 * per_run);
    ``reference()`` gives the uninterrupted run's snapshot (called at the end, so that it
    can run meanwhile).
    """
    rng = random.Random(seed)
    started = time.perf_counter()
    report = CampaignReport()
    db = tmp / "crash.db"
    first = ["explore", "--db", str(db), *settings(name, f"run_dir={tmp / 'run'}", *extra)]
    resume = ["explore", "--resume", name, "--db", str(db)]
    snapshots: list[Snapshot] = []
    events: list[list[dict[str, Any]]] = []
    for index in range(kills):
        proc = run_explore(
            first if index == 0 else resume, tmp / "logs", f"run{index}", child_env()
        )
        target = rng.randint(1, 2 * per_run - 1)
        reached = wait_for(proc, "explore.node", target)
        if not reached:  # it finished first: nothing left to kill
            assert proc.wait() == 0, proc.err()[-4000:]
            events.append(proc.events())
            report.runs += 1
            break
        time.sleep(rng.uniform(0.0, 0.03))
        kill(proc, signal.SIGKILL)
        code = proc.wait()
        report.runs += 1
        if code != -signal.SIGKILL:  # it exited on its own just before the signal
            assert code == 0, proc.err()[-4000:]
            events.append(proc.events())
            break
        report.kills += 1
        assert_session_gone(proc.pid)
        events.append(proc.events())
        snapshots.append(snapshot(str(db), name))
    else:
        proc = run_explore(resume, tmp / "logs", "final", child_env())
        code = proc.wait(timeout=300)
        assert code == 0, proc.err()[-4000:]
        events.append(proc.events())
        report.runs += 1
    final = snapshot(str(db), name)
    report.nodes = len(final.nodes)
    expected = reference()
    report.reference_nodes = len(expected.nodes)
    _check(report, snapshots, events, final, expected)
    report.wall_s = round(time.perf_counter() - started, 1)
    return report


def _check(
    report: CampaignReport,
    snapshots: list[Snapshot],
    events: list[list[dict[str, Any]]],
    final: Snapshot,
    reference: Snapshot,
) -> None:
    # Committed before a kill -> still there, column for column.
    for snap in snapshots:
        for node_id, row in snap.nodes.items():
            if node_id not in final.nodes:
                report.lost_nodes += 1
                report.problems.append(f"lost {snap.keys[node_id]}")
            elif final.nodes[node_id] != row:
                report.changed_nodes += 1
                report.problems.append(f"changed {snap.keys[node_id]}")
    # Nothing committed was stepped or sampled again by a later run.
    all_steps: dict[NodeKey, int] = {}
    for run, run_events in enumerate(events):
        committed = snapshots[run - 1].key_set() if run >= 1 else set()
        steps = trace_keys(run_events, "explore.step")
        samples = trace_keys(run_events, "explore.sample")
        for key, n in steps.items():
            all_steps[key] = all_steps.get(key, 0) + n
            if key in committed:
                report.repeated_steps += n
                report.problems.append(f"run {run} stepped committed {key}")
        for key, n in samples.items():
            if key in committed:
                report.repeated_samples += n
                report.problems.append(f"run {run} sampled committed {key}")
    report.redone_steps = sum(n - 1 for n in all_steps.values() if n > 1)
    report.duplicate_nodes = len(duplicate_siblings(final))
    # The same trees and labels as the uninterrupted run.
    mine, theirs = final.content(), reference.content()
    report.tree_mismatches = len(set(mine.items()) ^ set(theirs.items()))
    if mine.keys() != theirs.keys():
        report.problems.append(f"tree shapes differ: {sorted(set(mine) ^ set(theirs))[:5]}")
    report.label_mismatches = sum(
        1
        for key in final.labels.keys() | reference.labels.keys()
        if key not in final.labels
        or key not in reference.labels
        or abs(final.labels[key] - reference.labels[key]) > 1e-9
    )
    if set(final.task_status.values()) != {"done"}:
        report.problems.append(f"tasks not done: {final.task_status}")
