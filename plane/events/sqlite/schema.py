"""The log file's schema: creating it, recognising it, and opening connections to it.

This module owns what a plane log *is* on disk, and nothing that reads or
writes events:

* the two tables: ``events`` (``seq`` INTEGER PRIMARY KEY AUTOINCREMENT,
  ``stream``, ``version``, ``type`` = the wire tag, ``data`` = the JSON
  payload, ``recorded_at``) with a UNIQUE index on ``(stream, version)``, and
  ``meta`` (``application = plane``, ``schema_version``, ``created_by``); the
  file's ``PRAGMA application_id`` (:data:`PLANE_APPLICATION_ID`) and
  ``PRAGMA user_version`` (:data:`SCHEMA_VERSION`); triggers that abort every
  ``UPDATE`` and ``DELETE`` on both tables (the log is append-only in the
  schema, not only by habit).  sqlite-utils creates the index, the ``meta``
  table and turns on WAL; the ``events`` table is spelled out in SQL because
  sqlite-utils has no public way to ask for ``AUTOINCREMENT``.
* migrations: a log's schema version is checked at open; a newer one is
  refused (:class:`~plane.events.store.SchemaTooNewError`).  There is one
  schema version so far, so no step upgrades an older file yet; the next
  schema change adds its step to :func:`open_writer`.
* the checks made when an existing file is opened, and the mapping of SQLite's
  errors to the store's (:func:`store_error`).
* opening the writer connection (creating the log if new) and read-only ones.

Speed trick kept here, **integrity check only after an unclean close**:
``PRAGMA quick_check`` reads the whole file, so :func:`open_writer` runs it
only when the last writer left a non-empty WAL behind (a crash, a kill);
a restart after a clean stop does not pay for the log's length.  For that a
clean stop must leave the WAL empty: :func:`close_writer` checkpoints it with
``TRUNCATE`` before closing (the writer is not the last connection to close,
the store's reader is, and a read-only connection never checkpoints; without
this every restart after a clean stop ran the check over the whole file).  The
read-only tools (:class:`~plane.events.sqlite.recorder.SqliteLogReader`,
hence ``plane-replay``) always run it.
"""

from __future__ import annotations

import sqlite3
from contextlib import suppress
from pathlib import Path
from typing import Literal, NoReturn

import sqlite_utils

from plane import __version__
from plane.events.store import (
    CorruptLogError,
    LogNotFoundError,
    NotAPlaneLogError,
    SchemaTooNewError,
    StoreError,
    StoreFullError,
)

__all__ = [
    "APPEND_ONLY_MESSAGE",
    "PLANE_APPLICATION_ID",
    "SCHEMA_VERSION",
    "Synchronous",
    "close_writer",
    "connect_read_only",
    "create_schema",
    "has_events_table",
    "open_reader",
    "open_writer",
    "set_max_page_count",
    "store_error",
]

PLANE_APPLICATION_ID = 0x706C6E65
"""``PRAGMA application_id`` of every plane log (the bytes ``plne``)."""

SCHEMA_VERSION = 1
"""The log schema this plane writes and the newest it reads."""

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]

APPEND_ONLY_MESSAGE = "plane event log is append-only"

_EVENTS_DDL = """
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    version INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    recorded_at REAL NOT NULL
)
"""
_TRIGGERS = [
    f"""
    CREATE TRIGGER {table}_append_only_{action.lower()}
    BEFORE {action} ON {table}
    BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END
    """
    for table in ("events", "meta")
    for action in ("UPDATE", "DELETE")
]
_BUSY_TIMEOUT_SECONDS = 10.0


# ------------------------------------------------------------------ errors


def _primary_code(exc: sqlite3.Error) -> int:
    return getattr(exc, "sqlite_errorcode", -1) & 0xFF


def store_error(exc: sqlite3.Error, path: Path, doing: str) -> StoreError:
    """The StoreError that tells a person what ``exc`` means for the log at ``path``."""
    code = _primary_code(exc)
    if code == sqlite3.SQLITE_NOTADB:
        return CorruptLogError(f"{path} is not a SQLite database, so not a plane log ({exc})")
    if code == sqlite3.SQLITE_CORRUPT:
        return CorruptLogError(f"the plane log {path} is corrupt ({exc}) while {doing}")
    if code == sqlite3.SQLITE_FULL:
        return StoreFullError(
            f"the plane log {path} is full (disk or page limit) while {doing};"
            " nothing was written, free some space and retry"
        )
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StoreError(f"the plane log {path} is locked by another writer while {doing}")
    return StoreError(f"SQLite failed on the plane log {path} while {doing}: {exc}")


# ------------------------------------------------- recognising a plane log


