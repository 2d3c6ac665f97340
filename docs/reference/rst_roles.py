"""mkdocs hook: render the Sphinx roles qlass docstrings use (:class:`~a.b.C`) as code.

The docstrings are written for both Sphinx-style readers and mkdocstrings; without this
hook a role shows as ``:class:`` followed by the dotted path. ``~`` keeps the last part.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):<code>(~?)([\w.]+)</code>")


def _render(match: re.Match[str]) -> str:
    short, path = match.groups()
    return f"<code>{path.rsplit('.', 1)[-1] if short else path}</code>"


def on_page_content(html: str, **_kwargs: Any) -> str:
    return _ROLE.sub(_render, html)
