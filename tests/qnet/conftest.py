"""Fixtures for the QNet tests: a random QNet checkpoint on the tiny backbone, and a helper
that runs an ASGI app under a real uvicorn server on a loopback port."""

from __future__ import annotations

import inspect
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from blockbuster import blockbuster_ctx

# LiteLLM's first request on an event loop builds its HTTP client, which checks that the CA
# bundle file exists (one os.stat; the judge loads the bundle itself off the loop). That
# third-party one-off is allowed by function name; every other blocking call from qlass
# code on the loop still fails the test (same override as tests/backends/conftest.py).
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
        for name, filename, functions in _LITELLM_ONE_OFF_BLOCKING:
            blockbuster.functions[name].can_block_in(filename, functions)
        yield


@pytest.fixture(scope="session")
def qnet_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained QNet checkpoint (random head) on the tiny backbone."""
    from qlass.qnet.model import QNet, load_tokenizer

    qnet = QNet.from_backbone(tiny_model_dir, head_dim=64, max_length=1024, seed=1)
    return qnet.save_pretrained(
        tmp_path_factory.mktemp("qnet"), tokenizer=load_tokenizer(tiny_model_dir)
    )


@contextmanager
def _serve(app: Any) -> Iterator[str]:
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


@pytest.fixture(scope="session")
def serve_app() -> Callable[[Any], AbstractContextManager[str]]:
    """``with serve_app(app) as url:`` runs ``app`` under uvicorn in a thread."""
    return _serve
