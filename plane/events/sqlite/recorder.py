"""The recorder: the SQL that writes and reads events, synchronously.

This module owns every statement that touches the ``events`` rows:

* :class:`Recorder`, the writer thread's side of the store: its inbox, its
  loop, one ``BEGIN IMMEDIATE ... COMMIT`` per batch with the version checks,
  and what it remembers of the file.  It knows nothing of trio but the one
  call it is given to hand results back (``run_sync_soon``); the trio-facing
  :class:`~plane.events.sqlite.store.SqliteEventStore` owns the thread and
  wakes the appenders.
* the synchronous reads (:func:`select_all`, :func:`select_stream`,
  :func:`select_last_seq`, decoding rows into records), which the store runs
  in a worker thread, and :class:`SqliteLogReader` / :func:`read_log`, the
  read-only view tools (``plane-replay``) use on a log a running plane may be
  writing.

Speed tricks kept here, each named where it lives:

* **group commit** (:meth:`Recorder.main`): the writer takes the first
  pending request, drains every other pending one, and writes them all in one
  transaction: one fsync for many appends.  A busy writer is not woken at
  all: it finds the next requests waiting when its commit ends.
* **one hop back per batch** (:meth:`Recorder.main`): the outcomes of a whole
  batch go back to trio with one ``run_sync_soon``, not one per append.
* **the version cache** (:meth:`Recorder.write_batch`): the writer remembers
  each stream's version and the last ``seq``, so an append costs no
  ``SELECT max(version)``.  At the start of every batch ``max(seq)`` in the
  file is compared with what it remembers; if another process wrote, it
  forgets and asks the file again.  The UNIQUE index stays the last word.
* **cheap decoding** (:func:`decode`): rows become records through the named
  tuple's own ``_make`` (no keyword handling), with the decoder bound once.

Each request's expected version is checked against the stream's version,
counting earlier requests of the same batch; a mismatch fails only that
request (:class:`~plane.events.store.ConcurrencyError`).  A SQLite error
rolls the whole batch back and fails each of its requests with the mapped
:class:`~plane.events.store.StoreError` (a full disk:
:class:`~plane.events.store.StoreFullError`); the recorder stays usable.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import outcome
import trio

from plane import __version__
from plane.events import wire
from plane.events.sqlite.schema import close_writer, has_events_table, open_reader, store_error
from plane.events.store import (
    ConcurrencyError,
    CorruptLogError,
    RecordedEvent,
    SchemaTooNewError,
    StoreError,
)
from plane.events.types import Event

__all__ = [
    "AppendRequest",
    "ClosedOnExit",
    "EventReader",
    "Recorder",
    "SqliteLogReader",
    "WriterJob",
    "decode",
    "events_then_close",
    "read_log",
    "select_all",
    "select_last_seq",
    "select_stream",
]

_INSERT = (
    "INSERT INTO events (seq, stream, version, type, data, recorded_at) VALUES (?, ?, ?, ?, ?, ?)"
)
_SELECT = "SELECT seq, stream, version, type, data FROM events"
_FETCH_BATCH = 1024
_VERSION_CACHE_LIMIT = 100_000

_Row = tuple[int, str, int, str, str]
_record = RecordedEvent._make


# ------------------------------------------------------------------ reading


def decode(rows: Iterator[_Row] | list[_Row], path: Path) -> Iterator[RecordedEvent]:
    """Records from ``(seq, stream, version, type, data)`` rows (cheap decoding)."""
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


def select_all(
    conn: sqlite3.Connection, path: Path, after_seq: int, limit: int | None
) -> list[RecordedEvent]:
    """Events with seq > ``after_seq`` in order, at most ``limit``."""
    try:
        if limit is None:
            rows = conn.execute(_SELECT + " WHERE seq > ? ORDER BY seq", (after_seq,)).fetchall()
        else:
            rows = conn.execute(
                _SELECT + " WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
            ).fetchall()
    except sqlite3.Error as exc:
        raise store_error(exc, path, "reading it") from exc
    return list(decode(rows, path))


def select_stream(
    conn: sqlite3.Connection, path: Path, stream: str, after_version: int
) -> list[RecordedEvent]:
    """Events of ``stream`` with version > ``after_version``, in order."""
    try:
        rows = conn.execute(
            _SELECT + " WHERE stream = ? AND version > ? ORDER BY version",
            (stream, after_version),
        ).fetchall()
    except sqlite3.Error as exc:
        raise store_error(exc, path, "reading it") from exc
    return list(decode(rows, path))


def stream_if_absent(
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
        raise store_error(exc, path, "reading it") from exc
    return from_archives(path, stream, after_version)


def select_last_seq(conn: sqlite3.Connection, path: Path) -> int:
    """The highest seq in the file (0 for an empty log)."""
    try:
        row = conn.execute("SELECT max(seq) FROM events").fetchone()
    except sqlite3.Error as exc:
        raise store_error(exc, path, "reading it") from exc
    return int(row[0] or 0)


# ------------------------------------------------------------------ writing


class AppendRequest:
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


class WriterJob:
    """A call to run in the writer thread (between batches), and who waits for it."""

    __slots__ = ("arg", "fn", "task")

    def __init__(self, fn: Callable[[int], int], arg: int, task: trio.lowlevel.Task) -> None:
        self.fn = fn
        self.arg = arg
        self.task = task


InboxItem = AppendRequest | WriterJob | None
"""What the writer's inbox holds: appends, jobs, then ``None`` to stop."""


