"""What only the SQLite store promises: the schema, the file checks, the read-only reader."""

from __future__ import annotations

import sqlite3
from contextlib import aclosing
from pathlib import Path

import pytest
import trio
import trio.testing

import plane.events.sqlite.schema as schema
import plane.events.sqlite.store as sqlite_store
from plane import __version__
from plane.events.sqlite import (
    APPEND_ONLY_MESSAGE,
    PLANE_APPLICATION_ID,
    SCHEMA_VERSION,
    SqliteEventStore,
    SqliteLogReader,
    open_sqlite_store,
    read_log,
)
from plane.events.sqlite.recorder import Recorder
from plane.events.sqlite.recorder import select_all as recorder_select_all
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
)
from plane.events.types import HttpActivityRecorded, SpawnFailed

from ..sqlite_files import integrity


def tick(n: int) -> HttpActivityRecorded:
    return HttpActivityRecorded(at=1_700_000_000.0 + n, requests=n)


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


async def write_log(path: Path, streams: int = 3, per_stream: int = 4) -> list[RecordedEvent]:
    recorded: list[RecordedEvent] = []
    async with open_sqlite_store(path) as store:
        for v in range(per_stream):
            for s in range(streams):
                recorded += await store.append(f"s{s}", v, [tick(v * 10 + s)])
    return recorded


# -------------------------------------------------------------------- schema


async def test_schema_ids_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    await write_log(path, streams=1, per_stream=1)
    conn = raw(path)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == PLANE_APPLICATION_ID
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    assert meta["application"] == "plane"
    assert meta["schema_version"] == str(SCHEMA_VERSION)
    assert meta["created_by"] == f"plane {__version__}"
    info = conn.execute("PRAGMA table_info(events)")
    columns = {row[1]: (row[2], row[3], row[5]) for row in info}
    assert columns == {
        "seq": ("INTEGER", 0, 1),
        "stream": ("TEXT", 1, 0),
        "version": ("INTEGER", 1, 0),
        "type": ("TEXT", 1, 0),
        "data": ("TEXT", 1, 0),
        "recorded_at": ("REAL", 1, 0),
    }
    (events_sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'events'").fetchone()
    assert "AUTOINCREMENT" in events_sql
    row = conn.execute("SELECT type, data, recorded_at FROM events").fetchone()
    assert row[0] == "proxy.http_activity.v1"
    assert row[1] == '{"at":1700000000.0,"requests":0}'
    assert isinstance(row[2], float)
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        conn.execute(
            "INSERT INTO events (stream, version, type, data, recorded_at)"
            " VALUES ('s0', 1, 'proxy.http_activity.v1', '{}', 0)"
        )
    conn.close()


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE events SET data = '{}'",
        "DELETE FROM events",
        "DELETE FROM events WHERE seq = 1",
        "UPDATE meta SET value = '99' WHERE key = 'schema_version'",
        "DELETE FROM meta",
    ],
)
async def test_triggers_make_the_log_append_only(tmp_path: Path, sql: str) -> None:
    path = tmp_path / "log.sqlite"
    recorded = await write_log(path)
    conn = raw(path)
    with pytest.raises(sqlite3.IntegrityError, match=APPEND_ONLY_MESSAGE):
        conn.execute(sql)
    conn.close()
    assert list(read_log(path)) == recorded


# ------------------------------------------------------------------ reopening


