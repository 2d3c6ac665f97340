"""The ``qlass`` command line. Thin: parse arguments, build objects, call the runtime.

Each command group lives in its own module and is registered on :data:`app` below.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from qlass._log import configure_logging, redact
from qlass._version import __version__
from qlass.cli import (
    config_cmd,
    demo_cmd,
    envs_cmd,
    qnet_cmd,
    report_cmd,
    run_cmd,
    serve_cmd,
    store_cmd,
    study_cmd,
    sweep_cmd,
)
from qlass.errors import MissingDependencyError, QlassError, UserError

__all__ = ["app", "main"]

app = typer.Typer(
    name="qlass",
    help="Q-guided stepwise search for language agents (QLASS): explore, label, train a "
    "QNet, and search with it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"qlass {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
    log_json: Annotated[
        bool, typer.Option("--log-json", help="Log one JSON object per line (for machines).")
    ] = False,
    log_level: Annotated[
        str, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")
    ] = "INFO",
) -> None:
    # The CLI owns the process: every library's log records go through qlass's handler.
    configure_logging(json_logs=log_json, level=log_level, route_libraries=True)


config_cmd.register(app)
envs_cmd.register(app)
run_cmd.register(app)
demo_cmd.register(app)
serve_cmd.register(app)
store_cmd.register(app)
qnet_cmd.register(app)
report_cmd.register(app)
study_cmd.register(app)
sweep_cmd.register(app)


def main() -> None:
    """Console entry point: run the app and turn qlass errors into clear messages."""
    # qlass shows its own progress bars; the libraries' per-file bars would interleave.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        app()
    except QlassError as exc:
        kind = "error" if isinstance(exc, UserError) else "failed"
        typer.secho(f"{kind}: {redact(str(exc))}", err=True, fg=typer.colors.RED)
        sys.exit(2 if isinstance(exc, UserError) else 1)
    except ImportError as exc:  # an optional part imported by a command of a light install
        command = " ".join(["qlass", *sys.argv[1:2]])
        missing = MissingDependencyError.of_import(exc, command)
        if missing is None:
            raise
        typer.secho(f"error: {missing}", err=True, fg=typer.colors.RED)
        sys.exit(2)
