"""Hostile and malformed input: answered, contained, and the proxy keeps serving."""

from __future__ import annotations

import contextlib

import pytest
import trio

from tests.rawsocket import raw_exchange, read_until_closed

from .client import HttpClient, get, parse_responses
from .conftest import Harness


@pytest.fixture
async def hostile(harness: Harness) -> tuple[Harness, str]:
    await harness.start_proxy(header_timeout=0.5, max_header_bytes=16384, max_headers=100)
    _, token = await harness.add_backend()
    return harness, token


async def still_serves(h: Harness, token: str) -> None:
    r = await get(h.port, f"/{token}/still-ok")
    assert r.status == 200 and r.json()["target"] == "/still-ok"


def only_response(raw: bytes) -> tuple[int, str, str | None]:
    (r,) = parse_responses(raw)
    return r.status, r.kind(), r.header("connection")


async def test_oversized_header_is_431(hostile: tuple[Harness, str]) -> None:
    h, token = hostile
    raw = await raw_exchange(
        h.port, f"GET /{token}/ HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * 20000}\r\n\r\n".encode()
    )
    assert only_response(raw) == (431, "RequestHeaderFieldsTooLarge", "close")
    assert not h.backend.requests
    await still_serves(h, token)


async def test_oversized_headers_in_total_are_431(hostile: tuple[Harness, str]) -> None:
    h, token = hostile
    lines = "".join(f"X-H{i}: {'b' * 900}\r\n" for i in range(20))
    raw = await raw_exchange(h.port, f"GET /{token}/ HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode())
    assert only_response(raw)[0] == 431
    assert not h.backend.requests
    await still_serves(h, token)


async def test_a_huge_header_sent_slowly_is_cut_off(hostile: tuple[Harness, str]) -> None:
    """The raw guard: bytes of an unfinished header count too (httptools would
    otherwise accumulate them)."""
    h, token = hostile
    stream = await trio.open_tcp_stream("127.0.0.1", h.port)
    async with stream:
        await stream.send_all(f"GET /{token}/ HTTP/1.1\r\nX-Endless: ".encode())
        with trio.fail_after(5):
            try:
                for _ in range(100):
                    await stream.send_all(b"z" * 65536)
            except trio.BrokenResourceError:
                pass
            received = await read_until_closed(stream)
    assert received.startswith(b"HTTP/1.1 431") or received == b""
    await still_serves(h, token)


async def test_a_long_url_is_431(hostile: tuple[Harness, str]) -> None:
    h, token = hostile
    raw = await raw_exchange(
        h.port, f"GET /{token}/{'u' * 20000} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    )
    assert only_response(raw)[0] == 431
    await still_serves(h, token)


async def test_too_many_headers_is_431(hostile: tuple[Harness, str]) -> None:
    h, token = hostile
    lines = "".join(f"X-N{i}: v\r\n" for i in range(101))
    raw = await raw_exchange(h.port, f"GET /{token}/ HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode())
    assert only_response(raw) == (431, "RequestHeaderFieldsTooLarge", "close")
    assert not h.backend.requests
    await still_serves(h, token)


async def test_exactly_max_headers_is_fine(hostile: tuple[Harness, str]) -> None:
    h, token = hostile
    headers = [(f"x-n{i}", "v") for i in range(99)]  # + host = 100
    r = await get(h.port, f"/{token}/many", headers)
    assert r.status == 200


async def test_a_slow_sender_is_closed_after_the_header_timeout(
    hostile: tuple[Harness, str],
) -> None:
    """A byte every 0.1 s never extends the 0.5 s the head has to arrive in."""
    h, token = hostile
    stream = await trio.open_tcp_stream("127.0.0.1", h.port)

    async def drip() -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while True:
                await trio.sleep(0.1)
                await stream.send_all(b"s")

    async with stream:
        start = trio.current_time()
        await stream.send_all(f"GET /{token}/ HTTP/1.1\r\nHo".encode())
        with trio.fail_after(5):  # were the deadline extended, this would fire
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drip)
                received = await read_until_closed(stream)
                nursery.cancel_scope.cancel()
        elapsed = trio.current_time() - start
    assert elapsed >= 0.4  # not before the timeout
    assert only_response(received) == (408, "RequestTimeout", "close")
    assert not h.backend.requests
    await still_serves(h, token)


async def test_a_silent_connection_is_closed_after_the_header_timeout(
    hostile: tuple[Harness, str],
) -> None:
    h, token = hostile
    stream = await trio.open_tcp_stream("127.0.0.1", h.port)
    async with stream:
        start = trio.current_time()
        with trio.fail_after(5):
            assert await stream.receive_some(4096) == b""
        assert 0.4 <= trio.current_time() - start < 2.0
    await still_serves(h, token)


async def test_content_length_with_transfer_encoding_is_400(
    hostile: tuple[Harness, str],
) -> None:
    h, token = hostile
    raw = await raw_exchange(
        h.port,
        (
            f"POST /{token}/ HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        ).encode(),
    )
    assert only_response(raw) == (400, "BadRequest", "close")
    assert not h.backend.requests
    await still_serves(h, token)


async def test_duplicate_content_lengths_are_400(hostile: tuple[Harness, str]) -> None:
    h, token = hostile
    raw = await raw_exchange(
        h.port,
        (
            f"POST /{token}/ HTTP/1.1\r\nHost: x\r\n"
            "Content-Length: 3\r\nContent-Length: 5\r\n\r\nabc"
        ).encode(),
    )
    assert only_response(raw)[0] == 400
    assert not h.backend.requests


async def test_a_bad_chunk_is_400(hostile: tuple[Harness, str]) -> None:
    h, token = hostile
    raw = await raw_exchange(
        h.port,
        (
            f"POST /{token}/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            "zz\r\nabc\r\n0\r\n\r\n"
        ).encode(),
    )
    assert only_response(raw) == (400, "BadRequest", "close")
    assert not h.backend.requests  # head and bad chunk arrived together: nothing forwarded
    await still_serves(h, token)


async def test_a_bad_chunk_mid_stream_is_400_and_the_upstream_dropped(
    hostile: tuple[Harness, str],
) -> None:
    h, token = hostile
    stream = await trio.open_tcp_stream("127.0.0.1", h.port)
    received = b""
    async with stream:
        await stream.send_all(
            f"POST /{token}/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            "5\r\nhello\r\n".encode()
        )
        with trio.fail_after(5):
            await h.backend.first_body.wait()
        await stream.send_all(b"not-hex\r\n")
        with trio.fail_after(5):
            while chunk := await stream.receive_some(4096):
                received += chunk
    assert only_response(received) == (400, "BadRequest", "close")
    await still_serves(h, token)


@pytest.mark.parametrize(
    "line",
    [
        b"GARBAGE\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),  # a TLS hello
        b"GET /x HTTP/1.1\r\nBad Header: v\r\n\r\n",
        b"GET /x HTTP/1.1\r\nX-Nul: a\x00b\r\n\r\n",
    ],
    ids=["garbage", "no-target", "bad-version", "tls", "space-in-name", "nul-in-value"],
)
async def test_an_invalid_request_is_400_and_closed(
    hostile: tuple[Harness, str], line: bytes
) -> None:
    h, token = hostile
    raw = await raw_exchange(h.port, line)
    assert only_response(raw) == (400, "BadRequest", "close")
    assert not h.backend.requests
    await still_serves(h, token)


async def test_a_bad_request_after_a_good_one_on_the_same_connection(
    hostile: tuple[Harness, str],
) -> None:
    h, token = hostile
    raw = await raw_exchange(
        h.port,
        f"GET /{token}/good HTTP/1.1\r\nHost: x\r\n\r\nBROKEN REQUEST\r\n\r\n".encode(),
    )
    first, second = parse_responses(raw)
    assert first.status == 200 and first.json()["target"] == "/good"
    assert second.status == 400
    assert [s.target for s in h.backend.requests] == ["/good"]


async def test_the_connection_cap_answers_503(harness: Harness) -> None:
    h = harness
    await h.start_proxy(max_connections=2)
    _, token = await h.add_backend()
    first = await HttpClient.connect(h.port)
    second = await HttpClient.connect(h.port)
    assert (await first.request("GET", f"/{token}/1")).status == 200
    assert (await second.request("GET", f"/{token}/2")).status == 200
    raw = await raw_exchange(h.port, f"GET /{token}/3 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert only_response(raw) == (503, "ProxyOverloaded", "close")
    # The held connections still work, and a slot frees up when one closes.
    assert (await first.request("GET", f"/{token}/1b")).status == 200
    await second.aclose()
    with trio.fail_after(5):
        while True:
            r = await get(h.port, f"/{token}/4")
            if r.status == 200:
                break
            await trio.sleep(0.01)
    await first.aclose()
    assert "/3" not in [s.target for s in h.backend.requests]


async def test_many_hostile_connections_at_once_do_not_stop_service(
    hostile: tuple[Harness, str],
) -> None:
    h, token = hostile
    payloads = [
        b"GARBAGE\r\n\r\n",
        f"GET /{token}/ HTTP/1.1\r\nX-Big: {'a' * 20000}\r\n\r\n".encode(),
        (
            f"POST /{token}/ HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ).encode(),
        f"GET /{token}/ HTTP/1.1\r\nHo".encode(),  # slow: times out
    ]

    async def attack(payload: bytes) -> None:
        await raw_exchange(h.port, payload)

    async with trio.open_nursery() as nursery:
        for i in range(40):
            nursery.start_soon(attack, payloads[i % len(payloads)])
        await still_serves(h, token)
    assert [s.target for s in h.backend.requests] == ["/still-ok"]
