"""Benchmark: a real ``plane serve`` restart with a long history against one with
only the live backends; and 10,000 live backends against 10.

**Restart.**  Two logs, made once per run:

* **history**: ``--finished`` terminated backends (28 events each: 1.4 M events
  for the default 50,000) plus ``--live`` live ones;
* **live only**: the same ``--live`` live backends and nothing else.

Each log gets its snapshot written (as ``plane serve`` does on its way out)
and then a tail of events after it (``--tail``: connections opening and closing
on the live backends), so a restart folds a real tail.  Each restart runs in a
fresh process: the whole ``plane serve`` composition
(:func:`plane.serve.serve_plane`: store, startup fold, supervisor recovery,
proxy route table, API, upkeep) on that data directory, with the fake
executor reporting the live backends as still running (so recovery adopts
them, as it adopts containers), ``--retain 0`` (no archiving during the
measurement).  Measured: from the call to ``serve_plane`` until ``GET
/pub/health`` answers 200 and the proxy's ``GET /ready`` does (its route
table synced), and the process's peak RSS at that point.  Targets (issue 11):
history healthy in <= 2 s, RSS <= 200 MB, history/live-only time ratio <= 1.5.

**Scale.**  In a fresh process, a supervisor over a SQLite log
(``synchronous=FULL``) and the fake executor: the median latency of a
connect that spawns a backend (``Supervisor.connect``, ``--samples``
sequential ones) with 10 live backends and with ``--scale`` (10,000) live
ones (target: ratio <= 2); and in another process, with ``tracemalloc``, the
memory per live backend (Python allocations while 10,000 are spawned,
divided by 10,000) and what is left per backend once all are terminated and
dropped (the keys' fencing tokens).

The logs are generated quickly: one lifecycle per kind is produced by the real
decider (:class:`plane.testing.lives.DecidedLife`) and encoded once; each
backend's rows are that template with its own id, key and token hash, bulk
inserted into a log the store created (same schema, seqs in order).

    python bench/bench_history.py [--finished 50000] [--live 1000] [--rounds 5]
                                  [--scale 10000] [--samples 200]
"""

from __future__ import annotations

import argparse
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import trio

from plane.actors.lifecycle import Tick
from plane.events import types as t
from plane.events import wire
from plane.events.snapshot import write_snapshot
from plane.events.spec import BackendKey, Executable, SpawnConfig
from plane.events.sqlite import open_sqlite_store
from plane.testing.lives import DecidedLife

TARGET_SECONDS = 2.0
TARGET_RSS_MB = 200.0
TARGET_RATIO = 1.5
TARGET_SCALE_RATIO = 2.0
AT = 1_700_000_000.0
CONFIG = SpawnConfig(Executable(image="app:1", env={"A": "1"}), max_idle_seconds=30)
LIVE_CONFIG = SpawnConfig(Executable(image="app:1", env={"A": "1"}), max_idle_seconds=10**9)
"""Live backends: no idle timeout runs out while the benchmark restarts."""
LIVE_ADDRESS = "127.0.0.1:20000"

ID, KEY, HASH = "XXBACKENDIDXX", "XXKEYNAMEXX", "f" * 64


def _template(finished: bool) -> list[tuple[str, str]]:
    """One backend's encoded events, with placeholder id, key name and token hash."""
    life = DecidedLife()
    config = CONFIG if finished else LIVE_CONFIG
    life.feed(t.BackendRequested(AT, ID, BackendKey(KEY), config, 1))
    life.feed(t.TokenIssued(AT, HASH, AT + 3600, "s" * 43, "user", None))
    life.feed(Tick(AT))
    life.feed(t.ExecutorStarted(AT + 0.1, LIVE_ADDRESS, "handle"))
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


