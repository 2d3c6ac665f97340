"""``qlass train-qnet`` on a real tree store and on a JSONL file; ``qlass serve-qnet`` as a
real subprocess answering a real HTTP client."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from qlass.cli import app
from qlass.qnet._wire import write_triples_jsonl
from qlass.qnet.client import QNetClient
from qlass.qnet.scorer import QNetScorer
from qlass.storage import NewNode, TreeStore
from qlass.types import TaskSpec
from tests.qnet.qnet_helpers import free_port, synthetic_steps, varied_queries


async def _populate(path: Path) -> None:
    """Run 'coin' with 6 train trees (north wins, south loses) and one test-split tree."""
    async with await TreeStore.open(path) as store:
        run = await store.runs.create("coin", config={}, seed=0)
        specs = [TaskSpec("textworld_express", "coin", i, "train") for i in range(6)]
        specs.append(TaskSpec("textworld_express", "coin", 99, "test"))
        tasks = await store.tasks.add_many(run.id, specs, instruction="Find the coin.")
        for task in tasks:
            root = await store.trees.add_root(task.id, "You are in the hall.")
            await store.trees.add_children(
                root.id,
                [
                    NewNode(
                        "You win.",
                        action="move north",
                        text="Action: move north",
                        done=True,
                        final_reward=1.0,
                    ),
                    NewNode(
                        "A wall.", action="move south", text="Action: move south", final_reward=0.0
                    ),
                ],
            )
        await store.labels.create_set(run.id, gamma=0.9)


def test_train_qnet_from_the_store_records_the_checkpoint(
    cli: CliRunner, tiny_model_dir: Path, tmp_path: Path
) -> None:
    db = tmp_path / "store.db"
    asyncio.run(_populate(db))
    out = tmp_path / "qnet"
    result = cli.invoke(
        app,
        [
            "train-qnet",
            "--db", str(db),
            "--run", "coin",
            "--base-model", str(tiny_model_dir),
            "--output", str(out),
            "--max-steps", "3",
            "--set", "qnet.micro_batch_size=4",
            "--set", "qnet.head_dim=16",
            "--set", "qnet.batch_size=4",
            "--set", "qnet.dev_fraction=0.34",
            "--cpu",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "dev MSE" in result.output
    assert (out / "qnet_config.json").is_file()
    metrics = json.loads((out / "train_metrics.json").read_text())
    # 6 train tasks x 2 children; the test-split tree is never exported.
    assert metrics["train_examples"] + metrics["dev_examples"] == 12
    assert metrics["dev_tasks"] == 2 and metrics["steps"] == 3

    async def latest() -> tuple[str, dict]:
        async with await TreeStore.open(db) as store:
            run = await store.runs.get("coin")
            record = await store.checkpoints.latest(run.id)
            assert record is not None
            return record.path, dict(record.metrics)

    path, stored = asyncio.run(latest())
    assert Path(path) == out.resolve()
    assert stored["steps"] == 3 and stored["dev_examples"] == metrics["dev_examples"]


def test_train_qnet_from_jsonl(cli: CliRunner, tiny_model_dir: Path, tmp_path: Path) -> None:
    triples = tmp_path / "triples.jsonl"
    write_triples_jsonl(synthetic_steps(4), triples)
    out = tmp_path / "qnet"
    result = cli.invoke(
        app,
        [
            "train-qnet", "--triples", str(triples), "--base-model", str(tiny_model_dir),
            "-o", str(out), "--max-steps", "2", "--set", "qnet.micro_batch_size=8",
            "--set", "qnet.head_dim=16", "--set", "qnet.batch_size=8", "--cpu",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((out / "train_metrics.json").read_text())["train_examples"] == 18


def test_train_qnet_errors_are_clear(cli: CliRunner, tmp_path: Path) -> None:
    missing = cli.invoke(app, ["train-qnet", "--triples", str(tmp_path / "none.jsonl")])
    assert missing.exit_code != 0
    assert "cannot read triples file" in str(missing.exception)
    both = cli.invoke(app, ["train-qnet", "--triples", str(tmp_path / "x.jsonl"), "--run", "coin"])
    assert "alternatives" in str(both.exception)


@pytest.mark.slow  # a fresh interpreter imports torch, transformers and fastapi: 10-30 s
def test_serve_qnet_subprocess_agrees_with_in_process(qnet_dir: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "qlass", "serve-qnet", str(qnet_dir), "--port", str(port),
         "--device", "cpu", "--max-wait-ms", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serve-qnet did not come up"
            time.sleep(0.2)
        queries = varied_queries(6)

        async def both() -> tuple[list[float], list[float]]:
            async with QNetClient(url) as client:
                remote = await client.score(queries)
            async with await QNetScorer.aload(qnet_dir, device="cpu") as local:
                return remote, await local.score(queries)

        remote, local = asyncio.run(both())
        assert remote == pytest.approx(local, abs=1e-5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stdout:
            proc.stdout.close()
