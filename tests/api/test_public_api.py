"""``qlass/__init__.py``: a sorted ``__all__``, every name resolves, and importing is light."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import qlass


def _isort_key(name: str) -> tuple[int, str]:
    """ruff's RUF022 order: CONSTANTS, then Classes, then everything else; each sorted."""
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


def test_all_is_sorted_and_unique() -> None:
    assert qlass.__all__ == sorted(qlass.__all__, key=_isort_key)
    assert len(set(qlass.__all__)) == len(qlass.__all__)


def test_every_public_name_resolves_to_its_defining_module() -> None:
    for name in qlass.__all__:
        value = getattr(qlass, name)
        assert value is not None, name
        if name == "__version__":
            continue
        module = importlib.import_module(qlass._LAZY[name])
        assert getattr(module, name) is value, name
    assert set(qlass._LAZY) | {"__version__"} == set(qlass.__all__)
    assert set(qlass.__all__) <= set(dir(qlass))


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        _ = qlass.NoSuchThing  # type: ignore[attr-defined]


def test_import_qlass_loads_no_heavy_dependency() -> None:
    code = (
        "import sys, qlass; from qlass import Agent, History, TaskSpec; "
        "heavy = [m for m in ('torch', 'transformers', 'litellm', 'sqlalchemy', 'langgraph') "
        "if m in sys.modules]; print(','.join(heavy) or 'none')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "none"
