"""The Jinja2 environment of the HTML pages (tree viewer, episode viewer).

Templates are package data under ``qlass/report/templates/``. Autoescaping is on for every
template, so any text from a simulator or a model (observations, model outputs, task
instructions) is HTML-escaped wherever a template prints it; only the templates' own markup
reaches the page as markup. Undefined names fail the render instead of printing nothing.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

__all__ = ["MAX_TEXT", "cut", "number", "render_page"]

MAX_TEXT = 20_000
"""Characters of any one text put in a page at most (the rest is cut, and says so)."""


def cut(text: str, limit: int = MAX_TEXT) -> str:
    """``text``, or its first ``limit`` characters and how many were left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n… ({len(text) - limit} more characters not shown)"


def number(value: float | None, digits: int = 4) -> str:
    """A number for the page: fixed digits, ``–`` for none, ``−∞``/``∞`` for infinities
    (Best-of-N values an invalid rollout at minus infinity)."""
    if value is None:
        return "–"
    if math.isinf(value):
        return "−∞" if value < 0 else "∞"
    return f"{value:.{digits}f}"


@cache
def _environment() -> Environment:
    # Built once per process: the loader and the compiled templates are immutable after that.
    environment = Environment(
        loader=PackageLoader("qlass.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters["num"] = number
    environment.filters["cut"] = cut
    environment.filters["py_repr"] = repr
    return environment


def render_page(template: str, **context: Any) -> str:
    """Render one of the package's templates (``trees.html``, ``episodes.html``)."""
    return _environment().get_template(template).render(**context)
