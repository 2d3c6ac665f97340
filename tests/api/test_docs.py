"""The docs site's sources stay in step with the code: every page in mkdocs.yml's nav
exists, and every ``::: module`` of the API reference imports (``make docs`` builds it)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _nav_files(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [f for item in node for f in _nav_files(item)]
    if isinstance(node, dict):
        return [f for value in node.values() for f in _nav_files(value)]
    return []


def test_nav_pages_exist() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = _nav_files(config["nav"])
    assert "embedding.md" in pages and "api-models.md" in pages and "reference/agent.md" in pages
    missing = [p for p in pages if not (ROOT / "docs" / p).is_file()]
    assert not missing


def test_reference_targets_import() -> None:
    targets = [
        match
        for page in sorted((ROOT / "docs" / "reference").glob("*.md"))
        for match in re.findall(r"^::: ([\w.]+)$", page.read_text(), re.M)
    ]
    assert "qlass.agent" in targets and "qlass.integrations.langgraph" in targets
    for target in targets:
        module = importlib.import_module(target)
        assert module.__doc__, f"{target} has no module docstring"
