"""A proxy's table from ``/ctrl/proxy-feed``: the controller's current table on a
first connect (not the log from seq 0), only what it missed on a resume, the
current table again when what it missed was archived; revocations and
terminations made while it was cut off take effect either way.

A real ``plane serve`` (process executor, archiving terminated backends after
~3 s: ``--retain 0.00003``) and the proxy's real feed client
(:class:`~plane.proxy.remote.RemoteFeed`, over a real socket) in this process,
so its table can be read.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
import trio

from plane import tokens
from plane.actors.clock import TrioClock
from plane.proxy.remote import Outbox, RemoteFeed
from plane.proxy.routes import BACKEND_TERMINATED, TOKEN_REVOKED, TOKEN_UNKNOWN, Route, RouteTable
from plane.testing.serve_process import PlaneServe
from tests.e2e.conftest import PROXY_KEY, echo, start_serve, wait_for

pytestmark = pytest.mark.slow


class Feed:
    """One channel at a time from ``table`` (kept across channels)."""

    def __init__(self, serve: PlaneServe, table: RouteTable) -> None:
        self.feed = RemoteFeed(
            serve.urls["api"],
            PROXY_KEY,
            table,
            TrioClock(),
            proxy_id="resync-test",
            outbox=Outbox(),
        )

    async def sync(self, nursery: trio.Nursery) -> trio.CancelScope:
        scope = trio.CancelScope()

        async def run() -> None:
            with scope:
                await self.feed.run()

        nursery.start_soon(run)
        with trio.fail_after(30):
            await self.feed.synced.wait()
        return scope


def lookup(table: RouteTable, backend: dict[str, str]) -> object:
    return table.lookup(tokens.digest(backend["token"]), time.time())


def in_live_log(serve: PlaneServe, backend_id: str) -> bool:
    with sqlite3.connect(f"file:{serve.data_dir / 'events.db'}?mode=ro", uri=True) as db:
        (count,) = db.execute(
            "SELECT count(*) FROM events WHERE stream = ?", (backend_id,)
        ).fetchone()
    return bool(count)


def ready_backends(serve: PlaneServe, *names: str) -> list[dict[str, str]]:
    """Connect an echo backend per name; their connect answers, once all are ready."""
    backends = [serve.connect(echo(name)) for name in names]
    for backend in backends:
        serve.wait_status(backend["backend_id"], "ready")
    return backends


def revoke_and_end(serve: PlaneServe, revoked: dict[str, str], ended: dict[str, str]) -> None:
    """Revoke ``revoked``'s tokens; hard-terminate ``ended`` and wait for its end."""
    serve.api.post(f"/ctrl/b/{revoked['backend_id']}/revoke", json={}).raise_for_status()
    serve.api.post(f"/ctrl/b/{ended['backend_id']}/hard-terminate").raise_for_status()
    serve.wait_status(ended["backend_id"], "terminated")


async def test_the_feed_starts_from_the_current_table_and_resumes_with_what_was_missed(
    tmp_path: Path, key_file: Path
) -> None:
    serve = start_serve(tmp_path, key_file, "--terminate-on-exit")
    try:
        (gone,) = ready_backends(serve, "gone")
        serve.api.post(f"/ctrl/b/{gone['backend_id']}/hard-terminate").raise_for_status()
        serve.wait_status(gone["backend_id"], "terminated")
        revoked, ended, kept = ready_backends(serve, "revoked", "ended", "kept")

        table = RouteTable()
        async with trio.open_nursery() as nursery:
            # first connect: the current table, not the history
            feed = Feed(serve, table)
            scope = await feed.sync(nursery)
            assert feed.feed.last_sync == "table"
            for backend in (revoked, ended, kept):
                route = lookup(table, backend)
                assert isinstance(route, Route) and route.address is not None
            # a terminated backend is not in the current table: its token is
            # unknown, not "terminated" as a fold of the whole log would say
            assert lookup(table, gone) is TOKEN_UNKNOWN
            scope.cancel()  # cut off

            revoke_and_end(serve, revoked, ended)
            (fresh,) = ready_backends(serve, "fresh")

            # back: only what it missed, applied to the table it had
            seq_before = table.seq
            feed = Feed(serve, table)
            scope = await feed.sync(nursery)
            assert feed.feed.last_sync == "missed"
            assert table.seq > seq_before
            assert lookup(table, revoked) is TOKEN_REVOKED
            assert lookup(table, ended) is BACKEND_TERMINATED
            assert isinstance(lookup(table, kept), Route)
            assert isinstance(lookup(table, fresh), Route)
            assert lookup(table, gone) is TOKEN_UNKNOWN
            scope.cancel()
    finally:
        serve.stop()


async def test_a_proxy_that_missed_archived_events_gets_the_current_table(
    tmp_path: Path, key_file: Path
) -> None:
    # terminated backends leave the live log ~3 s later
    serve = start_serve(tmp_path, key_file, "--terminate-on-exit", "--retain", "0.00003")
    try:
        revoked, ended, kept = ready_backends(serve, "revoked", "ended", "kept")
        table = RouteTable()
        async with trio.open_nursery() as nursery:
            feed = Feed(serve, table)
            scope = await feed.sync(nursery)
            assert isinstance(lookup(table, ended), Route)
            scope.cancel()  # cut off

            revoke_and_end(serve, revoked, ended)
            await wait_for(
                lambda: not in_live_log(serve, ended["backend_id"]), "the archiving", limit=30
            )
            # what it missed is no longer all in the live log: the current table,
            # swapped in whole (the archived termination takes effect too)
            feed = Feed(serve, table)
            scope = await feed.sync(nursery)
            assert feed.feed.last_sync == "table"
            assert lookup(table, ended) is TOKEN_UNKNOWN
            assert lookup(table, revoked) is TOKEN_REVOKED
            assert isinstance(lookup(table, kept), Route)
            scope.cancel()
    finally:
        serve.stop()
