"""Server-sent events: the framing, and serving a stream of events with keep-alives.

This module owns the ``text/event-stream`` format (one ``id:`` line when the
event has one, one ``data:`` line per line of its JSON, a blank line) and
:func:`serve_events`, which runs a source task that produces events into a memory
channel and writes them to the client as they come, writing a ``: keep-alive``
comment whenever ``keepalive`` seconds pass without one.  A comment is not an
event: ``EventSource`` ignores it, but it keeps proxies from closing an idle
connection and lets the server notice a client that has gone.

Resource handling
-----------------
The source runs in :func:`serve_events`'s own nursery; when the source returns (and
closes its channel) serve_events returns, and when it is cancelled (the
client left) the source is cancelled with it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
import trio

from plane.api.http import Send

CONTENT_TYPE = "text/event-stream; charset=utf-8"
HEADERS: tuple[tuple[str, str], ...] = (
    ("content-type", CONTENT_TYPE),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
)
KEEPALIVE = b": keep-alive\n\n"

T = TypeVar("T")


def frame(data: Any, *, event_id: int | str | None = None, event: str | None = None) -> bytes:
    """One SSE event whose data is ``data`` as compact JSON."""
    lines: list[str] = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event is not None:
        lines.append(f"event: {event}")
    text = orjson.dumps(data).decode()
    lines += [f"data: {line}" for line in text.split("\n")]
    return ("\n".join(lines) + "\n\n").encode()


async def serve_events(
    send: Send,
    source: Callable[[trio.MemorySendChannel[T]], Awaitable[None]],
    render: Callable[[T], bytes],
    *,
    keepalive: float,
    buffer: int = 64,
) -> None:
    """Write what ``source`` produces (rendered by ``render``), with keep-alives between.

    ``source`` must close the channel it is given when it is done.
    """
    send_channel, receive_channel = trio.open_memory_channel[T](buffer)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(source, send_channel)
        async with receive_channel:
            while True:
                chunk = KEEPALIVE
                with trio.move_on_after(keepalive):
                    try:
                        item = await receive_channel.receive()
                    except trio.EndOfChannel:
                        return
                    chunk = render(item)
                await send(chunk)
