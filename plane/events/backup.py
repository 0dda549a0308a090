"""Online backups of the log, its archives and its snapshot (``plane backup DEST``).

This module owns :func:`backup_log`.  Each SQLite file (the log, then every
archive) is copied with SQLite's backup API from a read-only connection, so
``plane serve`` keeps writing meanwhile and each copy is one consistent
state of its file; the snapshot is copied as a file (it is derived data, and
a stale one is rebuilt at startup).  Each copy is a lone file (rollback
journal mode; plane turns WAL back on when it opens the log), written to a
temporary name and renamed into place, so an interrupted backup leaves the
last complete copy of each file.

Retention may move streams from the log to an archive between two copies: the
archives are copied after the log, so such an event is in both copies, never
in neither.  The backup then carries a journal naming those streams, and the
first open of the restored log finishes the move
(:func:`plane.events.archive.recover`), exactly as after a crash.

Restoring is copying the files back into an empty data directory (plane stopped).

Error handling: a missing log raises
:class:`~plane.events.store.LogNotFoundError`; SQLite errors become
:class:`~plane.events.store.StoreError`; a destination that is the data
directory itself is refused with a ``ValueError``.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import orjson

from plane.events.archive import archive_paths, journal_path
from plane.events.snapshot import snapshot_path
from plane.events.sqlite import SqliteLogReader, store_error
from plane.events.store import LogNotFoundError

__all__ = ["backup_log"]


def _copy_database(source: Path, target: Path) -> None:
    temporary = target.with_name(target.name + ".partial")
    temporary.unlink(missing_ok=True)
    try:
        src = sqlite3.connect(source.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            dst = sqlite3.connect(temporary)
            try:
                os.chmod(temporary, 0o600)  # the log holds secrets
                src.backup(dst)
                dst.execute("PRAGMA journal_mode = DELETE")  # one lone file, no -wal
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as exc:
        temporary.unlink(missing_ok=True)
        raise store_error(exc, source, "backing it up") from exc
    os.replace(temporary, target)


def _streams_in_both(log: Path, archive: Path) -> list[str]:
    conn = sqlite3.connect(archive.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        conn.execute("ATTACH DATABASE ? AS live", (log.resolve().as_uri() + "?mode=ro",))
        rows = conn.execute(
            "SELECT DISTINCT stream FROM main.events"
            " WHERE stream IN (SELECT stream FROM live.events)"
        )
        return [str(row[0]) for row in rows]
    finally:
        conn.close()


def backup_log(log: str | os.PathLike[str], dest: str | os.PathLike[str]) -> list[Path]:
    """Copy the log at ``log``, its archives and its snapshot into the directory
    ``dest`` (created if missing); returns the files written."""
    log, dest = Path(log), Path(dest)
    if not log.exists():
        raise LogNotFoundError(f"no plane log at {log}: the file does not exist")
    if dest.resolve() == log.parent.resolve():
        raise ValueError(f"the backup destination {dest} is the data directory itself")
    with SqliteLogReader(log):  # a plane log this plane can read, or a clear error
        pass
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    snapshot = snapshot_path(log)
    if snapshot.exists():  # first: a snapshot older than the log copy is only a tail away
        target = dest / snapshot.name
        shutil.copyfile(snapshot, target)
        os.chmod(target, 0o600)
        written.append(target)
    copied_log = dest / log.name
    _copy_database(log, copied_log)
    written.append(copied_log)
    journal: dict[str, list[str]] = {}
    for archive in archive_paths(log):
        target = dest / archive.name
        _copy_database(archive, target)
        written.append(target)
        doubled = _streams_in_both(copied_log, target)
        if doubled:
            month = archive.stem.rsplit("-archive-", 1)[1]
            journal.setdefault(month, []).extend(doubled)
    if journal:
        target = journal_path(copied_log)
        target.write_bytes(orjson.dumps({"streams": journal}))
        written.append(target)
    return written
