"""The in-memory tail cache: the latest events the store committed, for tails that caught up.

This module owns one speed trick, **tails read new events from memory**: every
commit's records (already built for the appenders) are kept in a short list,
contiguous in ``seq``.  A :meth:`~plane.events.sqlite.store.SqliteEventStore.tail`
whose cursor falls inside the list takes what follows it from here, so
following the log (the proxy's routing table, every status stream) costs no
file read and no decoding per commit.  A tail that is behind the list reads
the file, as before.

The list never has a gap: when a commit's first ``seq`` does not follow the
last kept one (another process wrote in between), the list is emptied first,
so a row written by someone else is never hidden from a tail.  It holds
between :data:`RECENT_LIMIT` and twice that many events (trimmed in one slice,
not per commit).  Used from the trio thread only.
"""

from __future__ import annotations

from plane.events.store import RecordedEvent

__all__ = ["RECENT_LIMIT", "TailCache"]

RECENT_LIMIT = 4096
"""Events kept at least (once that many were committed); at most twice as many."""


class TailCache:
    """The latest committed events, contiguous in ``seq``."""

    __slots__ = ("_recent",)

    def __init__(self) -> None:
        self._recent: list[RecordedEvent] = []

    def add(self, records: list[RecordedEvent]) -> None:
        """Keep one append's records (consecutive ``seq``), in commit order."""
        recent = self._recent
        if recent and recent[-1].seq + 1 != records[0].seq:
            recent.clear()  # another process wrote in between: keep no gap
        recent += records

    def trim(self) -> None:
        """Forget the oldest events once more than twice :data:`RECENT_LIMIT` are kept
        (called once per commit, not per append)."""
        recent = self._recent
        if len(recent) > 2 * RECENT_LIMIT:
            del recent[: len(recent) - RECENT_LIMIT]

    def after(self, cursor: int) -> list[RecordedEvent] | None:
        """Every kept event with ``seq > cursor`` (a copy; maybe empty), or None if
        the cache does not reach back to ``cursor + 1`` (read the file then)."""
        recent = self._recent
        if recent and recent[0].seq <= cursor + 1:
            return recent[cursor + 1 - recent[0].seq :]
        return None
