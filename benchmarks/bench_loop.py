"""Event-loop lag while many TextWorldExpress evaluation episodes run at once.

    .venv/bin/python -m benchmarks.bench_loop [--episodes 200] [--pool 16]
    .venv/bin/python -m benchmarks.bench_loop --baseline-src /tmp/main-src   # also measure main

The eval stage of a real run (the runtime's ``Pipeline``, its SQLite store, an
:class:`~qlass.envs.pool.EnvPool` of ``--pool`` simulators) plays ``--episodes`` coin games
at once (``eval.concurrency``) with a scripted policy that answers at once, so everything
the loop does is qlass's own bookkeeping, the store and the simulators' py4j traffic. A
probe task sleeps 10 ms in a loop; its overshoot is the loop lag: the time every other
coroutine (an HTTP server, a progress bar, a stop request) would wait. Reported while the
episodes run: max, p99, p50 and mean lag, and the longest the loop's thread ran within one
sleep ("run": loop code or a collector pause, which load does not change); for the worst
lags, how much of each was the loop running, its thread waiting for a CPU (the machine's
load) and the rest (waiting for the GIL); then the lag of the report the pipeline makes
after the last episode; episodes, env steps, wall time and the load average.

Like the CLI before it runs a pipeline, the benchmark calls ``gc.freeze()`` first (the
objects made by imports stay out of the collector's full passes). With ``--baseline-src
DIR`` (a checkout of another qlass version, e.g. ``git archive main qlass | tar -x -C
DIR``) the same measurement runs first with that code (a subprocess importing qlass from
DIR, without the freeze, which the CLI of main did not do) and both are printed side by
side.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

from qlass._log import configure_logging
from qlass.config import RunConfig
from qlass.runtime.pipeline import Pipeline

ACTIONS = "move north|move south|move east|move west|take coin|look around"


class Lag(NamedTuple):
    """One 10 ms sleep: how late it woke up, and the loop thread's running and CPU-queue
    time meanwhile (seconds)."""

    late: float
    running: float
    queued: float


def _schedstat() -> tuple[float, float]:
    """This thread's CPU time and time spent runnable but waiting for a CPU, in seconds
    (Linux ``schedstat``; zeros elsewhere)."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as fh:
            running_ns, waiting_ns, _ = fh.read().split()
    except OSError:
        return 0.0, 0.0
    return int(running_ns) / 1e9, int(waiting_ns) / 1e9


async def watch_loop(
    lags: list[tuple[float, Lag]], done: asyncio.Event, period_s: float = 0.01
) -> None:
    """Append when each ``period_s`` sleep began and how late it woke up, until ``done`` is
    set, and where the
    time went meanwhile: the loop's thread running (loop code), waiting for a CPU (the
    machine's load) or neither (waiting for the GIL, held by another thread)."""
    while not done.is_set():
        started, (cpu, queued) = time.perf_counter(), _schedstat()
        await asyncio.sleep(period_s)
        lag = time.perf_counter() - started - period_s
        cpu_after, queued_after = _schedstat()
        lags.append((started, Lag(lag, cpu_after - cpu, queued_after - queued)))


class EpisodeClock:
    """A ``Progress`` for the pipeline that notes when the last episode was stored, so
    the lag of the episodes can be told from that of the report made after them."""

    def __init__(self, episodes: int) -> None:
        self.episodes = episodes
        self.done = 0.0
        self.finished_at: float | None = None

    def bar(self, description: str, total: float | None) -> EpisodeClock:
        return self

    def advance(self, amount: float = 1, **fields: Any) -> None:
        self.done += amount
        if self.done >= self.episodes and self.finished_at is None:
            self.finished_at = time.perf_counter()

    def update(self, **fields: Any) -> None:
        return None

    def log(self, message: str) -> None:
        return None


def run_config(directory: Path, episodes: int, pool: int, seed: int) -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": "loop-bench",
            "seed": seed,
            "run_dir": str(directory),
            "env": {
                "name": "textworld_express",
                "games": ["coin"],
                "params": "numLocations=5,includeDoors=0",
                "max_steps": 20,
                "pool_size": pool,
                "eval_tasks": episodes,
            },
            "policy": {"backend": "scripted", "model": ACTIONS, "prompt": "none"},
            "search": {"strategies": ["greedy"]},
            "eval": {"concurrency": episodes},
        }
    )


