"""Benchmark: restart with a long history against restart with only the live backends.

Two logs, made once per run:

* **history**: ``--finished`` terminated backends (28 events each: 1.4 M events
  for the default 50,000) plus ``--live`` live ones;
* **live only**: the same ``--live`` live backends and nothing else.

Each log gets its snapshot written (as ``plane serve`` does on its way out)
and then a tail of events after it (``--tail``: connections opening and closing
on the live backends), so a restart folds a real tail.

**What is measured.**  The supervisor still folds the whole log at startup
(its wiring to the snapshot is a separate change), so this benchmark measures
the store side of a restart, in a fresh process each time: open the log
(:func:`plane.events.sqlite.open_sqlite_store`, with its integrity check),
load the snapshot and fold the tail (:func:`plane.events.snapshot.load_startup`),
ready to hand the supervisor its live backends, each key's fencing token and
every id used.  Time to ready and peak RSS of that process are reported for
both logs, with their ratios.

Targets (from issue 11): history ready in <= 2 s, RSS <= 200 MB, and the
history/live-only time ratio <= 1.5.  Exit 0 when all hold, 1 otherwise.

The logs are generated quickly: one lifecycle per kind is produced by the real
decider (:class:`plane.testing.lives.DecidedLife`) and encoded once; each
backend's rows are that template with its own id, key and token hash, bulk
inserted into a log the store created (same schema, seqs in order).

    python bench/bench_history.py [--finished 50000] [--live 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from plane.actors.lifecycle import Tick
from plane.events import types as t
from plane.events import wire
from plane.events.snapshot import load_startup, write_snapshot
from plane.events.spec import BackendKey, Executable, SpawnConfig
from plane.events.sqlite import open_sqlite_store
from plane.testing.lives import DecidedLife

TARGET_SECONDS = 2.0
TARGET_RSS_MB = 200.0
TARGET_RATIO = 1.5
AT = 1_700_000_000.0
CONFIG = SpawnConfig(Executable(image="app:1", env={"A": "1"}), max_idle_seconds=30)

ID, KEY, HASH = "XXBACKENDIDXX", "XXKEYNAMEXX", "f" * 64


def _template(finished: bool) -> list[tuple[str, str]]:
    """One backend's encoded events, with placeholder id, key name and token hash."""
    life = DecidedLife()
    life.feed(t.BackendRequested(AT, ID, BackendKey(KEY), CONFIG, 1))
    life.feed(t.TokenIssued(AT, HASH, AT + 3600, "s" * 43, "user", None))
    life.feed(Tick(AT))
    life.feed(t.ExecutorStarted(AT + 0.1, "127.0.0.1:20000", "handle"))
    life.feed(t.ReadinessObserved(AT + 0.2))
    if finished:
        for i in range(4):
            life.feed(t.ConnectionOpened(AT + 1 + i, f"c{i}"))
            life.feed(t.HttpActivityRecorded(AT + 1.5 + i, 3))
            life.feed(t.ConnectionClosed(AT + 2 + i, f"c{i}"))
        life.feed(Tick(life.next_deadline()))
        life.feed(t.ExecutorExited(life.next_deadline() - 1, 0))
        assert life.state.status is t.Status.TERMINATED
    return [wire.encode(event) for event in life.events]


