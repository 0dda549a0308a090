"""One contract, every store: the SQLite store and its in-memory twin pass the same suite.

What the contract is lives in :mod:`plane.events.store`; each test below names
the promise it checks.  The ``open_store`` fixture runs every test once per
store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, aclosing
from pathlib import Path

import pytest
import trio
import trio.testing

from plane.events.memory import open_memory_store
from plane.events.spec import BackendKey, Executable, ResourceLimits, SpawnConfig
from plane.events.sqlite import SqliteEventStore, open_sqlite_store
from plane.events.store import (
    ConcurrencyError,
    EventStore,
    RecordedEvent,
    StoreClosedError,
)
from plane.events.types import (
    BackendReady,
    BackendRequested,
    BackendTerminated,
    BackendTerminating,
    ConnectionOpened,
    Event,
    ExecutorExited,
    HttpActivityRecorded,
    TerminationKind,
    TerminationReason,
    TokenIssued,
    TokenRevoked,
)

OpenStore = Callable[[], AbstractAsyncContextManager[EventStore]]


@pytest.fixture(params=["memory", "sqlite"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> OpenStore:
    """Opens a fresh store of the parametrized kind (each call: a new, empty one)."""
    if request.param == "memory":
        return open_memory_store
    counter = iter(range(1_000))
    return lambda: open_sqlite_store(tmp_path / f"log-{next(counter)}.sqlite")


@pytest.fixture
async def store(open_store: OpenStore) -> AsyncIterator[EventStore]:
    async with open_store() as opened:
        yield opened


def tick(n: int) -> HttpActivityRecorded:
    return HttpActivityRecorded(at=1_700_000_000.0 + n, requests=n)


def requested(backend_id: str = "b-1") -> BackendRequested:
    return BackendRequested(
        at=1_700_000_000.25,
        backend_id=backend_id,
        key=BackendKey(name="room-1", namespace="team", tag="v2"),
        spawn_config=SpawnConfig(
            executable=Executable(
                image="ghcr.io/example/app:1",
                command=("python", "-m", "app", "--port", "8080"),
                cwd="/srv",
                env={"MODE": "test", "UNICODE": "héllo ✓"},
                pull_policy="Always",
                resource_limits=ResourceLimits(cpu_period=100_000, memory_limit_bytes=1 << 29),
                port=8081,
            ),
            max_idle_seconds=60.0,
            lifetime_limit_seconds=None,
            start_timeout_seconds=12.5,
        ),
        fencing_token=7,
    )


# ------------------------------------------------------------ seq and versions


async def test_seq_is_gap_free_from_1_and_versions_are_contiguous_per_stream(
    store: EventStore,
) -> None:
    assert await store.last_seq() == 0
    assert await store.read_all() == []
    returned: list[RecordedEvent] = []
    versions = {"a": 0, "b": 0, "c": 0}
    for i, stream in enumerate("abacbba"):
        count = 1 + i % 3
        recorded = await store.append(
            stream, versions[stream], [tick(i * 10 + k) for k in range(count)]
        )
        versions[stream] += count
        returned += recorded

    everything = await store.read_all()
    assert everything == returned
    assert [r.seq for r in everything] == list(range(1, len(everything) + 1))
    assert await store.last_seq() == len(everything)
    for stream, version in versions.items():
        in_stream = await store.read_stream(stream)
        assert [r.version for r in in_stream] == list(range(1, version + 1))
        assert all(r.stream == stream for r in in_stream)
        assert [r.seq for r in in_stream] == sorted(r.seq for r in in_stream)


async def test_append_returns_its_events_recorded_with_seq_and_version(
    store: EventStore,
) -> None:
    events = [tick(1), tick(2)]
    recorded = await store.append("s", 0, events)
    assert recorded == [RecordedEvent(1, "s", 1, events[0]), RecordedEvent(2, "s", 2, events[1])]
    more = await store.append("s", 2, [tick(3)])
    assert more == [RecordedEvent(3, "s", 3, tick(3))]


# ------------------------------------------------------ optimistic concurrency


async def test_stale_expected_version_raises_and_writes_nothing(store: EventStore) -> None:
    await store.append("s", 0, [tick(1), tick(2)])
    await store.append("other", 0, [tick(3)])
    before = await store.read_all()

    for expected in (0, 1, 3, 10):
        with pytest.raises(ConcurrencyError) as info:
            await store.append("s", expected, [tick(4), tick(5)])
        error = info.value
        assert (error.stream, error.expected, error.actual) == ("s", expected, 2)
        assert str(error) == f"stream 's' is at version 2, not the expected {expected}"

    with pytest.raises(ConcurrencyError) as info:
        await store.append("new", 1, [tick(6)])
    assert info.value.actual == 0

    assert await store.read_all() == before
    assert await store.last_seq() == 3
    assert await store.read_stream("new") == []
    # The right version still works, and seq continues without a gap.
    recorded = await store.append("s", 2, [tick(7)])
    assert (recorded[0].seq, recorded[0].version) == (4, 3)


async def test_concurrent_appends_at_the_same_version_exactly_one_wins(
    store: EventStore,
) -> None:
    await store.append("s", 0, [tick(0)])
    outcomes: dict[int, list[RecordedEvent] | ConcurrencyError] = {}

    async def contender(i: int) -> None:
        try:
            outcomes[i] = await store.append("s", 1, [tick(100 + i), tick(200 + i)])
        except ConcurrencyError as exc:
            outcomes[i] = exc

    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(contender, i)

    winners = [i for i, o in outcomes.items() if isinstance(o, list)]
    assert len(outcomes) == 10
    assert len(winners) == 1
    for i, o in outcomes.items():
        if i not in winners:
            assert isinstance(o, ConcurrencyError)
            assert (o.expected, o.actual) == (1, 3)
    (winner,) = winners
    in_stream = await store.read_stream("s")
    assert [r.event for r in in_stream] == [tick(0), tick(100 + winner), tick(200 + winner)]
    assert await store.last_seq() == 3


# ----------------------------------------------------------------- atomicity


async def test_a_multi_event_append_is_atomic_and_contiguous(store: EventStore) -> None:
    async def noise(i: int) -> None:
        for v in range(5):
            await store.append(f"noise-{i}", v, [tick(v)])

    async def big(stream: str) -> list[RecordedEvent]:
        return await store.append(stream, 0, [tick(k) for k in range(7)])

    results: list[list[RecordedEvent]] = []

    async def run_big(stream: str) -> None:
        results.append(await big(stream))

    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(noise, i)
        nursery.start_soon(run_big, "big-1")
        nursery.start_soon(run_big, "big-2")

    for recorded in results:
        seqs = [r.seq for r in recorded]
        assert seqs == list(range(seqs[0], seqs[0] + 7)), "one append's events are contiguous"
        assert [r.version for r in recorded] == list(range(1, 8))
        assert await store.read_stream(recorded[0].stream) == recorded
    everything = await store.read_all()
    assert [r.seq for r in everything] == list(range(1, 4 * 5 + 2 * 7 + 1))

    # A failing multi-event append writes none of its events.
    with pytest.raises(ConcurrencyError):
        await store.append("big-1", 3, [tick(1), tick(2), tick(3)])
    assert len(await store.read_stream("big-1")) == 7
    assert await store.last_seq() == len(everything)


async def test_two_hundred_concurrent_appenders_all_succeed(store: EventStore) -> None:
    recorded: dict[str, list[RecordedEvent]] = {}

    async def appender(i: int) -> None:
        first = await store.append(f"backend-{i:03d}", 0, [tick(i)])
        second = await store.append(f"backend-{i:03d}", 1, [tick(i + 1000), tick(i + 2000)])
        recorded[f"backend-{i:03d}"] = first + second

    async with trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(appender, i)

    assert len(recorded) == 200
    everything = await store.read_all()
    assert [r.seq for r in everything] == list(range(1, 601))
    for stream, mine in recorded.items():
        assert await store.read_stream(stream) == mine
        assert [r.version for r in mine] == [1, 2, 3]
    if isinstance(store, SqliteEventStore):
        # Group commit: 400 appends in a handful of transactions, not 400.
        assert store.appended == 600
        assert store.commits <= 40, store.commits


# --------------------------------------------------------------------- reads


async def test_read_stream_after_version(store: EventStore) -> None:
    await store.append("s", 0, [tick(1), tick(2), tick(3)])
    await store.append("t", 0, [tick(4)])
    assert [r.version for r in await store.read_stream("s", after_version=1)] == [2, 3]
    assert [r.version for r in await store.read_stream("s", after_version=3)] == []
    assert [r.version for r in await store.read_stream("s", after_version=99)] == []
    assert await store.read_stream("missing") == []


async def test_read_all_after_seq_and_limit(store: EventStore) -> None:
    for i in range(10):
        await store.append(f"s{i % 3}", i // 3, [tick(i)])
    assert [r.seq for r in await store.read_all(after_seq=4)] == [5, 6, 7, 8, 9, 10]
    assert [r.seq for r in await store.read_all(after_seq=4, limit=2)] == [5, 6]
    assert [r.seq for r in await store.read_all(limit=3)] == [1, 2, 3]
    assert [r.seq for r in await store.read_all(after_seq=8, limit=5)] == [9, 10]
    assert await store.read_all(after_seq=10) == []
    assert await store.read_all(after_seq=2, limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        await store.read_all(limit=-1)


# ---------------------------------------------------------------------- tail


async def test_tail_yields_history_then_new_events_in_order(store: EventStore) -> None:
    for i in range(5):
        await store.append("s", i, [tick(i)])
    send, receive = trio.open_memory_channel[RecordedEvent](100)

    async def follow() -> None:
        async with aclosing(store.tail(after_seq=2)) as tail:
            async for recorded in tail:
                await send.send(recorded)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow)
        with trio.fail_after(10):
            history = [await receive.receive() for _ in range(3)]
        assert [r.seq for r in history] == [3, 4, 5]
        await store.append("t", 0, [tick(50), tick(51)])
        with trio.fail_after(10):
            new = [await receive.receive() for _ in range(2)]
        assert [(r.seq, r.stream, r.event) for r in new] == [(6, "t", tick(50)), (7, "t", tick(51))]
        nursery.cancel_scope.cancel()


async def test_tail_started_before_appends_receives_them_without_polling(
    store: EventStore, mock_clock: trio.testing.MockClock
) -> None:
    # The clock stands still: a tail that polled on a timer would only see the
    # new events once the clock jumps (autojump after 1 s of real idleness, so
    # that a hang fails instead of blocking forever).
    mock_clock.autojump_threshold = 1.0
    start = trio.current_time()
    send, receive = trio.open_memory_channel[RecordedEvent](100)

    async def follow() -> None:
        async with aclosing(store.tail()) as tail:
            async for recorded in tail:
                await send.send(recorded)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow)
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        for round_ in range(3):
            await store.append("s", round_, [tick(round_)])
            with trio.fail_after(60):
                recorded = await receive.receive()
            assert (recorded.seq, recorded.event) == (round_ + 1, tick(round_))
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        nursery.cancel_scope.cancel()
    assert trio.current_time() == start, "the tail was woken by a timer, not by the append"


async def test_tail_misses_nothing_under_concurrent_appends(store: EventStore) -> None:
    total = 5 * 40
    seen: list[int] = []

    async def follow(done: trio.Event) -> None:
        async with aclosing(store.tail()) as tail:
            async for recorded in tail:
                seen.append(recorded.seq)
                if len(seen) == total:
                    done.set()
                    return

    async def appender(i: int) -> None:
        for v in range(40):
            await store.append(f"s{i}", v, [tick(v)])
            if v % 7 == 0:
                await trio.lowlevel.checkpoint()

    done = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow, done)
        for i in range(5):
            nursery.start_soon(appender, i)
    with trio.fail_after(10):
        await done.wait()
    assert seen == list(range(1, total + 1))


async def test_a_waiting_tail_raises_store_closed_when_the_store_closes(
    open_store: OpenStore,
) -> None:
    seen: list[int] = []
    errors: list[StoreClosedError] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, open_store() as store:
            await store.append("s", 0, [tick(1)])

            async def follow() -> None:
                try:
                    async with aclosing(store.tail()) as tail:
                        async for recorded in tail:
                            seen.append(recorded.seq)
                except StoreClosedError as exc:
                    errors.append(exc)

            nursery.start_soon(follow)
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            assert seen == [1]
            # The store is closed; the nursery can only exit if the tail woke up.
    assert len(errors) == 1


# ------------------------------------------------------------------ round trip


async def test_events_round_trip_exactly(store: EventStore) -> None:
    events: list[Event] = [
        requested("b-1"),
        BackendReady(at=1_700_000_001.125, address="127.0.0.1:49152"),
        ConnectionOpened(at=1_700_000_002.0, connection_id="conn-ü-1"),
        TokenIssued(
            at=1_700_000_003.0,
            token_hash="ab" * 32,
            expires_at=1_700_003_600.0,
            user="user-123",
            auth='{"any": "json"}',
        ),
        TokenRevoked(at=1_700_000_004.0),
        BackendTerminating(
            at=1_700_000_005.0, reason=TerminationReason.IDLE, kind=TerminationKind.SOFT
        ),
        ExecutorExited(at=1_700_000_006.0, exit_code=None),
        BackendTerminated(
            at=1_700_000_007.0, reason=TerminationReason.EXITED, exit_code=137, message="killed"
        ),
    ]
    recorded = await store.append("b-1", 0, events)
    assert [r.event for r in recorded] == events
    read = await store.read_stream("b-1")
    assert [r.event for r in read] == events
    assert [type(r.event) for r in read] == [type(e) for e in events]
    first = read[0].event
    assert isinstance(first, BackendRequested)
    assert first.spawn_config.executable.command == ("python", "-m", "app", "--port", "8080")
    assert first.spawn_config.executable.env == {"MODE": "test", "UNICODE": "héllo ✓"}
    assert [r.event for r in await store.read_all()] == events


# ---------------------------------------------------------- misuse and closing


async def test_bad_arguments_are_refused_before_anything_is_written(store: EventStore) -> None:
    with pytest.raises(ValueError, match="at least one event"):
        await store.append("s", 0, [])
    with pytest.raises(ValueError, match="expected_version"):
        await store.append("s", -1, [tick(1)])
    with pytest.raises(ValueError, match="stream"):
        await store.append("", 0, [tick(1)])
    with pytest.raises(TypeError, match="not a plane event: str"):
        await store.append("s", 0, ["not an event"])  # type: ignore[list-item]
    assert await store.last_seq() == 0


async def test_a_cancelled_append_writes_nothing(store: EventStore) -> None:
    with trio.CancelScope() as scope:
        scope.cancel()
        await store.append("s", 0, [tick(1)])
    assert scope.cancelled_caught
    assert await store.read_all() == []
    assert (await store.append("s", 0, [tick(2)]))[0].seq == 1


async def test_append_after_close_raises_store_closed(open_store: OpenStore) -> None:
    async with open_store() as store:
        await store.append("s", 0, [tick(1)])
    with pytest.raises(StoreClosedError):
        await store.append("s", 1, [tick(2)])
