"""Fixtures for backend tests (helpers in :mod:`tests.backends.helpers`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends.helpers import FakeServer, train_action_model


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    server = FakeServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fake_server_2() -> Iterator[FakeServer]:
    server = FakeServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core box: OpenMP threads only fight (10x slower under load)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def action_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama that answers TextWorldExpress coin observations with 'Action: ...'."""
    return train_action_model(tmp_path_factory.mktemp("action-model") / "twx-tiny")
