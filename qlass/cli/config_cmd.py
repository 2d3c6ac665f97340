"""``qlass config``: show and check run configurations."""

from __future__ import annotations

import typer

from qlass.cli._common import ConfigOption, DbOption, SetOption, resolve_config


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Show and check run configurations.", no_args_is_help=True)
    app.add_typer(group, name="config")

    @group.command("show")
    def show(config: ConfigOption = None, set_: SetOption = None, db: DbOption = None) -> None:
        """Print the resolved configuration (file + overrides + defaults) as JSON."""
        resolved = resolve_config(config, set_, db)
        typer.echo(resolved.model_dump_json(indent=2))
