"""The import rules of the architecture, read from the source with ``ast``.

Layers only look down (ARCHITECTURE.md): the shared foundation (types, errors, parsing,
chat rendering, config and the private helpers) imports nothing else of qlass; envs and
backends know nothing of storage or search; the QNet knows models only (the LLM judge asks
a policy); the store knows its schema only; the runtime composes them; the agent, the
integrations, the reports, the CLI and the public API sit on top. Every import counts,
those inside functions and under ``TYPE_CHECKING`` too, and no module may import itself
back through others (no circle).
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "qlass"

FOUNDATION = frozenset(
    {
        "types",
        "errors",
        "parsing",
        "chat",
        "config",
        "_batching",
        "_config_env",
        "_config_files",
        "_config_fingerprint",
        "_log",
        "_lora",
        "_registry",
        "_reproducibility",
        "_retry",
        "_seeding",
        "_torch",
        "_training",
        "_version",
    }
)
"""Top-level parts every layer may use."""

ALLOWED: dict[str, frozenset[str]] = {
    "envs": FOUNDATION,
    "backends": FOUNDATION,
    "qnet": FOUNDATION | {"backends"},
    "storage": FOUNDATION,
    "runtime": FOUNDATION | {"envs", "backends", "qnet", "storage"},
    "testing": FOUNDATION | {"storage"},
    "agent": FOUNDATION | {"envs", "backends", "qnet", "runtime"},
    "integrations": FOUNDATION | {"agent", "envs"},
    "report": FOUNDATION | {"envs", "backends", "qnet", "storage", "runtime"},
    "cli": FOUNDATION
    | {"envs", "backends", "qnet", "storage", "runtime", "agent", "report", "testing"},
}
"""What each part (a subpackage or a top-level module) may import besides itself. The
foundation modules, ``qlass/__init__.py`` and ``__main__`` are checked separately."""

FOUNDATION_ORDER = ("types", "errors", "parsing", "chat", "config")
"""Among the public foundation modules, each may import only those before it and the
private helpers; a private helper (``_retry``...) only ``types``, ``errors`` and the other
helpers."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """The qlass modules ``path`` imports (anywhere in the file), as module names."""

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            assert node.level == 0, f"{path}: relative import of {node.module}"
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        for name in names:
            if name == "qlass" or name.startswith("qlass."):
                found = resolve(name)
                if found is not None:
                    yield found


def _part(module: str) -> str:
    """``qlass.runtime.stages.bc`` -> ``runtime``; ``qlass.agent`` -> ``agent``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "qlass"


@functools.cache
def _parsed_graph() -> dict[str, frozenset[str]]:
    modules = _modules()
    return {
        name: frozenset(
            m for m in _imports(path, modules) if m != name and not name.startswith(m + ".")
        )
        for name, path in modules.items()
    }


def _graph() -> dict[str, set[str]]:
    """Module -> the qlass modules it imports (a fresh copy each call)."""
    return {name: set(targets) for name, targets in _parsed_graph().items()}


def test_every_part_of_the_package_has_a_rule() -> None:
    parts = {_part(m) for m in _modules()}
    assert parts - set(ALLOWED) - FOUNDATION - {"qlass", "__main__"} == set()


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_no_part_reaches_upward(part: str) -> None:
    graph = _graph()
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if _part(module) == part
        for target in targets
        if _part(target) not in ALLOWED[part] | {part}
    )
    assert wrong == []


def test_the_foundation_imports_only_the_foundation_below_it() -> None:
    graph = _graph()
    wrong = []
    for module, targets in graph.items():
        part = _part(module)
        if part not in FOUNDATION:
            continue
        below = FOUNDATION - set(FOUNDATION_ORDER)
        if part in FOUNDATION_ORDER:
            below |= set(FOUNDATION_ORDER[: FOUNDATION_ORDER.index(part)])
        else:
            below |= {"types", "errors"}
        wrong += [f"{module} imports {t}" for t in targets if _part(t) not in below | {part}]
    assert sorted(wrong) == []


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_back() -> None:
    assert _circles(_graph()) == []


def test_the_checks_see_an_upward_import_and_a_circle() -> None:
    """The rules above would catch what they forbid (they are not vacuous)."""
    graph = _graph()
    assert "qlass.storage" in graph["qlass.runtime.pipeline"]  # imports are seen
    assert "qlass.runtime.stages.base" in graph["qlass.runtime.stages.bc"]
    graph["qlass.envs.pool"] = graph["qlass.envs.pool"] | {"qlass.runtime.context"}
    assert _part("qlass.runtime.context") not in ALLOWED["envs"]
    graph["qlass.runtime.context"] = graph["qlass.runtime.context"] | {"qlass.envs.pool"}
    assert ["qlass.envs.pool", "qlass.runtime.context"] in _circles(graph)


def test_modules_stay_under_500_lines() -> None:
    # qlass/report/ is being rebuilt (the viewer on Jinja2); report/tables.py (558 lines) is
    # left to that change and exempt until it lands.
    long = {
        name: n
        for name, path in _modules().items()
        if (n := len(path.read_text().splitlines())) >= 500 and not name.startswith("qlass.report")
    }
    assert long == {}
