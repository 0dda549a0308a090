"""What the two drivers share about httpx: timeouts of a stream, and which
transport failures certainly sent nothing."""

from __future__ import annotations

import time

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
