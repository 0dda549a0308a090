"""The HTTP layer and the router: auth, 404/405/413/408/400/500, keep-alive, framing."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import h11
import httpx
import orjson
import pytest
import trio
import trio_websocket

from plane.events.types import Status
from tests.api.conftest import (
    API_KEY,
    Api,
    api_error,
    lines_of,
    open_api,
    open_raw,
    spawn_body,
)
from tests.rawsocket import raw_exchange


def _error(body: bytes) -> dict[str, str]:
    return api_error(body)


# ----------------------------------------------------------------- auth


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong", f"Basic {API_KEY}", f"Bearer {API_KEY}x", "Bearer", f"{API_KEY}"],
)
async def test_ctrl_needs_the_api_key(api: Api, authorization: str | None) -> None:
    headers = {"authorization": authorization} if authorization is not None else {}
    async with httpx.AsyncClient(base_url=api.base_url, headers=headers) as bare:
        for method, path in [
            ("GET", "/ctrl/status"),
            ("POST", "/ctrl/connect"),
            ("GET", "/ctrl/backends"),
            ("GET", "/ctrl/nonexistent"),
            ("GET", "/metrics"),
        ]:
            response = await bare.request(method, path)
            assert response.status_code == 401, (method, path)
            assert response.headers["www-authenticate"] == "Bearer"
            assert _error(response.content)["kind"] == "Unauthorized"
    assert api.supervisor.states == {}


async def test_scheme_is_case_insensitive(api: Api) -> None:
    async with httpx.AsyncClient(
        base_url=api.base_url, headers={"authorization": f"bearer {API_KEY}"}
    ) as client:
        assert (await client.get("/ctrl/status")).status_code == 200


async def test_pub_and_openapi_need_no_key(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.base_url) as bare:
        assert (await bare.get("/pub/health")).json() == {"status": "ok"}
        assert (await bare.get("/openapi.json")).status_code == 200
        assert (await bare.get("/pub/b/nope/status")).status_code == 404


async def test_without_a_key_configured_ctrl_is_open() -> None:
    async with open_api(api_key=None) as api:
        response = await api.client.get("/ctrl/status")
        assert response.status_code == 200
        assert (await api.client.get("/metrics")).status_code == 200


READ_KEY = "read-only-key-0123456789"


@pytest.fixture
async def read_api() -> AsyncIterator[Api]:
    """The API with a full key and a read-only key."""
    async with open_api() as harness:
        harness.ctx.keys.read = READ_KEY
        yield harness


async def test_read_key_allows_gets_and_streams(read_api: Api) -> None:
    api = read_api
    backend_id = (await api.connect("r"))["backend_id"]
    await api.wait_status(backend_id, Status.READY)
    auth = {"authorization": f"Bearer {READ_KEY}"}
    async with httpx.AsyncClient(base_url=api.base_url, headers=auth, timeout=10) as reader:
        for path in [
            "/ctrl/status",
            "/ctrl/backends",
            f"/ctrl/b/{backend_id}",
            f"/ctrl/b/{backend_id}/events",
            "/ctrl/events?follow=0",
            f"/ctrl/b/{backend_id}/logs",
            "/metrics",
            f"/pub/b/{backend_id}/status",
        ]:
            response = await reader.get(path)
            assert response.status_code == 200, (path, response.text)
        with trio.fail_after(5):
            async with reader.stream("GET", f"/pub/b/{backend_id}/status-stream") as stream:
                assert stream.status_code == 200
                async with lines_of(stream) as lines:
                    async for line in lines:
                        if line.startswith("data:"):
                            assert orjson.loads(line[5:])["status"] == "scheduled"
                            break
    url = f"ws://127.0.0.1:{api.port}/ctrl/events?after=0"
    with trio.fail_after(5):
        async with trio_websocket.open_websocket_url(
            url, extra_headers=[(b"authorization", f"Bearer {READ_KEY}".encode())]
        ) as ws:
            assert orjson.loads(await ws.get_message())["seq"] == 1


async def test_read_key_changes_nothing(read_api: Api) -> None:
    api = read_api
    backend_id = (await api.connect("r"))["backend_id"]
    await api.wait_status(backend_id, Status.READY)
    before = await api.store.last_seq()
    auth = {"authorization": f"Bearer {READ_KEY}"}
    async with httpx.AsyncClient(base_url=api.base_url, headers=auth, timeout=10) as reader:
        for method, path, body in [
            ("POST", "/ctrl/connect", spawn_body("other")),
            ("POST", "/ctrl/connect", spawn_body("r")),
            ("POST", f"/ctrl/b/{backend_id}/soft-terminate", None),
            ("POST", f"/ctrl/b/{backend_id}/hard-terminate", None),
            ("POST", f"/ctrl/b/{backend_id}/revoke", {}),
            ("DELETE", f"/ctrl/b/{backend_id}", None),
            ("PUT", "/ctrl/nonexistent", None),
        ]:
            response = await reader.request(method, path, json=body)
            assert response.status_code == 403, (method, path)
            error = _error(response.content)
            assert error["kind"] == "ReadOnlyKey"
            assert "read-only" in error["message"]
    assert await api.store.last_seq() == before
    assert api.supervisor.states[backend_id].status is Status.READY
    assert len(api.supervisor.states) == 1


async def test_a_wrong_key_is_401_even_with_a_read_key_set(read_api: Api) -> None:
    headers = {"authorization": f"Bearer {READ_KEY}x"}
    async with httpx.AsyncClient(base_url=read_api.base_url, headers=headers) as bare:
        assert (await bare.get("/ctrl/status")).status_code == 401
        assert (await bare.post("/ctrl/connect", json=spawn_body())).status_code == 401


# ------------------------------------------------------------ 404 / 405


async def test_unknown_route_is_404_json(api: Api) -> None:
    for path in ["/", "/nope", "/pub/b", "/pub/b//status", "/ctrl/b/x/y/z"]:
        response = await api.client.get(path)
        assert response.status_code == 404, path
        assert _error(response.content)["kind"] == "NoSuchRoute"


async def test_wrong_method_is_405_with_allow(api: Api) -> None:
    response = await api.client.get("/ctrl/connect")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert _error(response.content)["kind"] == "MethodNotAllowed"
    response = await api.client.delete("/pub/b/some-id/status")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
    response = await api.client.post("/ctrl/b/some-id")
    assert response.headers["allow"] == "GET"


async def test_unknown_backend_is_404_not_found(api: Api) -> None:
    for method, path in [
        ("GET", "/pub/b/nope/status"),
        ("GET", "/pub/b/nope/status-stream"),
        ("POST", "/ctrl/b/nope/soft-terminate"),
        ("POST", "/ctrl/b/nope/hard-terminate"),
        ("POST", "/ctrl/b/nope/revoke"),
        ("GET", "/ctrl/b/nope"),
        ("GET", "/ctrl/b/nope/events"),
        ("GET", "/ctrl/b/nope/logs"),
    ]:
        response = await api.client.request(method, path)
        assert response.status_code == 404, (method, path)
        error = _error(response.content)
        assert (error["kind"], error["message"]) == ("NotFound", "no backend 'nope'")


# --------------------------------------------------------------- bodies


async def test_body_over_the_limit_is_413() -> None:
    async with open_api(max_body_bytes=1024) as api:
        big = orjson.dumps({**spawn_body("room"), "user": "x" * 2000}).decode()
        response = await api.client.post("/ctrl/connect", content=big)
        assert response.status_code == 413
        assert _error(response.content)["kind"] == "PayloadTooLarge"
        # a chunked body over the limit too
        chunks = [big[i : i + 100].encode() for i in range(0, len(big), 100)]

        async def body() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        response = await api.client.post("/ctrl/connect", content=body())
        assert response.status_code == 413
        # and the server is fine afterwards
        assert (await api.client.post("/ctrl/connect", json=spawn_body("r"))).status_code == 200


async def test_chunked_request_body_is_read(api: Api) -> None:
    raw = orjson.dumps(spawn_body("chunky"))

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(raw), 7):
            yield raw[i : i + 7]

    response = await api.client.post("/ctrl/connect", content=body())
    assert response.status_code == 200
    assert response.json()["spawned"] is True


async def test_expect_100_continue(api: Api) -> None:
    body = orjson.dumps(spawn_body("expect"))
    async with open_raw(api.port) as raw:
        await raw.send(
            h11.Request(
                method="POST",
                target="/ctrl/connect",
                headers=[
                    ("host", "x"),
                    ("authorization", f"Bearer {API_KEY}"),
                    ("content-length", str(len(body))),
                    ("expect", "100-continue"),
                ],
            )
        )
        informational = raw.conn.next_event()
        while informational is h11.NEED_DATA:
            raw.conn.receive_data(bytes(await raw.stream.receive_some(65536)))
            informational = raw.conn.next_event()
        assert isinstance(informational, h11.InformationalResponse)
        assert informational.status_code == 100
        await raw.send(h11.Data(data=body))
        await raw.send(h11.EndOfMessage())
        head, data = await raw.response()
        assert head.status_code == 200
        assert orjson.loads(data)["spawned"] is True


# ------------------------------------------------------------ keep-alive


async def test_keep_alive_serves_many_requests_on_one_connection(api: Api) -> None:
    auth = [("authorization", f"Bearer {API_KEY}")]
    async with open_raw(api.port) as raw:
        for i in range(5):
            head, body = await raw.request("GET", "/pub/health")
            assert head.status_code == 200
            assert orjson.loads(body) == {"status": "ok"}
            head, body = await raw.request(
                "POST", "/ctrl/connect", auth, orjson.dumps(spawn_body(f"k{i}"))
            )
            assert head.status_code == 200
            head, body = await raw.request("GET", "/nope")
            assert head.status_code == 404


async def test_pipelined_requests_are_answered_in_order(api: Api) -> None:
    request = b"GET /pub/health HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /pub/b/none/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    data = await raw_exchange(api.port, request * 3 + last)
    assert data.count(b"HTTP/1.1 200 ") == 3
    assert data.count(b"HTTP/1.1 404 ") == 1
    assert data.index(b"HTTP/1.1 404 ") > data.rindex(b"HTTP/1.1 200 ")


async def test_http_1_0_is_answered_and_closed(api: Api) -> None:
    data = await raw_exchange(api.port, b"GET /pub/health HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 ")
    assert data.endswith(b'{"status":"ok"}')


# ---------------------------------------------------------- bad peers


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        b"Content-Length: 5\r\nContent-Length: 6\r\n",
        b"Content-Length: 5, 6\r\n",
    ],
)
async def test_conflicting_framing_is_400_and_closes(api: Api, framing: bytes) -> None:
    """RFC 9112 §6.1: answer 400, then close; a pipelined request after it is not served."""
    first = (
        b"POST /ctrl/connect HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {API_KEY}\r\n".encode()
        + framing
        + b"\r\n0\r\n\r\n"
    )
    second = b"GET /pub/health HTTP/1.1\r\nHost: x\r\n\r\n"
    data = await raw_exchange(api.port, first + second)
    assert data.startswith(b"HTTP/1.1 400 ")
    assert data.count(b"HTTP/1.1 ") == 1  # the second request got no answer
    assert b'"ok"' not in data
    head, body = data.split(b"\r\n\r\n", 1)
    assert b"connection: close" in head.lower()
    assert _error(body)["kind"] == "BadRequest"
    assert api.supervisor.states == {}


async def test_malformed_http_is_400_json(api: Api) -> None:
    data = await raw_exchange(api.port, b"THIS IS NOT HTTP\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400 ")
    assert _error(data.split(b"\r\n\r\n", 1)[1])["kind"] == "BadRequest"


async def test_oversized_head_is_431(api: Api) -> None:
    data = await raw_exchange(
        api.port, b"GET /pub/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n"
    )
    assert data.startswith(b"HTTP/1.1 431 ")


async def test_slow_head_is_408_and_idle_connection_is_closed() -> None:
    async with open_api(header_timeout_seconds=0.2) as api:
        with trio.fail_after(3):
            data = await raw_exchange(api.port, b"GET /pub/health HTTP/1.1\r\nHost: x\r\n")
        assert data.startswith(b"HTTP/1.1 408 ")
        assert _error(data.split(b"\r\n\r\n", 1)[1])["kind"] == "RequestTimeout"
        with trio.fail_after(3):
            assert await raw_exchange(api.port, b"") == b""


async def test_slow_body_is_408() -> None:
    async with open_api(header_timeout_seconds=0.2) as api:
        head = b"POST /ctrl/connect HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
        with trio.fail_after(3):
            data = await raw_exchange(api.port, head)
        assert data.startswith(b"HTTP/1.1 408 ")


async def test_unexpected_exception_is_500_without_traceback(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    async def boom(request: object) -> object:
        raise RuntimeError("secret internals")

    api.supervisor.connect = boom  # type: ignore[assignment,method-assign]
    with caplog.at_level(logging.ERROR, logger="plane.api"):
        response = await api.client.post("/ctrl/connect", json=spawn_body("x"))
    assert response.status_code == 500
    error = _error(response.content)
    assert error["kind"] == "InternalError"
    assert "secret" not in response.text and "Traceback" not in response.text
    assert any("secret internals" in (r.exc_text or "") for r in caplog.records)
    # the server keeps serving
    assert (await api.client.get("/pub/health")).status_code == 200


async def test_client_vanishing_mid_request_does_not_hurt_the_server(api: Api) -> None:
    for data in [b"POST /ctrl/connect HTTP/1.1\r\nContent-Length: 50\r\n\r\n{", b"GE"]:
        stream = await trio.open_tcp_stream("127.0.0.1", api.port)
        await stream.send_all(data)
        await stream.aclose()
    assert (await api.client.get("/pub/health")).status_code == 200


async def test_malformed_request_target_is_400(api: Api) -> None:
    data = await raw_exchange(api.port, b"GET http://[bad/ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400 ")
    assert _error(data.split(b"\r\n\r\n", 1)[1])["kind"] == "BadRequest"


async def test_absolute_form_target_and_percent_encoded_ids(api: Api) -> None:
    backend_id = (await api.connect())["backend_id"]
    data = await raw_exchange(
        api.port,
        f"GET http://127.0.0.1/pub/b/{backend_id}/status HTTP/1.1\r\nHost: x\r\n"
        "Connection: close\r\n\r\n".encode(),
    )
    assert data.startswith(b"HTTP/1.1 200 ")
    response = await api.client.get("/pub/b/a%2Fb/status")
    assert response.status_code == 404
    error = api_error(response)
    assert (error["kind"], error["message"]) == ("NotFound", "no backend 'a/b'")


@pytest.mark.parametrize(
    "path", ["/%63trl/status", "/ctrl%2Fstatus", "/%6Detrics", "/ctrl/b/%78", "/%2Fctrl/status"]
)
async def test_percent_encoding_does_not_get_around_the_key(api: Api, path: str) -> None:
    async with httpx.AsyncClient(base_url=api.base_url) as bare:
        response = await bare.get(path)
    if path == "/%2Fctrl/status":  # decodes to "//ctrl/status": no route, nothing revealed
        assert response.json()["kind"] == "NoSuchRoute"
    else:
        assert response.status_code == 401, path
    # with the key, the decoded path reaches its route (or none)
    assert (await api.client.get(path)).status_code != 401
