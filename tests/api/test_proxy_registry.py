"""The controller's registry of proxies and the channel's message checks
(plane.api.proxies), without processes; the e2e tests run the real thing."""

from __future__ import annotations

import orjson
import pytest
import trio
import trio.testing

from plane.actors.clock import TrioClock
from plane.api.proxies import ChannelError, ProxyRegistry, parse_batch
from plane.events import wire
from plane.events.types import (
    BackendReady,
    ConnectionClosed,
    ConnectionOpened,
    HttpActivityRecorded,
    InputEvent,
)


def orjson_text(value: object) -> str:
    return orjson.dumps(value).decode()


def batch(*items: tuple[str, object]) -> str:
    events = []
    for backend_id, event in items:
        assert isinstance(event, (ConnectionOpened, ConnectionClosed, HttpActivityRecorded))
        events.append([backend_id, wire.tag_of(event), wire.unstructure(event)])
    return orjson_text({"events": events, "stats": {"requests": 3}})


def test_a_batch_carries_connection_events_and_stats() -> None:
    events, stats = parse_batch(
        batch(("b1", ConnectionOpened(1.0, "p-1")), ("b1", HttpActivityRecorded(2.0, 4)))
    )
    assert events == [("b1", ConnectionOpened(1.0, "p-1")), ("b1", HttpActivityRecorded(2.0, 4))]
    assert stats == {"requests": 3}


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        orjson_text({"events": [["b1", "backend.ready.v1", {}]]}),  # not a proxy's event
        orjson_text({"events": [["b1", wire.tag_of(BackendReady(1.0, "a")), {}]]}),
        orjson_text({"events": [["b1", "proxy.connection_opened.v1", {"nope": 1}]]}),
        orjson_text({"events": [{"backend": "b1"}]}),
        orjson_text({"stats": []}),
    ],
)
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(ChannelError):
        parse_batch(text)


async def test_a_proxy_gone_for_good_has_its_open_connections_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    told: list[tuple[str, InputEvent]] = []
    registry = ProxyRegistry(lambda b, e: told.append((b, e)), TrioClock(0.0), forget_after=60)
    async with trio.open_nursery() as nursery:
        await nursery.start(registry.run)
        entry = registry.attached("p", "127.0.0.1:1")
        registry.received(entry, "b1", ConnectionOpened(1.0, "p-1"))
        registry.received(entry, "b2", ConnectionOpened(1.0, "p-2"))
        registry.received(entry, "b2", ConnectionClosed(2.0, "p-2"))
        assert registry.views()[0]["open_connections"] == 1
        registry.detached(entry)
        await trio.sleep(30)  # back in time: nothing closed
        entry = registry.attached("p", "127.0.0.1:2")
        await trio.sleep(120)
        assert [type(e) for _, e in told] == [ConnectionOpened, ConnectionOpened, ConnectionClosed]
        registry.detached(entry)
        await trio.sleep(61)  # cut off for good
        assert told[-1][0] == "b1"
        assert isinstance(told[-1][1], ConnectionClosed) and told[-1][1].connection_id == "p-1"
        assert registry.views() == []
        nursery.cancel_scope.cancel()


async def test_a_dead_worker_is_forgotten_at_once() -> None:
    told: list[tuple[str, InputEvent]] = []
    registry = ProxyRegistry(lambda b, e: told.append((b, e)), TrioClock(0.0))
    entry = registry.attached("w1-abc", "peer")
    registry.received(entry, "b1", ConnectionOpened(1.0, "w1-abc-1"))
    assert registry.forget("w1-abc") == 1
    assert isinstance(told[-1][1], ConnectionClosed)
    assert registry.forget("w1-abc") == 0
