"""Retention: archive files beside the log, and reading log + archives as one history.

This module owns the archive files and the move of old streams into them.

Layout: beside ``DATA_DIR/events.db`` live ``events-archive-YYYY-MM.db``, one
per month (UTC) in which retention ran: each holds the streams archived in that
month.  An archive has the
log's own schema (same tables, index, triggers, ``application_id``): rows keep
their ``seq``, ``stream``, ``version``, ``type``, ``data`` and
``recorded_at``.  An archive is only ever appended to, and once its month is
over it is *closed* by the next archiving: a ``closed_at`` row in its
``meta`` table and its file mode made read-only (0400).

The move (:func:`archive_before` on an open store: :func:`archive_streams` runs
in the store's writer thread between two batches, through
:meth:`plane.events.sqlite.SqliteEventStore.run_exclusive`)
goes in steps that each leave every event in exactly one place once
:func:`recover` has run, whatever step a ``kill -9`` interrupts:

1. the caller first appends, through the normal append path, a
   :class:`~plane.events.types.HistoryArchived` event to the system stream:
   the ids and each key's highest fencing token, which must outlive the
   streams;
2. a journal ``events.db.archiving`` (JSON: the streams, by month) is written
   and fsynced;
3. the streams' rows are copied into their archives (``INSERT OR IGNORE`` by
   seq, so a repeat is harmless), one transaction per archive;
4. the live log's younger rows are copied into a fresh file
   ``events.db.rebuild`` with the same schema (same seqs; the
   ``sqlite_sequence`` counter kept), and that file replaces the live log's
   content through SQLite's backup API into the live log's own connection:
   one write transaction, atomic for every reader, with the append-only
   triggers untouched (the backup copies pages, not rows);
5. the journal and the rebuild file are removed.

:func:`recover` (run when a store opens) finishes a move a crash interrupted:
with a journal present it redoes steps 3-5 if the live log still holds any of
the journal's streams, else only step 5.  Until then, readers of the history
(:class:`HistoryReader`) see an event that is in both places once (by seq).

:class:`HistoryReader` reads the live log and its archives as one history,
in seq order, with the interface of
:class:`~plane.events.sqlite.SqliteLogReader`; :func:`read_archived_stream`
finds a stream that is no longer in the live log.

Error handling: SQLite errors become :class:`~plane.events.store.StoreError`
naming the file (a full disk: :class:`~plane.events.store.StoreFullError`; the
move is then left to :func:`recover` or the next run, nothing is lost).
"""

from __future__ import annotations

import heapq
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, suppress
from pathlib import Path

import orjson
import trio

from plane.events.sqlite import SqliteEventStore, SqliteLogReader, create_schema, store_error
from plane.events.sqlite.recorder import ClosedOnExit, events_then_close
from plane.events.store import RecordedEvent, StoreError
from plane.events.types import SYSTEM_STREAM, HistoryArchived, KeyFencing

__all__ = [
    "HistoryReader",
    "archive_before",
    "archive_paths",
    "archive_streams",
    "expired_streams",
    "read_archived_stream",
    "read_history",
    "recover",
]

_TERMINATED_TAG = "backend.terminated.v1"
_COLUMNS = "seq, stream, version, type, data, recorded_at"


def archive_paths(log: str | os.PathLike[str]) -> list[Path]:
    """The archive files of the log at ``log``, oldest month first."""
    log = Path(log)
    return sorted(log.parent.glob(f"{log.stem}-archive-[0-9][0-9][0-9][0-9]-[0-9][0-9].db"))


def archive_path(log: Path, month: str) -> Path:
    return log.with_name(f"{log.stem}-archive-{month}.db")


def journal_path(log: Path) -> Path:
    return log.with_name(log.name + ".archiving")


def rebuild_path(log: Path) -> Path:
    return log.with_name(log.name + ".rebuild")


def _month(when: float) -> str:
    return time.strftime("%Y-%m", time.gmtime(when))


