"""wait_until_answers against small trio servers on loopback."""

from __future__ import annotations

import socket

import pytest
import trio

from plane.executors.readiness import wait_until_answers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def serve(
    port: int,
    reply: bytes | None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept connections; read the request head; send *reply* (None: close at once)."""

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            if reply is None:
                return
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                data += chunk
            assert data.startswith(b"GET / HTTP/1.1\r\n")
            await stream.send_all(reply)

    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    task_status.started()
    await trio.serve_listeners(handle, listeners)


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 503 Service Unavailable\r\n\r\n",
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    ],
)
async def test_any_http_status_means_ready(reply: bytes) -> None:
    port = free_port()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve, port, reply)
        with trio.fail_after(5):
            await wait_until_answers(f"127.0.0.1:{port}")
        nursery.cancel_scope.cancel()


async def test_waits_while_refused_then_returns_once_a_server_answers() -> None:
    port = free_port()
    done = trio.Event()

    async def probe() -> None:
        await wait_until_answers(f"127.0.0.1:{port}", interval=0.005)
        done.set()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe)
            await trio.sleep(0.1)
            assert not done.is_set()  # connection refused so far
            await nursery.start(serve, port, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await done.wait()
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("reply", [None, b"garbage, not http\r\n\r\n"])
async def test_closed_or_non_http_answers_are_not_ready(reply: bytes | None) -> None:
    port = free_port()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve, port, reply)
        with trio.move_on_after(0.2) as scope:
            await wait_until_answers(f"127.0.0.1:{port}")
        assert scope.cancelled_caught
        nursery.cancel_scope.cancel()
