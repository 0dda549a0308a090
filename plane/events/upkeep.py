"""Keeping the log in shape while plane serves: retention and the snapshot.

This module owns the periodic upkeep task :func:`keep_log`: every period it
moves the streams of backends terminated more than ``retain_days`` ago into
the archives (:func:`plane.events.archive.archive_before`; ``retain_days`` 0
keeps everything) and then rewrites the snapshot
(:func:`plane.events.snapshot.write_snapshot`: snapshot + tail, so its cost
follows what changed, not the log's length).  When cancelled (plane stops) it
writes a last snapshot, shielded, so the next start folds no tail.

Error handling: a failed round (a full disk, for the log or the snapshot
file; the system stream moved under the checkpoint) is logged and retried
next period, never stopping plane; nothing is lost, the move is
finished by :func:`plane.events.archive.recover` if it was cut short.
"""

from __future__ import annotations

import logging
import time

import trio

from plane.events.archive import archive_before
from plane.events.snapshot import write_snapshot
from plane.events.sqlite import SqliteEventStore
from plane.events.store import StoreError

log = logging.getLogger("plane.upkeep")

DAY = 86_400.0
SNAPSHOT_PERIOD = 300.0
"""How often the snapshot is rewritten when retention does not ask for sooner."""


def upkeep_period(retain_days: float) -> float:
    """Seconds between rounds: a quarter of the retention, between 1 s and 5 min."""
    if retain_days <= 0:
        return SNAPSHOT_PERIOD
    return min(max(retain_days * DAY / 4, 1.0), SNAPSHOT_PERIOD)


async def upkeep_once(store: SqliteEventStore, retain_days: float) -> int:
    """One round: archive what is past retention, then write the snapshot;
    returns how many streams were archived."""
    moved = 0
    if retain_days > 0:
        now = time.time()
        moved = await archive_before(store, now - retain_days * DAY, now=now)
        if moved:
            log.info("retention: archived %d terminated backends", moved)
    await trio.to_thread.run_sync(write_snapshot, store.path)
    return moved


async def keep_log(
    store: SqliteEventStore,
    *,
    retain_days: float,
    period: float | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run :func:`upkeep_once` every ``period`` seconds until cancelled, then write
    a last snapshot."""
    if retain_days < 0:
        raise ValueError(f"retain_days must be >= 0, not {retain_days}")
    every = upkeep_period(retain_days) if period is None else period
    task_status.started()
    try:
        while True:
            try:
                await upkeep_once(store, retain_days)
            except (StoreError, OSError) as exc:
                log.warning("log upkeep failed, retrying in %.0fs: %s", every, exc)
            await trio.sleep(every)
    finally:
        with trio.CancelScope(shield=True):
            try:
                await trio.to_thread.run_sync(write_snapshot, store.path)
            except (StoreError, OSError) as exc:
                log.warning("could not write the snapshot on the way out: %s", exc)
