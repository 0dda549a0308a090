"""Benchmark: durable appends/second through SqliteEventStore vs raw sqlite3.

Side by side in one run, on the same disk:

* **store**: ``TASKS`` trio tasks, each appending ``PER_TASK`` single-event
  appends to its own stream through :class:`plane.events.sqlite.SqliteEventStore`
  (WAL, ``synchronous=FULL``, group commit).  Includes encoding each event with
  the wire converter, the version checks, the writer thread hop and waking each
  appender.  The event objects are built before the clock starts.
* **raw**: the very rows the store wrote (same streams, versions, tags, JSON
  payloads), inserted with plain ``sqlite3`` into a fresh log with the same
  schema (same index and triggers) and the same durability (WAL,
  ``synchronous=FULL``), committing batches of the average size the store's
  group commit achieved (``BEGIN IMMEDIATE``; ``executemany``; ``COMMIT``).

For information it also measures trio alone doing the part of an append no
store can avoid (park the appending task, wake it when its batch is decided)
and prints the ceiling this puts on the ratio.

Each round runs both sides back to back (so both see the same disk), taking
turns at going first; the verdict is the median of the per-round ratios ``store/raw``, printed with
both rates and PASS/FAIL against the target ratio.  Exit status 0 on PASS, 1 on
FAIL.  The disk's fsync latency is measured and printed too: the store's
overhead is CPU time per append, so the ratio is lowest on disks whose fsync is
fastest (the raw side is then almost pure CPU too).

    python bench/bench_store.py [--tasks 64] [--per-task 150] [--rounds 6] [--dir DIR]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio

from plane.events import types as t
from plane.events.sqlite import SqliteEventStore, open_sqlite_store

TARGET_RATIO = 0.5

Row = tuple[int, str, int, str, str, float]


def make_events(task: int, count: int) -> list[t.Event]:
    """A realistic mix of small events, like a busy backend's stream."""
    makers: list[Callable[[int], t.Event]] = [
        lambda i: t.HttpActivityRecorded(at=1_700_000_000.0 + i, requests=i % 7 + 1),
        lambda i: t.ConnectionOpened(at=1_700_000_000.5 + i, connection_id=f"c-{task}-{i:06d}"),
        lambda i: t.ConnectionClosed(at=1_700_000_000.7 + i, connection_id=f"c-{task}-{i:06d}"),
        lambda i: t.BackendReady(at=1_700_000_000.9 + i, address=f"127.0.0.1:{20000 + task}"),
        lambda i: t.TokenIssued(
            at=1_700_000_001.0 + i,
            token_hash=f"{task:08x}{i:056x}",
            expires_at=1_700_003_600.0 + i,
            user=f"user-{task}",
        ),
    ]
    cycle = itertools.cycle(makers)
    return [next(cycle)(i) for i in range(count)]


async def run_store(path: Path, workload: list[list[t.Event]]) -> tuple[float, int, int]:
    """Append the workload; returns (seconds, appends, commits)."""

    async def appender(store: SqliteEventStore, stream: str, events: list[t.Event]) -> None:
        for version, event in enumerate(events):
            await store.append(stream, version, [event])

    async with open_sqlite_store(path) as store:
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for task, events in enumerate(workload):
                nursery.start_soon(appender, store, f"backend-{task:04d}", events)
        elapsed = time.perf_counter() - start
        return elapsed, store.appended, store.commits


