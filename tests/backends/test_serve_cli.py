"""``qlass serve``'s command line (the running server is tested in test_serve_e2e.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from qlass.cli import app
from qlass.errors import ConfigError, MissingDataError


def test_help_explains_the_server_and_its_options(cli: CliRunner) -> None:
    result = cli.invoke(app, ["serve", "--help"], env={"COLUMNS": "160"})
    assert result.exit_code == 0
    for text in ["/v1/chat/completions", "hosted_vllm/NAME", "--max-batch", "--trim-history"]:
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


def test_a_corrupt_config_json_is_one_line_not_a_traceback(
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import shutil
    import sys

    from qlass.cli import main

    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "config.json").write_text('{"model_type": "llama", "hidden_size": ')
    monkeypatch.setattr(sys, "argv", ["qlass", "serve", str(broken), "--port", "0"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith(f"error: cannot load the model in {broken}: ")
    assert "config.json" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
