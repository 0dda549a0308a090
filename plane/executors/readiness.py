"""Readiness: a backend is ready once its port answers HTTP.

This module owns :func:`wait_until_answers`, the probe plane uses between
"the executor started it" and "ready": it sends ``GET / HTTP/1.1`` to the
backend's loopback address and returns as soon as the head of any HTTP
response arrives (any status, including 1xx, 4xx and 5xx: the server is up).
The response is parsed with h11, not by hand.

The probe asks every millisecond for the first :data:`EAGER_ATTEMPTS`
attempts (a local process is often up within a few milliseconds, and a
missed moment costs the whole next wait), then backs off, doubling up to
every *interval* seconds (10 ms by default, so it adds little to start-up).
It has no overall timeout: callers bound it with ``trio.fail_after`` or
``trio.move_on_after``.

Resource handling
-----------------
Each attempt opens one TCP connection and closes it before the next attempt
(or when the probe returns or is cancelled); nothing outlives the call.

Error handling
--------------
A refused or reset connection, a connection closed before a response head, or
bytes that are not HTTP all mean "not ready yet": the probe sleeps and tries
again.  Only a malformed *address* raises (``ValueError``), at once.  An
accepted connection whose server never answers keeps the probe waiting, which
the caller's deadline ends.
"""

from __future__ import annotations

import h11
import trio

from plane.addresses import split_host_port

__all__ = ["wait_until_answers"]

_RECEIVE_SIZE = 4096


async def _answers_once(host: str, port: int) -> bool:
    """One attempt: True if a response head came back, False if not (yet)."""
    try:
        stream = await trio.open_tcp_stream(host, port)
    except OSError:
        return False
    async with stream:
        conn = h11.Connection(our_role=h11.CLIENT)
        request = h11.Request(
            method="GET",
            target="/",
            headers=[
                ("Host", f"{host}:{port}"),
                ("User-Agent", "plane-readiness"),
                ("Connection", "close"),
            ],
        )
        try:
            data = conn.send(request)
            assert data is not None
            await stream.send_all(data)
            data = conn.send(h11.EndOfMessage())
            assert data is not None
            await stream.send_all(data)
            while True:
                event = conn.next_event()
                if isinstance(event, h11.Response | h11.InformationalResponse):
                    return True
                if event is h11.NEED_DATA:
                    chunk = await stream.receive_some(_RECEIVE_SIZE)
                    conn.receive_data(chunk)
                    if not chunk:
                        # Closed before a response head; next_event raises or
                        # reports the close, either way: not ready.
                        event = conn.next_event()
                        return isinstance(event, h11.Response | h11.InformationalResponse)
                else:
                    return False
        except (OSError, trio.BrokenResourceError, h11.ProtocolError):
            return False


EAGER_ATTEMPTS = 16
"""Attempts made 1 ms apart before the probe starts backing off."""


async def wait_until_answers(address: str, *, interval: float = 0.01) -> None:
    """Return once ``GET /`` to *address* (``"127.0.0.1:PORT"``) gets an HTTP response.

    Retries every 1 ms for :data:`EAGER_ATTEMPTS` attempts, then doubling up
    to every *interval* seconds; no overall timeout (see module docstring).
    """
    host, port = split_host_port(address)
    delay = min(0.001, interval)  # most backends answer within milliseconds: ask soon
    attempts = 0
    while True:
        if await _answers_once(host, port):
            return
        await trio.sleep(delay)
        attempts += 1
        if attempts >= EAGER_ATTEMPTS:
            delay = min(delay * 2, interval)
