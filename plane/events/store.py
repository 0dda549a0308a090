"""The event store contract: recorded events, the store protocol, its errors.

This module owns what every store promises (the SQLite store and its in-memory
twin both pass ``tests/contract/test_store_contract.py``):

* a global, gap-free sequence number ``seq`` starting at 1;
* one stream per backend, versions 1, 2, 3... inside it;
* ``append(stream, expected_version, events)`` is atomic and succeeds only if
  the stream's current version is ``expected_version`` (0 for a new stream),
  else :class:`ConcurrencyError`;
* an append that has returned is durable;
* ``tail(after_seq)`` yields every event after ``after_seq`` in order, then
  waits (without polling) for new ones, forever.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import NamedTuple, Protocol

from plane.events.types import Event


class RecordedEvent(NamedTuple):
    """An event as stored: its place in the log.  (A named tuple: replay builds
    hundreds of thousands of them, and a tuple is the cheapest immutable record.)"""

    seq: int
    stream: str
    version: int
    event: Event


class StoreError(Exception):
    """Base of every error an event store raises; the message is for people."""


class ConcurrencyError(StoreError):
    """An append named an expected version that is no longer the stream's version."""

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        super().__init__(f"stream {stream!r} is at version {actual}, not the expected {expected}")
        self.stream = stream
        self.expected = expected
        self.actual = actual


class NotAPlaneLogError(StoreError):
    """The file exists but is not a plane event log."""


class SchemaTooNewError(StoreError):
    """The log was written by a newer plane than this one."""


class CorruptLogError(StoreError):
    """The file is damaged (not a database, or fails its integrity check)."""


class StoreFullError(StoreError):
    """The disk (or the configured page limit) is full; nothing was written.

    The store's contract on a full log (the "LogFull" error; retryable):

    * the failed append wrote nothing (its whole batch was rolled back), so
      retrying it later writes it once; an append that returned is durable;
    * the store stays open and usable: reads (``read_stream``, ``read_all``,
      ``last_seq``, ``tail``) keep working, and appends succeed again as soon
      as there is space, with no reopening (each append retries the disk);
    * the file stays sound (``PRAGMA integrity_check`` ok, ``plane-replay
      verify`` OK).  Callers (the API, the actors) should answer 503 /
      retry with a backoff rather than stop.
    """


LogFull = StoreFullError
"""The name the issue uses for :class:`StoreFullError`."""


class StoreClosedError(StoreError):
    """The store was closed; no more appends."""


class LogNotFoundError(StoreError, FileNotFoundError):
    """A log was to be read (not created) but its file does not exist."""


class EventStore(Protocol):
    """What the actors, the proxy and the API need from a log."""

    async def append(
        self, stream: str, expected_version: int, events: Sequence[Event]
    ) -> list[RecordedEvent]:
        """Append ``events`` atomically at ``expected_version``; returns them recorded."""
        ...

    async def read_stream(self, stream: str, after_version: int = 0) -> list[RecordedEvent]:
        """Events of one stream with version > ``after_version``, in order."""
        ...

    async def read_all(self, after_seq: int = 0, limit: int | None = None) -> list[RecordedEvent]:
        """Events of all streams with seq > ``after_seq``, in order."""
        ...

    async def last_seq(self) -> int:
        """The highest sequence number written (0 for an empty log)."""
        ...

    def tail(self, after_seq: int = 0) -> AsyncGenerator[RecordedEvent, None]:
        """Every event after ``after_seq``, then new ones as they land; never ends."""
        ...


def check_append(stream: str, expected_version: int, events: Sequence[Event]) -> None:
    """Refuse, with a ValueError, append arguments no store accepts."""
    if not isinstance(stream, str) or not stream:
        raise ValueError(f"stream must be a non-empty string, not {stream!r}")
    if expected_version < 0:
        raise ValueError(f"expected_version must be >= 0, not {expected_version}")
    if not events:
        raise ValueError("append needs at least one event")


def check_limit(limit: int | None) -> None:
    """Refuse, with a ValueError, a read limit no store accepts."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, not {limit}")
