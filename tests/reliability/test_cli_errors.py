"""What a user sees when ``qlass explore`` / ``qlass eval`` is given a bad config or a bad
store: one clear line naming the field or the problem, exit code 2 for input to fix (1 for
a store that cannot be used), and nothing created or started before the check."""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest

from qlass.cli import main

BASE = [
    "--set",
    "policy.backend=scripted",
    "--set",
    "policy.model=look around",
    "--set",
    "env.games=[coin]",
    "--set",
    "env.train_tasks=1",
]


def _run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["qlass", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    code = exit_info.value.code
    return code if isinstance(code, int) else 1, capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "override", "message"),
    [
        ("explore", "env.name=nope", "env.name: unknown env 'nope'; choose one of:"),
        ("explore", "env.games=[coinn]", "env.games: unknown TextWorldExpress game 'coinn'"),
        ("explore", "explore.width=0", "explore.width: Input should be greater than"),
        ("explore", "policy.backend=nope", "policy.backend: unknown policy backend 'nope'"),
        ("explore", "search.value_model=nope", "search.value_model: unknown value model"),
        ("explore", "nonsense.field=1", "nonsense: Extra inputs are not permitted"),
        ("eval", "search.strategies=[qlas:2]", "search.strategies: unknown strategy 'qlas'"),
        ("eval", "search.strategies=[best_of_n:x]", "search.strategies: strategy 'best_of_n:x'"),
        ("eval", "self_train.strategy=qlass:0", "self_train.strategy: strategy 'qlass:0'"),
    ],
)
def test_bad_config_is_refused_up_front_naming_the_field(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
    override: str,
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    code, err = _run(
        monkeypatch, capsys, command, *BASE, "--set", f"run_dir={run_dir}", "--set", override
    )
    assert code == 2
    assert message in err
    assert err.strip().startswith("error: ")  # one line, no traceback
    assert not run_dir.exists()  # checked before the store (or anything) was created


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("bogus=3", "env.params: TextWorldExpress coin has no parameter 'bogus' (it takes: "),
        (
            "numLocations=abc",
            "env.params: TextWorldExpress parameter numLocations must be a whole number, got 'abc'",
        ),
        ("includeDoors=2", "env.params: TextWorldExpress parameter includeDoors must be 0 or 1"),
        ("numLocations", "env.params: TextWorldExpress parameter 'numLocations' must look like"),
    ],
)
def test_simulator_parameters_are_checked_before_any_work(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    params: str,
    message: str,
) -> None:
    """The simulator itself accepts numLocations=abc without a word and then generates no
    game: the gold stage used to be "done" with 0 trajectories and BC failed after it."""
    run_dir = tmp_path / "run"
    code, err = _run(
        monkeypatch,
        capsys,
        "run",
        *BASE,
        "--set",
        f"run_dir={run_dir}",
        "--set",
        f"env.params={params}",
    )
    assert code == 2
    assert err.strip().startswith(f"error: {message}") and "\n" not in err.strip()
    assert not run_dir.exists()


def test_envs_play_refuses_bad_parameters_before_a_simulator_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _run(
        monkeypatch, capsys, "envs", "play", "twx", "coin", "--params", "numLocations=abc"
    )
    assert code == 2  # it used to exit 0, showing the simulator's "ERROR: ..." as a room
    assert err.strip() == (
        "error: TextWorldExpress parameter numLocations must be a whole number, got 'abc'"
    )


