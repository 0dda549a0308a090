"""What the two drivers share about httpx: timeouts of a stream, which
transport failures certainly sent nothing, and how an async stream is closed
before its end."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx

from plane.client import core


def stream_timeout(settings: core.Settings, call: core.Call) -> httpx.Timeout:
    """The timeouts of a stream request: each read waits for the stream's idle
    limit, or less if the operation's deadline is nearer."""
    read = settings.stream_idle_timeout
    if call.deadline is not None:
        read = max(0.001, min(read, call.deadline - time.monotonic()))
    return httpx.Timeout(settings.timeout, read=read)


def unsent(exc: httpx.TransportError) -> bool:
    """Whether the request certainly never reached the server (safe to retry)."""
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.UnsupportedProtocol)


def streams(call: core.Call, status_code: int) -> bool:
    """Whether the answer to ``call`` stays open to be read (a stream that succeeded)."""
    return call.stream and 200 <= status_code < 300 and status_code != 204


async def close_stream(response: httpx.Response, chunks: AsyncIterator[Any] | None) -> None:
    """Close a streamed ``response`` that ``chunks`` (its ``aiter_text()``,
    ``aiter_lines()``...) was reading, before the end.

    Closing the outer iterator alone would leave httpx's inner async generators
    suspended, to be finalized by the garbage collector (trio warns of each).
    Once the connection is closed, reading on ends them all at once: what was
    buffered, then a read error, both ignored."""
    await response.aclose()
    if chunks is None:
        return
    with anyio.CancelScope(shield=True), contextlib.suppress(httpx.HTTPError, httpx.StreamError):
        async for _ in chunks:
            pass
