"""The key invariant read back from a log: never two non-terminated backends of one key.

This module owns the log-side check shared by the key tests and the simulator:
:class:`KeyHolds` folds recorded events one by one (so the simulator can check
after every step without re-reading the log) and :func:`overlaps` runs it over
a whole log.
"""

from __future__ import annotations

from collections.abc import Iterable

from plane.events.store import RecordedEvent
from plane.events.types import BackendRequested, BackendTerminated


class KeyHolds:
    """Which backends hold each key (namespace, name), fed in log order."""

    def __init__(self) -> None:
        self.holders: dict[tuple[str, str], set[str]] = {}
        self._key_of: dict[str, tuple[str, str]] = {}

    def feed(self, record: RecordedEvent) -> str | None:
        """Fold one record; a description of the overlap it creates, if any."""
        event = record.event
        if isinstance(event, BackendRequested):
            slot = event.key.slot()
            self._key_of[record.stream] = slot
            held = self.holders.setdefault(slot, set())
            held.add(record.stream)
            if len(held) > 1:
                return f"seq {record.seq}: key {slot} held by {sorted(held)}"
        elif isinstance(event, BackendTerminated):
            ended = self._key_of.get(record.stream)
            if ended is not None:
                self.holders[ended].discard(record.stream)
        return None


def overlaps(records: Iterable[RecordedEvent]) -> list[str]:
    """Every point of the log (by seq) where one key had two non-terminated backends."""
    holds = KeyHolds()
    return [found for record in records if (found := holds.feed(record)) is not None]
