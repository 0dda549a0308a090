"""The SQLite event store: plane's durable, append-only log in one file.

This module owns the log file: its schema (created with sqlite-utils), the
checks made when an existing file is opened, the single writer task that
group-commits appends, the reads, :meth:`SqliteEventStore.tail`, and the
synchronous read-only :class:`SqliteLogReader` used by tools (``plane-replay``)
on a log that a running plane may be writing.

The file holds two tables.  ``events`` (``seq`` INTEGER PRIMARY KEY
AUTOINCREMENT, ``stream``, ``version``, ``type`` = the wire tag, ``data`` = the
JSON payload, ``recorded_at``) with a UNIQUE index on ``(stream, version)``;
``meta`` (``application = plane``, ``schema_version``, ``created_by``).  The
file's ``PRAGMA application_id`` is :data:`PLANE_APPLICATION_ID` and its
``PRAGMA user_version`` is :data:`SCHEMA_VERSION`.  Triggers abort every
``UPDATE`` and ``DELETE`` on both tables: the log is append-only in the schema,
not only by habit.  (sqlite-utils creates the index, the ``meta`` table and
turns on WAL; the ``events`` table is spelled out in SQL because sqlite-utils
has no public way to ask for ``AUTOINCREMENT``.)

Appends go through one writer thread, owned by the store.  Each
:meth:`~SqliteEventStore.append` encodes its events, puts a request in the
writer's inbox (a ``queue.SimpleQueue``) and waits for its own outcome.  The
writer thread takes the first pending request, drains every other pending one,
and writes them all in one ``BEGIN IMMEDIATE ... COMMIT`` (group commit: one
fsync for many appends), then hands the outcomes back to trio with one
``run_sync_soon`` per batch.  Each request's expected version is checked
against the stream's version, counting earlier requests of the same batch; a
mismatch fails only that request.  The writer remembers each stream's version
and the last ``seq``; if ``max(seq)`` in the file is not what it remembers
(another process wrote), it forgets and asks the file again, and the UNIQUE
index stays the last word.  Per append the store adds only encoding, one
request object and one task wake-up; the hop between trio and the thread is
per batch, and a busy writer is not woken at all (it finds the next requests
waiting when its commit ends).

Back in trio, the records of each commit also go to a short in-memory list
of the latest events (contiguous in ``seq``; emptied when another process
wrote in between).  A :meth:`~SqliteEventStore.tail` that has caught up
takes new events from there, so following the log (the proxy's routing
table, every status stream) costs no file read and no decoding per commit.

Resource handling:
    :func:`open_sqlite_store` is the only way to get a store.  It opens two
    connections (the writer's and the readers'), and a nursery whose task owns
    the writer thread and waits for it to end.  On exit, normal or not, the
    store stops taking appends, the writer commits every append already handed
    to it (the owning task is shielded from cancellation, so no accepted
    append is left undecided) and closes its connection; then the reader
    connection is closed and every :meth:`~SqliteEventStore.tail` still
    waiting is woken with :class:`~plane.events.store.StoreClosedError`.  A
    bug that kills the writer thread fails every waiting append with a
    :class:`~plane.events.store.StoreError` and is raised from the store's
    nursery.  Reads run in a worker thread, one at a time (a
    ``CapacityLimiter(1)`` on the reader connection), so they never queue
    behind the writer.  :class:`SqliteLogReader` is synchronous, opens the
    file read-only and is closed with ``close()`` or a ``with`` block.

Error handling:
    Opening a file that is not a usable log raises, never a raw traceback:
    :class:`~plane.events.store.CorruptLogError` for a file that is not a
    SQLite database, whose pages read at open are damaged, or that fails
    ``PRAGMA quick_check`` (which reads the whole file, so
    :func:`open_sqlite_store` runs it only when the last writer did not close
    cleanly, i.e. left a non-empty WAL: a restart after a clean stop does not
    pay for the log's length; :class:`SqliteLogReader`, hence ``plane-replay``,
    always runs it);
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
    closed.  Cancelling an append before it reached the writer writes nothing;
    once the writer has it, the append waits (shielded) for the commit, so a
    cancelled append never leaves its outcome unknown.  Any other SQLite error
    becomes a :class:`~plane.events.store.StoreError` naming the file.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Literal, Self, TypeVar

import outcome
import sqlite_utils
import trio

from plane import __version__
from plane.events import wire
from plane.events.store import (
    ConcurrencyError,
    CorruptLogError,
    LogNotFoundError,
    NotAPlaneLogError,
    RecordedEvent,
    SchemaTooNewError,
    StoreClosedError,
    StoreError,
    StoreFullError,
    check_append,
    check_limit,
)
from plane.events.types import Event

__all__ = [
    "PLANE_APPLICATION_ID",
    "SCHEMA_VERSION",
    "SqliteEventStore",
    "SqliteLogReader",
    "Synchronous",
    "open_sqlite_store",
    "read_log",
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
_INSERT = (
    "INSERT INTO events (seq, stream, version, type, data, recorded_at) VALUES (?, ?, ?, ?, ?, ?)"
)
_SELECT = "SELECT seq, stream, version, type, data FROM events"
_TAIL_BATCH = 1000
_FETCH_BATCH = 1024
_VERSION_CACHE_LIMIT = 100_000
_RECENT_LIMIT = 4096
_BUSY_TIMEOUT_SECONDS = 10.0

_Row = tuple[int, str, int, str, str]
_T = TypeVar("_T")


# ------------------------------------------------------------ opening a file


def _primary_code(exc: sqlite3.Error) -> int:
    return getattr(exc, "sqlite_errorcode", -1) & 0xFF


def _store_error(exc: sqlite3.Error, path: Path, doing: str) -> StoreError:
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


def _create_schema(conn: sqlite3.Connection) -> None:
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


def _open_writer(
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
        raise _store_error(exc, path, "opening it") from exc
    try:
        if not _check_log(conn, path):
            sqlite_utils.Database(conn, execute_plugins=False).enable_wal()
            conn.execute("BEGIN IMMEDIATE")
            try:
                if not _check_log(conn, path):  # nobody created it meanwhile
                    _create_schema(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
        else:
            if unclean:
                _quick_check(conn, path)
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        if max_page_count is not None:
            _set_max_page_count(conn, max_page_count)
    except sqlite3.Error as exc:
        conn.close()
        raise _store_error(exc, path, "opening it") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _closed_uncleanly(path: Path) -> bool:
    """Whether the log's last writer left a non-empty WAL behind (a crash, a kill,
    another process still writing): then its integrity is checked at open."""
    try:
        return path.with_name(path.name + "-wal").stat().st_size > 0
    except FileNotFoundError:
        return False


def _set_max_page_count(conn: sqlite3.Connection, pages: int) -> None:
    conn.execute(f"PRAGMA max_page_count = {int(pages)}")


def _open_connections(
    path: Path, synchronous: Synchronous, max_page_count: int | None
) -> tuple[sqlite3.Connection, sqlite3.Connection, int]:
    """The store's writer and reader connections, and the log's last seq."""
    writer = _open_writer(path, synchronous, max_page_count)
    try:
        from plane.events.archive import recover

        recover(path, writer)  # finish a move to the archives a crash interrupted
        reader = _connect_read_only(path)
        try:
            last_seq = _select_last_seq(writer, path)
        except BaseException:
            reader.close()
            raise
    except BaseException:
        writer.close()
        raise
    return writer, reader, last_seq


def _connect_read_only(path: Path) -> sqlite3.Connection:
    try:
        return sqlite3.connect(
            path.resolve().as_uri() + "?mode=ro",
            uri=True,
            timeout=_BUSY_TIMEOUT_SECONDS,
            isolation_level=None,
            check_same_thread=False,
        )
    except sqlite3.Error as exc:
        raise _store_error(exc, path, "opening it read-only") from exc


def _open_reader(path: Path, *, check: bool) -> sqlite3.Connection:
    """Open the log at ``path`` read-only (``mode=ro``); raise if it is not a readable log."""
    if not path.exists():
        raise LogNotFoundError(f"no plane log at {path}: the file does not exist")
    conn = _connect_read_only(path)
    try:
        if _check_log(conn, path) and check:
            _quick_check(conn, path)
    except sqlite3.Error as exc:
        conn.close()
        raise _store_error(exc, path, "opening it read-only") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _has_events_table(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'"
    ).fetchone()
    return row is not None


# ------------------------------------------------------------------- decoding


def _decode(rows: Iterator[_Row] | list[_Row], path: Path) -> Iterator[RecordedEvent]:
    loads = wire.loads
    record = _record  # the tuple's own constructor: no keyword handling
    seq, tag = 0, ""
    try:
        for seq, stream, version, tag, data in rows:
            yield record((seq, stream, version, loads(tag, data)))
    except wire.WireError as exc:
        if tag not in wire.TYPES_BY_TAG:
            raise SchemaTooNewError(
                f"event seq={seq} of the plane log {path} has a type this plane"
                f" {__version__} does not know ({exc}); was it written by a newer plane?"
            ) from exc
        raise CorruptLogError(
            f"event seq={seq} of the plane log {path} is unreadable: {exc}"
        ) from exc


def _select_all(
    conn: sqlite3.Connection, path: Path, after_seq: int, limit: int | None
) -> list[RecordedEvent]:
    try:
        if limit is None:
            rows = conn.execute(_SELECT + " WHERE seq > ? ORDER BY seq", (after_seq,)).fetchall()
        else:
            rows = conn.execute(
                _SELECT + " WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
            ).fetchall()
    except sqlite3.Error as exc:
        raise _store_error(exc, path, "reading it") from exc
    return list(_decode(rows, path))


def _select_stream(
    conn: sqlite3.Connection, path: Path, stream: str, after_version: int
) -> list[RecordedEvent]:
    try:
        rows = conn.execute(
            _SELECT + " WHERE stream = ? AND version > ? ORDER BY version",
            (stream, after_version),
        ).fetchall()
    except sqlite3.Error as exc:
        raise _store_error(exc, path, "reading it") from exc
    return list(_decode(rows, path))


def _stream_if_absent(
    conn: sqlite3.Connection,
    path: Path,
    stream: str,
    after_version: int,
    from_archives: Callable[[Path, str, int], list[RecordedEvent]],
) -> list[RecordedEvent]:
    """The stream's events from the archives if the live log holds none of it."""
    try:
        present = conn.execute("SELECT 1 FROM events WHERE stream = ? LIMIT 1", (stream,))
        if present.fetchone() is not None:
            return []
    except sqlite3.Error as exc:
        raise _store_error(exc, path, "reading it") from exc
    return from_archives(path, stream, after_version)


