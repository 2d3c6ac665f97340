"""Fixtures for the env tests: JVM leak checks and the small WebShop test server."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from qlass.envs._jvm import java_child_pids
from tests.envs.webshop_server import GOALS, create_app


@pytest.fixture(autouse=True)
def no_leaked_jvms(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves a simulator JVM of this process running.

    A module may share a JVM between its tests by listing its pid in ``SHARED_JVM_PIDS``.
    """
    before = set(java_child_pids())
    yield
    gc.collect()
    allowed = before | getattr(request.module, "SHARED_JVM_PIDS", set())
    deadline = time.monotonic() + 5
    leaked = set(java_child_pids()) - allowed
    while leaked and time.monotonic() < deadline:
        time.sleep(0.05)
        leaked = set(java_child_pids()) - allowed
    assert not leaked, f"JVMs left running after the test: {sorted(leaked)}"


def shutdown_simulator(sim: Any) -> None:
    """Close a raw TextWorldExpress/ScienceWorld wrapper the way qlass does (JVM reaped,
    pipes and temp files closed), for tests that drive the simulator package directly."""
    sim.close()
    proc = sim._gateway.java_process
    proc.kill()
    proc.wait()
    proc.stdin.close()
    if hasattr(sim, "_obj_tree_tempfile"):
        sim._obj_tree_tempfile.close()
    if hasattr(sim, "_obj_tree_tempdir"):
        sim._obj_tree_tempdir.cleanup()


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
