"""``qlass envs`` commands, run through the real CLI app."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from qlass.cli import app


def test_list_shows_every_env_with_split_counts(cli: CliRunner) -> None:
    result = cli.invoke(app, ["envs", "list"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    for name in ["textworld_express", "scienceworld", "webshop", "alfworld"]:
        assert name in result.output
    assert "1483" in result.output and "194" in result.output and "211" in result.output
    assert "ALFWORLD_DATA" in result.output


def test_tasks_prints_keys_in_run_order(cli: CliRunner) -> None:
    result = cli.invoke(app, ["envs", "tasks", "sciworld", "--split", "seen", "-n", "2"])
    assert result.exit_code == 0, result.output
    assert result.output.split() == [
        "scienceworld/test-conductivity-of-unknown-substances[easy]/dev/418",
        "scienceworld/find-living-thing[easy]/dev/186",
    ]


def test_play_reads_actions_until_the_task_is_won(cli: CliRunner) -> None:
    args = [
        "envs",
        "play",
        "twx",
        "coin",
        "--variation",
        "1",
        "--params",
        "numLocations=3,includeDoors=0",
    ]
    result = cli.invoke(app, args, input="look around\n\ntake coin\n")
    assert result.exit_code == 0, result.output
    assert "Your task is to search the environment and find the coin" in result.output
    assert "You take the coin." in result.output
    assert "success: final score 1.00" in result.output


def test_play_stops_at_quit_and_rejects_unknown_tasks(cli: CliRunner) -> None:
    result = cli.invoke(app, ["envs", "play", "twx", "sorting"], input="quit\n")
    assert result.exit_code == 0 and "step 1" not in result.output
    bad = cli.invoke(app, ["envs", "play", "twx", "chess"])
    assert bad.exit_code != 0 and "unknown TextWorldExpress game 'chess'" in str(bad.exception)


def test_gold_writes_trajectories_with_a_summary(cli: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "gold.jsonl"
    args = [
        "envs",
        "gold",
        "twx",
        "--split",
        "dev",
        "-g",
        "arithmetic",
        "-n",
        "3",
        "--out",
        str(out),
    ]
    result = cli.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote 3 of 3 trajectories" in result.output and "skipped 0" in result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["task"]["key"] for r in records] == [
        "textworld_express/arithmetic/dev/10000",
        "textworld_express/arithmetic/dev/10001",
        "textworld_express/arithmetic/dev/10002",
    ]


def test_play_rejects_a_line_that_is_not_utf8_and_plays_on() -> None:
    # A real process and a real stdin: bytes typed in another encoding reach the reader.
    args = ["envs", "play", "twx", "coin", "--variation", "1"]
    done = subprocess.run(
        [sys.executable, "-m", "qlass", *args, "--params", "numLocations=3,includeDoors=0"],
        input=b"look around\n\xff\xfe take coin\ntake coin\n",
        capture_output=True,
        timeout=120,
        check=False,
    )
    out, err = done.stdout.decode(), done.stderr.decode(errors="replace")
    assert done.returncode == 0, err[-3000:]
    assert out.count("that line is not valid UTF-8 text; type the action again") == 1
    assert "success: final score 1.00" in out  # the simulator survived and played on
    assert "step 2 " in out and "step 3 " not in out  # the bad line was not a step
    assert "Traceback" not in err + out