async def measure(episodes: int, pool: int, seed: int) -> dict[str, Any]:
    lags: list[tuple[float, Lag]] = []
    done = asyncio.Event()
    clock = EpisodeClock(episodes)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        config = run_config(Path(tmp), episodes, pool, seed)
        watcher = asyncio.create_task(watch_loop(lags, done))
        started = time.perf_counter()
        try:
            async with Pipeline(config, progress=clock) as pipeline:
                reports = await pipeline.evaluate(["greedy"])
        finally:
            done.set()
            await watcher
        wall_s = time.perf_counter() - started
    report = reports[0]
    finished = clock.finished_at or time.perf_counter()
    figures = _figures([lag for at, lag in lags if at < finished])
    report_lags = [lag for at, lag in lags if at >= finished]
    return {
        "episodes": report.episodes,
        "env_steps": report.env_steps,
        "wall_s": wall_s,
        **figures,
        # The report after the episodes (the pipeline decodes every stored episode).
        "report_max_ms": 1000 * max((lag.late for lag in report_lags), default=0.0),
        "report_max_running_ms": 1000 * max((lag.running for lag in report_lags), default=0.0),
        "load": (load_before, os.getloadavg()[0]),
    }


def _figures(lags: list[Lag]) -> dict[str, Any]:
    ordered = sorted(lags)
    values = [lag.late for lag in ordered]
    return {
        "samples": len(lags),
        "max_ms": 1000 * values[-1],
        "p99_ms": 1000 * values[int(0.99 * (len(values) - 1))],
        "p50_ms": 1000 * statistics.median(values),
        "mean_ms": 1000 * statistics.fmean(values),
        # The longest the loop's thread ran within one sleep: loop code that ran that long
        # without yielding (a collector pause counts too), whatever the machine's load.
        "max_running_ms": 1000 * max(lag.running for lag in lags),
        "worst": [[round(1000 * x) for x in lag] for lag in reversed(ordered[-5:])],
    }


def measure_elsewhere(source: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run this file with qlass imported from ``source`` and return its figures."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--json",
        f"--episodes={args.episodes}",
        f"--pool={args.pool}",
        f"--seed={args.seed}",
        "--no-gc-freeze",  # the CLI of an older tree may not freeze: measure it as it runs
    ]
    env = {**os.environ, "PYTHONPATH": str(source), "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the baseline run failed:\n{done.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=200, help="episodes at once")
    parser.add_argument("--pool", type=int, default=16, help="simulators (env.pool_size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline-src", type=Path, help="another qlass source tree to compare")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON only")
    parser.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="skip the gc.freeze() that the CLI does before a pipeline (main did not)",
    )
    args = parser.parse_args()
    configure_logging(level="WARNING")
    if not args.no_gc_freeze:
        gc.freeze()  # as qlass.cli.run_cmd.run_pipeline does
    runs: dict[str, dict[str, Any]] = {}
    if args.baseline_src is not None:
        print(f"baseline: qlass from {args.baseline_src} ...", flush=True)
        runs["baseline"] = measure_elsewhere(args.baseline_src, args)
    if not args.json:
        import qlass

        print(f"this tree: qlass from {Path(qlass.__file__).parent.parent} ...", flush=True)
    runs["this tree"] = asyncio.run(measure(args.episodes, args.pool, args.seed))
    if args.json:
        print(json.dumps(runs["this tree"]))
        return
    print(
        f"\n{args.episodes} TextWorldExpress coin episodes at once, pool of {args.pool} "
        f"simulators, scripted policy; loop lag = overshoot of a 10 ms sleep, until the "
        f"last episode is stored"
    )
    header = f"{'':<10} {'max ms':>8} {'p99 ms':>8} {'p50 ms':>8} {'mean ms':>8} {'run ms':>7}"
    print(header + f" {'episodes':>9} {'env steps':>10} {'wall s':>7}  load avg (start/end)")
    for name, figures in runs.items():
        print(
            f"{name:<10} {figures['max_ms']:>8.1f} {figures['p99_ms']:>8.1f} "
            f"{figures['p50_ms']:>8.1f} {figures['mean_ms']:>8.2f} "
            f"{figures['max_running_ms']:>7.1f} {figures['episodes']:>9} "
            f"{figures['env_steps']:>10} {figures['wall_s']:>7.1f}  "
            f"{figures['load'][0]:.1f}/{figures['load'][1]:.1f}"
        )
    for name, figures in runs.items():
        if "report_max_ms" in figures:
            print(
                f"{name:<10} after the last episode (the pipeline's report): max lag "
                f"{figures['report_max_ms']:.1f} ms, run {figures['report_max_running_ms']:.1f} ms"
            )
    print(
        "\nrun ms: the longest the loop's thread ran within one sleep (loop code, collector)."
        "\nThe 5 worst lags, ms, as late/running/queued: the loop's thread running, waiting"
        "\nfor a CPU (the machine's load); the rest it waited for the GIL (other threads)."
    )
    for name, figures in runs.items():
        print(f"{name:<10} " + ", ".join("/".join(map(str, lag)) for lag in figures["worst"]))


if __name__ == "__main__":
    main()
