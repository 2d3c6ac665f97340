"""Helpers of the reliability tests: run ``qlass explore`` as a subprocess, read its trace,
snapshot and compare stored trees.

The trace is the explorer's DEBUG events (``explore.sample``, ``explore.step``,
``explore.node``; see docs/reliability.md), written by ``qlass --log-json --log-level DEBUG``
to stderr, one JSON object per line. A process killed mid-line leaves at most its last line
unreadable, which :func:`read_events` skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qlass.storage import TreeStore

Path_ = tuple[int, ...]
NodeKey = tuple[str, Path_]  # (task key, sample-index path from the root)

# A TextWorldExpress coin world and a scripted policy: fast, deterministic, real simulator.
SCRIPTED_ACTIONS = "look around|move north|move south|move east|move west|take coin|fly away"
BASE_SETTINGS = [
    "env.name=textworld_express",
    "env.games=[coin]",
    "env.params=numLocations=3,includeDoors=0",
    "env.pool_size=3",
    "policy.backend=scripted",
    f"policy.model={SCRIPTED_ACTIONS}",
    "policy.prompt=none",
    "explore.width=2",
    "explore.min_prune_depth=2",
    "explore.concurrency=1",
]

# Columns of a node that must survive a crash unchanged (ids and times included).
NODE_COLUMNS = (
    "id",
    "task_id",
    "parent_id",
    "depth",
    "sample_index",
    "action",
    "text",
    "observation",
    "reward",
    "score",
    "done",
    "success",
    "is_leaf",
    "final_reward",
    "prompt_tokens",
    "completion_tokens",
    "status",
    "error",
    "created_at",
)
# What must equal between two runs of the same config (no ids, no timings).
CONTENT_COLUMNS = tuple(
    c for c in NODE_COLUMNS if c not in ("id", "task_id", "parent_id", "created_at")
)


def settings(name: str, *extra: str) -> list[str]:
    """``--set`` arguments of a run named ``name``."""
    pairs = [f"name={name}", *BASE_SETTINGS, *extra]
    return [arg for pair in pairs for arg in ("--set", pair)]


def qlass_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "qlass", "--log-json", "--log-level", "DEBUG", *args]


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        COLUMNS="200",
    )
    env.update(extra)
    return env


@dataclass
class Proc:
    """A ``qlass`` subprocess in its own session, with stdout/stderr in files."""

    popen: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait(self, timeout: float = 120) -> int:
        return self.popen.wait(timeout=timeout)

    def out(self) -> str:
        return self.stdout.read_text(errors="replace")

    def err(self) -> str:
        return self.stderr.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        return read_events(self.stderr)


def start(
    args: Sequence[str], log_dir: Path, tag: str, env: Mapping[str, str] | None = None
) -> Proc:
    log_dir.mkdir(parents=True, exist_ok=True)
    stdout, stderr = log_dir / f"{tag}.out", log_dir / f"{tag}.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        popen = subprocess.Popen(
            list(args),
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=dict(env or child_env()),
            start_new_session=True,  # its JVMs share its session: leftovers are findable
        )
    return Proc(popen, stdout, stderr)


def read_events(path: Path) -> list[dict[str, Any]]:
    events = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # the line a SIGKILL cut short
    return events


# A record a Ray actor logged, as Ray forwards it to the driver's stderr (log_to_driver).
_RAY_ACTOR_LINE = re.compile(r"^(?:\x1b\[\d+m)?\(RunActor pid=(\d+)\)(?:\x1b\[0m)? (\{.*)$")


def ray_actor_events(path: Path) -> dict[int, list[dict[str, Any]]]:
    """Each Ray actor process's events (by pid), from a ``--executor ray`` driver's stderr."""
    events: dict[int, list[dict[str, Any]]] = {}
    for line in path.read_text(errors="replace").splitlines():
        match = _RAY_ACTOR_LINE.match(line)
        if match is None:
            continue
        try:
            event = json.loads(match[2])
        except json.JSONDecodeError:
            continue  # the line a SIGKILL cut short
        events.setdefault(int(match[1]), []).append(event)
    return events


def count_events(path: Path, name: str) -> int:
    return sum(1 for e in read_events(path) if e.get("event") == name)


def wait_for(proc: Proc, name: str, count: int, timeout: float = 120) -> bool:
    """Wait until the process logged ``count`` events ``name``; False if it exited first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if count_events(proc.stderr, name) >= count:
            return True
        if proc.popen.poll() is not None:
            return count_events(proc.stderr, name) >= count
        time.sleep(0.005)
    raise TimeoutError(f"no {count} {name!r} events within {timeout} s:\n{proc.err()[-3000:]}")