def write_log(path: Path, finished: int, live: int) -> int:
    """Create the log with the store, then bulk insert the backends; returns the event count."""

    async def create() -> None:
        async with open_sqlite_store(path):
            pass

    trio.run(create)
    kinds = [(_template(True), finished, "f"), (_template(False), live, "l")]
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    seq = 0
    conn.execute("BEGIN")
    for template, count, prefix in kinds:
        for n in range(count):
            backend_id = f"{prefix}{n:015d}"
            rows = []
            for version, (tag, data) in enumerate(template, 1):
                seq += 1
                if version <= 2:
                    data = (
                        data.replace(ID, backend_id)
                        .replace(KEY, f"{prefix}room-{n}")
                        .replace(HASH, f"{seq:064x}")
                    )
                rows.append((seq, backend_id, version, tag, data, AT))
            conn.executemany(
                "INSERT INTO events (seq, stream, version, type, data, recorded_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
    conn.execute("COMMIT")
    conn.close()
    return seq


async def append_tail(path: Path, live: int, events: int) -> None:
    """Connections opening and closing on the live backends, after the snapshot."""
    async with open_sqlite_store(path, synchronous="OFF") as store:
        for i in range(events // 2):
            backend_id = f"l{i % live:015d}"
            version = len(await store.read_stream(backend_id))
            await store.append(
                backend_id,
                version,
                [
                    t.ConnectionOpened(AT + 100 + i, f"t{i}"),
                    t.ConnectionClosed(AT + 100.5 + i, f"t{i}"),
                ],
            )


def measure(path: Path) -> dict[str, float]:
    """In this (fresh) process: open the store, load snapshot + tail; time and RSS."""
    start = time.perf_counter()

    async def ready() -> tuple[int, int, str]:
        async with open_sqlite_store(path):
            state, how = await trio.to_thread.run_sync(load_startup, path)
            return len(state.live), len(state.ids), how

    live, ids, how = trio.run(ready)
    elapsed = time.perf_counter() - start
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": elapsed, "rss_mb": rss_mb, "live": live, "ids": ids, "how": how}  # type: ignore[dict-item]


def run_measure(path: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--measure", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(done.stdout)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--finished", type=int, default=50_000)
    parser.add_argument("--live", type=int, default=1_000)
    parser.add_argument("--tail", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        logs = {
            "history": Path(tmp) / "history" / "events.db",
            "live-only": Path(tmp) / "live" / "events.db",
        }
        sizes = {"history": args.finished, "live-only": 0}
        for name, path in logs.items():
            path.parent.mkdir()
            began = time.perf_counter()
            events = write_log(path, sizes[name], args.live)
            write_snapshot(path)
            trio.run(append_tail, path, args.live, args.tail)
            mb = path.stat().st_size / 1e6
            print(
                f"{name}: {events + args.tail:,} events ({sizes[name]:,} terminated + {args.live:,}"
                f" live backends, {args.tail:,} after the snapshot), {mb:.0f} MB,"
                f" made in {time.perf_counter() - began:.1f} s"
            )
        print("measuring: store open + snapshot load + tail fold, in a fresh process each")
        print("(the supervisor does not start from the snapshot yet; see the docstring)")
        results: dict[str, list[dict[str, float]]] = {name: [] for name in logs}
        for r in range(args.rounds):
            order = list(logs) if r % 2 == 0 else list(reversed(logs))
            for name in order:
                results[name].append(run_measure(logs[name]))
    med = {
        name: {k: statistics.median(float(x[k]) for x in runs) for k in ("seconds", "rss_mb")}
        for name, runs in results.items()
    }
    for name, runs in results.items():
        print(
            f"  {name:10} ready in {med[name]['seconds']:.3f} s, RSS {med[name]['rss_mb']:.0f} MB"
            f" ({runs[0]['live']} live, {runs[0]['ids']} ids, from {runs[0]['how']})"
        )
    ratio = med["history"]["seconds"] / med["live-only"]["seconds"]
    rss_ratio = med["history"]["rss_mb"] / med["live-only"]["rss_mb"]
    print(
        f"  ratio history / live-only: time {ratio:.2f} (target <= {TARGET_RATIO}),"
        f" RSS {rss_ratio:.2f}"
    )
    checks = {
        f"history ready <= {TARGET_SECONDS} s": med["history"]["seconds"] <= TARGET_SECONDS,
        f"history RSS <= {TARGET_RSS_MB:.0f} MB": med["history"]["rss_mb"] <= TARGET_RSS_MB,
        f"time ratio <= {TARGET_RATIO}": ratio <= TARGET_RATIO,
    }
    for what, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}: {what}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
