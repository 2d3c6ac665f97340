"""``--help`` of every qlass command names value types the way click does (TEXT, INTEGER,
PATH) and shows none for flags.

typer 0.27 started printing types as ``<str>``/``<int>``, and typer 0.29's rich help panel
prints ``<bool>`` beside every flag (which takes no value); pyproject.toml keeps typer
below 0.27. This test fails on those versions.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from qlass.cli import app


def _command_paths(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    # typer 0.26+ builds its commands on its own copy of click: groups are found by duck type.
    yield path
    for name, sub in getattr(command, "commands", {}).items():
        yield from _command_paths(sub, (*path, name))


COMMANDS = list(_command_paths(typer.main.get_command(app)))


def test_every_command_group_is_walked() -> None:
    assert ("demo",) in COMMANDS and ("config", "show") in COMMANDS and ("view",) in COMMANDS


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: " ".join(path) or "qlass")
def test_help_shows_no_angle_bracket_types(cli: CliRunner, path: tuple[str, ...]) -> None:
    result = cli.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output
    assert not re.search(r"<(str|int|float|path|file|bool|list\[\w+\])>", result.output)


def test_flags_show_no_type_and_values_show_click_names(cli: CliRunner) -> None:
    result = cli.invoke(app, ["demo", "--help"], env={"COLUMNS": "200"})
    lines = {line.split()[1]: line for line in result.output.splitlines() if "│ --" in line}
    assert lines["--quick"].split()[2] == "A"  # flag: its help text follows the name
    assert "TEXT" in lines["--env"].split()


@pytest.mark.parametrize(
    ("path", "text"),
    [
        (("view",), "coin[numLocations=5,includeDoors=0]/train/3"),
        (("export",), "pip install 'qlass[datasets]'"),
    ],
)
def test_square_brackets_in_help_are_text_not_rich_markup(
    cli: CliRunner, path: tuple[str, ...], text: str
) -> None:
    result = cli.invoke(app, [*path, "--help"], env={"COLUMNS": "250"})
    assert text in result.output
