"""The explorer benchmark runs (so it cannot rot): both explorers build the same trees."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_explore_runs_and_both_explorers_build_the_same_trees() -> None:
    command = [
        sys.executable,
        "-m",
        "benchmarks.bench_explore",
        *("--env", "textworld_express", "--games", "coin", "--trees", "2"),
        *("--max-depth", "3", "--prune-depth", "1", "--max-steps", "6"),
        *("--pool", "2", "--concurrency", "2", "--policy-latency", "0"),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "identical trees: True" in done.stdout
    assert "trees per hour: x" in done.stdout
