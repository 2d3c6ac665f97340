"""Exploration on Ray actors beside the PostgreSQL explore workers, on the same trees.

    .venv/bin/python -m benchmarks.bench_ray                     # 12 trees; 1, 2 of each
    .venv/bin/python -m benchmarks.bench_ray --tasks 24 --counts 1,2,4

Needs ``qlass[ray,postgres]`` and the PostgreSQL server binaries (a throwaway cluster from
``tests/postgres/server.py``, unless ``QLASS_TEST_POSTGRES_URL`` names a server). Every row
explores the same run (TextWorldExpress coin trees, a scripted policy, seeded) into a fresh
database on the same server:

- ``workers``: N ``qlass explore --worker`` processes started by hand;
- ``ray``: one ``qlass explore --executor ray --set ray.actors=N`` (a local Ray started by
  the command, one worker per actor).

Reported per row: nodes, the wall time of the whole command (for Ray: starting the local
Ray cluster included), the time the workers spent exploring (first ``worker.started`` to
last ``worker.finished``, from their own logs), nodes/s over each, and both rates relative
to one PostgreSQL worker measured in the same run. Every row must grow the same nodes as
the first. On a 2-core machine shared with other work, more workers or actors mostly share
the same CPUs: read the ratios, not the absolute rates.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from qlass._log import configure_logging
from tests.postgres.server import PostgresServer, running_postgres
from tests.reliability.harness import (
    Proc,
    child_env,
    ray_actor_events,
    settings,
    snapshot,
    start,
)

NAME = "bench-ray"


def _qlass(*args: str) -> list[str]:
    """At INFO: the workers' start and finish, without the per-node trace (which a Ray
    driver would receive from every actor through Ray's log forwarding)."""
    return [sys.executable, "-m", "qlass", "--log-json", "--log-level", "INFO", *args]


@dataclass(frozen=True)
class Row:
    """One configuration's figures."""

    executor: str
    count: int
    nodes: int
    wall_s: float
    exploring_s: float
    content: frozenset[Any]


def _span(events: list[dict[str, Any]]) -> tuple[float, float]:
    """First ``worker.started`` and last ``worker.finished`` (epoch seconds)."""
    times = {
        name: [
            datetime.fromisoformat(e["timestamp"]).timestamp()
            for e in events
            if e.get("event") == name
        ]
        for name in ("worker.started", "worker.finished")
    }
    return min(times["worker.started"]), max(times["worker.finished"])


def _explore(server: PostgresServer, executor: str, count: int, tasks: int, tmp: Path) -> Row:
    url = server.create_database()
    extra = [f"env.train_tasks={tasks}", "env.max_steps=6", "explore.max_depth=4"]
    args = ["explore", "--db", url, *settings(NAME, f"run_dir={tmp / 'run'}", *extra)]
    logs, env = tmp / "logs", child_env(RAY_DEDUP_LOGS="0")
    env.pop("RAY_ADDRESS", None)  # a local Ray, started by the command
    started = time.perf_counter()
    if executor == "ray":
        procs = [
            start(
                _qlass(*args, "--executor", "ray", "--set", f"ray.actors={count}"),
                logs,
                "driver",
                env,
            )
        ]
    else:
        procs = [
            start(_qlass(*args, "--worker", "--worker-id", f"w{i}"), logs, f"w{i}", env)
            for i in range(count)
        ]
    for proc in procs:
        code = proc.wait(timeout=1800)
        assert code == 0, proc.err()[-4000:]
    wall = time.perf_counter() - started
    events = _events(executor, procs)
    first, last = _span(events)
    final = snapshot(url, NAME)
    assert set(final.task_status.values()) == {"done"}, final.task_status
    content = frozenset(final.content().items())
    return Row(executor, count, len(final.nodes), wall, last - first, content)


def _events(executor: str, procs: list[Proc]) -> list[dict[str, Any]]:
    if executor == "ray":
        by_actor = ray_actor_events(procs[0].stderr)
        assert by_actor, "no actor's log reached the driver"
        return [e for events in by_actor.values() for e in events]
    return [e for proc in procs for e in proc.events()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=12, help="trees explored by every row")
    parser.add_argument("--counts", default="1,2", help="workers / actors, comma-separated")
    args = parser.parse_args()
    configure_logging(level="WARNING")  # the harness opens stores; keep their notes out
    counts = [int(n) for n in args.counts.split(",") if n.strip()]
    rows: list[Row] = []
    with running_postgres() as server, tempfile.TemporaryDirectory(prefix="qlass-ray-") as tmp:
        for executor in ("workers", "ray"):
            for count in counts:
                rows.append(
                    _explore(server, executor, count, args.tasks, Path(tmp) / f"{executor}{count}")
                )
    base = rows[0]
    table = Table(
        title=f"explore on PostgreSQL: hand-started workers vs Ray actors ({args.tasks} trees)"
    )
    for column in (
        "executor", "N", "nodes", "wall s", "nodes/s (wall)", "vs 1 worker",
        "exploring s", "nodes/s (exploring)", "vs 1 worker", "same trees",
    ):  # fmt: skip
        table.add_column(column, justify="right")
    for row in rows:
        wall_rate, rate = row.nodes / row.wall_s, row.nodes / row.exploring_s
        table.add_row(
            "--worker processes" if row.executor == "workers" else "--executor ray",
            str(row.count),
            str(row.nodes),
            f"{row.wall_s:.1f}",
            f"{wall_rate:.1f}",
            f"{wall_rate / (base.nodes / base.wall_s):.2f}x",
            f"{row.exploring_s:.1f}",
            f"{rate:.1f}",
            f"{rate / (base.nodes / base.exploring_s):.2f}x",
            "yes" if row.content == base.content else "NO",
        )
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
