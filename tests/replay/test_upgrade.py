"""Upgrades: every log an earlier plane wrote (``tests/fixtures/upgrade``) opens,
replays, verifies, takes new appends and retention with this plane.

A fixture is made once by ``tests/fixtures/upgrade/make_fixture.py`` (a real
short ``plane serve`` run) and never rewritten.  When the schema changes, the
store must migrate these files on open: this test then also checks the
migrated file (it opens the store, appends and verifies again).
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

import pytest
import trio
import trio.lowlevel

from plane.events.archive import archive_before, archive_paths
from plane.events.snapshot import StartupState, load_startup
from plane.events.sqlite import SCHEMA_VERSION, open_sqlite_store, read_log
from plane.events.types import BackendTerminated, Status
from replay.cli import main as replay_main
from replay.verify import verify_log

from ..sqlite_files import integrity_ok

FIXTURES = sorted((Path(__file__).parents[1] / "fixtures" / "upgrade").glob("events-*.db"))


def test_there_is_a_fixture_of_today() -> None:
    assert FIXTURES, "no upgrade fixture committed"


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.name)
async def test_an_old_log_opens_replays_verifies_and_carries_on(
    fixture: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "events.db"
    shutil.copy(fixture, log)
    # read as it is, by the tools
    report = verify_log(log, jobs=1)
    assert report.ok, report.violations
    assert report.events > 0 and report.backends > 0
    assert replay_main(["summary", str(log), "--json"]) == 0
    assert "terminated" in capsys.readouterr().out
    records = list(read_log(log))
    ended = {r.stream for r in records if isinstance(r.event, BackendTerminated)}
    assert ended, "the fixture holds finished backends"
    # opened by the store (which migrates an older schema), it takes appends
    async with open_sqlite_store(log) as store:
        last = await store.last_seq()
        assert last == records[-1].seq
    conn = sqlite3.connect(log)
    try:
        assert int(conn.execute("PRAGMA user_version").fetchone()[0]) == SCHEMA_VERSION
    finally:
        conn.close()
    assert integrity_ok(log)
    # startup's fold and retention work on it
    state, how = load_startup(log)
    assert how.startswith("rebuilt")  # no snapshot came with it
    assert state.comparable() == StartupState().apply_all(read_log(log)).comparable()
    assert all(s.status is not Status.TERMINATED for s in state.live.values())
    async with open_sqlite_store(log) as store:
        await trio.lowlevel.checkpoint()
        assert await archive_before(store, time.time(), now=time.time()) == len(ended)
    assert archive_paths(log)
    after = verify_log(log, jobs=1)
    assert after.ok and after.events == report.events + 1  # + the checkpoint
