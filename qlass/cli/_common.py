"""Options and helpers shared by the ``qlass`` commands (kept here so commands stay thin)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated

import typer

from qlass.config import RunConfig, load_config
from qlass.errors import ConfigError

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Run configuration file (.toml or .yaml). Defaults are the paper's settings.",
        exists=False,
        dir_okay=False,
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Override a config value, e.g. --set explore.width=3 (repeatable).",
        metavar="SECTION.FIELD=VALUE",
    ),
]
DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Tree store: a SQLite file path or a SQLAlchemy URL (overrides store.url).",
        metavar="PATH|URL",
    ),
]


_PASSWORD_IN_URL = re.compile(r"(://[^:/@\s\"]*:)[^\s/\"]+(@)")


def mask_passwords(text: str) -> str:
    """``scheme://user:secret@host`` -> ``scheme://user:***@host``, wherever it occurs."""
    return _PASSWORD_IN_URL.sub(r"\1***\2", text)


def db_url(db: str) -> str:
    """Accept a plain file path as shorthand for ``sqlite+aiosqlite:///PATH``."""
    if not db.strip():
        raise ConfigError("--db is empty: give a SQLite file path or a database URL")
    return db if "://" in db else f"sqlite+aiosqlite:///{db}"


def resolve_config(config: Path | None, overrides: list[str] | None, db: str | None) -> RunConfig:
    """Load the config file, apply the ``QLASS_*`` environment variables, the ``--set``
    overrides, then ``--db``."""
    items = list(overrides or [])
    if db is not None:
        items.append(f"store.url={db_url(db)}")
    return load_config(config, items, environ=os.environ)
