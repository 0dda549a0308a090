"""The controller's registry of proxies and the channel's message checks
(plane.api.proxies), without processes; the e2e tests run the real thing."""

from __future__ import annotations

import orjson
import pytest
import trio
import trio.testing

from plane.actors.clock import TrioClock
from plane.api.proxies import ChannelError, ProxyEntry, ProxyRegistry, parse_batch
from plane.events import wire
from plane.events.types import (
    BackendReady,
    ConnectionClosed,
    ConnectionOpened,
    HttpActivityRecorded,
    InputEvent,
)
from plane.metrics import Metrics
from plane.proxy.tracking import IN_PROCESS, proxy_of


def orjson_text(value: object) -> str:
    return orjson.dumps(value).decode()


def batch(*items: tuple[str, object]) -> str:
    events = []
    for backend_id, event in items:
        assert isinstance(event, (ConnectionOpened, ConnectionClosed, HttpActivityRecorded))
        events.append([backend_id, wire.tag_of(event), wire.unstructure(event)])
    return orjson_text({"events": events, "stats": {"requests": 3}})


def test_a_batch_carries_connection_events_and_stats() -> None:
    parsed = parse_batch(
        batch(("b1", ConnectionOpened(1.0, "p-1")), ("b1", HttpActivityRecorded(2.0, 4)))
    )
    assert parsed.events == [
        ("b1", ConnectionOpened(1.0, "p-1")),
        ("b1", HttpActivityRecorded(2.0, 4)),
    ]
    assert parsed.stats == {"requests": 3}
    assert not parsed.bye
    assert parse_batch('{"events": [], "bye": true}').bye


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
        orjson_text({"bye": "yes"}),
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


def test_connection_ids_name_their_proxy_process_not_the_in_process_proxy() -> None:
    assert proxy_of("w1-ab12cd-17") == "w1-ab12cd"
    assert proxy_of("edge7-3") == "edge7"
    assert proxy_of(f"{IN_PROCESS}ab12cd34-5") is None  # plane serve's own proxy
    assert proxy_of("c1") is None
    assert proxy_of("p-x") is None
    assert proxy_of("-4") is None


async def test_at_a_restart_a_proxy_process_connections_wait_for_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    told: list[tuple[str, InputEvent]] = []
    registry = ProxyRegistry(lambda b, e: told.append((b, e)), TrioClock(0.0), forget_after=60)
    # recovery runs before the registry's timers do
    assert not registry.adopt_connection("b1", f"{IN_PROCESS}ab12-1")  # the supervisor closes it
    assert registry.adopt_connection("b1", "back-1")
    assert registry.adopt_connection("b2", "back-2")
    assert registry.adopt_connection("b3", "never-1")
    views = {v["id"]: v for v in registry.views()}
    assert views["back"]["open_connections"] == 2 and not views["back"]["connected"]
    async with trio.open_nursery() as nursery:
        await nursery.start(registry.run)
        await trio.sleep(30)
        entry = registry.attached("back", "127.0.0.1:1")  # it survived: keeps them
        registry.received(entry, "b2", ConnectionClosed(31.0, "back-2"))
        await trio.sleep(60)
        assert [(b, type(e), getattr(e, "connection_id", "")) for b, e in told] == [
            ("b2", ConnectionClosed, "back-2"),  # told by the proxy
            ("b3", ConnectionClosed, "never-1"),  # never came back: closed after 60 s
        ]
        assert registry.views()[0]["open_connections"] == 1
        nursery.cancel_scope.cancel()


async def test_a_proxy_that_says_bye_is_forgotten_when_its_channel_closes() -> None:
    told: list[tuple[str, InputEvent]] = []
    registry = ProxyRegistry(lambda b, e: told.append((b, e)), TrioClock(0.0))
    entry = registry.attached("edge", "peer")
    registry.received(entry, "b1", ConnectionOpened(1.0, "edge-1"))
    registry.received(entry, "b1", ConnectionClosed(2.0, "edge-1"))
    entry.bye = True
    registry.detached(entry)
    assert registry.views() == []
    assert len(told) == 2  # nothing more to close


async def test_proxy_processes_counters_are_added_to_the_metrics() -> None:
    metrics = Metrics()
    registry = ProxyRegistry(lambda b, e: None, TrioClock(0.0), metrics=metrics)
    one, two = registry.attached("w1", "peer"), registry.attached("w2", "peer")

    def report(entry: ProxyEntry, connections: int, ok: int, active: int) -> None:
        counters = {"connections": connections, "upgrades": 0, "requests": {"200": ok}}
        registry.reported(entry, {"counters": counters, "active": active})

    report(one, 5, 4, 1)
    report(two, 3, 3, 2)
    report(one, 7, 6, 0)  # grew by 2 and 2
    report(two, 1, 1, 1)  # restarted: counts from 0 again
    assert metrics.proxy_counters() == {
        "connections": 7 + 3 + 1,
        "upgrades": 0,
        "requests": {"200": 6 + 3 + 1},
    }
    assert metrics.registry.get_sample_value("plane_proxy_open_connections") == 1
    registry.forget("w2")
    assert metrics.registry.get_sample_value("plane_proxy_open_connections") == 0
    # what is not a count is ignored
    registry.reported(one, {"counters": {"connections": "x", "requests": {"2000": 4}}})
    assert metrics.proxy_counters()["connections"] == 11
