"""Child process for the archiving kill -9 test: open the log, say ``ready``,
archive every backend terminated so far, say ``archived``, then wait to be killed."""

from __future__ import annotations

import sys
import time

import trio

from plane.events.archive import archive_before
from plane.events.sqlite import open_sqlite_store


async def main(log: str) -> None:
    async with open_sqlite_store(log) as store:
        print("ready", flush=True)
        now = time.time()
        moved = await archive_before(store, now + 1, now=now)
        print(f"archived {moved}", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
