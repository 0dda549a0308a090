"""Large bodies stream both ways through the proxy, never held whole.

Each test proves streaming by a handshake the proxy could not complete if it
buffered: the backend must see the first bytes of an upload before the client
sends the rest, and the client must see the first bytes of a download before
the backend sends the rest.
"""

from __future__ import annotations

import hashlib

import pytest
import trio

from .backend import PATTERN
from .client import HttpClient
from .conftest import Harness

SIZE = 50 * 1024 * 1024
MiB = 1024 * 1024


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "sized"])
async def test_50_mib_upload_streams(proxied: Harness, chunked: bool) -> None:
    h = proxied
    _, token = await h.add_backend()
    piece = bytes(range(256)) * 4096  # 1 MiB
    digest = hashlib.sha256()
    async with await HttpClient.connect(h.port) as client:
        await client.start(
            "POST", f"/{token}/upload", length=None if chunked else SIZE, chunked=chunked
        )
        await client.send(piece)
        digest.update(piece)
        with trio.fail_after(10):
            await h.backend.first_body.wait()  # before 49 MiB more are even sent
        for _ in range(SIZE // len(piece) - 1):
            await client.send(piece)
            digest.update(piece)
        await client.end()
        with trio.fail_after(30):
            r = await client.finish(await client.head())
    assert r.status == 200
    echo = r.json()
    assert echo["body_len"] == SIZE
    assert echo["body_sha256"] == digest.hexdigest()


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "sized"])
async def test_50_mib_download_streams(proxied: Harness, chunked: bool) -> None:
    h = proxied
    _, token = await h.add_backend()
    flag = "1" if chunked else "0"
    digest = hashlib.sha256()
    expected = hashlib.sha256()
    received = 0
    async with await HttpClient.connect(h.port) as client:
        await client.start("GET", f"/{token}/download?size={SIZE}&chunked={flag}&gate=1")
        await client.end()
        with trio.fail_after(30):
            head = await client.head()
            assert head.status == 200
            if chunked:
                assert head.header("transfer-encoding") == "chunked"
            else:
                assert head.header("content-length") == str(SIZE)
            async for data in client.chunks():
                if received == 0:
                    # The backend sent one 64 KiB write and waits for this gate.
                    h.backend.gate.set()
                received += len(data)
                digest.update(data)
    sent = 0
    while sent < SIZE:
        n = min(len(PATTERN), SIZE - sent)
        expected.update(PATTERN[:n])
        sent += n
    assert received == SIZE
    assert digest.hexdigest() == expected.hexdigest()
    assert h.backend.gate.is_set()


async def test_a_slow_reader_slows_the_backend(proxied: Harness) -> None:
    """Backpressure: with a client that does not read, the proxy stops reading
    from the backend after a bounded amount (socket buffers plus one buffer)."""
    h = proxied
    _, token = await h.add_backend()
    async with await HttpClient.connect(h.port) as client:
        await client.start("GET", f"/{token}/download?size={SIZE}")
        await client.end()
        await trio.sleep(0.5)  # the client reads nothing meanwhile
        stalled_at = h.backend.download_sent
        await trio.sleep(0.2)
        assert h.backend.download_sent == stalled_at  # the backend is blocked
        print(f"backend blocked after {stalled_at / MiB:.1f} MiB")
        assert stalled_at < 24 * MiB  # kernel buffers both sides + one proxy buffer
        head = await client.head()
        assert head.status == 200
        received = 0
        async for data in client.chunks():
            received += len(data)
            if received >= 4 * MiB:
                break
    assert received >= 4 * MiB


async def test_a_client_leaving_mid_upload_is_contained(proxied: Harness) -> None:
    h = proxied
    _, token = await h.add_backend()
    stream = await trio.open_tcp_stream("127.0.0.1", h.port)
    await stream.send_all(
        f"POST /{token}/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {SIZE}\r\n\r\n".encode()
    )
    await stream.send_all(b"x" * MiB)
    with trio.fail_after(5):
        await h.backend.first_body.wait()
    await stream.aclose()
    await trio.sleep(0.1)
    async with await HttpClient.connect(h.port) as client:
        assert (await client.request("GET", f"/{token}/after")).status == 200


async def test_a_client_leaving_mid_download_is_contained(proxied: Harness) -> None:
    h = proxied
    _, token = await h.add_backend()
    async with await HttpClient.connect(h.port) as client:
        await client.start("GET", f"/{token}/download?size={SIZE}")
        await client.end()
        await client.head()
        async for _ in client.chunks():
            break
    await trio.sleep(0.2)
    async with await HttpClient.connect(h.port) as client:
        assert (await client.request("GET", f"/{token}/after")).status == 200
