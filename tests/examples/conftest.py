"""Fixtures of the example tests: small real models, and a runner for ``examples/*.py``."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from blockbuster import blockbuster_ctx

from tests.api.models import trained_policy, untrained_qnet

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

# LiteLLM's first request on an event loop builds its HTTP client, which checks that the CA
# bundle file exists (one os.stat; qlass loads the bundle itself off the loop). Allowed by
# function name, as in tests/backends/conftest.py; every other blocking call still fails.
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
    with blockbuster_ctx(["qlass"]) as blockbuster:
        blockbuster.functions["os.path.abspath"].deactivate()  # path arithmetic
        for name, filename, functions in _LITELLM_ONE_OFF_BLOCKING:
            blockbuster.functions[name].can_block_in(filename, functions)
        yield


@pytest.fixture(scope="session")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BC policy for TextWorldExpress coin (see tests/api/models.py)."""
    return trained_policy(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def qnet_dir(tmp_path_factory: pytest.TempPathFactory, policy_dir: Path) -> Path:
    """An untrained QNet on the policy's backbone."""
    return untrained_qnet(tmp_path_factory.getbasetemp(), policy_dir)


RunExample = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_example(tmp_path: Path) -> RunExample:
    """``run_example("x.py", *args)`` runs ``python examples/x.py ARGS`` in a temp folder
    (so nothing is written into the repository) and returns the finished process."""

    def run(name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        process = subprocess.run(
            [sys.executable, str(EXAMPLES / name), *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
        assert process.returncode == 0, f"{name} failed:\n{process.stdout}\n{process.stderr}"
        return process

    return run
