"""Fixtures of the report tests: a hand-built stored run and a tiny QNet checkpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from qlass.storage import TreeStore

from .demo_run import DemoRun, populate


@dataclass
class Stored:
    store: TreeStore
    demo: DemoRun
    db_path: Path
    run_dir: Path


@pytest.fixture(scope="session")
def qnet_checkpoint(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained QNet (random head) on the tiny backbone, saved as a checkpoint dir."""
    from qlass.qnet.model import QNet, load_tokenizer

    qnet = QNet.from_backbone(tiny_model_dir, head_dim=32, max_length=512, seed=3)
    return qnet.save_pretrained(
        tmp_path_factory.mktemp("qnet"), tokenizer=load_tokenizer(tiny_model_dir)
    )


@pytest.fixture
async def stored(tmp_path: Path) -> AsyncIterator[Stored]:
    """The demo run (variant 0, no checkpoint) in a fresh SQLite store."""
    db_path = tmp_path / "store" / "qlass.db"
    run_dir = tmp_path / "runs" / "demo"
    async with await TreeStore.open(db_path) as store:
        demo = await populate(store, run_dir)
        yield Stored(store, demo, db_path, run_dir)
