"""End to end through the real proxy to a real backend: routing, keep-alive, headers, codes."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import trio

from plane.events.types import (
    BackendReady,
    BackendStarting,
    BackendTerminated,
    BackendTerminating,
    TerminationKind,
    TerminationReason,
    TokenRevoked,
)
from plane.tokens import digest
from tests.rawsocket import raw_exchange

from .client import HttpClient, Response, get, parse_responses
from .conftest import Harness, eventually


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def get_from_scripted_backend(
    h: Harness, answer: Callable[[trio.socket.SocketType], Awaitable[None]]
) -> Response:
    """``GET /<token>/`` through the proxy to a backend that takes one
    connection, reads the request, then does ``answer`` on the socket."""
    with trio.socket.socket() as listener:
        await listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        _, token = await h.add_backend(address=f"127.0.0.1:{listener.getsockname()[1]}")

        async def backend() -> None:
            conn, _ = await listener.accept()
            with conn:
                await conn.recv(65536)
                await answer(conn)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(backend)
            return await get(h.port, f"/{token}/")


async def get_while(
    h: Harness, path: str, meanwhile: Callable[[list[Response]], Awaitable[None]]
) -> Response:
    """``GET path`` through the proxy, running ``meanwhile(answers so far)``
    while it is in flight."""
    answers: list[Response] = []

    async def request() -> None:
        answers.append(await get(h.port, path))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(request)
        await meanwhile(answers)
    (r,) = answers
    return r


def header_map(echo: dict[str, object]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    headers = echo["headers"]
    assert isinstance(headers, list)
    for name, value in headers:
        out.setdefault(name, []).append(value)
    return out


# ------------------------------------------------------------------- routing


async def test_token_is_stripped_and_query_kept(proxied: Harness) -> None:
    h = proxied
    backend_id, token = await h.add_backend()
    r = await get(h.port, f"/{token}/a/b?x=1&y=%20")
    assert r.status == 200
    assert r.json()["target"] == "/a/b?x=1&y=%20"
    assert r.header("x-plane-backend-id") == backend_id


async def test_token_alone_maps_to_root(proxied: Harness) -> None:
    h = proxied
    _, token = await h.add_backend()
    assert (await get(h.port, f"/{token}")).json()["target"] == "/"
    assert (await get(h.port, f"/{token}?q=1")).json()["target"] == "/?q=1"
    assert (await get(h.port, f"/{token}/")).json()["target"] == "/"


async def test_absolute_form_targets_are_routed_by_their_path(proxied: Harness) -> None:
    h = proxied
    _, token = await h.add_backend()
    r = await get(h.port, f"http://proxy.test/{token}/abs")
    assert r.status == 200 and r.json()["target"] == "/abs"


# ---------------------------------------------------------------- keep-alive


async def test_keep_alive_and_upstream_reuse(proxied: Harness) -> None:
    h = proxied
    _, token = await h.add_backend()
    async with await HttpClient.connect(h.port) as client:
        for i in range(10):
            r = await client.request("GET", f"/{token}/n{i}")
            assert r.status == 200 and r.json()["target"] == f"/n{i}"
            assert client.reusable()
        r = await client.request("POST", f"/{token}/post", body=b"hello")
        assert r.json()["body_len"] == 5
    # A second client connection, later: the pooled upstream connection again.
    for i in range(3):
        assert (await get(h.port, f"/{token}/again{i}")).status == 200
    assert h.backend.accepts == 1
    assert len(h.backend.requests) == 14


async def test_concurrent_requests_use_a_bounded_pool(harness: Harness) -> None:
    h = harness
    await h.start_proxy(upstream_pool_size=4)
    _, token = await h.add_backend()

    async def one(i: int) -> None:
        async with await HttpClient.connect(h.port) as client:
            for j in range(5):
                r = await client.request("GET", f"/{token}/c{i}-{j}")
                assert r.status == 200

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(one, i)
    assert len(h.backend.requests) == 100
    assert h.backend.accepts < 60  # connections are reused, though only 4 stay idle
    assert h.proxy is not None and h.proxy.pool.idle_count() <= 4


async def test_pipelined_requests_are_answered_in_order(proxied: Harness) -> None:
    h = proxied
    _, token = await h.add_backend()
    raw = (
        b"".join(f"GET /{token}/p{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for i in range(3))
        + f"GET /{token}/last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    responses = parse_responses(await raw_exchange(h.port, raw))
    assert [r.json()["target"] for r in responses] == ["/p0", "/p1", "/p2", "/last"]
    assert responses[-1].header("connection") == "close"


async def test_backend_closing_its_connection_is_not_reused(proxied: Harness) -> None:
    h = proxied
    _, token = await h.add_backend()
    async with await HttpClient.connect(h.port) as client:
        r = await client.request("GET", f"/{token}/close")
        assert r.status == 200 and r.body == b"bye"
        # The client connection stays usable; a fresh upstream is opened.
        assert client.reusable()
        r = await client.request("GET", f"/{token}/after")
        assert r.status == 200
    assert h.backend.accepts == 2


async def test_a_stale_pooled_connection_is_replaced(proxied: Harness) -> None:
    """The backend closes an idle kept-alive connection: a GET (trusted, recent)
    is retried on a fresh one; a POST (checked before reuse) never uses it."""
    h = proxied
    _, token = await h.add_backend()
    assert (await get(h.port, f"/{token}/one")).status == 200
    assert await h.backend.drop_idle() == 1
    await trio.sleep(0.05)  # the FIN reaches the proxy's socket
    assert (await get(h.port, f"/{token}/two")).status == 200
    assert await h.backend.drop_idle() == 1
    await trio.sleep(0.05)
    async with await HttpClient.connect(h.port) as client:
        r = await client.request("POST", f"/{token}/three", body=b"data")
        assert r.status == 200 and r.json()["body_len"] == 4
    assert h.backend.accepts == 3
    assert [s.target for s in h.backend.requests] == ["/one", "/two", "/three"]


async def test_http_10_client_gets_a_close_delimited_body(proxied: Harness) -> None:
    h = proxied
    _, token = await h.add_backend()
    raw = await raw_exchange(
        h.port, f"GET /{token}/download?size=1000&chunked=1 HTTP/1.0\r\n\r\n".encode()
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()
    assert b"connection: close" in head.lower()
    assert len(body) == 1000


async def test_head_and_204_have_no_body(proxied: Harness) -> None:
    h = proxied
    _, token = await h.add_backend()
    async with await HttpClient.connect(h.port) as client:
        r = await client.request("HEAD", f"/{token}/head-length")
        assert r.status == 200 and r.header("content-length") == "1234" and r.body == b""
        r = await client.request("GET", f"/{token}/status/204")
        assert r.status == 204 and r.body == b""
        r = await client.request("GET", f"/{token}/head-length")
        assert len(r.body) == 1234
    assert h.backend.accepts == 1


# ------------------------------------------------------------------- headers


async def test_verified_headers_are_added_and_forged_ones_dropped(proxied: Harness) -> None:
    h = proxied
    backend_id, token = await h.add_backend(user="ann", auth='{"role":"editor"}')
    r = await get(
        h.port,
        f"/{token}/who?x=1",
        [
            ("x-verified-username", "mallory"),
            ("X-Verified-Backend", "elsewhere"),
            ("x-verified-anything", "forged"),
            ("x-custom", "kept"),
        ],
    )
    headers = header_map(r.json())
    assert headers["x-verified-username"] == ["ann"]
    assert headers["x-verified-backend"] == [backend_id]
    assert headers["x-verified-user-data"] == ['{"role":"editor"}']
    assert headers["x-verified-secret"] == ["s3cret-" + backend_id]
    assert headers["x-verified-path"] == [f"/{token}/who"]
    assert "x-verified-anything" not in headers
    assert headers["x-custom"] == ["kept"]
    assert headers["x-forwarded-for"] == ["127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["host"] == ["proxy.test"]
    assert r.header("x-plane-backend-id") == backend_id


async def test_a_token_without_user_gets_null_user_data(proxied: Harness) -> None:
    h = proxied
    _, token = await h.add_backend(user=None, auth=None)
    headers = header_map((await get(h.port, f"/{token}/")).json())
    assert "x-verified-username" not in headers
    assert headers["x-verified-user-data"] == ["null"]


async def test_hop_by_hop_headers_are_removed(proxied: Harness) -> None:
    h = proxied
    _, token = await h.add_backend()
    r = await get(
        h.port,
        f"/{token}/hop",
        [
            ("Connection", "keep-alive, X-Secret-Hop"),
            ("X-Secret-Hop", "drop me"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Trailer", "X-Foo"),
            ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
            ("Proxy-Connection", "keep-alive"),
            ("Upgrade", "h2c"),
            ("X-Forwarded-For", "10.0.0.1"),
        ],
    )
    headers = header_map(r.json())
    for name in (
        "connection",
        "x-secret-hop",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
    ):
        assert name not in headers, name
    # Like Plane: the peer overwrites what the client said.
    assert headers["x-forwarded-for"] == ["127.0.0.1"]


async def test_request_bodies_are_forwarded_sized_and_chunked(proxied: Harness) -> None:
    h = proxied
    _, token = await h.add_backend()
    async with await HttpClient.connect(h.port) as client:
        await client.start("POST", f"/{token}/up", chunked=True)
        for piece in (b"abc", b"defg", b"h" * 100_000):
            await client.send(piece)
        await client.end()
        r = await client.finish(await client.head())
        echo = r.json()
        assert echo["body_len"] == 100_007
        assert "transfer-encoding" in header_map(echo)
        r = await client.request("PUT", f"/{token}/up", body=b"x" * 70_000)
        assert r.json()["body_len"] == 70_000
        assert header_map(r.json())["content-length"] == ["70000"]


# ------------------------------------------------------------- status codes


async def test_unknown_token_is_410(proxied: Harness) -> None:
    h = proxied
    r = await get(h.port, "/not-a-token/x")
    assert r.status == 410
    body = r.json()
    assert body["kind"] == "TokenUnknown"
    assert body["message"] == "no backend is known for this token"
    assert r.kind() == "TokenUnknown"


async def test_expired_token_is_410(proxied: Harness) -> None:
    h = proxied
    _, token = await h.add_backend(expires_in=-1)
    r = await get(h.port, f"/{token}/x")
    assert r.status == 410 and r.kind() == "TokenExpired"


async def test_revoked_token_is_refused_at_once(proxied: Harness) -> None:
    """Refused from the moment the table has the event (a scheduler tick after it
    lands in the store), on a connection that used the token a moment before:
    nothing is cached per connection but the token's hash."""
    h = proxied
    backend_id, token = await h.add_backend()
    async with await HttpClient.connect(h.port) as client:
        assert (await client.request("GET", f"/{token}/ok")).status == 200
        await h.append(backend_id, TokenRevoked(h.clock.now(), digest(token)))
        with trio.fail_after(0.05):
            await h.settle()
        r = await client.request("GET", f"/{token}/after")
        assert r.status == 410 and r.kind() == "TokenRevoked"
        # The refusal keeps the connection.
        assert client.reusable()
    assert [s.target for s in h.backend.requests] == ["/ok"]


