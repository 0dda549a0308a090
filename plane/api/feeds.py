"""The API's event feeds, independent of how they are carried (SSE or WebSocket).

This module owns two things read from the log:

* **a backend's status changes**: its stream folded event by event; each
  event after which the backend's *Plane* status
  (:func:`plane.plane_words.state_status`) differs from before it is a
  :class:`StatusChange` carrying that status (the SSE ``id``), the event's
  stream **version** (for a numeric ``Last-Event-ID``) and Plane's status
  JSON of the state after it.  ``ready`` <-> ``idle`` is no change.  History comes from
  ``read_stream``; what follows comes from ``tail`` starting at the global
  sequence number read *before* the history, filtered to the backend and to
  versions past the history, so nothing is lost between the two and nothing
  is sent twice.  The feed ends after ``terminated``.
* **the global log** from any sequence number (:func:`global_events`), as JSON
  objects ``{"seq", "stream", "version", "type", "data"}``.

Event payloads shown by the API are redacted by :func:`plane.redact.redact`
(secrets never leave through list, inspect or event endpoints; the log file
itself keeps them for replay).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import attrs
import trio

from plane.actors import lifecycle
from plane.actors.lifecycle import BackendState
from plane.events import wire
from plane.events.store import EventStore, RecordedEvent
from plane.plane_words import ORDER, PlaneStatus, state_status
from plane.redact import redact
from plane.views import status_view


def event_json(record: RecordedEvent) -> dict[str, Any]:
    """A recorded event as the API shows it (redacted, see the module docstring)."""
    data = redact(wire.unstructure(record.event))
    return {
        "seq": record.seq,
        "stream": record.stream,
        "version": record.version,
        "type": wire.tag_of(record.event),
        "data": data,
    }


@attrs.frozen
class StatusChange:
    version: int
    status: PlaneStatus
    view: dict[str, Any]
    terminal: bool


@attrs.frozen
class StatusHistory:
    """A backend's status changes so far, and where to tail from for the rest."""

    backend_id: str
    changes: list[StatusChange]
    state: BackendState
    tail_from_seq: int

    @property
    def ended(self) -> bool:
        return lifecycle.is_terminal(self.state)


def _changes(
    records: list[RecordedEvent], state: BackendState
) -> tuple[list[StatusChange], BackendState]:
    changes: list[StatusChange] = []
    for record in records:
        before = state_status(state)
        state = lifecycle.evolve(state, record.event)
        after = state_status(state)
        if after is not None and after is not before:
            changes.append(
                StatusChange(
                    record.version, after, status_view(state), lifecycle.is_terminal(state)
                )
            )
    return changes, state


async def status_history(store: EventStore, backend_id: str) -> StatusHistory | None:
    """The backend's status changes recorded so far; None if its stream is empty."""
    seq = await store.last_seq()
    records = await store.read_stream(backend_id)
    if not records:
        return None
    changes, state = _changes(records, lifecycle.initial)
    return StatusHistory(backend_id, changes, state, seq)


@attrs.frozen
class Resume:
    """Where a status stream resumes: after a stream ``version`` (ours, a numeric
    ``Last-Event-ID``) or after a Plane ``status`` (Plane's ``Last-Event-ID``:
    every status up to and including it is skipped)."""

    version: int = 0
    status: PlaneStatus | None = None

    def wants(self, change: StatusChange) -> bool:
        if self.status is not None:
            return ORDER[change.status] > ORDER[self.status]
        return change.version > self.version


async def follow_status(
    store: EventStore,
    history: StatusHistory,
    resume: Resume,
    send: trio.MemorySendChannel[StatusChange],
) -> None:
    """Send every status change ``resume`` wants: history, then live.

    Returns (closing ``send``) once the backend is terminated.
    """
    async with send:
        for change in history.changes:
            if resume.wants(change):
                await send.send(change)
        if history.ended:
            return
        state = history.state
        tail = store.tail(history.tail_from_seq)
        try:
            async for record in tail:
                if record.stream != history.backend_id or record.version <= state.version:
                    continue
                changes, state = _changes([record], state)
                for change in changes:
                    if resume.wants(change):
                        await send.send(change)
                if lifecycle.is_terminal(state):
                    return
        finally:
            await aclose_iterator(tail)


async def global_events(
    store: EventStore,
    after_seq: int,
    send: trio.MemorySendChannel[dict[str, Any]],
    *,
    follow: bool = True,
    batch: int = 500,
) -> None:
    """Send every event with seq > ``after_seq`` as :func:`event_json`.

    With ``follow``, keeps sending new events forever; without, returns (closing
    ``send``) once it has sent what the log held when it was called.
    """
    async with send:
        if not follow:
            last = await store.last_seq()
            while after_seq < last:
                records = await store.read_all(after_seq, batch)
                if not records:
                    return
                for record in records:
                    if record.seq > last:
                        return
                    await send.send(event_json(record))
                    after_seq = record.seq
            return
        tail = store.tail(after_seq)
        try:
            async for record in tail:
                await send.send(event_json(record))
        finally:
            await aclose_iterator(tail)


async def aclose_iterator(iterator: AsyncIterator[Any]) -> None:
    """Close an async generator promptly (a plain iterator needs nothing)."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        with trio.move_on_after(1.0) as scope:
            scope.shield = True
            await aclose()
