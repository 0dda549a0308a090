"""The backends index: every backend the history holds, paged from SQLite, not memory.

This module owns :class:`BackendIndex`, the projection the API's backend list
(``GET /ctrl/backends`` without ``live``) and its cursor read the terminated
backends from, so the supervisor holds only live backends in memory and the
list still pages over every backend ever run, archived ones included.

What it holds: one row per backend (``backend_id`` primary key,
``requested_at``, the key's ``namespace`` and ``name``, ``terminated`` 0/1),
with a partial index on ``(requested_at, backend_id)`` over the terminated
rows, so a page of terminated backends after a cursor is an index range scan
(fast at 50,000 or 5 million terminated backends; nothing per backend stays
in memory).  Only these event types feed it: ``backend.requested`` (the row;
``backend.claimed`` for a warm pool's backend, which has no key before)
and ``backend.terminated`` (the flag); the row's payload is read with
``orjson.loads`` of the stored data, never by folding streams.

Where: for the SQLite store, the file ``events.db.backends`` beside the log,
derived data like the snapshot (:mod:`plane.events.snapshot`): it is never
instead of the log, and is rebuilt from the log and its archives whenever it
is missing, unreadable, of another format, ahead of the log, or from another
log (a ``meta`` row keeps the covered ``seq`` and a fingerprint of the event
at that seq, looked for in the live log, then the archives).  Any other store
(the in-memory one, in tests) gets an in-memory SQLite index fed from
``read_all``.

Keeping it current: :meth:`BackendIndex.catch_up` reads the events after the
covered seq (the ``seq`` primary key makes that a range scan of what is new)
in one read transaction of the live log, and records the rows and the new
covered seq in one transaction of the index, so a crash leaves it consistent
with some prefix of the log.  Retention moves terminated streams to archives
after recording :class:`~plane.events.types.HistoryArchived`: when a catch-up
meets one, it also reads the archives past the covered seq, so a stream
archived before the index saw it is not missed.  The API calls
:meth:`~BackendIndex.catch_up` before each list; ``plane serve`` also runs one right after
starting, so a rebuild is paid before the first list.

Resource handling: the file index opens its connections per call, in a worker
thread, one call at a time (a ``trio.Lock``); the in-memory one keeps one
connection for its life.  Error handling: SQLite errors on the log are the
store's (:class:`~plane.events.store.StoreError`); an unusable index file is
rebuilt, not an error.
"""

from __future__ import annotations

import os
import sqlite3
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import orjson
import trio

from plane.events import wire
from plane.events.sqlite import store_error
from plane.events.store import EventStore, StoreFullError
from plane.events.types import (
    BackendClaimed,
    BackendRequested,
    BackendTerminated,
    HistoryArchived,
)

__all__ = ["INDEX_FORMAT", "BackendIndex", "Order", "index_path"]

INDEX_FORMAT = 1
"""The index file's format; a file of any other format is rebuilt."""

Order = tuple[float, str]
"""Where a backend sorts in the list: (requested_at, backend_id)."""

_REQUESTED = wire.TAGS[BackendRequested]
_TERMINATED = wire.TAGS[BackendTerminated]
_ARCHIVED = wire.TAGS[HistoryArchived]
_CLAIMED = wire.TAGS[BackendClaimed]
_TYPES = (_REQUESTED, _TERMINATED, _ARCHIVED, _CLAIMED)
_ROWS = (
    "SELECT seq, stream, type, data FROM events"
    " WHERE seq > ? AND seq <= ? AND type IN (?, ?, ?, ?)"
)
_BATCH = 4096

