"""The loop-lag and shared-prefix benchmarks run (so they cannot rot), on tiny sizes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_loop_measures_lag_of_real_episodes() -> None:
    command = [sys.executable, "-m", "benchmarks.bench_loop", "--episodes", "6", "--pool", "2"]
    done = subprocess.run(
        [*command, "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["episodes"] == 6 and figures["env_steps"] > 6
    assert figures["samples"] > 0 and figures["max_ms"] >= figures["p99_ms"] >= 0


def test_bench_qnet_shared_prefix_prints_ratios() -> None:
    command = [
        sys.executable,
        "-m",
        "benchmarks.bench_qnet",
        "--shared-prefix",
        *("--models", "demo", "--history-tokens", "128", "--states", "2", "--rounds", "1"),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    row = next(line for line in done.stdout.splitlines() if line.startswith("demo "))
    assert row.split()[1] == "128" and row.endswith("x")