def _read_meta(conn: sqlite3.Connection) -> dict[str, str]:
    try:
        return {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    except sqlite3.OperationalError:  # some other application's "meta" table
        return {}


def _check_log(conn: sqlite3.Connection, path: Path) -> bool:
    """Raise unless ``conn`` holds a plane log this plane can read; False if it is empty."""
    application_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
    user_version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    tables = {
        str(name)
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    }
    if application_id == 0 and user_version == 0 and not tables:
        return False
    meta = _read_meta(conn) if "meta" in tables else {}
    if application_id != PLANE_APPLICATION_ID and meta.get("application") != "plane":
        what = f"application_id {application_id:#x}" if application_id else "no application_id"
        listed = ", ".join(sorted(tables)) or "none"
        raise NotAPlaneLogError(
            f"{path} is a SQLite database but not a plane event log ({what}, tables: {listed})"
        )
    try:
        recorded = max(user_version, int(meta.get("schema_version", "0")))
    except ValueError:
        raise CorruptLogError(
            f"the plane log {path} has a bad schema_version {meta['schema_version']!r}"
        ) from None
    if recorded > SCHEMA_VERSION:
        creator = meta.get("created_by", "an unknown plane")
        raise SchemaTooNewError(
            f"{path} is a plane log with schema version {recorded} (created by {creator});"
            f" this plane {__version__} reads schema version {SCHEMA_VERSION} at most."
            " Upgrade plane to read it."
        )
    if not {"events", "meta"} <= tables:
        raise CorruptLogError(f"the plane log {path} lacks its events or meta table")
    return True


def _quick_check(conn: sqlite3.Connection, path: Path) -> None:
    problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check")]
    if problems != ["ok"]:
        shown = "; ".join(problems[:5])
        raise CorruptLogError(f"the plane log {path} fails its integrity check: {shown}")


def _closed_uncleanly(path: Path) -> bool:
    """Whether the log's last writer left a non-empty WAL behind (a crash, a kill,
    another process still writing): then its integrity is checked at open."""
    try:
        return path.with_name(path.name + "-wal").stat().st_size > 0
    except FileNotFoundError:
        return False


def has_events_table(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'"
    ).fetchone()
    return row is not None


# ---------------------------------------------------------------- creating


def create_schema(conn: sqlite3.Connection) -> None:
    """Create plane's tables, index, triggers and pragmas (inside the caller's transaction)."""
    db = sqlite_utils.Database(conn, execute_plugins=False)
    db.execute(_EVENTS_DDL)
    db.table("events").create_index(
        ["stream", "version"], index_name="events_stream_version", unique=True
    )
    meta = db.table("meta")
    meta.create({"key": str, "value": str}, pk="key")
    meta.insert_all(
        [
            {"key": "application", "value": "plane"},
            {"key": "schema_version", "value": str(SCHEMA_VERSION)},
            {"key": "created_by", "value": f"plane {__version__}"},
        ]
    )
    for trigger in _TRIGGERS:
        db.execute(trigger)
    db.execute(f"PRAGMA application_id = {PLANE_APPLICATION_ID}")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def set_max_page_count(conn: sqlite3.Connection, pages: int) -> None:
    conn.execute(f"PRAGMA max_page_count = {int(pages)}")


# ----------------------------------------------------------------- opening


def _close_and_raise(
    conn: sqlite3.Connection, exc: BaseException, path: Path, doing: str
) -> NoReturn:
    """Close a connection that failed while being opened; raise ``exc`` (a SQLite
    error as the StoreError that explains it)."""
    conn.close()
    if isinstance(exc, sqlite3.Error):
        raise store_error(exc, path, doing) from exc
    raise exc


def open_writer(
    path: Path, synchronous: Synchronous, max_page_count: int | None
) -> sqlite3.Connection:
    """Open (creating if new) the log at ``path`` for writing; the writer connection."""
    if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
    unclean = _closed_uncleanly(path)  # before connecting: a read would create the WAL
    try:
        conn = sqlite3.connect(
            path, timeout=_BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise store_error(exc, path, "opening it") from exc
    try:
        if not _check_log(conn, path):
            sqlite_utils.Database(conn, execute_plugins=False).enable_wal()
            conn.execute("BEGIN IMMEDIATE")
            try:
                if not _check_log(conn, path):  # nobody created it meanwhile
                    create_schema(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
        else:
            if unclean:  # the trick named in the module docstring
                _quick_check(conn, path)
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        if max_page_count is not None:
            set_max_page_count(conn, max_page_count)
    except BaseException as exc:
        _close_and_raise(conn, exc, path, "opening it")
    return conn


def close_writer(conn: sqlite3.Connection) -> None:
    """Close the writer connection, leaving an empty WAL if nobody is reading.

    ``PRAGMA wal_checkpoint(TRUNCATE)`` copies the WAL into the file and
    truncates it to 0 bytes, so the next open knows the stop was clean
    (:func:`_closed_uncleanly`).  It does not wait for readers (busy timeout
    0): if another connection is reading, the WAL stays and the next open runs
    the integrity check, which is slower but safe.  Errors are swallowed: the
    connection is closed either way, and the data is already committed."""
    with suppress(sqlite3.Error):
        conn.execute("PRAGMA busy_timeout = 0")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    with suppress(sqlite3.Error):
        conn.close()


def connect_read_only(path: Path) -> sqlite3.Connection:
    """A read-only (``mode=ro``) connection to ``path``, usable from any thread."""
    try:
        return sqlite3.connect(
            path.resolve().as_uri() + "?mode=ro",
            uri=True,
            timeout=_BUSY_TIMEOUT_SECONDS,
            isolation_level=None,
            check_same_thread=False,
        )
    except sqlite3.Error as exc:
        raise store_error(exc, path, "opening it read-only") from exc


def open_reader(path: Path, *, check: bool) -> sqlite3.Connection:
    """Open the log at ``path`` read-only; raise if it is not a readable log.
    ``check`` runs ``PRAGMA quick_check`` (the whole file)."""
    if not path.exists():
        raise LogNotFoundError(f"no plane log at {path}: the file does not exist")
    conn = connect_read_only(path)
    try:
        if _check_log(conn, path) and check:
            _quick_check(conn, path)
    except BaseException as exc:
        _close_and_raise(conn, exc, path, "opening it read-only")
    return conn
