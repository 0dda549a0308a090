"""The proxy as Plane's users expect it: CORS, /ready and /, the Host rules
(HTTP/1.1 needs one; subdomains), forwarded headers, forged x-verified-*
headers, static tokens, and the proxy's own answers (ApiError, Server)."""

from __future__ import annotations

from typing import Any, cast

import pytest
import trio

from plane import __version__
from plane.events.store import EventStore, RecordedEvent
from plane.events.types import (
    BackendTerminated,
    TerminationReason,
    TokenIssued,
    TokenRevoked,
)
from plane.proxy import ProxyContext, ProxyServer
from plane.proxy.settings import ProxySettings
from plane.tokens import digest
from tests.rawsocket import raw_exchange

from .client import HttpClient, Response, get, parse_responses
from .conftest import Harness

CORS = {
    "access-control-allow-origin": "*",
    "access-control-allow-methods": "*",
    "access-control-allow-headers": "*, Authorization",
}


def header_map(echo: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in echo["headers"]:
        out.setdefault(name, []).append(value)
    return out


def cors_of(r: Response) -> dict[str, str]:
    return {n: v for n, v in r.headers if n.startswith("access-control-")}


# -------------------------------------------------------------------- CORS


async def test_cors_headers_are_added_to_proxied_responses(proxied: Harness) -> None:
    h = proxied
    _, token = await h.add_backend()
    r = await get(h.port, f"/{token}/x", [("origin", "https://app.example")])
    assert r.status == 200
    assert cors_of(r) == CORS


async def test_a_backend_doing_its_own_cors_is_left_alone(proxied: Harness) -> None:
    h = proxied
    _, token = await h.add_backend()
    r = await get(h.port, f"/{token}/cors?origin=https://mine.example")
    assert r.status == 204
    assert cors_of(r) == {"access-control-allow-origin": "https://mine.example"}


async def test_a_preflight_goes_to_the_backend_and_gets_cors(proxied: Harness) -> None:
    h = proxied
    _, token = await h.add_backend()
    preflight = [
        ("origin", "https://app.example"),
        ("access-control-request-method", "PUT"),
        ("access-control-request-headers", "authorization"),
    ]
    async with await HttpClient.connect(h.port) as client:
        r = await client.request("OPTIONS", f"/{token}/thing", preflight)
        assert r.status == 200 and r.json()["method"] == "OPTIONS"
        assert cors_of(r) == CORS
        # A backend answering its own preflight keeps its answer.
        r = await client.request("OPTIONS", f"/{token}/cors", preflight)
        assert r.status == 204
        assert cors_of(r) == {"access-control-allow-origin": "https://app.example"}
    assert [s.method for s in h.backend.requests] == ["OPTIONS", "OPTIONS"]


# ----------------------------------------------------- the proxy's own answers


async def test_own_answers_are_api_errors_with_server_and_cors(proxied: Harness) -> None:
    h = proxied
    first = await get(h.port, "/no-such-token-anywhere/x")
    second = await get(h.port, "/no-such-token-anywhere/x")
    for r in (first, second):
        assert r.status == 410 and r.kind() == "TokenUnknown"
        assert r.header("server") == f"plane/{__version__}"
        assert cors_of(r) == CORS
    assert first.json()["id"] != second.json()["id"]


async def test_ready_answers_200_without_a_token(proxied: Harness) -> None:
    h = proxied
    async with await HttpClient.connect(h.port) as client:
        r = await client.request("GET", "/ready")
        assert r.status == 200 and r.header("server") == f"plane/{__version__}"
        r = await client.request("HEAD", "/ready")
        assert r.status == 200 and r.body == b""
        assert client.reusable()
    assert not h.backend.requests


class HeldHistory:
    """A store whose history read waits for :attr:`release` (the rest is the
    real store)."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.release = trio.Event()

    async def read_all(self, after_seq: int = 0, limit: int | None = None) -> list[RecordedEvent]:
        await self.release.wait()
        return await self.store.read_all(after_seq, limit)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


async def test_ready_is_503_until_the_routing_table_is_loaded(harness: Harness) -> None:
    """The port answers at once; until the log's history is in the table,
    /ready is 503 and a request with a token waits (it is not refused as
    unknown)."""
    h = harness
    _, token = await h.add_backend()
    held = HeldHistory(h.store)
    proxy = ProxyServer(ProxyContext(cast(EventStore, held), h.emit, h.clock))
    h.nursery.start_soon(proxy.serve, "127.0.0.1", 0)
    await proxy.listening.wait()
    r = await get(proxy.port, "/ready")
    assert r.status == 503 and r.kind() == "ProxyNotReady"
    results: list[Response] = []

    async def request() -> None:
        results.append(await get(proxy.port, f"/{token}/early"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(request)
        await trio.sleep(0.2)
        assert not results
        held.release.set()
    assert results[0].status == 200 and results[0].json()["target"] == "/early"
    assert (await get(proxy.port, "/ready")).status == 200


@pytest.mark.parametrize("target", ["/", "//x", "/?a=1"])
async def test_no_token_is_400(proxied: Harness, target: str) -> None:
    r = await get(proxied.port, target)
    assert r.status == 400 and r.kind() == "BadRequest"


async def test_the_root_redirects_when_configured(harness: Harness) -> None:
    h = harness
    await h.start_proxy(root_redirect="https://plane.example/app")
    r = await get(h.port, "/")
    assert r.status == 302 and r.header("location") == "https://plane.example/app"
    assert r.header("server") == f"plane/{__version__}"
    # Only the root: a path without a token stays 400.
    assert (await get(h.port, "//x")).status == 400


def test_settings_refuse_bad_values_by_name() -> None:
    with pytest.raises(ValueError, match="trust_forwarded_from"):
        ProxySettings(trust_forwarded_from=("10.0.0.0/33",))
    with pytest.raises(ValueError, match="root_redirect"):
        ProxySettings(root_redirect="javascript:alert(1)")
    with pytest.raises(ValueError, match="cluster_host"):
        ProxySettings(cluster_host="example.com:9090")


# -------------------------------------------------------------------- Host


async def test_http11_without_host_is_400_and_http10_is_served(proxied: Harness) -> None:
    h = proxied
    _, token = await h.add_backend()
    raw = await raw_exchange(h.port, f"GET /{token}/x HTTP/1.1\r\n\r\n".encode())
    (r,) = parse_responses(raw)
    assert r.status == 400 and r.kind() == "BadRequest"
    assert "Host" in r.json()["message"]
    raw = await raw_exchange(h.port, f"GET /{token}/old HTTP/1.0\r\n\r\n".encode())
    assert parse_responses(raw)[0].status == 200
    assert [s.target for s in h.backend.requests] == ["/old"]


async def test_two_host_headers_are_400(proxied: Harness) -> None:
    h = proxied
    _, token = await h.add_backend()
    raw = await raw_exchange(
        h.port, f"GET /{token}/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".encode()
    )
    (r,) = parse_responses(raw)
    assert r.status == 400 and r.kind() == "BadRequest"
    assert not h.backend.requests


async def test_a_subdomain_backend_needs_its_host(harness: Harness) -> None:
    h = harness
    await h.start_proxy(cluster_host="plane.test")
    backend_id, token = await h.add_backend(subdomain="room1")
    for host in ("room1.plane.test", "ROOM1.Plane.Test:9090", "room1.plane.test."):
        r = await get(h.port, f"/{token}/ok", [("host", host)])
        assert r.status == 200, host
    for host in ("plane.test", "room2.plane.test", "x.room1.plane.test", "proxy.test"):
        r = await get(h.port, f"/{token}/no", [("host", host)])
        assert r.status == 403 and r.kind() == "HostMismatch", host
        assert "room1.plane.test" in r.json()["message"]
        assert r.header("x-plane-backend-id") == backend_id
    assert {s.target for s in h.backend.requests} == {"/ok"}


async def test_a_backend_without_subdomain_refuses_subdomain_hosts(harness: Harness) -> None:
    """Documented rule: the cluster host and any host outside it (localhost, an
    IP, another name) are accepted; a subdomain of the cluster host is not."""
    h = harness
    await h.start_proxy(cluster_host="plane.test")
    _, token = await h.add_backend()
    for host in ("plane.test", "plane.test:9090", "proxy.test", "127.0.0.1:9090"):
        assert (await get(h.port, f"/{token}/ok", [("host", host)])).status == 200, host
    r = await get(h.port, f"/{token}/no", [("host", "room1.plane.test")])
    assert r.status == 403 and r.kind() == "HostMismatch"


async def test_a_subdomain_backend_without_a_cluster_host_is_403(proxied: Harness) -> None:
    h = proxied
    _, token = await h.add_backend(subdomain="room1")
    r = await get(h.port, f"/{token}/x", [("host", "room1.proxy.test")])
    assert r.status == 403 and r.kind() == "HostMismatch"
    assert not h.backend.requests


# ---------------------------------------------------------- forwarded headers

FORGED = [
    ("X-Forwarded-For", "6.6.6.6"),
    ("X-Forwarded-Proto", "https"),
    ("Forwarded", "for=6.6.6.6;proto=https"),
    ("X_Verified_Secret", "forged"),
    ("x_verified_username", "mallory"),
    ("X-VERIFIED-Backend", "elsewhere"),
    ("X-Verified_User-Data", '{"admin":true}'),
]


async def test_forwarded_and_forged_verified_headers_are_replaced(proxied: Harness) -> None:
    h = proxied
    backend_id, token = await h.add_backend(user="ann")
    headers = header_map((await get(h.port, f"/{token}/who", FORGED)).json())
    assert headers["x-forwarded-for"] == ["127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert "forwarded" not in headers
    verified = {n for n in headers if n.replace("_", "-").startswith("x-verified-")}
    assert verified == {
        "x-verified-username",
        "x-verified-user-data",
        "x-verified-secret",
        "x-verified-backend",
        "x-verified-path",
    }
    assert headers["x-verified-username"] == ["ann"]
    assert headers["x-verified-backend"] == [backend_id]
    assert headers["x-verified-secret"] == ["s3cret-" + backend_id]


@pytest.mark.parametrize(
    ("trusted", "xff", "xfp"),
    [
        (("127.0.0.0/8",), "6.6.6.6, 127.0.0.1", "https"),
        (("::1/128", "127.0.0.1/32"), "6.6.6.6, 127.0.0.1", "https"),
        (("10.0.0.0/8",), "127.0.0.1", "http"),
    ],
)
async def test_a_trusted_front_proxy_keeps_its_forwarded_headers(
    harness: Harness, trusted: tuple[str, ...], xff: str, xfp: str
) -> None:
    h = harness
    await h.start_proxy(trust_forwarded_from=trusted)
    _, token = await h.add_backend()
    headers = header_map((await get(h.port, f"/{token}/who", FORGED)).json())
    assert headers["x-forwarded-for"] == [xff]
    assert headers["x-forwarded-proto"] == [xfp]
    assert "forwarded" not in headers
    assert "x_verified_secret" not in headers


# ------------------------------------------------------------- static tokens


async def test_a_static_token_reaches_the_backend_unstripped(proxied: Harness) -> None:
    h = proxied
    backend_id, token = await h.add_backend(static=True)
    assert token.startswith("s.")
    async with await HttpClient.connect(h.port) as client:
        r = await client.request("GET", f"/{token}/app/page?x=1")
        assert r.status == 200
        echo = r.json()
        assert echo["target"] == f"/{token}/app/page?x=1"
        headers = header_map(echo)
        verified = {n for n in headers if n.startswith("x-verified-")}
        assert verified == {"x-verified-backend", "x-verified-path"}
        assert headers["x-verified-path"] == [f"/{token}/app/page"]
        assert r.header("x-plane-backend-id") == backend_id
        r = await client.request("GET", f"/{token}")
        assert r.json()["target"] == f"/{token}"


async def test_a_static_token_stays_static_when_also_issued(proxied: Harness) -> None:
    h = proxied
    backend_id, token = await h.add_backend(static=True)
    now = h.clock.now()
    await h.append(
        backend_id, TokenIssued(now, digest(token), now + 60, "secret", "ann", '{"a":1}')
    )
    await h.settle()
    echo = (await get(h.port, f"/{token}/x")).json()
    assert echo["target"] == f"/{token}/x"
    assert "x-verified-secret" not in header_map(echo)


async def test_a_static_token_is_refused_once_revoked_or_ended(proxied: Harness) -> None:
    h = proxied
    revoked_id, revoked = await h.add_backend(static=True)
    ended_id, ended = await h.add_backend(static=True)
    assert (await get(h.port, f"/{revoked}/x")).status == 200
    await h.append(revoked_id, TokenRevoked(h.clock.now(), digest(revoked)))
    await h.append(ended_id, BackendTerminated(h.clock.now(), TerminationReason.EXTERNAL))
    await h.settle()
    r = await get(h.port, f"/{revoked}/x")
    assert r.status == 410 and r.kind() == "TokenRevoked"
    r = await get(h.port, f"/{ended}/x")
    assert r.status == 410 and r.kind() == "BackendTerminated"
