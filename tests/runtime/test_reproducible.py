"""Two runs of the same config and seed, in two run folders, through the real pipeline (real
TextWorldExpress, real training, real SQLite): the same expert file, policy weights, trees,
labels, QNet and evaluation episodes.

The game is coin with four rooms, where the simulator's own gold agent walks at random:
with it, the two expert files differ (that is what made `make demo` print different
numbers on every run). Node ids are not compared (concurrent exploration commits nodes in
an order that changes between runs); every node is named by its path of sample indices
from the root. Micro-batches hold one request (policy.max_batch=1, qnet.max_batch=1), so
that which requests share a batch, which depends on timing, cannot change a float; torch
runs on one thread (the thread count is one of the things a run records, and on a busy
2-core box one thread trains these tiny models several times faster than two).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from qlass.config import RunConfig, load_config
from qlass.runtime.pipeline import STAGES, Pipeline
from qlass.runtime.stages.gold import expert_file

OVERRIDES = [
    "name=twice",
    "seed=7",
    "env.games=[coin]",
    "env.params=numLocations=4,includeDoors=0",
    "env.train_tasks=5",
    "env.eval_tasks=2",
    "env.max_steps=4",
    "env.pool_size=1",
    "policy.prompt=none",
    "policy.max_tokens=8",
    "policy.max_turns_in_prompt=1",
    "policy.max_batch=1",
    "bc.epochs=20",
    "bc.lr=1e-2",
    "bc.layers=1",
    "bc.width=32",
    "bc.heads=2",
    "bc.vocab_size=300",
    "bc.max_length=256",
    "explore.width=2",
    "explore.max_depth=2",
    "explore.min_prune_depth=1",
    "explore.concurrency=3",
    "qnet.epochs=1",
    "qnet.batch_size=8",
    "qnet.head_dim=8",
    "qnet.max_length=256",
    "qnet.dev_fraction=0",
    "qnet.max_batch=1",
    "search.strategies=[greedy, qlass:2]",
    "eval.concurrency=2",
]


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _model_files(directory: Path) -> dict[str, str]:
    return {p.name: _digest(p) for p in sorted(directory.iterdir()) if p.suffix == ".safetensors"}


def _without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if not k.endswith("time_s")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


async def _run_and_read(config: RunConfig) -> dict[str, Any]:
    async with Pipeline(config) as pipeline:
        await pipeline.run(STAGES)
        store, run = pipeline.store, pipeline.run_record
        (label_set,) = await store.labels.sets(run.id)
        trees: dict[str, list[tuple[Any, ...]]] = {}
        for task in await store.tasks.of_run(run.id):
            tree = await store.trees.load(task.id)
            labels = await store.labels.values(label_set.id, task.id)
            path: dict[int, tuple[int, ...]] = {}
            for n in tree.nodes:  # parents before children
                path[n.id] = () if n.parent_id is None else (*path[n.parent_id], n.sample_index)
            trees[task.key] = sorted(
                (
                    path[n.id],
                    n.text,
                    n.action,
                    n.observation,
                    n.score,
                    n.final_reward,
                    n.status,
                    labels.get(n.id),
                    n.prompt_tokens,
                    n.completion_tokens,
                )
                for n in tree.nodes
            )
        episodes = sorted(
            (e.stage, e.strategy, e.task_key, _without_timings(e.trajectory))
            for e in await store.episodes.of_run(run.id)
        )
        checkpoint = await store.checkpoints.latest(run.id)
        assert checkpoint is not None
        stages = {s.name: s.metrics for s in await store.stages.of_run(run.id)}
    return {
        "expert": _digest(expert_file(config)),
        "policy": _model_files(config.policy_dir),
        "trees": trees,
        "qnet": _model_files(config.qnet_dir),
        "qnet_losses": checkpoint.metrics["train_losses"],
        "episodes": episodes,
        "reproducibility": {name: m["reproducibility"] for name, m in stages.items()},
        "determinism": checkpoint.metrics["determinism"],
    }


@pytest.mark.usefixtures("one_torch_thread")
async def test_two_runs_of_one_config_and_seed_give_the_same_results(tmp_path: Path) -> None:
    first = await _run_and_read(load_config(None, [*OVERRIDES, f"run_dir={tmp_path / 'a'}"]))
    second = await _run_and_read(load_config(None, [*OVERRIDES, f"run_dir={tmp_path / 'b'}"]))
    assert first["trees"] and first["episodes"] and first["policy"] and first["qnet"]
    assert any(n[2] is not None for tree in first["trees"].values() for n in tree)  # actions
    for part in ("expert", "policy", "trees", "qnet", "qnet_losses", "episodes"):
        assert first[part] == second[part], part
    # Each stage recorded what its numbers depend on beyond the config (threads included).
    assert first["reproducibility"]["bc"]["torch"]["threads"] == 1
    assert first["determinism"]["deterministic_algorithms"] is True