async def test_revoke_all_refuses_every_earlier_token(proxied: Harness) -> None:
    h = proxied
    backend_id, token = await h.add_backend()
    other = await h.issue(backend_id)
    await h.append(backend_id, TokenRevoked(h.clock.now(), None))
    later = await h.issue(backend_id)
    for t in (token, other):
        assert (await get(h.port, f"/{t}/")).kind() == "TokenRevoked"
    assert (await get(h.port, f"/{later}/")).status == 200


async def test_terminating_and_terminated_backends_are_410(proxied: Harness) -> None:
    h = proxied
    backend_id, token = await h.add_backend()
    now = h.clock.now()
    await h.append(
        backend_id, BackendTerminating(now, TerminationReason.EXTERNAL, TerminationKind.SOFT)
    )
    await h.settle()
    r = await get(h.port, f"/{token}/x")
    assert r.status == 410 and r.kind() == "BackendTerminated"
    await h.append(backend_id, BackendTerminated(now, TerminationReason.EXTERNAL))
    await h.settle()
    assert (await get(h.port, f"/{token}/x")).kind() == "BackendTerminated"


async def test_a_request_waits_for_a_starting_backend(proxied: Harness) -> None:
    h = proxied
    backend_id, token = await h.add_backend(ready=False)

    async def start_it(answers: list[Response]) -> None:
        await trio.sleep(0.3)
        assert not answers
        now = h.clock.now()
        await h.append(backend_id, BackendStarting(now), BackendReady(now, h.backend.address))

    r = await get_while(h, f"/{token}/waited", start_it)
    assert r.status == 200 and r.json()["target"] == "/waited"


