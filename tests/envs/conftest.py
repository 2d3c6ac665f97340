"""Fixtures for the env tests: JVM leak checks and the small WebShop test server."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from qlass.envs._jvm import java_child_pids
from tests.envs.webshop_server import GOALS, create_app


@pytest.fixture(autouse=True)
def no_leaked_jvms() -> Iterator[None]:
    """Fail a test that leaves a simulator JVM of this process running."""
    before = set(java_child_pids())
    yield
    gc.collect()
    deadline = time.monotonic() + 5
    leaked = set(java_child_pids()) - before
    while leaked and time.monotonic() < deadline:
        time.sleep(0.05)
        leaked = set(java_child_pids()) - before
    assert not leaked, f"JVMs left running after the test: {sorted(leaked)}"


@pytest.fixture(scope="module")
def webshop_url() -> Iterator[str]:
    """A WebShop test server (AgentGym interface, toy catalogue) on a loopback port."""
    config = uvicorn.Config(
        create_app(), host="127.0.0.1", port=0, log_level="warning", lifespan="off", ws="none"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="webshop-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the WebShop test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def webshop_goals() -> list[dict[str, object]]:
    return GOALS
