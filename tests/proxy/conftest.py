"""Fixtures for the proxy tests: an in-memory store, a real test backend, the proxy.

The store is driven directly (BackendRequested, TokenIssued, BackendReady...)
so the proxy is tested in isolation; ``emitted`` collects what the proxy
emits.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import pytest
import trio

from plane import tokens
from plane.actors.clock import TrioClock
from plane.events.memory import MemoryEventStore, open_memory_store
from plane.events.spec import BackendKey, Executable, SpawnConfig
from plane.events.types import (
    BackendReady,
    BackendRequested,
    BackendStarting,
    Event,
    InputEvent,
    TokenIssued,
)
from plane.metrics import Metrics
from plane.proxy import ProxyContext, ProxyServer, ProxySettings

from .backend import TestBackend

_ids = itertools.count(1)


async def eventually(check: Callable[[], object], limit: float = 5.0) -> None:
    """Poll ``check`` until it is true; TooSlowError after ``limit`` seconds."""
    with trio.fail_after(limit):
        while True:
            if check():
                return
            await trio.sleep(0.005)


@attrs.define
class Harness:
    store: MemoryEventStore
    backend: TestBackend
    nursery: trio.Nursery
    clock: TrioClock
    emitted: list[tuple[str, InputEvent]] = attrs.field(factory=list)
    proxy: ProxyServer | None = None
    port: int = 0

    def emit(self, backend_id: str, event: InputEvent) -> None:
        self.emitted.append((backend_id, event))

    async def start_proxy(self, metrics: Metrics | None = None, **settings: Any) -> int:
        ctx = ProxyContext(self.store, self.emit, self.clock, metrics, ProxySettings(**settings))
        self.proxy = ProxyServer(ctx)
        self.port = await self.nursery.start(self.proxy.serve, "127.0.0.1", 0)
        return self.port

    async def append(self, backend_id: str, *events: Event) -> None:
        version = len(await self.store.read_stream(backend_id))
        await self.store.append(backend_id, version, list(events))

    async def add_backend(
        self,
        *,
        address: str | None = None,
        ready: bool = True,
        user: str | None = "alice",
        auth: str | None = '{"role":"editor"}',
        expires_in: float = 3600.0,
        start_timeout: float = 120.0,
        subdomain: str | None = None,
        static: bool = False,
    ) -> tuple[str, str]:
        """A backend (ready at the test backend by default) and a token for it
        (with ``static``, its static token, given in ``BackendRequested``)."""
        backend_id = f"b{next(_ids):04d}"
        now = self.clock.now()
        spawn = SpawnConfig(
            Executable("t"),
            start_timeout_seconds=start_timeout,
            use_static_token=static,
            subdomain=subdomain,
        )
        if static:
            token = "s." + tokens.mint()
            events: list[Event] = [
                BackendRequested(now, backend_id, BackendKey(backend_id), spawn, 1, token)
            ]
        else:
            token = tokens.mint()
            events = [
                BackendRequested(now, backend_id, BackendKey(backend_id), spawn, 1),
                TokenIssued(
                    now, tokens.digest(token), now + expires_in, "s3cret-" + backend_id, user, auth
                ),
            ]
        if ready:
            events += [BackendStarting(now), BackendReady(now, address or self.backend.address)]
        await self.append(backend_id, *events)
        await self.settle()
        return backend_id, token

    async def issue(self, backend_id: str, *, expires_in: float = 3600.0) -> str:
        token = tokens.mint()
        now = self.clock.now()
        await self.append(
            backend_id, TokenIssued(now, tokens.digest(token), now + expires_in, "s", None, None)
        )
        await self.settle()
        return token

    async def settle(self) -> None:
        """Wait until the proxy's table has applied everything in the store."""
        if self.proxy is None:
            return
        last = await self.store.last_seq()
        table = self.proxy.table
        await eventually(lambda: table.seq >= last)

    def events_of(self, kind: type) -> list[tuple[str, Any]]:
        return [(b, e) for b, e in self.emitted if isinstance(e, kind)]


@pytest.fixture
async def harness(caplog: pytest.LogCaptureFixture) -> AsyncIterator[Harness]:
    caplog.set_level(logging.WARNING, logger="plane.proxy")
    async with open_memory_store() as store, trio.open_nursery() as nursery:
        backend = TestBackend()
        await nursery.start(backend.serve)
        yield Harness(store, backend, nursery, TrioClock())
        nursery.cancel_scope.cancel()
    # No bug may escape a client session (the server would log it and go on).
    errors = [r for r in caplog.records if r.name == "plane.proxy" and r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


@pytest.fixture
async def proxied(harness: Harness) -> Harness:
    """The harness with a proxy running (default settings, short timeouts)."""
    await harness.start_proxy(header_timeout=1.0)
    return harness
