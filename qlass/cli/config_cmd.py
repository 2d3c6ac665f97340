"""``qlass config``: show and check run configurations."""

from __future__ import annotations

import os

import typer

from qlass._log import redact
from qlass.cli._common import ConfigOption, DbOption, SetOption, mask_passwords, resolve_config
from qlass.config import env_overrides


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Show and check run configurations.", no_args_is_help=True)
    app.add_typer(group, name="config")

    @group.command("show")
    def show(config: ConfigOption = None, set_: SetOption = None, db: DbOption = None) -> None:
        """Print the resolved configuration (defaults < file < QLASS_* environment
        variables < --set) as JSON; the fields set by the environment are listed on stderr.

        Passwords in URLs (a PostgreSQL store) are shown as ***, as in every message.
        """
        resolved = resolve_config(config, set_, db)
        typer.echo(redact(mask_passwords(resolved.model_dump_json(indent=2))))
        given = {item.partition("=")[0].strip() for item in set_ or []}
        if db is not None:
            given.add("store.url")
        for item in env_overrides(os.environ):
            beaten = " (overridden on the command line)" if item.field in given else ""
            typer.echo(f"from the environment: {item.field} ({item.variable}){beaten}", err=True)
