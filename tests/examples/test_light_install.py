"""The light core install: ``pip install qlass`` (no extras) in a fresh virtualenv pulls no
torch, transformers, simulators or matplotlib, and an Agent there guides a served "API"
model with a served QNet (both started from the full environment).

The fresh venv is installed offline from a wheel folder (``--no-index --find-links``) made
once per venv from ``requirements/core.lock`` (pinned, hash-checked); only that first
making reads PyPI (or pip's cache). Commands that need an extra answer with the extra to
install.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.examples.servers import Served

ROOT = Path(__file__).resolve().parents[2]
CORE_LOCK = ROOT / "requirements" / "core.lock"
BUILD_REQUIREMENTS = ("setuptools>=77", "wheel")  # pyproject.toml's [build-system]


def _pip(*args: str, python: Path | None = None) -> str:
    target = ["--python", str(python)] if python is not None else []
    command = [sys.executable, "-m", "pip", *target, *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def core_wheels() -> Path:
    """Wheels of every package of the core lock (and of the build backend), made once per
    lock in the running venv, so that later installs need no network."""
    digest = hashlib.sha256(CORE_LOCK.read_bytes()).hexdigest()[:16]
    folder = Path(sys.prefix) / "qlass-core-wheels" / digest
    if not (folder / ".complete").exists():
        _pip(
            "wheel",
            "--quiet",
            "--no-deps",
            "--require-hashes",
            "-r",
            str(CORE_LOCK),
            "-w",
            str(folder),
        )
        _pip("wheel", "--quiet", "--no-deps", *BUILD_REQUIREMENTS, "-w", str(folder))
        (folder / ".complete").touch()
    return folder


def _source_copy(target: Path) -> Path:
    """What the package is built from (no .venv, no build files left in the checkout)."""
    target.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, target / name)
    shutil.copytree(ROOT / "qlass", target / "qlass", ignore=shutil.ignore_patterns("__pycache__"))
    return target


def _site_packages_mb(prefix: Path) -> float:
    (site,) = (prefix / "lib").glob("python3*/site-packages")
    return sum(f.stat().st_size for f in site.rglob("*") if f.is_file()) / 2**20


@pytest.mark.timeout(900)  # the first run per venv also fetches the wheels (about 90 s)
def test_core_install_runs_an_agent_against_served_models(
    servers: tuple[Served, Served], tmp_path: Path
) -> None:
    wheels = core_wheels()
    venv = tmp_path / "light"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # --no-compile: byte-compiling LiteLLM's thousands of files is most of an install's time
    offline = ("--quiet", "--no-compile", "--no-index", "--find-links", str(wheels))
    _pip("install", *offline, "--require-hashes", "-r", str(CORE_LOCK), python=python)
    source = _source_copy(tmp_path / "src")
    _pip("install", *offline, "--no-deps", str(source), python=python)
    _pip("check", python=python)  # the core lock satisfies qlass's own requirements

    policy, qnet = servers
    script = Path(__file__).with_name("light_agent.py")
    done = subprocess.run(
        [str(python), str(script), policy.url, policy.name, qnet.url],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["qlass_file"].startswith(str(venv))  # the installed copy, not the checkout
    assert result["installed"] == [] and result["imported"] == []
    assert len(result["decision_values"]) == 2
    assert all(isinstance(v, float) for v in result["decision_values"])
    assert result["steps"] == 3 and result["stop_reason"] == "step_limit"
    assert result["completion_tokens"] > 0 and result["cost_usd"] > 0  # LiteLLM's price
    assert result["simulator_error"] == (
        "TextWorldExpress needs the 'textworld-express' package: pip install 'qlass[envs]'"
    )

    # The CLI works; a command that needs an extra names it (exit 2, no traceback).
    qlass = venv / "bin" / "qlass"
    assert subprocess.run([str(qlass), "--help"], capture_output=True, check=False).returncode == 0
    serve = subprocess.run(
        [str(qlass), "serve", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert serve.returncode == 2, serve.stderr
    assert "pip install 'qlass[local]'" in serve.stderr and "Traceback" not in serve.stderr
    print(
        f"site-packages: core install {_site_packages_mb(venv):.0f} MB, "
        f"this (dev) venv {_site_packages_mb(Path(sys.prefix)):.0f} MB"
    )
