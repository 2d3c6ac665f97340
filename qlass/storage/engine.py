"""Create the SQLAlchemy engines of a tree store and translate driver errors.

A store has an async engine (reads, and every write elsewhere than a SQLite file) and, on
a SQLite file, a sync writer engine for its writer thread (:func:`make_writer_engine`,
see :class:`qlass.storage._db.Database`); both set their connections up the same way.

Any SQLAlchemy async URL is accepted (``sqlite+aiosqlite:///FILE``,
``postgresql+asyncpg://...``); a bare file path is shorthand for a SQLite file, and the sync
driver names ``sqlite://`` and ``postgresql://`` are mapped to their async drivers.

SQLite connections are set up by a connect event: WAL journal (readers never block the
writer), a busy timeout (a writer in another process waits instead of failing),
foreign keys on, ``synchronous=NORMAL`` (safe with WAL; a power cut may lose the last
commits but never corrupts the file). SQLAlchemy, not the sqlite3 driver, emits ``BEGIN``:
plain ``BEGIN`` for reads and ``BEGIN IMMEDIATE`` for sessions opened with the
``qlass_write`` execution option, so a write transaction takes the file's write lock up
front and the busy timeout applies to it (a deferred transaction that reads first and
writes later can fail at once with "database is locked" when another process wrote in
between).

JSON columns are written as strict JSON: a non-finite float (``inf``, ``nan``, for example the
value of an unscored Best-of-N episode) is stored as ``null``. Python's ``json`` would write
``-Infinity``, which SQLite accepts and PostgreSQL's ``json`` type rejects.

``read_only=True`` (the commands that only look: ``qlass runs``, ``report``, ``view``, the
config of ``--resume``) opens a SQLite file with ``mode=ro`` and ``PRAGMA query_only``, and
sets no journal mode, so a file that is not a qlass store (a foreign database, an empty
file) is left byte for byte as it was. In a folder this process cannot write, the file is
opened ``immutable`` (SQLite could not create the ``-shm`` file a WAL reader needs); on
PostgreSQL the transactions are ``READ ONLY``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from sqlalchemy import create_engine, event, exc
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool

from qlass.errors import DatabaseUnavailableError, StoreError

__all__ = [
    "WRITE_OPTION",
    "check_writable",
    "make_engine",
    "make_writer_engine",
    "normalize_url",
    "safe_url",
    "sqlite_file",
    "translate_error",
]

WRITE_OPTION = "qlass_write"
"""Execution option that marks a connection as the store's writer (``BEGIN IMMEDIATE``)."""

_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}


def normalize_url(url_or_path: str | Path | URL) -> URL:
    """Parse a SQLAlchemy URL or a plain file path into an async-driver URL."""
    if isinstance(url_or_path, URL):
        url_or_path = url_or_path.render_as_string(hide_password=False)
    text = str(url_or_path)
    if "://" not in text:
        return URL.create("sqlite+aiosqlite", database=text)
    try:
        url = make_url(text)
    except exc.ArgumentError as error:
        raise DatabaseUnavailableError(f"not a database URL: {text!r} ({error})") from error
    if url.drivername in _ASYNC_DRIVERS:
        url = url.set(drivername=_ASYNC_DRIVERS[url.drivername])
    return url


def safe_url(url: URL | str) -> str:
    """The URL as text with any password masked (for messages and logs)."""
    parsed = url if isinstance(url, URL) else normalize_url(url)
    return parsed.render_as_string(hide_password=True)


def sqlite_file(url: URL | str) -> Path | None:
    """The database file of a SQLite URL; ``None`` for in-memory or other databases."""
    parsed = url if isinstance(url, URL) else normalize_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if database.startswith("file:"):  # a URI filename (``uri=true``), as read_only makes
        location, _, options = database[len("file:") :].partition("?")
        if "mode=memory" in options.split("&") or location in ("", ":memory:"):
            return None
        return Path(unquote(location))
    if database in ("", ":memory:"):
        return None
    return Path(database)