def expired_streams(conn: sqlite3.Connection, before: float, now: float) -> dict[str, list[str]]:
    """The backend streams of the log on ``conn`` terminated before ``before``
    (by the time their ``terminated`` event was recorded), under the month of
    ``now``: an archive holds what was archived in its month, so once the month
    is over nothing is ever added to it."""
    rows = conn.execute(
        "SELECT stream FROM events WHERE type = ? AND recorded_at < ? ORDER BY seq",
        (_TERMINATED_TAG, before),
    )
    streams = [str(stream) for (stream,) in rows if stream != SYSTEM_STREAM]
    return {_month(now): streams} if streams else {}


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_journal(log: Path, by_month: dict[str, list[str]]) -> None:
    journal = journal_path(log)
    temporary = journal.with_name(journal.name + ".tmp")
    with open(temporary, "wb") as out:
        out.write(orjson.dumps({"streams": by_month}))
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, journal)
    _fsync_dir(log.parent)


def _read_journal(log: Path) -> dict[str, list[str]] | None:
    try:
        doc = orjson.loads(journal_path(log).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        # A torn journal was never complete (it is renamed into place whole):
        # the move had not started, so nothing left the live log.
        journal_path(log).unlink(missing_ok=True)
        return None
    return {str(m): [str(s) for s in streams] for m, streams in doc["streams"].items()}


def _open_archive(path: Path) -> sqlite3.Connection:
    """Open (creating if new) this month's archive file for appending."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        has_events = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'"
        ).fetchone()
        if not has_events:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("BEGIN IMMEDIATE")
            create_schema(conn)
            conn.execute("COMMIT")
        conn.execute("PRAGMA synchronous = FULL")
    except BaseException:
        conn.close()
        raise
    return conn


def _copy_into_archives(log: Path, by_month: dict[str, list[str]]) -> None:
    """Step 3: copy the streams' rows from the live log into their archives."""
    for month, streams in sorted(by_month.items()):
        path = archive_path(log, month)
        try:
            conn = _open_archive(path)
        except sqlite3.Error as exc:
            raise store_error(exc, path, "creating the archive") from exc
        try:
            conn.execute("ATTACH DATABASE ? AS live", (str(log),))
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("CREATE TEMP TABLE moving (stream TEXT PRIMARY KEY)")
            conn.executemany("INSERT OR IGNORE INTO moving VALUES (?)", [(s,) for s in streams])
            conn.execute(
                f"INSERT OR IGNORE INTO main.events ({_COLUMNS}) SELECT {_COLUMNS}"
                " FROM live.events WHERE stream IN (SELECT stream FROM moving) ORDER BY seq"
            )
            conn.execute("COMMIT")
            conn.execute("DROP TABLE temp.moving")
            conn.execute("DETACH DATABASE live")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise store_error(exc, path, "archiving into it") from exc
        finally:
            conn.close()


def _close_old_archives(log: Path, this_month: str) -> None:
    """Mark archives of months before ``this_month`` closed and make them read-only."""
    for path in archive_paths(log):
        month = path.stem.rsplit("-archive-", 1)[1]
        if month >= this_month or not path.stat().st_mode & stat.S_IWUSR:
            continue
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('closed_at', ?)",
                (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),),
            )
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute("PRAGMA journal_mode = DELETE")  # a lone file, no -wal
        finally:
            conn.close()
        path.chmod(0o400)