def session_pids(session: int) -> list[int]:
    """Live processes of a session (the killed qlass and the JVMs it started)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        # fields: state ppid pgrp session ...
        if fields[0] != "Z" and int(fields[3]) == session:
            pids.append(int(entry))
    return pids


def assert_session_gone(session: int, timeout: float = 15) -> None:
    """Every process of the session exits (JVMs die with their parent's broken pipe)."""
    deadline = time.monotonic() + timeout
    left = session_pids(session)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = session_pids(session)
    assert not left, f"processes left after the kill: {[_cmdline(p) for p in left]}"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    except OSError:
        return str(pid)


def kill(proc: Proc, signum: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signum)


# -- the store side ------------------------------------------------------------------


@dataclass
class Snapshot:
    """Every node of a run (by id, as a column dict) and where each one sits."""

    nodes: dict[int, dict[str, Any]] = field(default_factory=dict)
    keys: dict[int, NodeKey] = field(default_factory=dict)
    labels: dict[NodeKey, float] = field(default_factory=dict)
    task_status: dict[str, str] = field(default_factory=dict)
    task_errors: dict[str, str | None] = field(default_factory=dict)
    task_attempts: dict[str, int] = field(default_factory=dict)
    claimed_by: dict[str, str | None] = field(default_factory=dict)

    def by_key(self) -> dict[NodeKey, dict[str, Any]]:
        return {self.keys[i]: self.nodes[i] for i in self.nodes}

    def content(self) -> dict[NodeKey, tuple[Any, ...]]:
        return {key: tuple(row[c] for c in CONTENT_COLUMNS) for key, row in self.by_key().items()}

    def key_set(self) -> set[NodeKey]:
        return set(self.keys.values())


async def snapshot_async(url: str, run_name: str) -> Snapshot:
    snap = Snapshot()
    async with await TreeStore.open(url, upgrade=False) as store:
        run = await store.runs.find(run_name)
        if run is None:
            return snap
        label_sets = await store.labels.sets(run.id)
        for task in await store.tasks.of_run(run.id):
            snap.task_status[task.key] = task.status
            snap.task_errors[task.key] = task.error
            snap.task_attempts[task.key] = task.attempts
            snap.claimed_by[task.key] = task.claimed_by
            tree = await store.trees.load(task.id)
            for node in tree.nodes:
                path = tuple(n.sample_index for n in tree.path(node.id)[1:])
                snap.nodes[node.id] = {c: getattr(node, c) for c in NODE_COLUMNS}
                snap.keys[node.id] = (task.key, path)
            if label_sets:
                raw = await store.labels.values(label_sets[0].id, task.id, normalized=False)
                for node_id, q in raw.items():
                    if node_id in snap.keys:  # a live run may label nodes read after its tree
                        snap.labels[snap.keys[node_id]] = q
    return snap


def snapshot(url: str, run_name: str) -> Snapshot:
    """Read a run's nodes, labels and task states (from a sync test)."""
    return asyncio.run(snapshot_async(url, run_name))


def trace_keys(events: Iterable[Mapping[str, Any]], name: str) -> Counter[NodeKey]:
    """How many times each (task, path) appears in events ``name``."""
    return Counter(
        (e["task"], tuple(e["path"])) for e in events if e.get("event") == name and "path" in e
    )


def duplicate_siblings(snap: Snapshot) -> list[tuple[int | None, int]]:
    """(parent, sample index) pairs stored more than once: must be empty."""
    seen = Counter((row["parent_id"], row["sample_index"]) for row in snap.nodes.values())
    return [key for key, n in seen.items() if n > 1 and key[0] is not None]