async def test_a_waiting_request_sees_the_backend_fail(proxied: Harness) -> None:
    h = proxied
    backend_id, token = await h.add_backend(ready=False)

    async def fail_it(answers: list[Response]) -> None:
        await trio.sleep(0.1)
        await h.append(backend_id, BackendTerminated(h.clock.now(), TerminationReason.SPAWN_FAILED))

    r = await get_while(h, f"/{token}/", fail_it)
    assert r.status == 410 and r.kind() == "BackendTerminated"


async def test_a_backend_stuck_starting_gives_504_after_its_own_start_timeout(
    proxied: Harness,
) -> None:
    """The wait is the backend's spawn_config.start_timeout_seconds: a backend
    with a long one is still waited for after a short one's request gave up."""
    h = proxied
    quick_id, quick = await h.add_backend(ready=False, start_timeout=0.3)
    slow_id, slow = await h.add_backend(ready=False, start_timeout=600)
    results: dict[str, Response] = {}
    start = trio.current_time()

    async def request(name: str, token: str) -> None:
        results[name] = await get(h.port, f"/{token}/")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(request, "quick", quick)
        nursery.start_soon(request, "slow", slow)
        await eventually(lambda: "quick" in results, 30)
        assert trio.current_time() - start >= 0.3
        assert "slow" not in results
        now = h.clock.now()
        await h.append(slow_id, BackendStarting(now), BackendReady(now, h.backend.address))
    r = results["quick"]
    assert r.status == 504 and r.kind() == "BackendNotReady"
    assert "0.3s" in r.json()["message"]
    assert r.header("x-plane-backend-id") == quick_id
    assert results["slow"].status == 200