def _select_last_seq(conn: sqlite3.Connection, path: Path) -> int:
    try:
        row = conn.execute("SELECT max(seq) FROM events").fetchone()
    except sqlite3.Error as exc:
        raise _store_error(exc, path, "reading it") from exc
    return int(row[0] or 0)


# ---------------------------------------------------------------- the store

# Bound once: the append path runs these for every event.
_checkpoint_if_cancelled = trio.lowlevel.checkpoint_if_cancelled
_current_task = trio.lowlevel.current_task
_reschedule = trio.lowlevel.reschedule
_encode = wire.encode
_record = RecordedEvent._make


class _AppendRequest:
    """One append on its way through the writer: its rows, then its outcome."""

    __slots__ = ("encoded", "error", "events", "expected", "result", "stream", "task")

    def __init__(
        self,
        stream: str,
        expected: int,
        events: Sequence[Event],
        encoded: list[tuple[str, str]],
        task: trio.lowlevel.Task,
    ) -> None:
        self.stream = stream
        self.expected = expected
        self.events = events
        self.encoded = encoded
        self.task = task
        self.result: tuple[int, int] | None = None  # (first seq, first version)
        self.error: StoreError | None = None


class _WriterJob:
    """A call to run in the writer thread (between batches), and who waits for it."""

    __slots__ = ("arg", "fn", "task")

    def __init__(self, fn: Callable[[int], int], arg: int, task: trio.lowlevel.Task) -> None:
        self.fn = fn
        self.arg = arg
        self.task = task


