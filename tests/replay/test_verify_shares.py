"""Verifying in several processes gives exactly the report of one process.

A base log of varied lifecycles is written once through the real decider;
each example copies it, alters it the way a hand edit or a bug would (an
event removed, a decision's payload changed, one decision swapped for
another) and verifies it with one process and with three.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import replay.verify
from plane.actors.lifecycle import Tick
from plane.events import types as t
from plane.events.spec import BackendKey, Executable, SpawnConfig
from plane.events.sqlite import SqliteLogReader, open_sqlite_store
from plane.testing.lives import DecidedLife
from replay.cli import main
from replay.verify import VerifyWorkerDied, verify_log

BACKENDS = 40


def a_life(n: int, rng: random.Random) -> list[t.Event]:
    """One backend's events, through the real decider, ending one of several ways."""
    at = 1_700_000_000.0 + n
    config = SpawnConfig(Executable(image="app:1"), max_idle_seconds=30)
    life = DecidedLife()
    life.feed(t.BackendRequested(at, f"b{n:04d}", BackendKey(f"room-{n}"), config, 1))
    life.feed(Tick(at))
    life.feed(t.ExecutorStarted(at + 0.1, f"127.0.0.1:{20000 + n}", f"h{n}"))
    life.feed(t.ReadinessObserved(at + 0.2))
    for i in range(rng.randrange(4)):
        life.feed(t.ConnectionOpened(at + 1 + i, f"c{i}"))
        life.feed(t.HttpActivityRecorded(at + 1.5 + i, 2))
        life.feed(t.ConnectionClosed(at + 2 + i, f"c{i}"))
    ending = rng.randrange(3)
    if ending == 0:  # reaped for idleness
        deadline = life.next_deadline()
        life.feed(Tick(deadline))
        life.feed(t.ExecutorExited(deadline + 0.5, 0))
    elif ending == 1:  # exits on its own
        life.feed(t.ExecutorExited(at + 10, 3))
    else:  # still running when the log is read
        life.feed(t.ConnectionOpened(at + 10, "last"))
    return life.events


async def write_base(path: Path) -> None:
    rng = random.Random(7)
    lives = [a_life(n, rng) for n in range(BACKENDS)]
    async with open_sqlite_store(path, synchronous="OFF") as store:
        # Interleave the streams, as a busy plane would.
        versions = [0] * BACKENDS
        while any(versions[n] < len(life) for n, life in enumerate(lives)):
            for n, life in enumerate(lives):
                if versions[n] < len(life):
                    await store.append(f"b{n:04d}", versions[n], [life[versions[n]]])
                    versions[n] += 1


@pytest.fixture(scope="module")
def base_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("shares") / "base.db"
    trio.run(write_base, path)
    return path


def tamper(log: Path, sql: str, *params: object) -> int:
    """Run ``sql`` on the log past its append-only triggers; the rows it changed."""
    db = sqlite3.connect(log)
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        db.execute(f"DROP TRIGGER {name}")
    changed = db.execute(sql, params).rowcount
    db.commit()
    db.close()
    return changed


ALTERATIONS = st.lists(
    st.tuples(st.sampled_from(["delete", "retime", "swap"]), st.integers(min_value=1)),
    max_size=3,
)


@settings(
    max_examples=max(25, settings().max_examples // 10),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(alterations=ALTERATIONS)
def test_three_processes_report_exactly_what_one_does(
    base_log: Path, tmp_path: Path, alterations: list[tuple[str, int]]
) -> None:
    log = tmp_path / f"log-{random.getrandbits(64):x}.db"
    shutil.copy(base_log, log)
    with SqliteLogReader(log) as reader:
        last = reader.last_seq()
    retimed_decisions = 0
    for what, pick in alterations:
        seq = pick % last + 1
        if what == "delete":
            tamper(log, "DELETE FROM events WHERE seq = ?", seq)
        elif what == "retime":  # a decision said to happen at another time
            retimed_decisions += tamper(
                log,
                "UPDATE events SET data = json_set(data, '$.at', 1.5) WHERE seq = ?"
                " AND type LIKE 'backend.%' AND type != 'backend.requested.v1'",
                seq,
            )
        else:
            tamper(
                log,
                "UPDATE events SET type = CASE type WHEN 'backend.idle.v1' THEN 'backend.active.v1'"
                " ELSE 'backend.idle.v1' END WHERE seq = ?"
                " AND type IN ('backend.idle.v1', 'backend.active.v1')",
                seq,
            )
    one = verify_log(log, jobs=1)
    three = verify_log(log, jobs=3)
    assert (one.jobs, three.jobs) == (1, 3)
    assert three.violations == one.violations
    assert (three.events, three.backends, three.last_seq) == (
        one.events,
        one.backends,
        one.last_seq,
    )
    if not alterations:
        assert one.ok, one.violations
        assert one.backends == BACKENDS
    if retimed_decisions:
        assert not one.ok  # a decision that decide would not make never goes unnoticed


def test_the_shares_read_the_same_snapshot(base_log: Path) -> None:
    """A share reads up to the parent's last seq and only its own streams."""
    with SqliteLogReader(base_log) as reader:
        everything = list(reader.iter_events())
        head = list(reader.iter_events(up_to_seq=10))
        mine = list(reader.iter_events(keep_stream=lambda s: s == "b0003"))
        tail = list(reader.iter_events(5, up_to_seq=12, keep_stream=lambda s: s != "b0000"))
    assert head == everything[:10]
    assert mine == [r for r in everything if r.stream == "b0003"] and mine
    assert tail == [r for r in everything[5:12] if r.stream != "b0000"]


_REAL_SHARE = replay.verify._verify_share


def dying_share(path: Path, share: int, shares: int, last_seq: int) -> object:
    """A share that kills its worker process (as if the OOM killer took it)."""
    if share != 0:  # in a forked worker
        os._exit(9)
    return _REAL_SHARE(path, share, shares, last_seq)


def test_a_worker_that_dies_is_a_clear_error(
    base_log: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(replay.verify, "_verify_share", dying_share)
    with pytest.raises(VerifyWorkerDied, match="--jobs 1"):
        verify_log(base_log, jobs=2)
    assert main(["verify", str(base_log), "--jobs", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("plane-replay: a verify process died") and "Traceback" not in err
    assert verify_log(base_log, jobs=1).ok  # one process needs no worker


def test_bad_job_counts_are_refused(base_log: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        verify_log(base_log, jobs=0)
