"""Retention: old streams move to monthly archives, the live log keeps the rest, and
log + archives read as one history; a kill -9 at any point loses and doubles nothing."""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from plane.events.archive import (
    HistoryReader,
    archive_before,
    archive_paths,
    journal_path,
    read_history,
)
from plane.events.snapshot import StartupState, load_startup, write_snapshot
from plane.events.sqlite import APPEND_ONLY_MESSAGE, SqliteLogReader, open_sqlite_store
from plane.events.store import RecordedEvent
from plane.events.types import SYSTEM_STREAM, HistoryArchived, TokenIssued
from replay.verify import verify_log

from ..sqlite_files import integrity_ok
from .histories import History

CHILD = Path(__file__).with_name("archiver_child.py")
REPO = Path(__file__).resolve().parents[2]


def rows_by_seq(path: Path) -> dict[int, tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {
            row[0]: row
            for row in conn.execute("SELECT seq, stream, version, type, data FROM events")
        }
    finally:
        conn.close()


async def test_archiving_moves_old_streams_and_keeps_one_history(tmp_path: Path) -> None:
    log = tmp_path / "events.db"
    history = History()
    async with open_sqlite_store(log) as store:
        await history.add_finished(store, 20)
        await history.add_live(store, 3)
        old = list(history.finished)
        await trio.sleep(0.3)
        cutoff = time.time()
        await trio.sleep(0.05)
        await history.add_finished(store, 5)  # younger than the cutoff: they stay
        before = list(read_history(log))
        last = await store.last_seq()

        moved = await archive_before(store, cutoff, now=time.time())
        assert moved == 20

        # the checkpoint came first, in the live log
        system = await store.read_stream(SYSTEM_STREAM)
        assert isinstance(system[-1].event, HistoryArchived)
        assert set(system[-1].event.backend_ids) == set(old)
        checkpoint_seq = system[-1].seq
        assert checkpoint_seq == last + 1
        # the live log holds the younger and the live streams, with their seqs
        live_rows = rows_by_seq(log)
        assert {row[1] for row in live_rows.values()} == {
            *history.live,
            *history.finished[20:],
            SYSTEM_STREAM,
        }
        # archived streams still read through the store (the status routes use it)
        archived = await store.read_stream(old[0])
        assert [r.event for r in archived] == [r.event for r in before if r.stream == old[0]]
        assert await store.read_stream("never-was") == []
        # the sequence counter is kept, and the store keeps appending
        await history.add_finished(store, 1)
        appended = await store.read_stream(history.finished[-1])
        assert appended[0].seq == checkpoint_seq + 1
        after = list(read_history(log))

    (archive,) = archive_paths(log)
    assert archive.name.startswith("events-archive-") and archive.name.endswith(".db")
    assert integrity_ok(log) and integrity_ok(archive)
    # one history: what was there before, plus the checkpoint and the newcomer
    assert after[: len(before)] == before
    assert [r.seq for r in after] == sorted({r.seq for r in after})
    # the triggers are still there, in both files
    for path in (log, archive):
        conn = sqlite3.connect(path)
        with pytest.raises(sqlite3.IntegrityError, match=APPEND_ONLY_MESSAGE):
            conn.execute("DELETE FROM events")
        conn.close()
    # replay verifies the whole history, and startup's fold keeps fencing and ids
    report = verify_log(log, jobs=1)
    assert report.ok, report.violations
    assert report.archives == 1 and report.events == len(after)
    state, _ = load_startup(log)
    full = StartupState().apply_all(read_history(log))
    assert state.comparable() == full.comparable()
    assert set(old) <= state.ids
    assert state.fencing[("ns", "room-0")] == history.fencing["room-0"]


async def test_supervisor_keeps_fencing_and_ids_of_archived_backends(tmp_path: Path) -> None:
    from plane.actors.supervisor import ConnectRefused, ConnectRequest, Supervisor
    from plane.events.spec import BackendKey
    from plane.testing.fake_executor import FakeExecutor

    from .histories import CONFIG

    log = tmp_path / "events.db"
    history = History(keys=3)
    async with open_sqlite_store(log) as store:
        await history.add_finished(store, 9)
        await trio.sleep(0.05)
        await archive_before(store, time.time(), now=time.time())
    async with open_sqlite_store(log) as store, trio.open_nursery() as nursery:
        supervisor = Supervisor(store, FakeExecutor())
        await nursery.start(supervisor.serve)
        result = await supervisor.connect(
            ConnectRequest(key=BackendKey("room-0", namespace="ns"), spawn_config=CONFIG)
        )
        assert result.state.fencing_token == history.fencing["room-0"] + 1
        with pytest.raises(ConnectRefused) as info:
            await supervisor.connect(
                ConnectRequest(
                    key=BackendKey("other"), spawn_config=CONFIG, backend_id=history.finished[0]
                )
            )
        assert info.value.code == "BackendIdTaken"
        nursery.cancel_scope.cancel()


def spawn(log: Path) -> subprocess.Popen[str]:
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(log)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
    )


