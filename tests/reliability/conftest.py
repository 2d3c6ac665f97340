"""A small policy trained once per session (behaviour cloning from scratch on
TextWorldExpress gold paths), for the kill campaign with a real local model."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from qlass.runtime.pipeline import Pipeline
from qlass.testing import TINY_BC, tiny_run_config

BC = ["name=bc", "env.train_tasks=6", "env.max_steps=6", *TINY_BC]


@pytest.fixture(scope="session")
def bc_policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory of a BC policy (the bc stage of a tiny run)."""
    config = tiny_run_config(tmp_path_factory.mktemp("bc"), *BC)

    async def train() -> Path:
        async with Pipeline(config) as pipeline:
            await pipeline.run(["gold", "bc"])
        return config.policy_dir

    return asyncio.run(train())