async def test_reopening_keeps_everything_and_continues(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    first = await write_log(path)
    async with open_sqlite_store(path) as store:
        assert await store.read_all() == first
        assert await store.last_seq() == len(first)
        with pytest.raises(ConcurrencyError) as info:
            await store.append("s0", 0, [tick(99)])
        assert info.value.actual == 4
        more = await store.append("s0", 4, [tick(100)])
        assert (more[0].seq, more[0].version) == (len(first) + 1, 5)
        new = await store.append("fresh", 0, [tick(101)])
        assert (new[0].seq, new[0].version) == (len(first) + 2, 1)
    assert list(read_log(path)) == [*first, *more, *new]


async def test_a_missing_or_empty_file_becomes_a_new_log(tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    for path in (tmp_path / "missing.sqlite", empty):
        async with open_sqlite_store(path) as store:
            assert await store.last_seq() == 0
            await store.append("s", 0, [tick(1)])
        assert [r.event for r in read_log(path)] == [tick(1)]


async def test_rows_written_by_another_writer_are_respected(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    async with open_sqlite_store(path) as store:
        await store.append("s", 0, [tick(1)])
        other = raw(path)
        other.execute(
            "INSERT INTO events (seq, stream, version, type, data, recorded_at)"
            " VALUES (2, 's', 2, 'proxy.http_activity.v1', '{\"at\":2.0,\"requests\":2}', 0)"
        )
        other.close()
        with pytest.raises(ConcurrencyError) as info:
            await store.append("s", 1, [tick(3)])
        assert info.value.actual == 2
        recorded = await store.append("s", 2, [tick(3)])
        assert (recorded[0].seq, recorded[0].version) == (3, 3)


# ------------------------------------------------------- files that are not logs


def too_new_by_user_version(path: Path) -> None:
    conn = raw(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()


def too_new_by_meta(path: Path) -> None:
    conn = raw(path)
    conn.execute("DROP TRIGGER meta_append_only_update")
    conn.execute(
        "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),)
    )
    conn.execute("UPDATE meta SET value = 'plane 9.0.0' WHERE key = 'created_by'")
    conn.close()


@pytest.mark.parametrize("make_too_new", [too_new_by_user_version, too_new_by_meta])
async def test_a_log_from_a_newer_plane_is_refused_clearly(
    tmp_path: Path, make_too_new: object
) -> None:
    path = tmp_path / "log.sqlite"
    await write_log(path)
    assert callable(make_too_new)
    make_too_new(path)
    with pytest.raises(SchemaTooNewError) as info:
        async with open_sqlite_store(path):
            pass
    message = str(info.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert f"this plane {__version__} reads schema version {SCHEMA_VERSION} at most" in message
    if make_too_new is too_new_by_meta:
        assert "(created by plane 9.0.0)" in message
    with pytest.raises(SchemaTooNewError):
        SqliteLogReader(path)


def other_application(path: Path) -> None:
    conn = raw(path)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO notes (body) VALUES ('hello')")
    conn.close()


def other_application_id(path: Path) -> None:
    conn = raw(path)
    conn.execute("PRAGMA application_id = 1234")
    conn.close()


@pytest.mark.parametrize("make", [other_application, other_application_id])
async def test_another_applications_database_is_not_a_plane_log(
    tmp_path: Path, make: object
) -> None:
    path = tmp_path / "other.sqlite"
    assert callable(make)
    make(path)
    before = path.read_bytes()
    with pytest.raises(NotAPlaneLogError, match="not a plane event log"):
        async with open_sqlite_store(path):
            pass
    with pytest.raises(NotAPlaneLogError, match="not a plane event log"):
        SqliteLogReader(path)
    assert path.read_bytes() == before, "a foreign database is left untouched"


async def test_a_file_that_is_not_a_database_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "noise.sqlite"
    path.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(CorruptLogError, match="not a SQLite database"):
        async with open_sqlite_store(path):
            pass
    with pytest.raises(CorruptLogError, match="not a SQLite database"):
        SqliteLogReader(path)
    with pytest.raises(CorruptLogError):
        read_log(path)


async def test_a_damaged_log_fails_its_check(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    async with open_sqlite_store(path) as store:
        for s in range(20):
            await store.append(f"s{s}", 0, [tick(k) for k in range(20)])
    conn = raw(path)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'events'").fetchone()
    conn.close()
    data = bytearray(path.read_bytes())
    start = (root - 1) * page_size  # the events table's root page: scribble over it
    data[start + 8 : start + page_size] = bytes([0xA5]) * (page_size - 8)
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptLogError, match=r"corrupt|integrity"):
        async with open_sqlite_store(path):
            pass
    with pytest.raises(CorruptLogError, match=r"corrupt|integrity"):
        SqliteLogReader(path)


async def test_a_clean_close_empties_the_wal_so_the_next_open_skips_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "log.sqlite"
    wal = path.with_name(path.name + "-wal")
    recorded = await write_log(path)
    assert not wal.exists() or wal.stat().st_size == 0, "a clean close leaves no WAL content"
    checked: list[Path] = []
    monkeypatch.setattr(schema, "_quick_check", lambda _conn, p: checked.append(p))
    async with open_sqlite_store(path) as store:
        assert await store.read_all() == recorded
    assert checked == [], "no integrity check after a clean stop"


async def test_a_close_while_another_reads_keeps_the_wal_and_the_next_open_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "log.sqlite"
    wal = path.with_name(path.name + "-wal")
    recorded = await write_log(path)
    other = schema.connect_read_only(path)  # a replay reading while plane stops
    other.execute("BEGIN")
    other.execute("SELECT count(*) FROM events").fetchone()
    async with open_sqlite_store(path) as store:
        recorded += await store.append("s9", 0, [tick(9)])
    assert wal.stat().st_size > 0, "the checkpoint does not wait for (or break) a reader"
    other.execute("COMMIT")
    other.close()
    checked: list[Path] = []
    monkeypatch.setattr(schema, "_quick_check", lambda _conn, p: checked.append(p))
    async with open_sqlite_store(path) as store:
        assert await store.read_all() == recorded
    assert checked == [path], "the WAL left behind is taken as an unclean stop: checked"


# ---------------------------------------------------------------- the reader


def test_the_reader_raises_log_not_found_for_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.sqlite"
    with pytest.raises(LogNotFoundError, match="no plane log at") as info:
        read_log(path)
    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value, StoreError)
    assert not path.exists(), "reading never creates a log"


def test_the_reader_reads_an_empty_file_as_an_empty_log(tmp_path: Path) -> None:
    path = tmp_path / "empty.sqlite"
    path.touch()
    with SqliteLogReader(path) as reader:
        assert list(reader.iter_events()) == []
        assert reader.last_seq() == 0


async def test_the_reader_reads_in_seq_order_after_a_cursor(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    recorded: list[RecordedEvent] = []
    async with open_sqlite_store(path) as store:
        for v in range(0, 500, 100):
            for s in range(5):
                recorded += await store.append(f"s{s}", v, [tick(v + k) for k in range(100)])
    with SqliteLogReader(path) as reader:
        assert reader.last_seq() == 2500
        assert list(reader.iter_events()) == recorded
        assert list(reader.iter_events(after_seq=2000)) == recorded[2000:]
        assert list(reader.iter_events(after_seq=2500)) == []
    assert list(read_log(path, after_seq=2499)) == recorded[2499:]


async def test_the_reader_refuses_to_write(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    await write_log(path)
    reader = SqliteLogReader(path)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader._conn.execute("INSERT INTO meta (key, value) VALUES ('x', 'y')")
    reader.close()


async def test_the_reader_works_while_a_store_is_appending(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    appended = 0
    snapshots: list[list[RecordedEvent]] = []

    async def appender(i: int) -> None:
        nonlocal appended
        for v in range(60):
            await store.append(f"s{i}", v, [tick(v)])
            appended += 1
            await trio.sleep(0.001)  # leave the reader time to look in between

    def read_everything() -> list[RecordedEvent]:
        return list(read_log(path))

    async with open_sqlite_store(path) as store:
        await store.append("first", 0, [tick(0)])
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(appender, i)
            while appended < 240:
                snapshots.append(await trio.to_thread.run_sync(read_everything))
                await trio.sleep(0.001)
        final = await trio.to_thread.run_sync(read_everything)
        assert final == await store.read_all()
    assert len(final) == 241
    assert any(0 < len(snapshot) < len(final) for snapshot in snapshots)
    for snapshot in snapshots:
        # Every snapshot is a gap-free prefix of the final log.
        assert snapshot == final[: len(snapshot)]


# ------------------------------------------------------------------ disk full


async def test_a_full_disk_fails_the_append_and_the_store_stays_usable(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    big = "x" * 3000
    async with open_sqlite_store(path, max_page_count=40) as store:
        written: list[RecordedEvent] = []
        with pytest.raises(StoreFullError) as info:
            for v in range(200):
                written += await store.append("s", v, [SpawnFailed(at=float(v), message=big)])
        message = str(info.value)
        assert "is full" in message and str(path) in message and "nothing was written" in message
        assert 5 < len(written) < 200

        # Reads keep working and see exactly what was acknowledged.
        assert await store.read_all() == written
        assert await store.last_seq() == len(written)
        assert integrity(path) == ["ok"]

        # Still full: a batch of concurrent appends fails as a whole, cleanly.
        failures: list[BaseException] = []

        async def try_append(stream: str) -> None:
            try:
                await store.append(stream, 0, [SpawnFailed(at=0.0, message=big)])
            except StoreFullError as exc:
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(try_append, f"other-{i}")
        assert len(failures) == 3
        assert await store.last_seq() == len(written)

        # Once there is space again, appends work and pick up where they stopped.
        assert await store.set_max_page_count(10_000) == 10_000
        more = await store.append("s", len(written), [SpawnFailed(at=1.0, message=big)])
        assert (more[0].seq, more[0].version) == (len(written) + 1, len(written) + 1)
    assert integrity(path) == ["ok"]
    assert list(read_log(path)) == [*written, *more]


# ------------------------------------------------------------------- closing


async def test_closing_commits_every_append_already_handed_to_the_writer(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log.sqlite"
    outcomes: list[list[RecordedEvent] | StoreClosedError] = []

    async def append_one(store: SqliteEventStore, i: int) -> None:
        try:
            outcomes.append(await store.append(f"s{i}", 0, [tick(i)]))
        except StoreClosedError as exc:
            outcomes.append(exc)

    async with trio.open_nursery() as nursery:
        # The block fails while appends are in flight: its error comes out as
        # it is (not in an ExceptionGroup), and every append the writer already
        # had is committed and acknowledged, not dropped.
        with pytest.raises(KeyError, match="the block failed"):
            async with open_sqlite_store(path) as store:
                for i in range(10):
                    nursery.start_soon(append_one, store, i)
                await trio.testing.wait_all_tasks_blocked()
                for i in range(10, 20):
                    nursery.start_soon(append_one, store, i)
                await trio.testing.wait_all_tasks_blocked()
                raise KeyError("the block failed")
        with pytest.raises(StoreClosedError, match="is closed"):
            await store.append("late", 0, [tick(99)])
    assert len(outcomes) == 20
    assert all(isinstance(outcome, list) for outcome in outcomes), outcomes
    assert sorted(r.stream for r in read_log(path)) == sorted(f"s{i}" for i in range(20))


async def test_a_bug_in_the_writer_fails_the_waiting_appends_and_is_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer thread never dies silently: appenders get an error, the owner the bug."""
    path = tmp_path / "log.sqlite"
    failures: list[StoreError] = []

    def broken(self: Recorder, batch: list[object]) -> int:
        raise ZeroDivisionError("a bug in the writer")

    async def append_one(store: SqliteEventStore, i: int) -> None:
        try:
            await store.append(f"s{i}", 0, [tick(i)])
        except StoreError as exc:
            failures.append(exc)

    with pytest.raises(BaseExceptionGroup) as raised:
        async with open_sqlite_store(path) as store:
            monkeypatch.setattr(Recorder, "write_batch", broken)
            async with trio.open_nursery() as nursery:
                for i in range(5):
                    nursery.start_soon(append_one, store, i)
            with pytest.raises(StoreError, match="is closed"):
                await store.append("late", 0, [tick(9)])  # refused, not left waiting
    assert raised.group_contains(ZeroDivisionError, match="a bug in the writer")
    assert len(failures) == 5
    assert all("writer of the plane log" in str(exc) for exc in failures), failures
    assert list(read_log(path)) == []


async def test_the_page_limit_is_changed_by_the_writer_between_batches(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    async with open_sqlite_store(path) as store:
        await store.append("s", 0, [tick(0)])
        assert await store.set_max_page_count(5000) == 5000
        await store.append("s", 1, [tick(1)])
    with pytest.raises(StoreClosedError):
        await store.set_max_page_count(10)
    assert [r.version for r in read_log(path)] == [1, 2]


# ------------------------------------------------------------------------ tail


async def test_a_tail_that_caught_up_reads_new_events_from_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Following the log costs no file read per commit once the tail has caught up."""
    path = tmp_path / "log.sqlite"
    reads = 0
    select_all = recorder_select_all

    def counting_select_all(*args: object) -> list[RecordedEvent]:
        nonlocal reads
        reads += 1
        return select_all(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlite_store, "select_all", counting_select_all)
    seen: list[RecordedEvent] = []
    async with open_sqlite_store(path) as store:
        await store.append("old", 0, [tick(0)])

        async def follow() -> None:
            async with aclosing(store.tail()) as tail:
                async for recorded in tail:
                    seen.append(recorded)
                    if len(seen) == 101:
                        return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            await trio.testing.wait_all_tasks_blocked()
            reads_when_caught_up = reads
            for i in range(100):
                await store.append("s", i, [tick(i)])
    assert [r.seq for r in seen] == list(range(1, 102))
    assert seen[1:] == [r for r in read_log(path) if r.stream == "s"]
    assert reads == reads_when_caught_up  # the 100 new events came from memory


async def test_a_tail_reads_the_file_when_another_process_wrote_in_between(
    tmp_path: Path,
) -> None:
    """Events kept in memory never hide a row another writer put in the file."""
    path = tmp_path / "log.sqlite"
    async with open_sqlite_store(path) as store:
        await store.append("s", 0, [tick(1)])
        tail = store.tail()
        assert (await anext(tail)).seq == 1
        other = raw(path)
        other.execute(
            "INSERT INTO events (seq, stream, version, type, data, recorded_at)"
            " VALUES (2, 'x', 1, 'proxy.http_activity.v1', '{\"at\":2.0,\"requests\":2}', 0)"
        )
        other.close()
        await store.append("s", 1, [tick(3)])
        with trio.fail_after(5):
            following = [await anext(tail), await anext(tail)]
        await tail.aclose()
    assert [(r.seq, r.stream) for r in following] == [(2, "x"), (3, "s")]


async def test_tail_sees_a_commit_that_lands_while_it_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tail arms its waiter before reading, so a commit during the read wakes it."""
    path = tmp_path / "log.sqlite"
    select_all = recorder_select_all
    injected = False

    def select_then_commit(*args: object) -> list[RecordedEvent]:
        nonlocal injected
        rows = select_all(*args)  # type: ignore[arg-type]
        if not injected:
            injected = True
            # A commit after this read's snapshot, before the tail waits.
            trio.from_thread.run(store.append, "s", 0, [tick(1)])
        return rows

    monkeypatch.setattr(sqlite_store, "select_all", select_then_commit)
    async with open_sqlite_store(path) as store:
        with trio.fail_after(10):
            async with aclosing(store.tail()) as tail:
                async for recorded in tail:
                    assert (recorded.seq, recorded.event) == (1, tick(1))
                    break
