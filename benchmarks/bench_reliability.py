"""Reliability figures: a SIGKILL campaign against ``qlass explore``, and concurrent
``qlass explore --worker`` writers on SQLite and PostgreSQL.

    .venv/bin/python -m benchmarks.bench_reliability                   # 20 kills, 1/2/4 workers
    .venv/bin/python -m benchmarks.bench_reliability --kills 30 --workers 1,4 --no-postgres

1. Kill campaign: an uninterrupted run (the baseline, timed in the same session) and the
   same config killed ``--kills`` times at seeded random points and resumed with
   ``--resume``. Reported: kills survived, nodes lost / changed / stepped or sampled again /
   stored twice (all must be 0), steps redone because they were not committed before a
   kill, and the wall time relative to the uninterrupted run.
2. Concurrent writers: the same run explored by 1, 2, 4... worker processes sharing one
   store. Reported: wall time, nodes per second relative to one worker on the same store,
   and write errors ("database is locked", deadlocks, serialisation failures; must be 0).
   On a 2-core machine more workers mostly share the same CPU: the point is that they
   share one store without errors, not the speed-up.

Uses the reliability test harness (``tests/reliability``), so run it from the repository
root. PostgreSQL is a throwaway cluster (``tests/postgres/server.py``) unless
``QLASS_TEST_POSTGRES_URL`` names a server.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from qlass._log import configure_logging
from tests.postgres.server import PostgresUnavailable, running_postgres
from tests.reliability.campaign import finish_reference, kill_campaign, start_reference
from tests.reliability.harness import child_env, qlass_command, settings, snapshot, start

WRITE_ERRORS = re.compile(r"database is locked|deadlock detected|could not serialize", re.I)


def _campaign(kills: int, seed: int, tasks: int, console: Console) -> None:
    extra = [f"env.train_tasks={tasks}", "env.max_steps=8", "explore.max_depth=5"]
    with tempfile.TemporaryDirectory(prefix="qlass-bench-kill-") as tmp_dir:
        tmp = Path(tmp_dir)
        started = time.perf_counter()
        proc, db = start_reference(tmp, "crash", extra)
        reference = finish_reference(proc, db, "crash")
        baseline_s = time.perf_counter() - started
        per_run = max(2, len(reference.nodes) // (kills + 1))
        report = kill_campaign(
            tmp, kills=kills, seed=seed, extra=extra, per_run=per_run, reference=lambda: reference
        )
    table = Table(title=f"SIGKILL campaign ({tasks} TextWorldExpress trees, seed {seed})")
    for column in ("", "uninterrupted (baseline)", "killed and resumed"):
        table.add_column(column, justify="right")
    rows = [
        ("SIGKILLs survived", "0", str(report.kills)),
        ("processes run", "1", str(report.runs)),
        ("nodes", str(report.reference_nodes), str(report.nodes)),
        ("nodes lost", "-", str(report.lost_nodes)),
        ("nodes changed", "-", str(report.changed_nodes)),
        ("env steps repeated for committed nodes", "-", str(report.repeated_steps)),
        ("policy samples repeated for committed nodes", "-", str(report.repeated_samples)),
        ("nodes stored twice", "-", str(report.duplicate_nodes)),
        ("nodes differing from the baseline", "-", str(report.tree_mismatches)),
        ("Q labels differing from the baseline", "-", str(report.label_mismatches)),
        ("uncommitted steps redone after a kill", "-", str(report.redone_steps)),
        (
            "wall time (s), ratio",
            f"{baseline_s:.1f}",
            f"{report.wall_s:.1f} ({report.wall_s / baseline_s:.1f}x)",
        ),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if report.problems:
        console.print(f"[red]problems: {report.problems[:10]}")


def _writers(url: str, workers: int, tasks: int, tmp: Path) -> tuple[float, int, int, bool]:
    """Explore one run with ``workers`` processes; (wall s, nodes, write errors, all ok)."""
    extra = [f"env.train_tasks={tasks}", "env.max_steps=6", "explore.max_depth=4"]
    args = ["explore", "--db", url, *settings("shared", f"run_dir={tmp / 'run'}", *extra)]
    started = time.perf_counter()
    procs = [
        start(
            qlass_command(*args, "--worker", "--worker-id", f"w{i}", "--lease-s", "10"),
            tmp / "logs",
            f"{workers}-w{i}",
            child_env(),
        )
        for i in range(workers)
    ]
    codes = [proc.wait(timeout=900) for proc in procs]
    wall = time.perf_counter() - started
    errors = sum(len(WRITE_ERRORS.findall(proc.err())) for proc in procs)
    final = snapshot(url, "shared")
    ok = all(code == 0 for code in codes) and set(final.task_status.values()) == {"done"}
    return wall, len(final.nodes), errors, ok


def _writer_table(counts: list[int], tasks: int, postgres: bool, console: Console) -> None:
    table = Table(title=f"concurrent explore workers on one store ({tasks} trees)")
    for column in ("store", "workers", "wall s", "nodes", "nodes/s", "vs 1 worker", "errors"):
        table.add_column(column, justify="right")
    stores: list[tuple[str, object]] = [("sqlite", None)]
    server_cm = running_postgres() if postgres else None
    with tempfile.TemporaryDirectory(prefix="qlass-bench-writers-") as tmp_dir:
        tmp = Path(tmp_dir)
        try:
            server = server_cm.__enter__() if server_cm is not None else None
        except PostgresUnavailable as why:
            console.print(f"[yellow]PostgreSQL skipped: {why}")
            server = None
        if server is not None:
            stores.append(("postgresql", server))
        try:
            for name, pg in stores:
                base_rate = None
                for workers in counts:
                    run_tmp = tmp / f"{name}-{workers}"
                    url = (
                        pg.create_database()  # type: ignore[attr-defined]
                        if pg is not None
                        else f"sqlite+aiosqlite:///{run_tmp / 'shared.db'}"
                    )
                    wall, nodes, errors, ok = _writers(url, workers, tasks, run_tmp)
                    rate = nodes / wall
                    base_rate = base_rate or rate
                    table.add_row(
                        name,
                        str(workers),
                        f"{wall:.1f}",
                        str(nodes),
                        f"{rate:.1f}",
                        f"{rate / base_rate:.2f}x",
                        str(errors) if ok else f"{errors} (a worker failed)",
                    )
        finally:
            if server_cm is not None and server is not None:
                server_cm.__exit__(None, None, None)
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--kill-tasks", type=int, default=10, help="trees in the kill campaign")
    parser.add_argument("--workers", default="1,2,4", help="worker counts, comma-separated")
    parser.add_argument("--tasks", type=int, default=12, help="trees in the writers benchmark")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--skip-kills", action="store_true")
    args = parser.parse_args()
    configure_logging(level="WARNING")  # the harness opens stores; keep their notes out
    console = Console()
    if not args.skip_kills:
        _campaign(args.kills, args.seed, args.kill_tasks, console)
    counts = [int(n) for n in args.workers.split(",") if n.strip()]
    _writer_table(counts, args.tasks, not args.no_postgres, console)


if __name__ == "__main__":
    main()