def test_parameters_out_of_the_simulators_range_are_a_user_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ranges are the simulator's to check: it names them when the game loads."""
    code, err = _run(
        monkeypatch,
        capsys,
        "explore",
        *BASE,
        "--set",
        f"run_dir={tmp_path / 'run'}",
        "--set",
        "env.params=numLocations=99",
    )
    assert code == 2  # one clear line, not a traceback from inside the task group
    assert "error: TextWorldExpress rejected params 'numLocations=99': Number of locations" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--worker-id", "w1"], "--worker-id needs --worker"),
        (["--worker", "--lease-s", "0"], "Invalid value for '--lease-s'"),
        (["--resume", "nope", "--db", "missing.db"], "no tree store at missing.db"),
    ],
)
def test_bad_worker_and_resume_options(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = _run(monkeypatch, capsys, "explore", *args)
    assert code in (1, 2)
    assert message in err


def _explore_db(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp: Path, db: str
) -> tuple[int, str]:
    monkeypatch.chdir(tmp)
    return _run(
        monkeypatch, capsys, "explore", *BASE, "--set", f"run_dir={tmp / 'run'}", "--db", db
    )


def test_corrupt_foreign_and_newer_stores_are_refused_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database " * 300)
    code, err = _explore_db(monkeypatch, capsys, tmp_path, str(corrupt))
    assert code == 1
    assert "is not a usable database (not a SQLite file, or corrupt)" in err

    foreign = tmp_path / "foreign.db"  # someone else's tables, no qlass revision
    with sqlite3.connect(foreign) as connection:
        connection.execute("CREATE TABLE nodes (id INTEGER PRIMARY KEY, payload TEXT)")
    code, err = _explore_db(monkeypatch, capsys, tmp_path, str(foreign))
    assert code == 1
    assert "not a qlass" in err or "other tables" in err

    newer = tmp_path / "newer.db"  # written by a qlass from the future
    code, _ = _run(monkeypatch, capsys, "db", "upgrade", "--db", str(newer))
    assert code == 0
    with sqlite3.connect(newer) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '9999'")
    code, err = _explore_db(monkeypatch, capsys, tmp_path, str(newer))
    assert code == 1
    assert "9999" in err and "0001" in err
    code, err = _run(monkeypatch, capsys, "explore", "--resume", "x", "--db", str(newer))
    assert code == 1 and "9999" in err

    # Behind the newest schema (an empty file is at no revision): --resume, which must not
    # change the store it reads the config from, asks for the upgrade; the upgrade works.
    older = tmp_path / "older.db"
    sqlite3.connect(older).close()
    code, err = _run(monkeypatch, capsys, "explore", "--resume", "x", "--db", str(older))
    assert code == 1 and "qlass db upgrade" in err
    assert _run(monkeypatch, capsys, "db", "upgrade", "--db", str(older))[0] == 0
    code, err = _run(monkeypatch, capsys, "explore", "--resume", "x", "--db", str(older))
    assert code == 2 and "no run 'x' in the store" in err


def test_unreachable_server_is_clear_and_its_password_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "postgresql+asyncpg://qlass:hunter2-secret@127.0.0.1:1/qlass?ssl=disable"
    code, err = _explore_db(monkeypatch, capsys, tmp_path, url)
    assert code == 1
    assert "cannot reach database postgresql+asyncpg://qlass:***@127.0.0.1:1/qlass" in err
    assert "hunter2" not in err


@pytest.mark.slow
def test_locked_store_times_out_with_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "locked.db"
    assert _run(monkeypatch, capsys, "db", "upgrade", "--db", str(db))[0] == 0
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:  # another process's writer that never lets go
        connection = sqlite3.connect(db, isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")
        locked.set()
        release.wait(120)
        connection.execute("ROLLBACK")
        connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10)
        started = time.monotonic()
        code, err = _explore_db(monkeypatch, capsys, tmp_path, str(db))
    finally:
        release.set()
        holder.join()
    assert code == 1
    assert "is locked: another process held the write lock longer than the busy timeout" in err
    assert time.monotonic() - started >= 25  # it waited for the busy timeout first


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--stages", "gold,foo"], "error: --stages: unknown stage 'foo'; stages are gold"),
        (["run", "--stages", ""], "error: --stages is empty: name at least one of gold, bc"),
        (["run", "--stages", " , "], "error: --stages is empty"),
        (["explore", "--db", ""], "error: --db is empty: give a SQLite file path"),
        (["runs", "list", "--db", " "], "error: --db is empty"),
        (
            ["explore", "--resume", "demo", "--set", "explore.width=3"],
            "error: --resume demo runs with the config stored with the run; --set cannot",
        ),
        (
            ["eval", "--resume", "demo", "-c", "x.toml"],
            "error: --resume demo runs with the config stored with the run; --config cannot",
        ),
    ],
)
def test_bad_command_line_input_is_refused_before_anything_is_created(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    if args[0] == "run":
        args = [*args, *BASE, "--set", f"run_dir={run_dir}"]
    code, err = _run(monkeypatch, capsys, *args)
    assert code == 2
    assert err.strip().startswith(message)
    assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no store, no run folder, nothing


def test_resume_with_a_stored_run_still_refuses_config_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "store.db"
    assert _run(monkeypatch, capsys, "db", "upgrade", "--db", str(db))[0] == 0
    before = db.read_bytes()
    code, err = _run(
        monkeypatch, capsys, "explore", "--resume", "r", "--db", str(db), "-s", "seed=3"
    )
    assert code == 2 and "--set cannot be combined with it" in err
    assert db.read_bytes() == before


@pytest.mark.parametrize("text", ["", "# nothing set yet\n"])
@pytest.mark.parametrize("suffix", [".toml", ".yaml"])
def test_an_empty_config_file_is_refused_not_run_as_the_paper(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    text: str,
    suffix: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    config = tmp_path / f"empty{suffix}"
    config.write_text(text)
    code, err = _run(monkeypatch, capsys, "explore", "-c", str(config))
    assert code == 2
    assert err.startswith(f"error: config file {config} holds no settings: an empty config")
    assert "paper's full settings" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [config.name]


def test_config_show_masks_database_passwords(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "postgresql+asyncpg://qlass:hunter2-secret@db.example:5432/qlass"
    monkeypatch.setattr(sys, "argv", ["qlass", "config", "show", "--db", url])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert '"url": "postgresql+asyncpg://qlass:***@db.example:5432/qlass"' in out
    assert "hunter2" not in out


def test_env_server_url_and_data_dir_are_read_from_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """env.server_url and env.data_dir were never read (the WebShop message told users to
    set a field that was ignored): each now reaches its env, and one set for an env that
    does not read it is refused."""
    import socket

    monkeypatch.chdir(tmp_path)
    with socket.socket() as sock:  # bound, then closed: nobody listens on it
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    scripted = ["--set", "policy.backend=scripted", "--set", "env.train_tasks=1"]
    webshop = ["--set", "name=ws", "--set", "env.name=webshop", "--set", f"env.server_url={url}"]
    code, err = _run(
        monkeypatch, capsys, "explore", *webshop, *scripted, "--set", "policy.model=search[x]"
    )
    assert code == 1
    assert f"WebShop server unreachable for POST {url}/create" in err

    data = tmp_path / "no-alfworld-here"
    alfworld = ["--set", "name=af", "--set", "env.name=alfworld", "--set", f"env.data_dir={data}"]
    code, err = _run(
        monkeypatch, capsys, "explore", *alfworld, *scripted, "--set", "policy.model=look"
    )
    assert code == 2
    assert f"ALFWorld data not found: {data} (from data_dir)" in err

    before = sorted(tmp_path.iterdir())
    code, err = _run(monkeypatch, capsys, "explore", *BASE, "--set", f"env.server_url={url}")
    assert code == 2
    assert err.strip() == "error: env.server_url: the textworld_express env does not use it"
    assert sorted(tmp_path.iterdir()) == before  # nothing created