def _refuse_abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


class SqliteEventStore:
    """The durable :class:`~plane.events.store.EventStore`; get one from :func:`open_sqlite_store`.

    ``commits`` counts the write transactions that committed events and
    ``appended`` the events they wrote; ``commits`` much smaller than the number
    of appends is group commit at work.
    """

    def __init__(
        self, path: Path, writer: sqlite3.Connection, reader: sqlite3.Connection, last_seq: int
    ) -> None:
        self.path = path
        self.commits = 0
        self.appended = 0
        self._writer = writer
        self._reader = reader
        self._read_limiter = trio.CapacityLimiter(1)
        self._changed = trio.Event()
        self._closed = False
        self._accepting = True
        # The writer thread's inbox: appends and jobs, then ``None`` to stop.
        self._inbox: queue.SimpleQueue[_AppendRequest | _WriterJob | None] = queue.SimpleQueue()
        self._put = self._inbox.put
        self._token = trio.lowlevel.current_trio_token()
        self._writer_ended = trio.Event()
        self._writer_crash: BaseException | None = None
        # The writer's knowledge of the log, valid while it is the only writer;
        # checked against max(seq) at the start of every batch.
        self._last_seq = last_seq
        self._versions: dict[str, int] = {}
        # The latest events this store committed, contiguous in seq: tails that
        # have caught up read them here instead of from the file.
        self._recent: list[RecordedEvent] = []
        # Whether archive files may exist beside the log (read_stream looks there).
        from plane.events.archive import archive_paths

        self.has_archives = bool(archive_paths(path))

    # ------------------------------------------------------------ appending

    async def append(
        self, stream: str, expected_version: int, events: Sequence[Event]
    ) -> list[RecordedEvent]:
        """Append ``events`` atomically at ``expected_version``; returns them recorded.

        Durable when it returns (with ``synchronous="FULL"``).  Raises
        :class:`ConcurrencyError` if the stream is not at ``expected_version``,
        :class:`StoreFullError` if there is no space, :class:`StoreClosedError`
        after the store closed.
        """
        await _checkpoint_if_cancelled()
        if not isinstance(events, list | tuple):
            events = list(events)
        if not (stream and isinstance(stream, str) and expected_version >= 0 and events):
            check_append(stream, expected_version, events)
        try:
            encoded = [_encode(event) for event in events]
        except KeyError:
            bad = [type(event).__name__ for event in events if type(event) not in wire.TAGS]
            raise TypeError(f"not a plane event: {', '.join(bad)}") from None
        if not self._accepting:
            raise StoreClosedError(f"the plane log {self.path} is closed")
        self._put(_AppendRequest(stream, expected_version, events, encoded, _current_task()))
        # Once the writer has the request, wait for its outcome whatever happens
        # (cancellation is refused): a commit takes bounded time, and an append
        # whose outcome is unknown to its caller would be worse.  No checkpoint
        # between the put and here, so the writer cannot wake us too early (it
        # wakes us through run_sync_soon, in this thread).
        recorded: list[RecordedEvent] = await trio.lowlevel.wait_task_rescheduled(_refuse_abort)
        return recorded

    async def set_max_page_count(self, pages: int) -> int:
        """Change the page limit of the log (a quota); returns the limit now in force."""
        return await self._run_in_writer(self._set_max_page_count, pages)

    def _set_max_page_count(self, pages: int) -> int:
        _set_max_page_count(self._writer, pages)
        return int(self._writer.execute("PRAGMA max_page_count").fetchone()[0])

    async def run_exclusive(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn(writer connection)`` in the writer thread between two batches
        (no transaction open; appends wait meanwhile).  The writer forgets what
        it cached of the file afterwards.  Used by retention
        (:mod:`plane.events.archive`)."""
        results: list[_T] = []

        def job(_: int) -> int:
            try:
                results.append(fn(self._writer))
            finally:
                self._versions.clear()
            return 0

        await self._run_in_writer(job, 0)
        return results[0]

    async def _run_in_writer(self, fn: Callable[[int], int], arg: int) -> int:
        """Run ``fn(arg)`` in the writer thread, between two batches."""
        self._check_open()
        if not self._accepting:
            raise StoreClosedError(f"the plane log {self.path} is closed")
        self._put(_WriterJob(fn, arg, _current_task()))
        result: int = await trio.lowlevel.wait_task_rescheduled(_refuse_abort)
        return result

    # ----------------------------------------------------- the writer thread

    async def _serve_writer(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the writer thread; return once it has ended (after :meth:`_stop_writer`).

        Shielded: the thread decides every request it was handed before it
        ends, so this waits for it whatever happens.  A bug that kills the
        thread is raised here, after every waiting appender was failed.
        """
        thread = threading.Thread(
            target=self._writer_main, name=f"plane-log-writer {self.path.name}", daemon=True
        )
        with trio.CancelScope(shield=True):
            thread.start()
            task_status.started()
            await self._writer_ended.wait()
            await trio.to_thread.run_sync(thread.join)
        if self._writer_crash is not None:
            raise self._writer_crash

    def _stop_writer(self) -> None:
        """Refuse new appends; the writer ends after deciding what it was handed."""
        if self._accepting:
            self._accepting = False
            self._put(None)

    def _writer_main(self) -> None:
        """The writer thread: take what is pending, commit it as one batch, repeat."""
        inbox = self._inbox
        get, get_nowait = inbox.get, inbox.get_nowait
        deliver, run_sync_soon = self._deliver, self._token.run_sync_soon
        batch: list[_AppendRequest] = []
        stopping = False
        try:
            while not stopping:
                item = get()
                while True:
                    if item is None:
                        stopping = True
                    elif type(item) is _WriterJob:
                        if batch:
                            run_sync_soon(deliver, batch, self._write_batch(batch))
                            batch = []
                        job_outcome = outcome.capture(item.fn, item.arg)
                        run_sync_soon(_reschedule, item.task, job_outcome)
                    else:
                        batch.append(item)  # type: ignore[arg-type]
                    try:
                        item = get_nowait()
                    except queue.Empty:
                        break
                if batch:
                    run_sync_soon(deliver, batch, self._write_batch(batch))
                    batch = []
        except BaseException as exc:  # a bug: fail everyone waiting, then report it
            self._writer_crash = exc
            run_sync_soon(self._fail_pending, batch, exc)
        finally:
            with suppress(sqlite3.Error):
                self._writer.close()
            run_sync_soon(self._writer_ended.set)

    def _fail_pending(self, batch: list[_AppendRequest], crash: BaseException) -> None:
        """In the trio thread, after the writer died: refuse appends, fail every waiter."""
        self._accepting = False  # from here no request can enter the inbox
        failed = StoreError(f"the writer of the plane log {self.path} crashed: {crash!r}")
        pending: list[_AppendRequest | _WriterJob | None] = [*batch]
        while True:
            try:
                pending.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        for item in pending:
            if item is not None:
                _reschedule(item.task, outcome.Error(failed))

    def _deliver(self, batch: list[_AppendRequest], written: int) -> None:
        """In the trio thread: wake every appender with its records, keep them for
        the tails, count the commit and wake the tails."""
        recent = self._recent
        for request in batch:
            if request.error is not None:
                _reschedule(request.task, outcome.Error(request.error))
                continue
            assert request.result is not None
            seq, version = request.result
            stream, events = request.stream, request.events
            if len(events) == 1:
                records = [_record((seq, stream, version, events[0]))]
            else:
                records = [
                    _record((seq + i, stream, version + i, event)) for i, event in enumerate(events)
                ]
            _reschedule(request.task, outcome.Value(records))
            if recent and recent[-1].seq + 1 != seq:
                recent.clear()  # another process wrote in between: keep no gap
            recent += records
        if len(recent) > 2 * _RECENT_LIMIT:
            del recent[: len(recent) - _RECENT_LIMIT]
        if written:
            self.commits += 1
            self.appended += written
            changed, self._changed = self._changed, trio.Event()
            changed.set()

    def _write_batch(self, batch: list[_AppendRequest]) -> int:
        """In the writer thread: one transaction for ``batch``; returns rows written."""
        conn = self._writer
        versions: dict[str, int] = {}
        rows: list[tuple[int, str, int, str, str, float]] = []
        add_row = rows.append
        try:
            conn.execute("BEGIN IMMEDIATE")
            seq = int(conn.execute("SELECT max(seq) FROM events").fetchone()[0] or 0)
            if seq != self._last_seq:  # someone else wrote: forget what we knew
                self._versions.clear()
                self._last_seq = seq
            known = self._versions
            now = time.time()
            for request in batch:
                stream = request.stream
                current = versions.get(stream)
                if current is None:
                    current = known.get(stream)
                    if current is None:
                        row = conn.execute(
                            "SELECT max(version) FROM events WHERE stream = ?", (stream,)
                        ).fetchone()
                        current = int(row[0] or 0)
                if current != request.expected:
                    versions[stream] = current
                    request.error = ConcurrencyError(stream, request.expected, current)
                    continue
                request.result = (seq + 1, current + 1)
                for tag, data in request.encoded:
                    seq += 1
                    current += 1
                    add_row((seq, stream, current, tag, data, now))
                versions[stream] = current
            if rows:
                conn.executemany(_INSERT, rows)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            self._versions.clear()
            for request in batch:
                if request.result is not None or request.error is None:
                    request.result = None
                    request.error = _store_error(exc, self.path, "appending to it")
            return 0
        self._last_seq = seq
        if len(known) > _VERSION_CACHE_LIMIT:
            known.clear()
        known.update(versions)
        return len(rows)

    # -------------------------------------------------------------- reading

    async def read_stream(self, stream: str, after_version: int = 0) -> list[RecordedEvent]:
        """Events of one stream with version > ``after_version``, in order; a stream
        retention moved out of the live log is read from its archive."""
        self._check_open()
        found = await trio.to_thread.run_sync(
            _select_stream,
            self._reader,
            self.path,
            stream,
            after_version,
            limiter=self._read_limiter,
        )
        if found or not self.has_archives:
            return found
        # Not in the live log: retention may have moved it to an archive.
        from plane.events.archive import read_archived_stream

        return await trio.to_thread.run_sync(
            _stream_if_absent,
            self._reader,
            self.path,
            stream,
            after_version,
            read_archived_stream,
            limiter=self._read_limiter,
        )

    async def read_all(self, after_seq: int = 0, limit: int | None = None) -> list[RecordedEvent]:
        """Events of all streams with seq > ``after_seq``, in order, at most ``limit``.

        The live log only: streams retention moved to the archives are read with
        :class:`plane.events.archive.HistoryReader` (and, one by one, by
        :meth:`read_stream`).
        """
        check_limit(limit)
        self._check_open()
        return await trio.to_thread.run_sync(
            _select_all, self._reader, self.path, after_seq, limit, limiter=self._read_limiter
        )

    async def last_seq(self) -> int:
        """The highest sequence number written (0 for an empty log)."""
        self._check_open()
        return await trio.to_thread.run_sync(
            _select_last_seq, self._reader, self.path, limiter=self._read_limiter
        )

    async def tail(self, after_seq: int = 0) -> AsyncIterator[RecordedEvent]:
        """Every event after ``after_seq``, then new ones as they land.

        Never ends while the store is open; raises :class:`StoreClosedError`
        when it closes.  Waits for the writer's next commit, never polls.
        Reads the file until it has caught up with the events kept in memory,
        then takes them from there.
        """
        cursor = after_seq
        while True:
            self._check_open()
            # Arm the waiter before reading: a commit after this line sets it.
            changed = self._changed
            recent = self._recent
            if recent and recent[0].seq <= cursor + 1:
                # Caught up: what follows the cursor is all in memory (a copy, as
                # the list changes while we yield).
                batch = recent[cursor + 1 - recent[0].seq :]
            else:
                batch = await self.read_all(cursor, _TAIL_BATCH)
            for recorded in batch:
                yield recorded
                cursor = recorded.seq
            if not batch:
                await changed.wait()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"the plane log {self.path} is closed")

    async def _close(self) -> None:
        """Close both connections and wake the tails (after the writer ended)."""
        self._closed = True
        self._changed.set()
        async with self._read_limiter:
            self._reader.close()


