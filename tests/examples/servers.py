"""Real servers in subprocesses: ``qlass serve`` (an OpenAI-compatible stand-in for an API
model) and ``qlass serve-qnet`` (the QNet scorer), each on a loopback port."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


@dataclass
class Served:
    """A running server: its base URL, the model name it serves (policy servers)."""

    url: str
    name: str = ""

    def get(self, path: str) -> dict[str, Any]:
        root = self.url.removesuffix("/v1")
        return dict(httpx.get(root + path, timeout=10).json())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(url: str, process: subprocess.Popen[str], log: Path) -> None:
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server never became healthy:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}


def _start(command: list[str], log: Path, stdout: int) -> subprocess.Popen[str]:
    with log.open("w") as err:
        return subprocess.Popen(command, stdout=stdout, stderr=err, text=True, env=_env())


@contextmanager
def policy_and_qnet_servers(
    model_dir: Path, checkpoint: Path, logs: Path, *, model_name: str
) -> Iterator[tuple[Served, Served]]:
    """``qlass serve MODEL_DIR --port 0 --model-name NAME`` and ``qlass serve-qnet
    CHECKPOINT``, started at once (each loads its model in its own process). Logs go to
    ``logs/*.log``."""
    port = _free_port()
    qnet_log, policy_log = logs / "serve-qnet.log", logs / "serve.log"
    qnet_cmd = [sys.executable, "-m", "qlass", "serve-qnet", str(checkpoint)]
    qnet_cmd += ["--port", str(port), "--device", "cpu"]
    policy_cmd = [sys.executable, "-m", "qlass", "serve", str(model_dir), "--port", "0"]
    policy_cmd += ["--model-name", model_name]
    processes = [_start(qnet_cmd, qnet_log, subprocess.DEVNULL)]
    try:
        processes.append(_start(policy_cmd, policy_log, subprocess.PIPE))
        serve = processes[1]
        assert serve.stdout is not None
        line = serve.stdout.readline()  # "serving 'NAME' on cpu at http://HOST:PORT/v1"
        match = re.search(r"'(?P<name>[^']+)' on \S+ at (?P<url>http://\S+/v1)", line)
        if match is None:
            serve.wait(timeout=10)
            raise RuntimeError(f"qlass serve did not start: {line!r}\n{policy_log.read_text()}")
        policy = Served(match["url"], match["name"])
        qnet = Served(f"http://127.0.0.1:{port}")
        _wait_healthy(policy.url.removesuffix("/v1"), serve, policy_log)
        _wait_healthy(qnet.url, processes[0], qnet_log)
        yield policy, qnet
    finally:
        for process in processes:
            _stop(process)
