"""Child process for test_kill9: append to a log forever, acknowledging each append.

    python appender_child.py LOG ROUND [TASKS]

Opens the store on LOG, prints ``ready``, then runs TASKS appender tasks; each
appends to its own stream ``r{ROUND}-w{i}`` in a loop (1 to 3 events per
append, payloads of varying size) and, after each append has *returned*,
prints ``acked <stream> <version>`` (the stream's version after the append)
and flushes.  It never stops by itself: the test kills it with SIGKILL.
"""

from __future__ import annotations

import random
import sys

import trio

from plane.events.sqlite import open_sqlite_store
from plane.events.types import Event, HttpActivityRecorded, SpawnFailed


def events_for(version: int, rng: random.Random) -> list[Event]:
    count = 1 + version % 3
    return [
        SpawnFailed(at=float(version + k), message="x" * rng.randrange(10, 3000))
        if rng.random() < 0.3
        else HttpActivityRecorded(at=float(version + k), requests=version + k)
        for k in range(count)
    ]


async def main(path: str, round_: int, tasks: int) -> None:
    async with open_sqlite_store(path) as store:
        print("ready", flush=True)

        async def appender(i: int) -> None:
            rng = random.Random(round_ * 1000 + i)
            stream = f"r{round_}-w{i}"
            version = 0
            while True:
                events = events_for(version, rng)
                await store.append(stream, version, events)
                version += len(events)
                print(f"acked {stream} {version}", flush=True)

        async with trio.open_nursery() as nursery:
            for i in range(tasks):
                nursery.start_soon(appender, i)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 8)
