"""Run plane's proxy for the benchmark: a token routed to a backend address.

    python bench/proxy_serve.py BACKEND_ADDRESS TOKEN

Prepares an in-memory store (BackendRequested, TokenIssued for TOKEN,
BackendStarting, BackendReady at BACKEND_ADDRESS), serves the proxy on a free
127.0.0.1 port, prints ``PORT <n>`` on stdout and serves until killed.
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


async def main(address: str, token: str) -> None:
    clock = TrioClock()
    now = clock.now()
    emitted = 0

    def emit(backend_id: str, event: InputEvent) -> None:
        nonlocal emitted
        emitted += 1

    async with open_memory_store() as store:
        await store.append(
            "bench",
            0,
            [
                BackendRequested(
                    now, "bench", BackendKey("bench"), SpawnConfig(Executable("x")), 1
                ),
                TokenIssued(now, tokens.digest(token), now + 86400, "secret", "bench-user", "{}"),
                BackendStarting(now),
                BackendReady(now, address),
            ],
        )
        ctx = ProxyContext(store, emit, clock, None, ProxySettings())
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_proxy, ctx, "127.0.0.1", 0)
            print(f"PORT {port}", flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2])
