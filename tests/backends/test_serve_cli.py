"""``qlass serve``'s command line (the running server is tested in test_serve_e2e.py)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from qlass.cli import app
from qlass.errors import ConfigError, MissingDataError


def test_help_explains_the_server_and_its_options(cli: CliRunner) -> None:
    result = cli.invoke(app, ["serve", "--help"], env={"COLUMNS": "160"})
    assert result.exit_code == 0
    for text in ["/v1/chat/completions", "hosted_vllm/NAME", "--max-batch", "--max-wait-ms"]:
        assert text in result.output


def test_missing_model_is_a_user_error(cli: CliRunner, tmp_path: Path) -> None:
    result = cli.invoke(app, ["serve", str(tmp_path / "missing"), "--port", "0"])
    assert isinstance(result.exception, MissingDataError)
    assert "no model at" in str(result.exception)


def test_busy_port_is_a_clear_error(cli: CliRunner, tiny_model_dir: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli.invoke(
            app, ["serve", str(tiny_model_dir), "--port", str(port), "--device", "cpu"]
        )
    assert isinstance(result.exception, ConfigError)
    assert f"cannot listen on 127.0.0.1:{port}" in str(result.exception)
