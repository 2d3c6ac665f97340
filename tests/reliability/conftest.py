"""A small policy trained once per session (behaviour cloning from scratch on
TextWorldExpress gold paths), for the kill campaign with a real local model."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from qlass.config import load_config
from qlass.runtime.pipeline import Pipeline

BC = [
    "name=bc",
    "env.games=[coin]",
    "env.params=numLocations=3,includeDoors=0",
    "env.train_tasks=6",
    "env.max_steps=6",
    "policy.prompt=none",
    "policy.max_tokens=12",
    "policy.max_turns_in_prompt=2",
    "bc.epochs=25",
    "bc.lr=1e-2",
    "bc.layers=1",
    "bc.width=64",
    "bc.heads=2",
    "bc.vocab_size=1024",
    "bc.max_length=512",
]


@pytest.fixture(scope="session")
def bc_policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory of a BC policy (the bc stage of a tiny run)."""
    config = load_config(None, [*BC, f"run_dir={tmp_path_factory.mktemp('bc')}"])

    async def train() -> Path:
        async with Pipeline(config) as pipeline:
            await pipeline.run(["gold", "bc"])
        return config.policy_dir

    return asyncio.run(train())