class Recorder:
    """The writer connection and the writer thread's loop (:meth:`main`).

    ``put`` hands the thread an :class:`AppendRequest`, a :class:`WriterJob`,
    or ``None`` (stop after what was handed before).  The recorder remembers
    the log's last ``seq`` and stream versions while it is the only writer.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, last_seq: int) -> None:
        self.path = path
        self.conn = conn
        # The writer thread's inbox (a SimpleQueue: the cheapest thread-safe put).
        self._inbox: queue.SimpleQueue[InboxItem] = queue.SimpleQueue()
        self.put = self._inbox.put
        # The version cache: valid while this is the only writer, checked
        # against max(seq) at the start of every batch.
        self._last_seq = last_seq
        self._versions: dict[str, int] = {}

    def forget(self) -> None:
        """Forget what was cached of the file (after someone changed it under us)."""
        self._versions.clear()

    def pending(self) -> list[InboxItem]:
        """Take every item still in the inbox (after the thread ended)."""
        items: list[InboxItem] = []
        while True:
            try:
                items.append(self._inbox.get_nowait())
            except queue.Empty:
                return items

    def main(
        self,
        run_sync_soon: Callable[..., Any],
        deliver: Callable[[list[AppendRequest], int], None],
        finish_job: Callable[[WriterJob, Any], None],
        crashed: Callable[[list[AppendRequest], BaseException], None],
    ) -> None:
        """The writer thread: take what is pending, commit it as one batch, repeat,
        until ``None``.  Each batch's outcomes go to ``deliver(batch, rows written)``,
        each job's to ``finish_job(job, outcome)``, a crash (a bug) to
        ``crashed(batch, exc)``; every call through ``run_sync_soon``.  Closes
        the writer connection at the end."""
        inbox = self._inbox
        get, get_nowait = inbox.get, inbox.get_nowait
        batch: list[AppendRequest] = []
        stopping = False
        try:
            while not stopping:
                item = get()
                # Group commit: drain whatever else is already waiting.
                while True:
                    if item is None:
                        stopping = True
                    elif type(item) is WriterJob:
                        if batch:
                            run_sync_soon(deliver, batch, self.write_batch(batch))
                            batch = []
                        run_sync_soon(finish_job, item, outcome.capture(item.fn, item.arg))
                    else:
                        assert type(item) is AppendRequest
                        batch.append(item)
                    try:
                        item = get_nowait()
                    except queue.Empty:
                        break
                if batch:
                    # One hop back per batch.
                    run_sync_soon(deliver, batch, self.write_batch(batch))
                    batch = []
        except BaseException as exc:  # a bug: fail everyone waiting, then report it
            run_sync_soon(crashed, batch, exc)
        finally:
            close_writer(self.conn)

    def write_batch(self, batch: list[AppendRequest]) -> int:
        """One transaction for ``batch``; returns rows written.  Sets each
        request's ``result`` or ``error``."""
        conn = self.conn
        versions: dict[str, int] = {}
        rows: list[tuple[int, str, int, str, str, float]] = []
        add_row = rows.append
        try:
            conn.execute("BEGIN IMMEDIATE")
            seq = int(conn.execute("SELECT max(seq) FROM events").fetchone()[0] or 0)
            if seq != self._last_seq:  # someone else wrote: the version cache is stale
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
                    request.error = store_error(exc, self.path, "appending to it")
            return 0
        self._last_seq = seq
        if len(known) > _VERSION_CACHE_LIMIT:
            known.clear()
        known.update(versions)
        return len(rows)


