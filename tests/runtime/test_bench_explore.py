"""The explorer benchmark runs (so it cannot rot): both explorers build the same trees, and
its scaling model's bounds are the documented ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.scaling import NodeCosts, predicted_nodes_per_s

ROOT = Path(__file__).resolve().parents[2]


def test_bench_explore_runs_and_both_explorers_build_the_same_trees() -> None:
    command = [
        sys.executable,
        "-m",
        "benchmarks.bench_explore",
        *("--env", "textworld_express", "--games", "coin", "--trees", "2"),
        *("--max-depth", "3", "--prune-depth", "1", "--max-steps", "6"),
        *("--pool", "2", "--concurrency", "2", "--policy-latency", "0.001"),
        "--per-node-commit",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "identical trees: True" in done.stdout
    assert "trees per hour: x" in done.stdout
    assert "a transaction per node" in done.stdout
    assert "measured/predicted" in done.stdout and "predicted, 16 cores" in done.stdout
    assert "cores and a pool of 2 allow" in done.stdout and "% of the bound" in done.stdout


COSTS = NodeCosts(py_cpu_s=0.002, env_cpu_s=0.006, requests=0.5, branches_per_tree=1.5)


def test_the_scaling_model_takes_the_smallest_bound() -> None:
    # policy: min(pool 8, 4 trees x 1.5) / (0.5 x 0.2 s) = 6 / 0.1
    rate, bound = predicted_nodes_per_s(COSTS, cores=16, pool=8, trees=4, latency_s=0.2)
    assert (bound, rate) == ("policy", pytest.approx(60))
    # cpu: 2 cores / 8 ms = 250 (the policy bound is then 64 / 0.1 = 640)
    rate, bound = predicted_nodes_per_s(COSTS, cores=2, pool=64, trees=64, latency_s=0.2)
    assert (bound, rate) == ("cpu", pytest.approx(250))
    # python: one core's 2 ms per node = 500, whatever the cores
    rate, bound = predicted_nodes_per_s(COSTS, cores=64, pool=512, trees=512, latency_s=0.2)
    assert (bound, rate) == ("python", pytest.approx(500))
    # server: 100 requests/s at 0.5 requests per node
    rate, bound = predicted_nodes_per_s(
        COSTS, cores=64, pool=512, trees=512, latency_s=0.2, server_rps=100
    )
    assert (bound, rate) == ("server", pytest.approx(200))


def test_with_an_instant_policy_only_the_cpu_bounds_count() -> None:
    rate, bound = predicted_nodes_per_s(COSTS, cores=1, pool=8, trees=4, latency_s=0)
    assert (bound, rate) == ("cpu", pytest.approx(125))