async def test_a_refused_connection_gives_502(proxied: Harness) -> None:
    h = proxied
    _, token = await h.add_backend(address=f"127.0.0.1:{free_port()}")
    async with await HttpClient.connect(h.port) as client:
        r = await client.request("GET", f"/{token}/")
        assert r.status == 502 and r.kind() == "BackendUnreachable"
        assert client.reusable()


async def test_a_backend_that_dies_mid_exchange_gives_502(proxied: Harness) -> None:
    async def answer_nothing(conn: trio.socket.SocketType) -> None:
        pass  # the request was read; the connection closes without an answer

    r = await get_from_scripted_backend(proxied, answer_nothing)
    assert r.status == 502 and r.kind() == "BackendClosed"


async def test_a_malformed_backend_response_gives_502(proxied: Harness) -> None:
    async def not_http(conn: trio.socket.SocketType) -> None:
        await conn.send(b"NOT HTTP AT ALL\r\n\r\n")

    r = await get_from_scripted_backend(proxied, not_http)
    assert r.status == 502 and r.kind() == "BadGateway"


async def test_connect_is_refused_with_405(proxied: Harness) -> None:
    raw = await raw_exchange(proxied.port, b"CONNECT example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n")
    (r,) = parse_responses(raw)
    assert r.status == 405


async def test_expect_100_continue_is_relayed(proxied: Harness) -> None:
    h = proxied
    _, token = await h.add_backend()
    stream = await trio.open_tcp_stream("127.0.0.1", h.port)
    async with stream:
        await stream.send_all(
            (
                f"POST /{token}/expect HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                "Expect: 100-continue\r\n\r\n"
            ).encode()
        )
        received = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in received:
                received += await stream.receive_some(4096)
        assert received.startswith(b"HTTP/1.1 100")
        await stream.send_all(b"hello")
        with trio.fail_after(5):
            while b'"body_len":5' not in received:
                received += await stream.receive_some(4096)
    final = received.split(b"\r\n\r\n", 1)[1]
    assert final.startswith(b"HTTP/1.1 200")


async def test_http_10_keep_alive_is_honoured(proxied: Harness) -> None:
    h = proxied
    _, token = await h.add_backend()
    raw = await raw_exchange(
        h.port,
        (
            f"GET /{token}/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
            f"GET /{token}/b HTTP/1.0\r\n\r\n"
        ).encode(),
    )
    first, second = parse_responses(raw)
    assert first.header("connection") == "keep-alive"
    assert second.header("connection") == "close"
    assert [first.json()["target"], second.json()["target"]] == ["/a", "/b"]
    # HTTP/1.0 requests reach the backend as HTTP/1.1, with a Host header added.
    assert header_map(first.json())["host"] == [h.backend.address]


async def test_an_idle_client_connection_is_closed_after_the_keepalive_timeout(
    harness: Harness,
) -> None:
    h = harness
    await h.start_proxy(keepalive_timeout=0.5)
    _, token = await h.add_backend()
    async with await HttpClient.connect(h.port) as client:
        assert (await client.request("GET", f"/{token}/")).status == 200
        start = trio.current_time()
        with trio.fail_after(5):
            assert await client.stream.receive_some(1) == b""
        assert 0.4 <= trio.current_time() - start < 2


async def test_an_oversized_backend_head_gives_502(proxied: Harness) -> None:
    async def endless_headers(conn: trio.socket.SocketType) -> None:
        await conn.send(b"HTTP/1.1 200 OK\r\n")
        try:
            for i in range(10_000):
                await conn.send(b"x-filler-%d: %s\r\n" % (i, b"f" * 100))
        except OSError:
            pass  # the proxy hung up

    r = await get_from_scripted_backend(proxied, endless_headers)
    assert r.status == 502 and r.kind() == "BadGateway"


async def test_tiny_chunks_in_bulk(proxied: Harness) -> None:
    """100 000 one-byte chunks arrive in a few large reads: many pieces per read."""
    h = proxied
    _, token = await h.add_backend()
    body = b"".join(b"1\r\n%c\r\n" % (65 + i % 26) for i in range(100_000)) + b"0\r\n\r\n"
    raw = await raw_exchange(
        h.port,
        (
            f"POST /{token}/tiny HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        + body,
    )
    (r,) = parse_responses(raw)
    assert r.status == 200 and r.json()["body_len"] == 100_000