# ---------------------------------------------------------- the sync reader


class ClosedOnExit:
    """A reader used in a ``with`` block: ``close()`` on the way out."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class EventReader(Protocol):
    """What :func:`events_then_close` reads: a log reader or a history reader."""

    def iter_events(self, after_seq: int = 0) -> Iterator[RecordedEvent]: ...

    def close(self) -> None: ...


def events_then_close(reader: EventReader, after_seq: int) -> Iterator[RecordedEvent]:
    """Every event of ``reader`` after ``after_seq``; closes the reader when the
    iterator is exhausted or closed."""
    try:
        yield from reader.iter_events(after_seq)
    finally:
        reader.close()


class SqliteLogReader(ClosedOnExit):
    """A synchronous, read-only view of a plane log, for tools (``plane-replay``).

    Safe to use while a running plane writes the same file (SQLite's WAL lets
    readers see a consistent snapshot per query).  Raises
    :class:`~plane.events.store.LogNotFoundError` if ``path`` does not exist,
    and the same errors as :func:`~plane.events.sqlite.open_sqlite_store` for
    a file that is not a readable log; an empty file reads as an empty log.
    ``check=False`` skips ``PRAGMA quick_check``.
    """

    def __init__(self, path: str | os.PathLike[str], *, check: bool = True) -> None:
        self.path = Path(path)
        self._conn = open_reader(self.path, check=check)

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
            if not has_events_table(conn):
                return
            cursor = conn.execute(query + " ORDER BY seq", args)
            while rows := cursor.fetchmany(_FETCH_BATCH):
                if keep_stream is not None:
                    rows = [row for row in rows if keep_stream(row[1])]
                yield from decode(rows, path)
        except sqlite3.Error as exc:
            raise store_error(exc, path, "reading it") from exc

    def last_seq(self) -> int:
        """The highest sequence number written (0 for an empty log)."""
        if not has_events_table(self._conn):
            return 0
        return select_last_seq(self._conn, self.path)

    def stream_events(self, stream: str, after_version: int = 0) -> list[RecordedEvent]:
        """Events of one stream with version > ``after_version``, in order."""
        if not has_events_table(self._conn):
            return []
        return select_stream(self._conn, self.path, stream, after_version)

    def raw_row(self, seq: int) -> tuple[str, int, str, str] | None:
        """The stored (stream, version, type, data) of event ``seq``, undecoded; None if absent."""
        if not has_events_table(self._conn):
            return None
        try:
            row = self._conn.execute(
                "SELECT stream, version, type, data FROM events WHERE seq = ?", (seq,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise store_error(exc, self.path, "reading it") from exc
        return None if row is None else (str(row[0]), int(row[1]), str(row[2]), str(row[3]))

    def close(self) -> None:
        self._conn.close()


def read_log(path: str | os.PathLike[str], after_seq: int = 0) -> Iterator[RecordedEvent]:
    """Every event of the log at ``path`` after ``after_seq``; opens the file now.

    Errors about the file (missing, not a log, too new, corrupt) are raised by
    this call, not by the first ``next()``.  The file is closed when the
    iterator is exhausted or closed.
    """
    return events_then_close(SqliteLogReader(path), after_seq)