async def run_trio_floor(tasks: int, per_task: int) -> float:
    """Seconds for trio alone to do what the store cannot avoid per append: park the
    appending task and wake it when its batch is decided (no encoding, no SQLite,
    no thread), ``tasks`` tasks each doing ``per_task`` appends."""
    parked: list[trio.lowlevel.Task] = []
    everyone_parked = trio.Event()

    def refuse(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        return trio.lowlevel.Abort.FAILED

    async def appender() -> None:
        nonlocal everyone_parked
        for _ in range(per_task):
            parked.append(trio.lowlevel.current_task())
            if len(parked) == tasks:
                everyone_parked.set()
            await trio.lowlevel.wait_task_rescheduled(refuse)

    async def decider() -> None:
        nonlocal everyone_parked
        for _ in range(per_task):
            await everyone_parked.wait()
            everyone_parked = trio.Event()
            batch = parked[:]
            parked.clear()
            for task in batch:
                trio.lowlevel.reschedule(task)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(appender)
        nursery.start_soon(decider)
    return time.perf_counter() - start


def read_rows(path: Path) -> list[Row]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT seq, stream, version, type, data, recorded_at FROM events ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()


async def create_empty_log(path: Path) -> None:
    async with open_sqlite_store(path):
        pass


def run_raw(path: Path, rows: list[Row], batch_size: int) -> float:
    """Insert ``rows`` in committed batches of ``batch_size``; returns seconds."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        insert = (
            "INSERT INTO events (seq, stream, version, type, data, recorded_at)"
            " VALUES (?, ?, ?, ?, ?, ?)"
        )
        start = time.perf_counter()
        for i in range(0, len(rows), batch_size):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(insert, rows[i : i + batch_size])
            conn.execute("COMMIT")
        return time.perf_counter() - start
    finally:
        conn.close()


def fsync_ms(directory: str, count: int = 50) -> float:
    """Median time of a 4 KiB write + fsync in ``directory``, in milliseconds."""
    path = Path(directory, "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        times = []
        for _ in range(count):
            start = time.perf_counter()
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--per-task", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--dir", default=None, help="where to put the logs (default: temp)")
    args = parser.parse_args()

    workload = [make_events(task, args.per_task) for task in range(args.tasks)]
    appends = args.tasks * args.per_task
    store_rates: list[float] = []
    raw_rates: list[float] = []
    ratios: list[float] = []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="plane-bench-") as tmp:
        fsync_before = fsync_ms(tmp)
        rows: list[Row] = []
        batch = 1
        for round_ in range(args.rounds):
            # Alternate which side goes first, so that a disk getting slower or
            # faster during the run does not favour one side.  The raw side
            # replays the rows (and batch size) of the latest store run.
            store_first = round_ % 2 == 0
            raw_path = Path(tmp, f"raw-{round_}.sqlite")
            trio.run(create_empty_log, raw_path)
            if not store_first:
                raw_seconds = run_raw(raw_path, rows, batch)
            store_path = Path(tmp, f"store-{round_}.sqlite")
            seconds, appended, commits = trio.run(run_store, store_path, workload)
            assert appended == appends, (appended, appends)
            rows = read_rows(store_path)
            assert len(rows) == appends
            avg_batch = appended / commits
            batch = max(1, round(avg_batch))
            if store_first:
                raw_seconds = run_raw(raw_path, rows, batch)
            assert len(read_rows(raw_path)) == appends
            store_rates.append(appends / seconds)
            raw_rates.append(appends / raw_seconds)
            ratios.append(raw_seconds / seconds)
            print(
                f"round {round_ + 1} ({'store' if store_first else 'raw'} first):"
                f" store {appends / seconds:7.0f} appends/s"
                f" ({commits} commits, {avg_batch:.1f} appends/commit)"
                f" | raw {appends / raw_seconds:7.0f} rows/s (batches of {batch})"
                f" | ratio {ratios[-1]:.2f}"
            )
        fsync_after = fsync_ms(tmp)
        floor_seconds = statistics.median(
            trio.run(run_trio_floor, args.tasks, args.per_task) for _ in range(args.rounds)
        )

    ratio = statistics.median(ratios)
    print(f"tasks={args.tasks} appends={appends} (1 event each), WAL, synchronous=FULL")
    print(f"disk: fsync of 4 KiB takes {fsync_before:.2f} ms before, {fsync_after:.2f} ms after")
    print(f"store: {statistics.median(store_rates):9.0f} durable appends/s (median)")
    print(f"raw:   {statistics.median(raw_rates):9.0f} durable rows/s    (median)")
    print(f"ratio store/raw = {ratio:.2f} (median of {args.rounds}; target >= {TARGET_RATIO})")
    raw_seconds_median = appends / statistics.median(raw_rates)
    print(
        f"(info) trio alone, parking and waking each appender:"
        f" {floor_seconds / appends * 1e6:.1f} us per append; even if the store cost"
        f" nothing else, store/raw could be at most"
        f" {raw_seconds_median / (raw_seconds_median + floor_seconds):.2f} here"
    )
    verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
    print(verdict)
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