def measure(path: Path, live: int) -> dict[str, Any]:
    """In this (fresh) process: ``plane serve`` on the log's directory until healthy."""
    import httpx

    from plane.config import PlaneConfig
    from plane.serve import serve_plane
    from plane.testing.fake_executor import FakeExecutor

    fake = FakeExecutor()
    for n in range(live):  # the "engine" still runs the live backends
        fake.adopt(f"l{n:015d}", LIVE_ADDRESS)
    config = PlaneConfig(
        data_dir=path.parent,
        api_listen="127.0.0.1:0",
        proxy_listen="127.0.0.1:0",
        executor="process",
        retain_days=0,
    )
    result: dict[str, Any] = {}

    async def restart() -> None:
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            serving = await nursery.start(partial(serve_plane, config, executor=fake))
            async with httpx.AsyncClient() as client:
                for url in (serving.api_url + "/pub/health", serving.proxy_url + "/ready"):
                    while (await client.get(url)).status_code != 200:  # noqa: ASYNC110
                        await trio.sleep(0.005)
                result["seconds"] = time.perf_counter() - start
                result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                info = (await client.get(serving.api_url + "/ctrl/info")).json()
            result["live"] = info["live_backends"]
            result["ids"] = info["backends"]
            result["adopted"] = len(serving.recovered["adopted"])
            nursery.cancel_scope.cancel()

    trio.run(restart)
    return result


