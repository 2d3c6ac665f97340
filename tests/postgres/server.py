"""Start a throwaway PostgreSQL cluster (for the tests and benchmarks/bench_reliability).

``initdb`` into a temporary directory, ``pg_ctl start`` on a free loopback port with
password authentication and no SSL; stopped and deleted on exit. PostgreSQL refuses to run
as root, so under root the cluster belongs to the ``postgres`` system user (created by
Debian's package) and is driven with ``runuser``.

URLs carry a password and ``ssl=disable``: otherwise asyncpg looks for ``~/.pgpass`` and
client certificates with blocking file I/O, which the blockbuster guard reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url


class PostgresUnavailable(Exception):
    """No server can be started here; the message says why."""


@dataclass(frozen=True)
class PostgresServer:
    """A running server: ``url`` names its maintenance database ``postgres``."""

    url: str

    async def create_database_async(self) -> str:
        """A new empty database; returns its asyncpg URL."""
        import asyncpg

        admin = make_url(self.url)
        dsn = admin.set(drivername="postgresql", query={}).render_as_string(hide_password=False)
        name = f"qlass_test_{uuid.uuid4().hex[:12]}"
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()
        return admin.set(database=name).render_as_string(hide_password=False)

    def create_database(self) -> str:
        """:meth:`create_database_async` from sync code."""
        return asyncio.run(self.create_database_async())


def _bindir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parts[-3])
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A server for the block: ``QLASS_TEST_POSTGRES_URL`` if set, else a new cluster.

    Raises:
        PostgresUnavailable: no server binaries, or no user to run them as.
    """
    given = os.environ.get("QLASS_TEST_POSTGRES_URL")
    if given:
        yield PostgresServer(given)
        return
    bindir = _bindir()
    if bindir is None:
        raise PostgresUnavailable(
            "PostgreSQL server binaries not found (install Debian's 'postgresql' package, "
            "e.g. with scripts/ensure-test-deps.sh, or set QLASS_TEST_POSTGRES_URL)"
        )
    as_root = os.geteuid() == 0
    owner = None
    if as_root:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable(
                "running as root and there is no 'postgres' user to run the server"
            ) from None
    # Not under pytest's tmp dir: that is private to root, and the server runs as postgres.
    base = Path(tempfile.mkdtemp(prefix="qlass-pg-"))
    password = secrets.token_hex(12)
    (base / "pw").write_text(password)
    if owner is not None:
        for path in (base, base / "pw"):
            os.chown(path, owner.pw_uid, owner.pw_gid)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [str(bindir / args[0]), *args[1:]]
        if as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    data, port = base / "data", _free_port()
    try:
        init = run(
            "initdb", "-D", str(data), "-U", "qlass", f"--pwfile={base / 'pw'}",
            "--auth=scram-sha-256", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
        options = (
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c ssl=off -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        started = run(
            "pg_ctl", "-D", str(data), "-l", str(base / "log"), "-o", options, "-w", "start"
        )
        if started.returncode != 0:
            log = (base / "log").read_text() if (base / "log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed:\n{started.stderr}\n{log}")
        try:
            yield PostgresServer(
                f"postgresql+asyncpg://qlass:{password}@127.0.0.1:{port}/postgres?ssl=disable"
            )
        finally:
            run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(base, ignore_errors=True)
