"""The proxy over the real SQLite log: history first, then the tail keeps it current."""

from __future__ import annotations

from pathlib import Path

import trio

from plane import tokens
from plane.actors.clock import TrioClock
from plane.events.spec import BackendKey, Executable, SpawnConfig
from plane.events.sqlite import open_sqlite_store
from plane.events.types import (
    BackendReady,
    BackendRequested,
    BackendStarting,
    InputEvent,
    TokenIssued,
    TokenRevoked,
)
from plane.proxy import ProxyContext, ProxyServer

from .backend import TestBackend
from .client import HttpClient
from .conftest import eventually


async def test_routes_from_history_and_from_the_tail(tmp_path: Path) -> None:
    emitted: list[tuple[str, InputEvent]] = []
    async with (
        open_sqlite_store(tmp_path / "plane.db") as store,
        trio.open_nursery() as nursery,
    ):
        backend = TestBackend()
        await nursery.start(backend.serve)
        clock = TrioClock()
        now = clock.now()
        old, new = tokens.mint(), tokens.mint()
        spawn = SpawnConfig(Executable("x"))
        await store.append(
            "b1",
            0,
            [
                BackendRequested(now, "b1", BackendKey("b1"), spawn, 1),
                TokenIssued(now, tokens.digest(old), now + 60, "s", "ann", None),
                BackendStarting(now),
                BackendReady(now, backend.address),
            ],
        )
        proxy = ProxyServer(ProxyContext(store, lambda b, e: emitted.append((b, e)), clock))
        port = await nursery.start(proxy.serve, "127.0.0.1", 0)
        async with await HttpClient.connect(port) as client:
            assert (await client.request("GET", f"/{old}/from-history")).status == 200
            await store.append("b1", 4, [TokenIssued(now, tokens.digest(new), now + 60, "s")])
            await store.append("b1", 5, [TokenRevoked(now, tokens.digest(old))])
            await eventually(lambda: proxy.table.seq >= 6)
            assert (await client.request("GET", f"/{new}/from-tail")).status == 200
            r = await client.request("GET", f"/{old}/revoked")
            assert r.status == 410 and r.kind() == "TokenRevoked"
        nursery.cancel_scope.cancel()
    assert [s.target for s in backend.requests] == ["/from-history", "/from-tail"]