def run_measure(path: Path, live: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--measure", str(path), "--live", str(live)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the restart failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = orjson.loads(done.stdout.splitlines()[-1])
    return result


# ------------------------------------------------------------------- scale


def scale(directory: Path, big: int, samples: int, *, memory: bool) -> dict[str, Any]:
    """Connect p50 at 10 and at ``big`` live backends (``memory``: instead the
    tracemalloc bytes per live and per terminated backend)."""
    import gc
    import tracemalloc

    from plane.actors.backend import ExecutorPolicy
    from plane.actors.supervisor import ConnectRequest, Supervisor
    from plane.events.types import TerminationKind
    from plane.metrics import Metrics
    from plane.testing.fake_executor import FakeExecutor

    spawn = SpawnConfig(Executable(image="app:1"), max_idle_seconds=10**9)
    result: dict[str, Any] = {}

    async def run() -> None:
        fake = FakeExecutor()
        async with open_sqlite_store(directory / "events.db") as store:
            supervisor = Supervisor(store, fake, policy=ExecutorPolicy(probe=fake.probe))
            supervisor.observers.append(Metrics().observe_backend)
            names = iter(range(10**9))

            async def connect() -> str:
                key = BackendKey(f"room-{next(names)}")
                answer = await supervisor.connect(ConnectRequest(key=key, spawn_config=spawn))
                return answer.backend_id

            async def spawn_many(count: int) -> list[str]:
                ids: list[str] = []

                async def some(k: int) -> None:
                    for _ in range(k):
                        ids.append(await connect())

                async with trio.open_nursery() as inner:
                    for i in range(100):
                        inner.start_soon(some, count // 100 + (1 if i < count % 100 else 0))
                return ids

            async def p50() -> float:
                took = []
                for _ in range(samples):
                    began = time.perf_counter()
                    await connect()
                    took.append(time.perf_counter() - began)
                return statistics.median(took)

            async def settle(ids: list[str]) -> None:
                for backend_id in ids:
                    await supervisor.terminate(backend_id, TerminationKind.HARD)
                while any(b in supervisor.states for b in ids):  # noqa: ASYNC110
                    await trio.sleep(0.01)

            async def all_ready() -> None:
                while any(s.status is not t.Status.READY for s in supervisor.states.values()):  # noqa: ASYNC110
                    await trio.sleep(0.01)

            async with trio.open_nursery() as nursery:
                await nursery.start(supervisor.serve)
                small = await spawn_many(10)
                if memory:
                    gc.collect()
                    tracemalloc.start()
                    base = tracemalloc.get_traced_memory()[0]
                    many = await spawn_many(big)
                    await all_ready()
                    gc.collect()
                    result["bytes_per_live"] = (tracemalloc.get_traced_memory()[0] - base) / big
                    result["live"] = supervisor.live_count()
                    await settle(many)
                    fake.specs.clear()  # the fake's own bookkeeping, not plane's
                    fake.calls.clear()
                    gc.collect()
                    left = tracemalloc.get_traced_memory()[0] - base
                    result["bytes_per_terminated"] = left / big
                    held = set(supervisor.states) | set(supervisor.actors)
                    result["held_after"] = len(held & set(many))
                    tracemalloc.stop()
                else:
                    await all_ready()
                    before = supervisor.live_count()
                    result["p50_small"] = await p50()
                    result["live_small"] = before
                    await spawn_many(big - supervisor.live_count())
                    await all_ready()
                    result["live_big"] = supervisor.live_count()
                    result["p50_big"] = await p50()
                del small
                nursery.cancel_scope.cancel()

    trio.run(run)
    return result


def run_scale(directory: Path, big: int, samples: int, *, memory: bool) -> dict[str, Any]:
    args = ["--scale-child", str(directory), "--scale", str(big), "--samples", str(samples)]
    done = subprocess.run(
        [sys.executable, __file__, *args, *(["--memory"] if memory else [])],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the scale run failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = orjson.loads(done.stdout.splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--finished", type=int, default=50_000)
    parser.add_argument("--live", type=int, default=1_000)
    parser.add_argument("--tail", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=5)  # restarts swing run to run
    parser.add_argument("--scale", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--scale-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(orjson.dumps(measure(args.measure, args.live)).decode())
        return 0
    if args.scale_child:
        scaled = scale(args.scale_child, args.scale, args.samples, memory=args.memory)
        print(orjson.dumps(scaled).decode())
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
                f" made in {time.perf_counter() - began:.1f} s",
                flush=True,
            )
        print("restart: plane serve (fake executor adopting the live backends) until healthy")
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in logs}
        for r in range(args.rounds):
            order = list(logs) if r % 2 == 0 else list(reversed(logs))
            for name in order:
                results[name].append(run_measure(logs[name], args.live))
        print(f"scale: {args.scale:,} live backends against 10", flush=True)
        timing = run_scale(Path(tmp) / "history", args.scale, args.samples, memory=False)
        scale_dir = Path(tmp) / "scale-memory"
        scale_dir.mkdir()
        memory = run_scale(scale_dir, args.scale, args.samples, memory=True)
    med = {
        name: {k: statistics.median(float(x[k]) for x in runs) for k in ("seconds", "rss_mb")}
        for name, runs in results.items()
    }
    for name, runs in results.items():
        print(
            f"  {name:10} healthy in {med[name]['seconds']:.3f} s,"
            f" RSS {med[name]['rss_mb']:.0f} MB ({runs[0]['live']} live,"
            f" {runs[0]['adopted']} adopted, {runs[0]['ids']} backends in the history)"
        )
    ratio = med["history"]["seconds"] / med["live-only"]["seconds"]
    rss_ratio = med["history"]["rss_mb"] / med["live-only"]["rss_mb"]
    print(
        f"  ratio history / live-only: time {ratio:.2f} (target <= {TARGET_RATIO}),"
        f" RSS {rss_ratio:.2f}"
    )
    scale_ratio = timing["p50_big"] / timing["p50_small"]
    print(
        f"  connect p50: {timing['p50_small'] * 1e3:.2f} ms at {timing['live_small']} live,"
        f" {timing['p50_big'] * 1e3:.2f} ms at {timing['live_big']:,} live:"
        f" ratio {scale_ratio:.2f} (target <= {TARGET_SCALE_RATIO})"
    )
    print(
        f"  memory per live backend {memory['bytes_per_live'] / 1024:.1f} KiB"
        f" ({memory['live']:,} live); per terminated backend once dropped"
        f" {memory['bytes_per_terminated']:.0f} B (held in memory after: {memory['held_after']})"
    )
    checks = {
        f"history healthy <= {TARGET_SECONDS} s": med["history"]["seconds"] <= TARGET_SECONDS,
        f"history RSS <= {TARGET_RSS_MB:.0f} MB": med["history"]["rss_mb"] <= TARGET_RSS_MB,
        f"time ratio <= {TARGET_RATIO}": ratio <= TARGET_RATIO,
        f"connect p50 ratio <= {TARGET_SCALE_RATIO}": scale_ratio <= TARGET_SCALE_RATIO,
    }
    for what, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}: {what}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
