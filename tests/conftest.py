"""Shared fixtures.

- Every async test runs under blockbuster: a blocking call (file or socket I/O, sleep,
  sqlite) made by qlass code on the event loop fails the test.
- Paid APIs are unreachable: provider API keys are removed from the environment and a
  planted fake key is set, so a call that escapes to a real provider fails authentication
  instead of spending money. Tests that mean to call a paid API are marked ``paid``.
- ``tiny_model_dir`` is a randomly initialised small model with a real tokenizer, saved as an
  ordinary transformers model directory.
- ``cli`` runs the ``qlass`` command in process (typer's ``CliRunner``) and puts logging
  back afterwards.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from blockbuster import blockbuster_ctx
from typer.testing import CliRunner

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FAKE_API_KEY = "sk-qlass-test-not-a-real-key-0000"
_KEY_NAMES = re.compile(r"(OPENAI|ANTHROPIC|AZURE|GEMINI|GOOGLE|COHERE|MISTRAL|GROQ|TOGETHER)")


@pytest.fixture(autouse=True)
def _no_paid_api_calls(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("paid"):
        return
    for name in list(os.environ):
        if _KEY_NAMES.search(name) and name.endswith(("_API_KEY", "_KEY", "_TOKEN")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_API_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", FAKE_API_KEY)


@pytest.fixture(autouse=True)
def _fresh_log_config() -> Iterator[None]:
    # CLI tests configure structlog for the process (level, renderer); start each test anew.
    yield
    structlog.reset_defaults()


@pytest.fixture
def cli() -> Iterator[CliRunner]:
    """A runner for ``cli.invoke(qlass.cli.app, [...])``.

    The CLI configures logging onto the runner's streams, which close after each call; the
    root logger's handlers and level and structlog's defaults are restored afterwards, so
    later tests never log into a closed stream.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    structlog.reset_defaults()
    yield CliRunner()
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


# LiteLLM's first request on an event loop builds its HTTP client, which checks that the CA
# bundle file exists (one os.stat; qlass loads the bundle itself off the loop). That
# third-party one-off is allowed by file and function name; every other blocking call from
# qlass code on the loop still fails the test.
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
    with blockbuster_ctx(["qlass"]) as buster:
        # Path arithmetic, not I/O (SQLAlchemy resolves SQLite paths with it).
        buster.functions["os.path.abspath"].deactivate()
        for name, filename, functions in _LITELLM_ONE_OFF_BLOCKING:
            buster.functions[name].can_block_in(filename, functions)
        yield


CORPUS = [
    "You are in the kitchen. In one part of the room you see a stove. There is also a fridge.",
    "Thought: I should look around first.\nAction: look around",
    "Thought: The coin may be north.\nAction: move north",
    "Observation: You take the coin. You win!",
    "Your task is to find a coin. Explore the house.",
]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random Llama-architecture model dir (2 layers, width 64) with a BPE tokenizer."""
    from qlass.backends.tiny import new_tiny_model, save_model, train_tokenizer

    tokenizer = train_tokenizer(CORPUS * 20, vocab_size=400)
    model = new_tiny_model(tokenizer, layers=2, width=64, heads=2, max_positions=1024)
    return save_model(model, tokenizer, tmp_path_factory.mktemp("tiny-model"))
