"""The trio-facing SQLite store: appends, reads and tails for the rest of plane.

This module owns :class:`SqliteEventStore` and :func:`open_sqlite_store`, the
only way to get one: the writer thread's life (started in the store's
nursery, stopped and joined on exit), parking and waking appenders, running
the synchronous reads of :mod:`plane.events.sqlite.recorder` in a worker
thread, and :meth:`SqliteEventStore.tail`.

Speed tricks kept here, each named where it lives:

* **park, don't signal** (:meth:`SqliteEventStore.append`): an appender parks
  with ``wait_task_rescheduled`` and is woken with its outcome by
  ``reschedule``; no ``trio.Event``, no memory channel per append.  Per
  append the store adds only encoding, one request object and one task
  wake-up.
* **a fast path for valid input** (:meth:`SqliteEventStore.append`): the
  argument checks of :func:`~plane.events.store.check_append` run only when a
  cheap test finds something off.
* **hot names bound once** (module level): the append path calls them for
  every event.
* **reads beside the writer** (:meth:`SqliteEventStore.read_all` and
  friends): reads use their own read-only connection in a worker thread, one
  at a time (a ``CapacityLimiter(1)``), so they never queue behind a commit.
* **tails from memory** (:meth:`SqliteEventStore.tail`, with
  :mod:`plane.events.sqlite.tail_cache`).

Resource handling: on exit of :func:`open_sqlite_store`, normal or not, the
store stops taking appends, the writer commits every append already handed to
it (the owning task is shielded from cancellation, so no accepted append is
left undecided) and closes its connection; then the reader connection is
closed and every tail still waiting is woken with
:class:`~plane.events.store.StoreClosedError`.  A bug that kills the writer
thread fails every waiting append with a
:class:`~plane.events.store.StoreError` and is raised from the store's
nursery.  Cancelling an append before it reached the writer writes nothing;
once the writer has it, the append waits (shielded) for the commit, so a
cancelled append never leaves its outcome unknown.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import outcome
import trio

from plane.events import wire
from plane.events.sqlite.recorder import (
    AppendRequest,
    InboxItem,
    Recorder,
    WriterJob,
    select_all,
    select_last_seq,
    select_stream,
    stream_if_absent,
)
from plane.events.sqlite.schema import (
    Synchronous,
    connect_read_only,
    open_writer,
    set_max_page_count,
)
from plane.events.sqlite.tail_cache import TailCache
from plane.events.store import (
    RecordedEvent,
    StoreClosedError,
    StoreError,
    check_append,
    check_limit,
)
from plane.events.types import Event

__all__ = ["SqliteEventStore", "open_sqlite_store"]

_TAIL_BATCH = 1000
_T = TypeVar("_T")

# Hot names bound once: the append path runs these for every event.
_checkpoint_if_cancelled = trio.lowlevel.checkpoint_if_cancelled
_current_task = trio.lowlevel.current_task
_reschedule = trio.lowlevel.reschedule
_encode = wire.encode
_record = RecordedEvent._make


def _refuse_abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


def _finish_job(job: WriterJob, result: outcome.Outcome[int]) -> None:
    _reschedule(job.task, result)


def _open_connections(
    path: Path, synchronous: Synchronous, max_page_count: int | None
) -> tuple[sqlite3.Connection, sqlite3.Connection, int]:
    """The store's writer and reader connections, and the log's last seq."""
    writer = open_writer(path, synchronous, max_page_count)
    try:
        from plane.events.archive import recover

        recover(path, writer)  # finish a move to the archives a crash interrupted
        reader = connect_read_only(path)
        try:
            last_seq = select_last_seq(writer, path)
        except BaseException:
            reader.close()
            raise
    except BaseException:
        writer.close()
        raise
    return writer, reader, last_seq


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
        self._recorder = Recorder(path, writer, last_seq)
        self._put = self._recorder.put
        self._reader = reader
        self._read_limiter = trio.CapacityLimiter(1)
        self._changed = trio.Event()
        self._closed = False
        self._accepting = True
        self._token = trio.lowlevel.current_trio_token()
        self._writer_ended = trio.Event()
        self._writer_crash: BaseException | None = None
        self._recent = TailCache()
        # Whether archive files may exist beside the log (read_stream looks there).
        from plane.events.archive import archive_paths

        self.has_archives = bool(archive_paths(path))

    # ------------------------------------------------------------ appending

    async def append(
        self, stream: str, expected_version: int, events: Sequence[Event]
    ) -> list[RecordedEvent]:
        """Append ``events`` atomically at ``expected_version``; returns them recorded.

        Durable when it returns (with ``synchronous="FULL"``).  Raises
        :class:`~plane.events.store.ConcurrencyError` if the stream is not at
        ``expected_version``, :class:`~plane.events.store.StoreFullError` if
        there is no space, :class:`StoreClosedError` after the store closed.
        """
        await _checkpoint_if_cancelled()
        if not isinstance(events, list | tuple):
            events = list(events)
        # Fast path for valid input: the full checks only when something is off.
        if not (stream and isinstance(stream, str) and expected_version >= 0 and events):
            check_append(stream, expected_version, events)
        try:
            encoded = [_encode(event) for event in events]
        except KeyError:
            bad = [type(event).__name__ for event in events if type(event) not in wire.TAGS]
            raise TypeError(f"not a plane event: {', '.join(bad)}") from None
        if not self._accepting:
            raise StoreClosedError(f"the plane log {self.path} is closed")
        self._put(AppendRequest(stream, expected_version, events, encoded, _current_task()))
        # Park, don't signal.  Once the writer has the request, wait for its
        # outcome whatever happens (cancellation is refused): a commit takes
        # bounded time, and an append whose outcome is unknown to its caller
        # would be worse.  No checkpoint between the put and here, so the
        # writer cannot wake us too early (it wakes us through run_sync_soon,
        # in this thread).
        recorded: list[RecordedEvent] = await trio.lowlevel.wait_task_rescheduled(_refuse_abort)
        return recorded

    async def set_max_page_count(self, pages: int) -> int:
        """Change the page limit of the log (a quota); returns the limit now in force."""
        return await self._run_in_writer(self._set_max_page_count, pages)

    def _set_max_page_count(self, pages: int) -> int:
        conn = self._recorder.conn
        set_max_page_count(conn, pages)
        return int(conn.execute("PRAGMA max_page_count").fetchone()[0])

    async def run_exclusive(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn(writer connection)`` in the writer thread between two batches
        (no transaction open; appends wait meanwhile).  The writer forgets what
        it cached of the file afterwards.  Used by retention
        (:mod:`plane.events.archive`)."""
        results: list[_T] = []

        def job(_: int) -> int:
            try:
                results.append(fn(self._recorder.conn))
            finally:
                self._recorder.forget()
            return 0

        await self._run_in_writer(job, 0)
        return results[0]

    async def _run_in_writer(self, fn: Callable[[int], int], arg: int) -> int:
        """Run ``fn(arg)`` in the writer thread, between two batches."""
        self._check_open()
        if not self._accepting:
            raise StoreClosedError(f"the plane log {self.path} is closed")
        self._put(WriterJob(fn, arg, _current_task()))
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
            target=self._writer_thread, name=f"plane-log-writer {self.path.name}", daemon=True
        )
        with trio.CancelScope(shield=True):
            thread.start()
            task_status.started()
            await self._writer_ended.wait()
            await trio.to_thread.run_sync(thread.join)
        if self._writer_crash is not None:
            raise self._writer_crash

    def _writer_thread(self) -> None:
        run_sync_soon = self._token.run_sync_soon
        try:
            self._recorder.main(run_sync_soon, self._deliver, _finish_job, self._crashed)
        finally:
            run_sync_soon(self._writer_ended.set)

    def _stop_writer(self) -> None:
        """Refuse new appends; the writer ends after deciding what it was handed."""
        if self._accepting:
            self._accepting = False
            self._put(None)

    def _crashed(self, batch: list[AppendRequest], crash: BaseException) -> None:
        """In the trio thread, after the writer died: refuse appends, fail every waiter."""
        self._writer_crash = crash
        self._accepting = False  # from here no request can enter the inbox
        failed = StoreError(f"the writer of the plane log {self.path} crashed: {crash!r}")
        pending: list[InboxItem] = [*batch, *self._recorder.pending()]
        for item in pending:
            if item is not None:
                _reschedule(item.task, outcome.Error(failed))

    def _deliver(self, batch: list[AppendRequest], written: int) -> None:
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
            recent.add(records)
        recent.trim()
        if written:
            self.commits += 1
            self.appended += written
            changed, self._changed = self._changed, trio.Event()
            changed.set()

    # -------------------------------------------------------------- reading

    async def read_stream(self, stream: str, after_version: int = 0) -> list[RecordedEvent]:
        """Events of one stream with version > ``after_version``, in order; a stream
        retention moved out of the live log is read from its archive."""
        self._check_open()
        found = await trio.to_thread.run_sync(
            select_stream,
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
            stream_if_absent,
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
            select_all, self._reader, self.path, after_seq, limit, limiter=self._read_limiter
        )

    async def last_seq(self) -> int:
        """The highest sequence number written (0 for an empty log)."""
        self._check_open()
        return await trio.to_thread.run_sync(
            select_last_seq, self._reader, self.path, limiter=self._read_limiter
        )

    async def tail(self, after_seq: int = 0) -> AsyncGenerator[RecordedEvent, None]:
        """Every event after ``after_seq``, then new ones as they land.

        Never ends while the store is open; raises :class:`StoreClosedError`
        when it closes.  Waits for the writer's next commit, never polls.
        Reads the file until it has caught up with the events kept in memory,
        then takes them from there (tails from memory).
        """
        cursor = after_seq
        while True:
            self._check_open()
            # Arm the waiter before reading: a commit after this line sets it.
            changed = self._changed
            batch = self._recent.after(cursor)
            if batch is None:
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
        """Close the reader connection and wake the tails (after the writer ended)."""
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
