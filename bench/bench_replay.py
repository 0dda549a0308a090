"""Benchmark: replay (the ``plane-replay verify`` fold) against a bare json.loads fold.

Side by side in one run, over the same SQLite log file:

* **fold**: ``plane.events.sqlite.read_log`` + :class:`replay.fold.LogFold`
  checking the invariants (sequence, versions, legal transitions): every row
  decoded through the wire converter and every event evolved.  This is the
  fold of ``plane-replay verify`` (and of ``summary`` and ``state``), in one
  process.
* **verify, 1 process**: the same with the determinism check on as well: every
  input re-decided and every decision compared (all of ``plane-replay verify``).
* **verify, as plane-replay runs it**: :func:`replay.verify.verify_log` with its
  default process count (one per core, up to 8, for a log this big): each
  process folds and re-decides a share of the backends.  The process count is
  printed next to the ratio.
* **bare**: ``sqlite3`` reads the same rows, ``json.loads`` each payload and
  folds it into its stream's state, a plain dict (``{**state, **payload}``,
  plus the version): the least a hand-rolled replay would do, in one process.

The log holds ``--backends`` realistic lifecycles (request, start, ready,
connections, activity, idle, terminate), produced by the real decider.  Each
round runs all of them back to back, in turns; the verdicts are the median
ratios against the target (>= 0.5) of the fold (the issue's measure) and of
verify as plane-replay runs it.  The one-process verify is printed for
information.  Exit 0 when both pass, 1 otherwise.

    python bench/bench_replay.py [--backends 3000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio

from plane.actors.lifecycle import Tick
from plane.events import types as t
from plane.events.spec import BackendKey, Executable, SpawnConfig
from plane.events.sqlite import open_sqlite_store, read_log
from plane.testing.lives import DecidedLife
from replay.fold import LogFold
from replay.verify import auto_jobs, verify_log

TARGET_RATIO = 0.5


def lifecycle_events(n: int) -> list[t.Event]:
    """One backend's life through the real decider: about 20 events."""
    at = 1_700_000_000.0 + n
    cfg = SpawnConfig(Executable(image="app:1", env={"A": "1"}), max_idle_seconds=30)
    life = DecidedLife()
    life.feed(t.BackendRequested(at, f"b{n:07d}", BackendKey(f"room-{n}"), cfg, 1))
    life.feed(t.TokenIssued(at, f"{n:064x}", at + 3600, "s" * 43, "user", '{"a":1}'))
    life.feed(Tick(at))
    life.feed(t.ExecutorStarted(at + 0.1, f"127.0.0.1:{20000 + n % 40000}", f"h{n}"))
    life.feed(t.ReadinessObserved(at + 0.2))
    for i in range(4):
        life.feed(t.ConnectionOpened(at + 1 + i, f"c{i}"))
        life.feed(t.HttpActivityRecorded(at + 1.5 + i, 3))
        life.feed(t.ConnectionClosed(at + 2 + i, f"c{i}"))
    deadline = life.next_deadline()
    life.feed(Tick(deadline))
    life.feed(t.ExecutorExited(deadline + 0.5, 0))
    return life.events


async def write_log(path: Path, backends: int) -> int:
    count = 0
    async with open_sqlite_store(path, synchronous="OFF") as store:
        for n in range(backends):
            events = lifecycle_events(n)
            await store.append(f"b{n:07d}", 0, events)
            count += len(events)
    return count


def run_fold(path: Path, *, verify: bool) -> tuple[float, int]:
    start = time.perf_counter()
    fold = LogFold(verify=verify).feed_all(read_log(path))
    violations = fold.finish()
    elapsed = time.perf_counter() - start
    assert not violations, violations[:3]
    return elapsed, fold.events


def run_bare(path: Path) -> tuple[float, int]:
    start = time.perf_counter()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    loads = json.loads
    states: dict[str, dict[str, object]] = {}
    empty: dict[str, object] = {}
    count = 0
    cursor = db.execute("SELECT seq, stream, version, type, data FROM events ORDER BY seq")
    while rows := cursor.fetchmany(1024):
        for _seq, stream, version, _tag, data in rows:
            states[stream] = {**states.get(stream, empty), **loads(data), "version": version}
            count += 1
    db.close()
    return time.perf_counter() - start, count


def run_verify_log(path: Path, jobs: int) -> tuple[float, int]:
    start = time.perf_counter()
    report = verify_log(path, jobs=jobs)
    elapsed = time.perf_counter() - start
    assert report.ok, report.violations[:3]
    return elapsed, report.events


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.db"
        total = trio.run(write_log, path, args.backends)
        jobs = auto_jobs(total)
        print(f"log: {total} events of {args.backends} backends; {os.cpu_count()} cores")
        names = ("fold", "verify-1", "verify")
        ratios: dict[str, list[float]] = {name: [] for name in names}
        for r in range(args.rounds):
            runs: list[tuple[str, Callable[[], tuple[float, int]]]] = [
                ("fold", lambda: run_fold(path, verify=False)),
                ("verify-1", lambda: run_fold(path, verify=True)),
                ("verify", lambda: run_verify_log(path, jobs)),
            ]
            if r % 2:  # alternate the order, so no side always meets a warm cache
                runs.reverse()
            rates = {}
            for name, run in runs:
                elapsed, count = run()
                assert count == total
                rates[name] = count / elapsed
            b_time, b_count = run_bare(path)
            assert b_count == total
            bare = b_count / b_time
            for name in names:
                ratios[name].append(rates[name] / bare)
            print(
                f"round {r + 1}: fold {rates['fold']:9,.0f} ev/s"
                f"  verify (1 process) {rates['verify-1']:9,.0f} ev/s"
                f"  verify ({jobs} processes) {rates['verify']:9,.0f} ev/s"
                f"  bare json.loads {bare:9,.0f} ev/s"
            )
    failed = False
    for name, label, judged in (
        ("fold", "verify fold (decode, evolve, invariants), 1 process", True),
        ("verify-1", "full verify (and the determinism re-decide), 1 process", False),
        ("verify", f"full verify as plane-replay runs it, {jobs} processes", True),
    ):
        ratio = statistics.median(ratios[name])
        if judged:
            verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
            failed |= verdict == "FAIL"
            suffix = f"(target >= {TARGET_RATIO}) {verdict}"
        else:
            suffix = "(information)"
        print(f"{label} / bare json.loads fold (1 process): {ratio:.2f} {suffix}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
