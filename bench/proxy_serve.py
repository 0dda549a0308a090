"""Run plane's proxy for the benchmark, with tokens routed to backend addresses.

    python bench/proxy_serve.py TOKEN=HOST:PORT [TOKEN=HOST:PORT ...]

Prepares an in-memory store (for each pair: BackendRequested, TokenIssued for
TOKEN, BackendStarting, BackendReady at the address), serves the proxy with
default settings on a free 127.0.0.1 port, prints ``PORT <n>`` and serves
until killed.  Emitted connection events are counted and dropped.
"""

from __future__ import annotations

import sys

import trio

from plane import tokens
from plane.actors.clock import TrioClock
from plane.events.memory import open_memory_store
from plane.events.spec import BackendKey, Executable, SpawnConfig
from plane.events.types import (
    BackendReady,
    BackendRequested,
    BackendStarting,
    InputEvent,
    TokenIssued,
)
from plane.proxy import ProxyContext, ProxySettings, serve_proxy


async def main(routes: list[tuple[str, str]]) -> None:
    clock = TrioClock()
    now = clock.now()
    emitted = 0

    def emit(backend_id: str, event: InputEvent) -> None:
        nonlocal emitted
        emitted += 1

    async with open_memory_store() as store:
        for n, (token, address) in enumerate(routes):
            backend_id = f"bench{n}"
            spawn = SpawnConfig(Executable("bench"))
            await store.append(
                backend_id,
                0,
                [
                    BackendRequested(now, backend_id, BackendKey(backend_id), spawn, 1),
                    TokenIssued(now, tokens.digest(token), now + 86400, "s", "bench", "{}"),
                    BackendStarting(now),
                    BackendReady(now, address),
                ],
            )
        ctx = ProxyContext(store, emit, clock, None, ProxySettings())
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_proxy, ctx, "127.0.0.1", 0)
            print(f"PORT {port}", flush=True)


if __name__ == "__main__":
    pairs = [arg.split("=", 1) for arg in sys.argv[1:]]
    trio.run(main, [(token, address) for token, address in pairs])