def _rebuild_live(log: Path, live: sqlite3.Connection, streams: set[str]) -> None:
    """Step 4: the live log without ``streams``, swapped in through the backup API."""
    rebuild = rebuild_path(log)
    rebuild.unlink(missing_ok=True)
    page_size = int(live.execute("PRAGMA page_size").fetchone()[0])
    conn = sqlite3.connect(rebuild, isolation_level=None)
    try:
        conn.execute(f"PRAGMA page_size = {page_size}")
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")  # a scratch file until it is copied in
        conn.execute("ATTACH DATABASE ? AS live", (str(log),))
        conn.execute("BEGIN")
        schema = conn.execute(
            "SELECT type, sql FROM live.sqlite_master"
            " WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
        for kind, sql in schema:  # the log's own schema, whatever version wrote it
            if kind in ("table", "index"):
                conn.execute(sql)
        for pragma in ("application_id", "user_version"):
            value = int(live.execute(f"PRAGMA {pragma}").fetchone()[0])
            conn.execute(f"PRAGMA main.{pragma} = {value}")
        conn.execute("CREATE TEMP TABLE moving (stream TEXT PRIMARY KEY)")
        conn.executemany("INSERT INTO moving VALUES (?)", [(s,) for s in streams])
        conn.execute("INSERT INTO main.meta SELECT * FROM live.meta")
        conn.execute(
            f"INSERT INTO main.events ({_COLUMNS}) SELECT {_COLUMNS} FROM live.events"
            " WHERE stream NOT IN (SELECT stream FROM moving) ORDER BY seq"
        )
        for kind, sql in schema:
            if kind == "trigger":
                conn.execute(sql)
        counter = live.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        conn.execute("DELETE FROM main.sqlite_sequence WHERE name = 'events'")
        conn.execute(
            "INSERT INTO main.sqlite_sequence (name, seq) VALUES ('events', ?)",
            (int(counter[0]) if counter else 0,),
        )
        conn.execute("COMMIT")
        conn.execute("DETACH DATABASE live")
        conn.execute("PRAGMA journal_mode = WAL")  # the header the live log has
        conn.backup(live)  # one transaction on the live log: atomic for every reader
    finally:
        conn.close()
    rebuild.unlink(missing_ok=True)


def _live_holds_any(live: sqlite3.Connection, streams: Sequence[str]) -> bool:
    for stream in streams:
        if live.execute("SELECT 1 FROM events WHERE stream = ? LIMIT 1", (stream,)).fetchone():
            return True
    return False


def archive_streams(log: Path, live: sqlite3.Connection, by_month: dict[str, list[str]]) -> int:
    """Steps 2-5: move ``by_month``'s streams out of the live log (open for writing on
    ``live``, no transaction open) into their archives; returns how many moved.

    The caller recorded the :class:`~plane.events.types.HistoryArchived` first.
    """
    streams = [s for ss in by_month.values() for s in ss]
    if not streams:
        return 0
    _write_journal(log, by_month)
    _finish(log, live, by_month)
    return len(streams)


def _finish(log: Path, live: sqlite3.Connection, by_month: dict[str, list[str]]) -> None:
    try:
        _copy_into_archives(log, by_month)
        _rebuild_live(log, live, {s for ss in by_month.values() for s in ss})
    except sqlite3.Error as exc:
        raise store_error(exc, log, "archiving from it") from exc
    journal_path(log).unlink(missing_ok=True)
    _fsync_dir(log.parent)
    with suppress(OSError, sqlite3.Error):
        _close_old_archives(log, max(by_month))


def recover(log: Path, live: sqlite3.Connection) -> bool:
    """Finish a move a crash interrupted (see the module docstring); True if one was."""
    rebuild_path(log).unlink(missing_ok=True)
    by_month = _read_journal(log)
    if by_month is None:
        return False
    streams = [s for ss in by_month.values() for s in ss]
    if _live_holds_any(live, streams):
        _finish(log, live, by_month)
    else:
        journal_path(log).unlink(missing_ok=True)
        _fsync_dir(log.parent)
    return True


# ------------------------------------------------ running it on an open store


def _plan(
    log: Path, before: float, now: float
) -> tuple[dict[str, list[str]], list[KeyFencing], int]:
    """What to archive (by month), its keys' highest fencing tokens, and the
    system stream's version; read on a connection of its own."""
    conn = sqlite3.connect(log.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        by_month = expired_streams(conn, before, now)
        streams = [s for ss in by_month.values() for s in ss]
        fencing: dict[tuple[str, str], int] = {}
        for i in range(0, len(streams), 500):
            chunk = streams[i : i + 500]
            rows = conn.execute(
                "SELECT data FROM events WHERE type = 'backend.requested.v1'"
                f" AND stream IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            for (data,) in rows:
                doc = orjson.loads(data)
                slot = (str(doc["key"]["namespace"]), str(doc["key"]["name"]))
                fencing[slot] = max(fencing.get(slot, 0), int(doc["fencing_token"]))
        row = conn.execute(
            "SELECT max(version) FROM events WHERE stream = ?", (SYSTEM_STREAM,)
        ).fetchone()
    except sqlite3.Error as exc:
        raise store_error(exc, log, "planning the archiving") from exc
    finally:
        conn.close()
    marks = [KeyFencing(ns, name, token) for (ns, name), token in sorted(fencing.items())]
    return by_month, marks, int(row[0] or 0)


async def archive_before(store: SqliteEventStore, before: float, *, now: float) -> int:
    """Move the streams of backends terminated before ``before`` out of the open
    ``store``'s live log into the archives; returns how many streams moved.

    Records the :class:`~plane.events.types.HistoryArchived` checkpoint first
    (a :class:`~plane.events.store.ConcurrencyError` if the system stream moved
    meanwhile: try again later), then moves them in the writer thread.
    """
    planned = await trio.to_thread.run_sync(_plan, store.path, before, now)
    by_month, fencing, system_version = planned
    ids = tuple(s for ss in by_month.values() for s in ss)
    if not ids:
        return 0
    checkpoint = HistoryArchived(now, before, ids, tuple(fencing))
    await store.append(SYSTEM_STREAM, system_version, [checkpoint])
    moved = await store.run_exclusive(lambda conn: archive_streams(store.path, conn, by_month))
    store.has_archives = True
    return moved


# ------------------------------------------------------------------ reading


def _open_archive_reader(path: Path, *, check: bool) -> SqliteLogReader:
    """A read-only reader of an archive; an archive a crash left with a hot WAL
    (which a read-only connection may not replay) is first opened for writing
    once, which replays it."""
    try:
        return SqliteLogReader(path, check=check)
    except StoreError:
        conn = sqlite3.connect(path)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            raise store_error(exc, path, "opening the archive") from exc
        finally:
            conn.close()
        return SqliteLogReader(path, check=check)


class HistoryReader(ClosedOnExit):
    """The live log and its archives read as one history (read-only, synchronous).

    The interface of :class:`~plane.events.sqlite.SqliteLogReader`; events come
    in seq order, an event found in two files (a move a crash interrupted) once.
    """

    def __init__(self, path: str | os.PathLike[str], *, check: bool = True) -> None:
        self.path = Path(path)
        self._stack = ExitStack()
        try:
            self.live = self._stack.enter_context(SqliteLogReader(self.path, check=check))
            self.archives = [
                self._stack.enter_context(_open_archive_reader(p, check=check))
                for p in archive_paths(self.path)
            ]
        except BaseException:
            self._stack.close()
            raise

    def iter_events(
        self,
        after_seq: int = 0,
        *,
        up_to_seq: int | None = None,
        keep_stream: Callable[[str], bool] | None = None,
    ) -> Iterator[RecordedEvent]:
        """Every event with seq > ``after_seq`` of the whole history, in seq order."""
        sources = [
            reader.iter_events(after_seq, up_to_seq=up_to_seq, keep_stream=keep_stream)
            for reader in [*self.archives, self.live]
        ]
        if len(sources) == 1:
            yield from sources[0]
            return
        last = after_seq
        for record in heapq.merge(*sources, key=lambda r: r.seq):
            if record.seq != last:
                last = record.seq
                yield record

    def last_seq(self) -> int:
        return max([self.live.last_seq(), *(a.last_seq() for a in self.archives)])

    def close(self) -> None:
        self._stack.close()


def read_history(path: str | os.PathLike[str], after_seq: int = 0) -> Iterator[RecordedEvent]:
    """Every event of the log at ``path`` and its archives; the files are opened now."""
    return events_then_close(HistoryReader(path), after_seq)


def read_archived_stream(
    log: str | os.PathLike[str], stream: str, after_version: int = 0
) -> list[RecordedEvent]:
    """The events of ``stream`` with version > ``after_version`` from the archives
    (empty if no archive holds it), newest archive first."""
    for path in reversed(archive_paths(log)):
        with _open_archive_reader(path, check=False) as reader:
            found = reader.stream_events(stream, after_version)
        if found:
            return found
    return []
