"""The controller's current routing table (plane.api.live_routes): what a proxy
that needs a full table is sent; fed by hand here, the e2e tests
(tests/e2e/test_proxy_feed_resync.py) run it against a real log."""

from __future__ import annotations

from plane.api.live_routes import LiveRoutes
from plane.events.store import RecordedEvent
from plane.events.types import (
    SYSTEM_STREAM,
    BackendReady,
    BackendStarting,
    BackendTerminated,
    BackendTerminating,
    HistoryArchived,
    HttpActivityRecorded,
    TerminationKind,
    TerminationReason,
    TokenIssued,
    TokenRevoked,
)
from plane.proxy.routes import TOKEN_REVOKED, TOKEN_UNKNOWN, Route, RouteTable


def test_it_keeps_the_routing_records_of_unfinished_backends_only() -> None:
    log = [
        RecordedEvent(1, "a", 1, BackendStarting(1.0)),
        RecordedEvent(2, "a", 2, BackendReady(2.0, "127.0.0.1:1")),
        RecordedEvent(3, "a", 3, TokenIssued(3.0, "ha", 1e12, "s")),
        RecordedEvent(4, "b", 1, BackendStarting(4.0)),
        RecordedEvent(5, "b", 2, TokenIssued(5.0, "hb", 1e12, "s")),
        RecordedEvent(6, "a", 4, HttpActivityRecorded(6.0, 3)),  # not routing: not kept
        RecordedEvent(7, "a", 5, TokenRevoked(7.0, "ha")),
        RecordedEvent(8, "a", 6, TokenIssued(8.0, "ha2", 1e12, "s")),
        RecordedEvent(
            9, "b", 3, BackendTerminating(9.0, TerminationReason.IDLE, TerminationKind.SOFT)
        ),
        RecordedEvent(10, SYSTEM_STREAM, 1, HistoryArchived(10.0, 5.0, ("old",))),
        RecordedEvent(11, "c", 1, BackendStarting(11.0)),
        RecordedEvent(12, "c", 2, BackendTerminated(12.0, TerminationReason.LOST)),
    ]
    live = LiveRoutes()
    for record in log:
        live.apply(record)
    live.apply(log[4])  # covered already: ignored
    assert live.seq == 12
    assert live.horizon == 10
    assert [r.seq for r in live.records()] == [1, 2, 3, 7, 8]
    table = RouteTable()
    for record in live.records():
        table.apply(record)
    assert table.lookup("ha", 0.0) is TOKEN_REVOKED
    assert isinstance(table.lookup("ha2", 0.0), Route)
    assert table.lookup("hb", 0.0) is TOKEN_UNKNOWN  # terminating: gone from the table


def test_a_seed_covers_up_to_its_seq() -> None:
    seed = [RecordedEvent(3, "a", 1, BackendStarting(1.0))]
    live = LiveRoutes(seed, seq=40, horizon=7)
    assert (live.seq, live.horizon) == (40, 7)
    live.apply(RecordedEvent(39, "a", 2, BackendReady(2.0, "x")))  # before the seed's seq
    assert [r.seq for r in live.records()] == [3]