@asynccontextmanager
async def open_sqlite_store(
    path: str | os.PathLike[str],
    *,
    synchronous: Synchronous = "FULL",
    max_page_count: int | None = None,
) -> AsyncIterator[SqliteEventStore]:
    """Open (or create) the plane log at ``path`` and run its writer while in use.

    ``synchronous`` is SQLite's; ``"FULL"`` (the default) makes every returned
    append survive a crash of the process or the machine.  ``max_page_count``
    caps the file's size in pages (a quota; tests use it to fill the "disk").
    """
    path = Path(path)
    writer, reader, last_seq = await trio.to_thread.run_sync(
        _open_connections, path, synchronous, max_page_count
    )
    store = SqliteEventStore(path, writer, reader, last_seq)
    # An error of the caller's block is held while the writer finishes and
    # raised afterwards as it is, not wrapped in the nursery's ExceptionGroup.
    raised: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store._serve_writer)
            try:
                yield store
            except BaseException as exc:
                raised = exc
            finally:
                store._stop_writer()
    finally:
        with trio.CancelScope(shield=True):
            await store._close()
    if raised is not None:
        raise raised


# ---------------------------------------------------------- the sync reader


class SqliteLogReader:
    """A synchronous, read-only view of a plane log, for tools (``plane-replay``).

    Safe to use while a running plane writes the same file (SQLite's WAL lets
    readers see a consistent snapshot per query).  Raises
    :class:`LogNotFoundError` if ``path`` does not exist, and the same errors as
    :func:`open_sqlite_store` for a file that is not a readable log; an empty
    file reads as an empty log.  ``check=False`` skips ``PRAGMA quick_check``.
    """

    def __init__(self, path: str | os.PathLike[str], *, check: bool = True) -> None:
        self.path = Path(path)
        self._conn = _open_reader(self.path, check=check)

    def iter_events(
        self,
        after_seq: int = 0,
        *,
        up_to_seq: int | None = None,
        keep_stream: Callable[[str], bool] | None = None,
    ) -> Iterator[RecordedEvent]:
        """Every event with seq > ``after_seq`` in seq order (one consistent snapshot).

        ``up_to_seq`` stops at that sequence number (several readers of a log
        being written agree on what they read); ``keep_stream`` skips, before
        decoding them, the events of streams it returns False for.
        """
        conn, path = self._conn, self.path
        query, args = _SELECT + " WHERE seq > ?", [after_seq]
        if up_to_seq is not None:
            query, args = query + " AND seq <= ?", [after_seq, up_to_seq]
        try:
            if not _has_events_table(conn):
                return
            cursor = conn.execute(query + " ORDER BY seq", args)
            while rows := cursor.fetchmany(_FETCH_BATCH):
                if keep_stream is not None:
                    rows = [row for row in rows if keep_stream(row[1])]
                yield from _decode(rows, path)
        except sqlite3.Error as exc:
            raise _store_error(exc, path, "reading it") from exc

    def last_seq(self) -> int:
        """The highest sequence number written (0 for an empty log)."""
        if not _has_events_table(self._conn):
            return 0
        return _select_last_seq(self._conn, self.path)

    def stream_events(self, stream: str, after_version: int = 0) -> list[RecordedEvent]:
        """Events of one stream with version > ``after_version``, in order."""
        if not _has_events_table(self._conn):
            return []
        return _select_stream(self._conn, self.path, stream, after_version)

    def raw_row(self, seq: int) -> tuple[str, int, str, str] | None:
        """The stored (stream, version, type, data) of event ``seq``, undecoded; None if absent."""
        if not _has_events_table(self._conn):
            return None
        try:
            row = self._conn.execute(
                "SELECT stream, version, type, data FROM events WHERE seq = ?", (seq,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise _store_error(exc, self.path, "reading it") from exc
        return None if row is None else (str(row[0]), int(row[1]), str(row[2]), str(row[3]))

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def read_log(path: str | os.PathLike[str], after_seq: int = 0) -> Iterator[RecordedEvent]:
    """Every event of the log at ``path`` after ``after_seq``; opens the file now.

    Errors about the file (missing, not a log, too new, corrupt) are raised by
    this call, not by the first ``next()``.  The file is closed when the
    iterator is exhausted or closed.
    """
    reader = SqliteLogReader(path)

    def events() -> Iterator[RecordedEvent]:
        with reader:
            yield from reader.iter_events(after_seq)

    return events()
