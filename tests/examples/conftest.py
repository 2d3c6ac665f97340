"""Fixtures of the example tests: small real models, the stand-in API and QNet servers,
and every ``examples/*.py`` script started at once in fast mode."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.api.models import MAX_TURNS, PARAMS, trained_policy, untrained_qnet
from tests.conftest import _KEY_NAMES, FAKE_API_KEY
from tests.examples.servers import Served, policy_and_qnet_servers

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BC policy for TextWorldExpress coin (see tests/api/models.py)."""
    return trained_policy(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def qnet_dir(tmp_path_factory: pytest.TempPathFactory, policy_dir: Path) -> Path:
    """An untrained QNet on the policy's backbone."""
    return untrained_qnet(tmp_path_factory.getbasetemp(), policy_dir)


def _is_provider_key(name: str) -> bool:
    return bool(_KEY_NAMES.search(name)) and name.endswith(("_API_KEY", "_KEY", "_TOKEN"))


# The stand-in API serves the tiny policy under the name of a priced OpenAI model, so that
# LiteLLM prices its usage from its bundled price table as it would for the real API.
PRICED = "gpt-4o-mini"


@pytest.fixture(scope="session")
def servers(
    policy_dir: Path, qnet_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Served, Served]]:
    """``qlass serve`` (the stand-in API) and ``qlass serve-qnet``, for the whole session."""
    logs = tmp_path_factory.mktemp("server-logs")
    with policy_and_qnet_servers(policy_dir, qnet_dir, logs, model_name=PRICED) as both:
        yield both


@dataclass
class Finished:
    """A finished example: its output, and what the stand-in API counted while it ran
    (for ``guide_api_model.py``, the only example that uses the servers)."""

    stdout: str
    server_delta: dict[str, int] = field(default_factory=dict)


class Examples:
    """The example scripts, started together in fast mode; ``wait(name)`` gives one's result."""

    GUIDE = "guide_api_model.py"

    def __init__(self, work: Path, commands: dict[str, list[str]], policy: Served) -> None:
        # Started before the per-test paid-API guard runs: apply the same guard here (no real
        # provider key reaches the scripts; the planted one only ever meets our stand-in).
        env = {k: v for k, v in os.environ.items() if not _is_provider_key(k)}
        env |= {"OPENAI_API_KEY": FAKE_API_KEY, "ANTHROPIC_API_KEY": FAKE_API_KEY}
        env |= {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        self._policy = policy
        self._before = policy.get("/stats")
        self._results: dict[str, Finished] = {}
        self._processes = {
            name: subprocess.Popen(
                [sys.executable, str(EXAMPLES / name), "--fast", *args],
                cwd=work,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for name, args in commands.items()
        }

    def wait(self, name: str) -> Finished:
        """Wait for ``name`` (call it for the guide example before using the servers)."""
        if name not in self._results:
            process = self._processes[name]
            out, err = process.communicate(timeout=300)
            assert process.returncode == 0, f"{name} failed:\n{out}\n{err[-3000:]}"
            delta = {}
            if name == self.GUIDE:
                after = self._policy.get("/stats")
                delta = {k: int(after[k]) - int(self._before[k]) for k in after}
            self._results[name] = Finished(out, delta)
        return self._results[name]

    def close(self) -> None:
        for process in self._processes.values():
            if process.poll() is None:
                process.kill()
            process.communicate()


@pytest.fixture(scope="session")
def examples(
    policy_dir: Path,
    qnet_dir: Path,
    servers: tuple[Served, Served],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Examples]:
    """Every example script running at once (one process each), in a temp folder."""
    work = tmp_path_factory.mktemp("examples")
    policy, qnet = servers
    models = ["--policy", str(policy_dir), "--max-turns", str(MAX_TURNS)]
    game = ["--params", PARAMS]
    guide = {
        "policy.model": f"openai/{policy.name}",
        "policy.api_base": policy.url,
        "policy.prompt": "none",
        "policy.max_turns_in_prompt": str(MAX_TURNS),
        "policy.max_tokens": "16",
        "env.params": PARAMS,
        "search.value_model_path": qnet.url,
    }
    resume = ["--run-dir", str(work / "resume-run"), "--stop-after", "4"]
    commands = {
        "embed_in_your_app.py": [*models, "--qnet", str(qnet_dir), *game],
        "your_own_environment.py": [*models, "--qnet", str(qnet_dir)],
        "langgraph_node.py": [*models, "--qnet", str(qnet_dir), *game],
        "resume_exploration.py": [*models, *game, *resume],
        Examples.GUIDE: [arg for k, v in guide.items() for arg in ("--set", f"{k}={v}")],
    }
    running = Examples(work, commands, policy)
    try:
        yield running
    finally:
        running.close()