def strict_json(value: Any) -> str:
    """``value`` as strict JSON text, with non-finite floats as ``null``."""
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:  # rare: only values that hold inf or nan take the slow path
        return json.dumps(_finite(value), allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _is_memory(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and sqlite_file(url) is None


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK | (os.X_OK if path.is_dir() else 0))


def check_writable(path: Path) -> None:
    """Fail before any work when this process cannot write the SQLite store at ``path``.

    SQLite writes its journal (``-wal``, ``-shm``) beside the database, so the folder must
    be writable as well as the file. ``path``'s folder must exist.

    Raises:
        DatabaseUnavailableError: the file, a journal file or the folder is read-only.
    """
    for file in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal"))):
        if file.exists() and not _writable(file):
            raise DatabaseUnavailableError(
                f"the tree store {file} is read-only for this user: this command writes to "
                "it (read-only commands such as `qlass runs show` still work); make it "
                "writable or give another store with --db"
            )
    if not _writable(path.parent):
        raise DatabaseUnavailableError(
            f"the folder {path.parent} of the tree store {path.name} is read-only for this "
            f"user: SQLite writes its journal files ({path.name}-wal, {path.name}-shm) beside "
            "the store, so the folder must be writable too (read-only commands such as "
            "`qlass runs show` still work); make it writable or copy the store elsewhere"
        )


def _read_only_url(url: URL) -> URL:
    """A ``mode=ro`` URI for the SQLite file of ``url`` (see the module docstring)."""
    path = sqlite_file(url)
    if path is None:
        return url
    options = "mode=ro"
    wal = path.with_name(path.name + "-wal")
    if not _writable(path.parent) and not (wal.exists() and wal.stat().st_size > 0):
        # Nothing is in a WAL file, and nobody can write here: the file is all there is.
        options += "&immutable=1"
    return URL.create(
        url.drivername,
        database=f"file:{quote(str(path.absolute()))}?{options}",
        query={"uri": "true"},
    )


def make_engine(
    url_or_path: str | Path | URL,
    *,
    busy_timeout_s: float = 30.0,
    echo: bool = False,
    read_only: bool = False,
    **engine_kwargs: Any,
) -> AsyncEngine:
    """Create the async engine for ``url_or_path``, with the SQLite set-up described above.

    Nothing connects yet; connection errors surface on first use (see :func:`translate_error`).
    ``read_only`` checks the file system (call it from a worker thread on an event loop).
    """
    url = normalize_url(url_or_path)
    if (
        url.get_backend_name() == "sqlite"
        and not _is_memory(url)
        and "poolclass" not in engine_kwargs
    ):
        # Each aiosqlite connection is a thread, started on the event loop (blocking it
        # until the thread runs: tens of ms on a loaded machine). SQLAlchemy's default
        # pool (5 kept + 10 overflow) closes overflow connections on return, so under
        # load connections were opened and closed over and over; keeping all 15 keeps
        # the same limit without the churn.
        engine_kwargs.setdefault("pool_size", 15)
        engine_kwargs.setdefault("max_overflow", 0)
    if read_only and url.get_backend_name() == "sqlite":
        url = _read_only_url(url)
    elif read_only and url.get_backend_name() == "postgresql":
        options = dict(engine_kwargs.pop("execution_options", None) or {})
        engine_kwargs["execution_options"] = {**options, "postgresql_readonly": True}
    try:
        engine = create_async_engine(url, echo=echo, json_serializer=strict_json, **engine_kwargs)
    except (exc.ArgumentError, exc.NoSuchModuleError, ImportError) as error:
        raise DatabaseUnavailableError(
            f"cannot use database URL {safe_url(url)}: {error}"
        ) from error
    if url.get_backend_name() == "sqlite":
        _install_sqlite_hooks(
            engine.sync_engine,
            busy_ms=int(busy_timeout_s * 1000),
            wal=not _is_memory(url) and not read_only,
            read_only=read_only,
        )
    return engine


def make_writer_engine(url_or_path: str | Path | URL, *, busy_timeout_s: float = 30.0) -> Engine:
    """A sync engine on a SQLite file, for the store's writer thread (see
    :class:`qlass.storage._db.Database`), with the same connection set-up as
    :func:`make_engine` and ``BEGIN IMMEDIATE`` for every transaction.

    It holds one connection, made and used in that one thread; ``check_same_thread`` is
    off only so that SQLAlchemy may close it from elsewhere at exit.
    """
    url = normalize_url(url_or_path)
    if url.get_backend_name() != "sqlite" or _is_memory(url):
        raise ValueError(f"a writer engine is for a SQLite file, not {safe_url(url)}")
    writer = create_engine(
        url.set(drivername="sqlite+pysqlite"),
        json_serializer=strict_json,
        poolclass=QueuePool,
        pool_size=1,
        max_overflow=0,
        connect_args={"check_same_thread": False},
        execution_options={WRITE_OPTION: True},
    )
    _install_sqlite_hooks(writer, busy_ms=int(busy_timeout_s * 1000), wal=True, read_only=False)
    return writer


def _install_sqlite_hooks(engine: Engine, *, busy_ms: int, wal: bool, read_only: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy emit BEGIN itself (see _on_begin); the driver's legacy mode
        # would skip BEGIN before SELECT and DDL.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if read_only:
                cursor.execute("PRAGMA query_only = ON")
                return
            if wal:
                cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        write = not read_only and connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


_LOCKED = ("database is locked", "database is busy", "database table is locked")
_CORRUPT = ("file is not a database", "database disk image is malformed", "not a database")
_UNREACHABLE = (
    "unable to open database file",
    "connection refused",
    "could not connect",
    "connection was closed",
    "connection is closed",
    "name or service not known",
    "temporary failure in name resolution",
    "timeout",
    "does not exist",
    "password authentication failed",
)


def translate_error(error: BaseException, url: URL | str) -> StoreError:
    """Map a driver or SQLAlchemy exception to a :mod:`qlass.errors` store error.

    The caller raises the result ``from error`` so the original stays the ``__cause__``.
    """
    where = safe_url(url)
    original = getattr(error, "orig", None) or error
    message = str(original).strip() or type(original).__name__
    lowered = message.lower()
    if any(token in lowered for token in _LOCKED):
        return DatabaseUnavailableError(
            f"database {where} is locked: another process held the write lock longer than "
            f"the busy timeout ({message})"
        )
    if any(token in lowered for token in _CORRUPT):
        return DatabaseUnavailableError(
            f"{where} is not a usable database (not a SQLite file, or corrupt): {message}"
        )
    if isinstance(error, exc.IntegrityError):
        return StoreError(f"database {where} refused a write (constraint violated): {message}")
    connection_lost = isinstance(error, exc.DBAPIError) and error.connection_invalidated
    if (
        connection_lost
        or isinstance(original, OSError)
        or isinstance(error, exc.InterfaceError | exc.TimeoutError)
        or any(token in lowered for token in _UNREACHABLE)
    ):
        return DatabaseUnavailableError(f"cannot reach database {where}: {message}")
    return StoreError(f"database {where} failed: {message}")
