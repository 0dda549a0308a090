"""The SQLite event store: plane's durable, append-only log in one file.

The store is built in layers, the way eventsourcing builds its recorders:

* :mod:`plane.events.sqlite.schema`: what a plane log is on disk (tables,
  triggers, pragmas, schema version checks and migrations), recognising a
  file at open, mapping SQLite's errors to the store's, opening connections;
* :mod:`plane.events.sqlite.recorder`: the SQL that writes and reads events,
  synchronously: the writer thread's loop with group commit and the version
  cache, the reads, and :class:`SqliteLogReader` / :func:`read_log` for tools
  (``plane-replay``) on a log a running plane may be writing;
* :mod:`plane.events.sqlite.store`: :class:`SqliteEventStore`, what trio code
  uses (appends, reads in a worker thread, tails), and
  :func:`open_sqlite_store`, the only way to get one;
* :mod:`plane.events.sqlite.tail_cache`: the latest committed events kept in
  memory, so a tail that caught up reads no file.

Each module's docstring names the speed tricks that live in it.  This package
re-exports the public names; import them from here.

Error handling:
    Opening a file that is not a usable log raises, never a raw traceback:
    :class:`~plane.events.store.CorruptLogError` for a file that is not a
    SQLite database, whose pages read at open are damaged, or that fails
    ``PRAGMA quick_check`` (run by :func:`open_sqlite_store` only when the
    last writer did not close cleanly; always by :class:`SqliteLogReader`);
    :class:`~plane.events.store.NotAPlaneLogError` for some other
    application's database; :class:`~plane.events.store.SchemaTooNewError`
    for a log written by a newer plane.  A missing or empty file becomes a new
    log for :func:`open_sqlite_store`; :class:`SqliteLogReader` raises
    :class:`~plane.events.store.LogNotFoundError` (both a ``StoreError`` and
    a ``FileNotFoundError``) for a missing file and reads an empty file as an
    empty log.  An append fails with
    :class:`~plane.events.store.ConcurrencyError` (nothing of it written) when
    its expected version is stale, :class:`~plane.events.store.StoreFullError`
    when the disk or the page limit is full (the batch is rolled back and the
    store stays usable: reads work, and appends work again once there is
    space), and :class:`~plane.events.store.StoreClosedError` after the store
    closed.  Any other SQLite error becomes a
    :class:`~plane.events.store.StoreError` naming the file.
"""

from plane.events.sqlite.recorder import SqliteLogReader, read_log
from plane.events.sqlite.schema import (
    APPEND_ONLY_MESSAGE,
    PLANE_APPLICATION_ID,
    SCHEMA_VERSION,
    Synchronous,
    create_schema,
    store_error,
)
from plane.events.sqlite.store import SqliteEventStore, open_sqlite_store

__all__ = [
    "APPEND_ONLY_MESSAGE",
    "PLANE_APPLICATION_ID",
    "SCHEMA_VERSION",
    "SqliteEventStore",
    "SqliteLogReader",
    "Synchronous",
    "create_schema",
    "open_sqlite_store",
    "read_log",
    "store_error",
]