def history_rows(log: Path) -> list[dict[int, tuple[object, ...]]]:
    return [rows_by_seq(p) for p in [log, *archive_paths(log)]]


async def test_kill9_while_archiving_leaves_every_event_in_exactly_one_place(
    tmp_path: Path,
) -> None:
    template = tmp_path / "template" / "events.db"
    template.parent.mkdir()
    history = History()
    async with open_sqlite_store(template, synchronous="OFF") as store:
        await history.add_finished(store, 1500)
        await history.add_live(store, 5)
    original = rows_by_seq(template)
    rng = random.Random(11)
    outcomes = []
    for round_ in range(10):
        work = tmp_path / f"round-{round_}"
        work.mkdir()
        log = work / "events.db"
        shutil.copy(template, log)
        child = spawn(log)
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        # kill at a random moment of the move (it takes a fraction of a second)
        await trio.sleep(rng.uniform(0.0, 0.3))
        child.send_signal(signal.SIGKILL)
        out, err = child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL, err
        outcomes.append(
            "done" if "archived" in out else "moving" if journal_path(log).exists() else "before"
        )
        # before any recovery, the history reads each event once
        with HistoryReader(log) as reader:
            seen = [r.seq for r in reader.iter_events()]
        assert len(seen) == len(set(seen))
        assert set(original) <= set(seen)
        # recovery (opening the store) leaves every event in exactly one file
        async with open_sqlite_store(log):
            pass
        assert not journal_path(log).exists()
        files = history_rows(log)
        placed: dict[int, int] = {}
        for rows in files:
            for seq in rows:
                placed[seq] = placed.get(seq, 0) + 1
        assert all(count == 1 for count in placed.values()), "an event in two places"
        merged = {seq: row for rows in files for seq, row in rows.items()}
        assert {seq: merged[seq] for seq in original} == original, "an event lost or altered"
        assert set(merged) - set(original) <= {max(original) + 1}  # only the checkpoint
        for path in [log, *archive_paths(log)]:
            assert integrity_ok(path), path
        assert verify_log(log, jobs=1).ok
    print("kill -9 landed:", outcomes)
    assert "moving" in outcomes, f"no kill landed inside the move: {outcomes}"


async def test_snapshot_after_archiving_is_used_and_verified(tmp_path: Path) -> None:
    log = tmp_path / "events.db"
    history = History()
    async with open_sqlite_store(log) as store:
        await history.add_finished(store, 10)
        await history.add_live(store, 2)
        await trio.sleep(0.05)
        await archive_before(store, time.time(), now=time.time())
    write_snapshot(log)
    state, how = load_startup(log)
    assert how == "snapshot"
    assert set(state.live) == set(history.live)
    assert any(isinstance(r.event, TokenIssued) for r in state.route_records())
    report = verify_log(log, jobs=1)
    assert report.ok and report.snapshot.startswith("matches")
    with SqliteLogReader(log) as reader:
        assert all(isinstance(r, RecordedEvent) for r in reader.iter_events())


async def test_an_archive_is_closed_once_its_month_is_over(tmp_path: Path) -> None:
    log = tmp_path / "events.db"
    history = History()
    month = 31 * 86_400.0
    async with open_sqlite_store(log) as store:
        await history.add_finished(store, 3)
        await trio.sleep(0.05)
        assert await archive_before(store, time.time(), now=time.time()) == 3
        (first,) = archive_paths(log)
        await history.add_finished(store, 2)
        await trio.sleep(0.05)
        # the next archiving runs a month later: a new file, the old one closed
        assert await archive_before(store, time.time(), now=time.time() + month) == 2
    paths = archive_paths(log)
    assert len(paths) == 2 and paths[0] == first
    assert first.stat().st_mode & 0o777 == 0o400
    conn = sqlite3.connect(f"file:{first}?mode=ro", uri=True)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    finally:
        conn.close()
    assert "closed_at" in meta
    assert not first.with_name(first.name + "-wal").exists()
    assert verify_log(log, jobs=1).ok
    assert {r.stream for r in read_history(log)} >= set(history.finished)