_SCHEMA = """
CREATE TABLE IF NOT EXISTS backends (
    backend_id TEXT PRIMARY KEY,
    requested_at REAL NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    terminated INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS backends_terminated_order
    ON backends (requested_at, backend_id) WHERE terminated = 1;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_Row = tuple[int, str, str, str]


def index_path(log: str | os.PathLike[str]) -> Path:
    """Where the backends index of the log at ``log`` lives."""
    log = Path(log)
    return log.with_name(log.name + ".backends")


def _apply(conn: sqlite3.Connection, rows: Iterable[_Row]) -> bool:
    """Record ``rows`` (inside the caller's transaction); True if one was a HistoryArchived."""
    archived = False
    requested: list[tuple[str, float, str, str]] = []
    terminated: list[tuple[str]] = []
    for _seq, stream, tag, data in rows:
        if tag in (_REQUESTED, _CLAIMED):  # a warm backend is listed once claimed
            doc = orjson.loads(data)
            key = doc["key"]
            requested.append((stream, float(doc["at"]), str(key["namespace"]), str(key["name"])))
        elif tag == _TERMINATED:
            terminated.append((stream,))
        else:
            archived = True
    conn.executemany(
        "INSERT OR IGNORE INTO backends (backend_id, requested_at, namespace, name)"
        " VALUES (?, ?, ?, ?)",
        requested,
    )
    conn.executemany("UPDATE backends SET terminated = 1 WHERE backend_id = ?", terminated)
    return archived


def _covered(conn: sqlite3.Connection) -> tuple[int, str | None]:
    meta = {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    if meta.get("format") != str(INDEX_FORMAT):
        return -1, None
    return int(meta.get("seq", "0")), meta.get("fingerprint")


def _set_covered(conn: sqlite3.Connection, seq: int, fingerprint: str | None) -> None:
    conn.executemany(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
        [("format", str(INDEX_FORMAT)), ("seq", str(seq)), ("fingerprint", fingerprint or "")],
    )


def _fingerprint(conns: Sequence[sqlite3.Connection], seq: int) -> str | None:
    """(stream, version, type, crc32 of data) of event ``seq``, from the first
    file that has it; None if none does."""
    for conn in conns:
        row = conn.execute(
            "SELECT stream, version, type, data FROM events WHERE seq = ?", (seq,)
        ).fetchone()
        if row is not None:
            return orjson.dumps([row[0], row[1], row[2], zlib.crc32(str(row[3]).encode())]).decode()
    return None


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None)


class BackendIndex:
    """The projection; see the module docstring.  :meth:`for_store` picks the kind."""

    def __init__(self, store: EventStore, log: Path | None) -> None:
        self.store = store
        self.log = log
        self.path = index_path(log) if log is not None else None
        self._lock = trio.Lock()
        self._memory: sqlite3.Connection | None = None
        if log is None:
            self._memory = sqlite3.connect(":memory:", isolation_level=None)
            self._memory.executescript(_SCHEMA)
            _set_covered(self._memory, 0, None)

    @classmethod
    def for_store(cls, store: EventStore) -> BackendIndex:
        """A file index beside the log of a SQLite store, else an in-memory one."""
        log = getattr(store, "path", None)
        return cls(store, Path(log) if isinstance(log, str | os.PathLike) else None)

    # ------------------------------------------------------------ catching up

    async def catch_up(self) -> None:
        """Bring the index up to the log's last event."""
        async with self._lock:
            if self._memory is not None:
                await self._catch_up_memory(self._memory)
            else:
                await trio.to_thread.run_sync(self._catch_up_file)

    async def _catch_up_memory(self, conn: sqlite3.Connection) -> None:
        covered, _ = _covered(conn)
        records = await self.store.read_all(after_seq=covered)
        if not records:
            return
        rows = [
            (r.seq, r.stream, tag, data)
            for r in records
            if isinstance(r.event, BackendRequested | BackendClaimed | BackendTerminated)
            for tag, data in (wire.encode(r.event),)
        ]
        conn.execute("BEGIN")
        _apply(conn, rows)
        _set_covered(conn, records[-1].seq, None)
        conn.execute("COMMIT")

    def _catch_up_file(self) -> None:
        from plane.events.archive import archive_paths

        assert self.log is not None and self.path is not None
        log = self.log
        try:
            index = self._open_index()
        except sqlite3.Error as exc:
            raise store_error(exc, log, "indexing its backends") from exc
        try:
            live = _read_only(log)
            archives = [_read_only(p) for p in archive_paths(log)]
            try:
                self._catch_up_from(index, live, archives)
            except sqlite3.Error as exc:
                raise store_error(exc, log, "indexing its backends") from exc
            finally:
                for conn in [live, *archives]:
                    conn.close()
        finally:
            index.close()

    def _open_index(self) -> sqlite3.Connection:
        """The index file, made anew if unusable."""
        assert self.path is not None
        try:
            conn = sqlite3.connect(self.path, isolation_level=None)
            conn.executescript(_SCHEMA)
            return conn
        except sqlite3.OperationalError:  # full, locked, I/O: not a damaged file
            conn.close()
            raise
        except sqlite3.Error:  # damaged: derived data, made anew
            conn.close()
            self.path.unlink(missing_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None)
            conn.executescript(_SCHEMA)
            return conn

    def _catch_up_from(
        self,
        index: sqlite3.Connection,
        live: sqlite3.Connection,
        archives: list[sqlite3.Connection],
    ) -> None:
        live.execute("BEGIN")  # one consistent view of the live log
        try:
            has_events = live.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'"
            ).fetchone()
            if not has_events:
                return
            last = int(live.execute("SELECT max(seq) FROM events").fetchone()[0] or 0)
            covered, fingerprint = _covered(index)
            if covered > 0 and (
                covered > last or _fingerprint([live, *archives], covered) != fingerprint
            ):
                covered = -1  # ahead of the log, or of another log
            if covered < 0:  # rebuild from the whole history
                index.execute("BEGIN IMMEDIATE")
                index.execute("DELETE FROM backends")
                index.execute("DELETE FROM meta")
                index.execute("COMMIT")
                covered = 0
            if covered == last:
                return
            index.execute("BEGIN IMMEDIATE")
            try:
                archived = False
                cursor = live.execute(_ROWS, (covered, last, *_TYPES))
                while rows := cursor.fetchmany(_BATCH):
                    archived |= _apply(index, rows)
                if archived or covered == 0:
                    for archive in archives:  # streams moved past the covered seq
                        cursor = archive.execute(_ROWS, (covered, last, *_TYPES))
                        while rows := cursor.fetchmany(_BATCH):
                            _apply(index, rows)
                _set_covered(index, last, _fingerprint([live, *archives], last))
                index.execute("COMMIT")
            except BaseException:
                if index.in_transaction:
                    index.execute("ROLLBACK")
                raise
        finally:
            live.execute("COMMIT")

    # ---------------------------------------------------------------- queries

    async def _query(self, sql: str, args: Sequence[object]) -> list[tuple[object, ...]]:
        if self._memory is not None:
            return list(self._memory.execute(sql, args))

        def run() -> list[tuple[object, ...]]:
            path = self.path
            assert path is not None
            conn = sqlite3.connect(path, isolation_level=None)
            try:
                try:
                    conn.executescript(_SCHEMA)
                except sqlite3.OperationalError as exc:
                    if not isinstance(store_error(exc, path, "reading"), StoreFullError):
                        raise
                    # never made (a disk full before the first catch-up): derived
                    # data, so it holds nothing yet; lists say what memory holds
                    return []
                return list(conn.execute(sql, args))
            finally:
                conn.close()

        async with self._lock:
            return await trio.to_thread.run_sync(run)

    async def terminated_page(
        self,
        after: Order | None,
        limit: int,
        *,
        namespace: str | None = None,
        name: str | None = None,
    ) -> list[Order]:
        """Up to ``limit`` terminated backends sorting after ``after``, in order."""
        where, args = ["terminated = 1"], []
        if after is not None:
            where.append("(requested_at, backend_id) > (?, ?)")
            args += [after[0], after[1]]
        if namespace is not None:
            where.append("namespace = ?")
            args.append(namespace)
        if name is not None:
            where.append("name = ?")
            args.append(name)
        rows = await self._query(
            "SELECT requested_at, backend_id FROM backends WHERE "
            + " AND ".join(where)
            + " ORDER BY requested_at, backend_id LIMIT ?",
            [*args, limit],
        )
        return [(float(at), str(bid)) for at, bid in rows]  # type: ignore[arg-type]

    async def order_of(self, backend_id: str) -> Order | None:
        """Where ``backend_id`` sorts, if the index knows it."""
        rows = await self._query(
            "SELECT requested_at, backend_id FROM backends WHERE backend_id = ?", [backend_id]
        )
        return (float(rows[0][0]), str(rows[0][1])) if rows else None  # type: ignore[arg-type]
