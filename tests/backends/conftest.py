"""Fixtures for backend tests (helpers in :mod:`tests.backends.helpers`)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest
from blockbuster import blockbuster_ctx

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


# LiteLLM's first request on an event loop builds its HTTP client, which checks that the CA
# bundle file exists (an os.stat; the bundle itself is loaded when the policy is built, off
# the loop). Third-party set-up, microseconds, once per loop: allowed here by function name,
# so every other blocking call from qlass code on the loop still fails the test.
_LITELLM_ONE_OFF_BLOCKING = [
    (
        "os.stat",
        "litellm/llms/custom_httpx/http_handler.py",
        {"get_ssl_verify", "get_ssl_configuration"},
    ),
]


@pytest.fixture(autouse=True)
def _no_blocking_calls_in_event_loop(request: pytest.FixtureRequest) -> Iterator[None]:
    if not inspect.iscoroutinefunction(getattr(request.node, "function", None)):
        yield
        return
    # Same as tests/conftest.py's fixture (which this one overrides), plus the allowance above.
    with blockbuster_ctx(["qlass"]) as blockbuster:
        blockbuster.functions["os.path.abspath"].deactivate()  # path arithmetic (SQLAlchemy)
        for name, filename, functions in _LITELLM_ONE_OFF_BLOCKING:
            blockbuster.functions[name].can_block_in(filename, functions)
        yield


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
