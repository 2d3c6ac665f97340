"""A damaged QNet checkpoint is one clear line, from the API and from ``qlass serve-qnet``."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from qlass.errors import MissingDataError
from qlass.qnet.model import HEAD_FILE, QNet


@pytest.fixture
def truncated_head(qnet_dir: Path, tmp_path: Path) -> Path:
    broken = tmp_path / "qnet-truncated"
    shutil.copytree(qnet_dir, broken)
    head = broken / HEAD_FILE
    head.write_bytes(head.read_bytes()[:200])  # a copy cut short
    return broken


def test_a_truncated_value_head_is_a_missing_data_error(truncated_head: Path) -> None:
    with pytest.raises(MissingDataError, match="is not a usable value head") as info:
        QNet.from_pretrained(truncated_head)
    assert str(truncated_head / HEAD_FILE) in str(info.value)
    assert "\n" not in str(info.value)


def test_serve_qnet_on_a_truncated_head_fails_before_it_is_ready(truncated_head: Path) -> None:
    from qlass.qnet.server import serve

    ready: list[bool] = []
    with pytest.raises(MissingDataError):
        serve(truncated_head, port=0, device="cpu", on_ready=lambda: ready.append(True))
    assert ready == []


def test_serve_qnet_cli_prints_one_line(
    truncated_head: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from qlass.cli import main

    monkeypatch.setattr(sys, "argv", ["qlass", "serve-qnet", str(truncated_head), "--port", "0"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert f"error: {truncated_head / HEAD_FILE} is not a usable value head" in err
    assert "Traceback" not in err
