"""``plane backup DEST``: an online copy of the log, its archives and its snapshot;
restoring it (copying the files back) gives a log that verifies."""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

import pytest
import trio
import trio.lowlevel

from plane.cli import main
from plane.events.archive import archive_before, archive_paths
from plane.events.backup import backup_log
from plane.events.snapshot import load_startup, snapshot_path, write_snapshot
from plane.events.sqlite import open_sqlite_store
from replay.verify import verify_log

from ..sqlite_files import integrity_ok
from .histories import History


def restore(backup: Path, data_dir: Path) -> Path:
    data_dir.mkdir()
    for path in backup.iterdir():
        shutil.copy(path, data_dir / path.name)
    return data_dir / "events.db"


async def test_backup_while_appending_restores_and_verifies(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    log = data / "events.db"
    history = History()
    dest = tmp_path / "backup"
    async with open_sqlite_store(log) as store:
        await history.add_finished(store, 50)
        acked = await store.last_seq()
        stop = trio.Event()

        async def keep_appending() -> None:
            while not stop.is_set():
                await history.add_finished(store, 1)
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_appending)
            written = await trio.to_thread.run_sync(backup_log, log, dest)
            stop.set()
        assert await store.last_seq() > acked  # the writer kept going meanwhile
    assert dest / "events.db" in written
    restored = restore(dest, tmp_path / "restored")
    assert integrity_ok(restored)
    report = verify_log(restored, jobs=1)
    assert report.ok, report.violations
    assert report.last_seq >= acked
    async with open_sqlite_store(restored) as store:  # and it carries on
        before = await store.last_seq()
        await History().add_live(store, 1)
        assert await store.last_seq() == before + len(await store.read_stream("l000000"))


async def test_backup_cli_copies_archives_and_snapshot(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    log = data / "events.db"
    history = History()
    async with open_sqlite_store(log) as store:
        await history.add_finished(store, 12)
        await history.add_live(store, 2)
        await trio.sleep(0.05)
        assert await archive_before(store, time.time(), now=time.time()) == 12
    write_snapshot(log)
    dest = tmp_path / "backup"
    assert main(["backup", str(dest), "--data-dir", str(data)]) == 0
    names = sorted(p.name for p in dest.iterdir())
    assert names == sorted(
        ["events.db", snapshot_path(log).name, *(p.name for p in archive_paths(log))]
    )
    assert all((p.stat().st_mode & 0o777) == 0o600 for p in dest.iterdir())
    restored = restore(dest, tmp_path / "restored")
    report = verify_log(restored, jobs=1)
    assert report.ok and report.archives == 1, report
    assert report.snapshot.startswith("matches")
    state, how = load_startup(restored)
    assert how == "snapshot" and set(state.live) == set(history.live)


def test_backup_cli_refuses_a_missing_log_and_the_data_dir_itself(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["backup", str(tmp_path / "b"), "--data-dir", str(tmp_path / "none")]) == 2
    assert "no plane log" in capsys.readouterr().err
    sqlite3.connect(tmp_path / "events.db").close()  # an empty file is an empty log
    assert main(["backup", str(tmp_path), "--data-dir", str(tmp_path)]) == 2
    assert "data directory itself" in capsys.readouterr().err
