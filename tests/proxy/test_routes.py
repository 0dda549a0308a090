"""The routing table: a pure projection of the log (no I/O, no clock)."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from plane.events.spec import BackendKey, Executable, SpawnConfig
from plane.events.store import RecordedEvent
from plane.events.types import (
    SYSTEM_STREAM,
    BackendActive,
    BackendIdle,
    BackendReady,
    BackendRequested,
    BackendStarting,
    BackendTerminated,
    BackendTerminating,
    Event,
    OrphanRemoved,
    TerminationKind,
    TerminationReason,
    TokenIssued,
    TokenRevoked,
)
from plane.proxy.routes import (
    BACKEND_TERMINATED,
    TOKEN_EXPIRED,
    TOKEN_REVOKED,
    TOKEN_UNKNOWN,
    Refusal,
    Route,
    RouteTable,
)
from plane.tokens import digest

T0 = 1_700_000_000.0


class Log:
    """Builds recorded events with consecutive seq and per-stream versions."""

    def __init__(self) -> None:
        self.seq = itertools.count(1)
        self.versions: dict[str, int] = {}
        self.records: list[RecordedEvent] = []

    def add(self, stream: str, event: Event) -> RecordedEvent:
        version = self.versions.get(stream, 0) + 1
        self.versions[stream] = version
        record = RecordedEvent(next(self.seq), stream, version, event)
        self.records.append(record)
        return record


def requested(backend_id: str) -> BackendRequested:
    return BackendRequested(T0, backend_id, BackendKey(backend_id), SpawnConfig(Executable("x")), 1)


def issued(
    token_hash: str,
    expires_at: float = T0 + 100,
    user: str | None = None,
    auth: str | None = None,
) -> TokenIssued:
    return TokenIssued(T0, token_hash, expires_at, "secret", user, auth)


def table_of(*pairs: tuple[str, Event]) -> RouteTable:
    log = Log()
    table = RouteTable()
    for stream, event in pairs:
        table.apply(log.add(stream, event))
    return table


def test_unknown_token_is_refused() -> None:
    assert RouteTable().lookup("nope", T0) is TOKEN_UNKNOWN
    assert TOKEN_UNKNOWN.status == 410 and TOKEN_UNKNOWN.kind == "TokenUnknown"


def test_a_token_of_a_starting_backend_routes_without_an_address() -> None:
    table = table_of(("b1", requested("b1")), ("b1", issued("h1")), ("b1", BackendStarting(T0)))
    route = table.lookup("h1", T0)
    assert isinstance(route, Route)
    assert route.backend_id == "b1"
    assert route.address is None


def test_a_ready_backend_routes_to_its_address_with_the_token_facts() -> None:
    table = table_of(
        ("b1", requested("b1")),
        ("b1", issued("h1", user="ann", auth='{"a":1}')),
        ("b1", BackendStarting(T0)),
        ("b1", BackendReady(T0, "127.0.0.1:9000")),
    )
    route = table.lookup("h1", T0 + 1)
    assert isinstance(route, Route)
    assert route.address == "127.0.0.1:9000"
    assert (route.user, route.auth, route.secret_token) == ("ann", '{"a":1}', "secret")
    assert b"x-verified-username: ann\r\n" in route.verified_headers
    assert b'x-verified-user-data: {"a":1}\r\n' in route.verified_headers
    assert b"x-verified-secret: secret\r\n" in route.verified_headers
    assert b"x-verified-backend: b1\r\n" in route.verified_headers
    assert route.backend_header == b"x-plane-backend-id: b1\r\n"
    # The same route object is returned while nothing changes (no allocation).
    assert table.lookup("h1", T0 + 2) is route


def test_idle_and_active_do_not_change_routing() -> None:
    table = table_of(
        ("b1", requested("b1")),
        ("b1", issued("h1")),
        ("b1", BackendStarting(T0)),
        ("b1", BackendReady(T0, "127.0.0.1:9000")),
        ("b1", BackendIdle(T0)),
    )
    route = table.lookup("h1", T0)
    assert isinstance(route, Route) and route.address == "127.0.0.1:9000"
    table.apply(RecordedEvent(99, "b1", 99, BackendActive(T0)))
    assert table.lookup("h1", T0) is route


def test_expiry_is_at_expires_at() -> None:
    table = table_of(("b1", requested("b1")), ("b1", issued("h1", expires_at=T0 + 10)))
    assert isinstance(table.lookup("h1", T0 + 9.999), Route)
    assert table.lookup("h1", T0 + 10) is TOKEN_EXPIRED
    assert TOKEN_EXPIRED.kind == "TokenExpired"


def test_revoking_one_token_leaves_the_others() -> None:
    table = table_of(
        ("b1", requested("b1")),
        ("b1", issued("h1")),
        ("b1", issued("h2")),
        ("b1", TokenRevoked(T0, "h1")),
    )
    assert table.lookup("h1", T0) is TOKEN_REVOKED
    assert isinstance(table.lookup("h2", T0), Route)


def test_revoke_all_covers_earlier_tokens_not_later_ones() -> None:
    table = table_of(
        ("b1", requested("b1")),
        ("b1", issued("h1")),
        ("b1", issued("h2")),
        ("b2", requested("b2")),
        ("b2", issued("other")),
        ("b1", TokenRevoked(T0, None)),
        ("b1", issued("h3")),
    )
    assert table.lookup("h1", T0) is TOKEN_REVOKED
    assert table.lookup("h2", T0) is TOKEN_REVOKED
    assert isinstance(table.lookup("h3", T0), Route)
    assert isinstance(table.lookup("other", T0), Route)


def test_a_revocation_in_another_stream_does_not_apply() -> None:
    table = table_of(
        ("b1", requested("b1")),
        ("b1", issued("h1")),
        ("b2", requested("b2")),
        ("b2", TokenRevoked(T0, "h1")),
    )
    assert isinstance(table.lookup("h1", T0), Route)


def test_terminating_and_terminated_backends_are_refused() -> None:
    base: list[tuple[str, Event]] = [
        ("b1", requested("b1")),
        ("b1", issued("h1")),
        ("b1", BackendStarting(T0)),
    ]
    terminating = table_of(
        *base,
        ("b1", BackendTerminating(T0, TerminationReason.EXTERNAL, TerminationKind.SOFT)),
    )
    assert terminating.lookup("h1", T0) is BACKEND_TERMINATED
    terminated = table_of(*base, ("b1", BackendTerminated(T0, TerminationReason.SPAWN_FAILED)))
    assert terminated.lookup("h1", T0) is BACKEND_TERMINATED
    assert BACKEND_TERMINATED.status == 410 and BACKEND_TERMINATED.kind == "BackendTerminated"


def test_token_facts_are_checked_before_the_backend() -> None:
    table = table_of(
        ("b1", requested("b1")),
        ("b1", issued("h1", expires_at=T0 + 1)),
        ("b1", issued("h2")),
        ("b1", TokenRevoked(T0, "h2")),
        ("b1", BackendTerminated(T0, TerminationReason.EXTERNAL)),
    )
    assert table.lookup("h1", T0 + 5) is TOKEN_EXPIRED
    assert table.lookup("h2", T0) is TOKEN_REVOKED


def test_the_system_stream_is_ignored_and_seq_is_tracked() -> None:
    log = Log()
    table = RouteTable()
    table.apply(log.add(SYSTEM_STREAM, OrphanRemoved(T0, "x")))
    table.apply(log.add("b1", requested("b1")))
    assert table.seq == 2
    assert len(table) == 0


def test_the_route_follows_a_new_address() -> None:
    table = table_of(
        ("b1", requested("b1")),
        ("b1", issued("h1")),
        ("b1", BackendReady(T0, "127.0.0.1:1")),
    )
    first = table.lookup("h1", T0)
    table.apply(RecordedEvent(10, "b1", 10, BackendReady(T0, "127.0.0.1:2")))
    second = table.lookup("h1", T0)
    assert isinstance(first, Route) and isinstance(second, Route)
    assert (first.address, second.address) == ("127.0.0.1:1", "127.0.0.1:2")


def test_header_values_cannot_inject_lines() -> None:
    table = table_of(
        ("b1", requested("b1")),
        ("b1", issued("h1", user="eve\r\nx-verified-backend: other")),
    )
    route = table.lookup("h1", T0)
    assert isinstance(route, Route)
    assert route.verified_headers.count(b"\r\n") == 4  # backend, username, user-data, secret


def test_forgetting_expired_tokens() -> None:
    table = table_of(
        ("b1", requested("b1")),
        ("b1", issued("old", expires_at=T0 + 1)),
        ("b1", issued("new", expires_at=T0 + 1000)),
    )
    assert table.forget_before(T0 + 10) == 1
    assert table.lookup("old", T0 + 10) is TOKEN_UNKNOWN
    assert isinstance(table.lookup("new", T0 + 10), Route)


# ------------------------------------------------------------------ property

BACKENDS = ["b1", "b2", "b3"]
HASHES = ["h1", "h2", "h3", "h4"]

_event = st.one_of(
    st.tuples(st.sampled_from(BACKENDS), st.just("ready")),
    st.tuples(st.sampled_from(BACKENDS), st.just("terminating")),
    st.tuples(st.sampled_from(BACKENDS), st.just("terminated")),
    st.tuples(st.sampled_from(BACKENDS), st.just("revoke_all")),
    st.tuples(st.sampled_from(BACKENDS), st.sampled_from(["issue:" + h for h in HASHES])),
    st.tuples(st.sampled_from(BACKENDS), st.sampled_from(["revoke:" + h for h in HASHES])),
)


def _to_event(backend: str, op: str, n: int) -> Event:
    if op == "ready":
        return BackendReady(T0, f"127.0.0.1:{1000 + n}")
    if op == "terminating":
        return BackendTerminating(T0, TerminationReason.IDLE, TerminationKind.SOFT)
    if op == "terminated":
        return BackendTerminated(T0, TerminationReason.IDLE)
    if op == "revoke_all":
        return TokenRevoked(T0, None)
    kind, token_hash = op.split(":")
    if kind == "issue":
        return issued(token_hash, expires_at=T0 + n)
    return TokenRevoked(T0, token_hash)


def _model(
    ops: list[tuple[str, Event]], token_hash: str, now: float
) -> Refusal | tuple[str, str | None]:
    """The rule restated naively: replay the whole history for one token."""
    owner: str | None = None
    issued_event: TokenIssued | None = None
    revoked = False
    for stream, event in ops:
        if isinstance(event, TokenIssued) and event.token_hash == token_hash:
            owner, issued_event, revoked = stream, event, False
        elif (
            isinstance(event, TokenRevoked)
            and stream == owner
            and event.token_hash in (None, token_hash)
        ):
            revoked = True
    if owner is None or issued_event is None:
        return TOKEN_UNKNOWN
    if revoked:
        return TOKEN_REVOKED
    if now >= issued_event.expires_at:
        return TOKEN_EXPIRED
    address: str | None = None
    for stream, event in ops:
        if stream != owner:
            continue
        if isinstance(event, BackendTerminating | BackendTerminated):
            return BACKEND_TERMINATED
        if isinstance(event, BackendReady):
            address = event.address
    return (owner, address)


@settings(max_examples=300, deadline=None)
@given(st.lists(_event, max_size=40), st.integers(min_value=0, max_value=45))
def test_lookup_agrees_with_a_naive_replay(raw: list[tuple[str, str]], now_offset: int) -> None:
    log = Log()
    table = RouteTable()
    ops: list[tuple[str, Event]] = []
    for backend in BACKENDS:
        ops.append((backend, requested(backend)))
    for n, (backend, op) in enumerate(raw, start=1):
        ops.append((backend, _to_event(backend, op, n)))
    for stream, event in ops:
        table.apply(log.add(stream, event))
    now = T0 + now_offset
    for token_hash in HASHES:
        expected = _model(ops, token_hash, now)
        found = table.lookup(token_hash, now)
        if isinstance(expected, Refusal):
            assert found is expected, (token_hash, ops)
        else:
            assert isinstance(found, Route), (token_hash, found)
            assert (found.backend_id, found.address) == expected


# ------------------------------------------------- from BackendRequested


def requested_with(backend_id: str, static_token: str | None = None, **spawn: Any) -> Event:
    config = SpawnConfig(Executable("x"), **spawn)
    return BackendRequested(T0, backend_id, BackendKey(backend_id), config, 1, static_token)


def test_a_static_token_routes_by_its_hash_without_expiry_or_user_data() -> None:
    table = table_of(
        ("b1", requested_with("b1", "s.abc", use_static_token=True)),
        ("b1", BackendReady(T0, "127.0.0.1:1")),
    )
    route = table.lookup(digest("s.abc"), T0 + 10**9)
    assert isinstance(route, Route)
    assert route.static and route.address == "127.0.0.1:1"
    assert (route.user, route.auth, route.secret_token) == (None, None, None)
    assert route.verified_headers == b"x-verified-backend: b1\r\n"


def test_a_static_token_issued_again_stays_static_and_dies_with_its_backend() -> None:
    log = Log()
    table = RouteTable()
    for stream, event in [
        ("b1", requested_with("b1", "s.abc", use_static_token=True)),
        ("b1", TokenIssued(T0, digest("s.abc"), T0 + 5, "secret", "ann", None)),
        ("b1", BackendReady(T0, "127.0.0.1:1")),
    ]:
        table.apply(log.add(stream, event))
    route = table.lookup(digest("s.abc"), T0 + 100)  # past the TokenIssued expiry
    assert isinstance(route, Route) and route.static and route.secret_token is None
    assert table.forget_before(T0 + 10**9) == 0  # the backend lives: kept
    table.apply(log.add("b1", BackendTerminated(T0 + 50, TerminationReason.EXTERNAL)))
    assert table.lookup(digest("s.abc"), T0 + 100) is BACKEND_TERMINATED
    assert table.forget_before(T0 + 49) == 0
    assert table.forget_before(T0 + 51) == 1
    assert table.lookup(digest("s.abc"), T0 + 100) is TOKEN_UNKNOWN


def test_subdomain_and_start_timeout_come_from_the_spawn_config() -> None:
    table = table_of(
        ("b1", requested_with("b1", subdomain="Room1", start_timeout_seconds=7.5)),
        ("b1", issued("h1")),
        ("b2", requested("b2")),
        ("b2", issued("h2")),
    )
    route = table.lookup("h1", T0)
    assert isinstance(route, Route)
    assert (route.subdomain, route.start_timeout, route.address) == (b"room1", 7.5, None)
    assert not route.static
    other = table.lookup("h2", T0)
    assert isinstance(other, Route) and other.subdomain is None
    assert other.start_timeout == SpawnConfig(Executable("x")).start_timeout_seconds
