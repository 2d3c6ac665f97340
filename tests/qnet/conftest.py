"""Fixtures for the QNet tests: a random QNet checkpoint on the tiny backbone, and a helper
that runs an ASGI app under a real uvicorn server on a loopback port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest


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
