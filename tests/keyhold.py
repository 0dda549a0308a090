"""The key invariant read back from a log: never two non-terminated backends of one key."""

from __future__ import annotations

from collections.abc import Iterable

from plane.events.store import RecordedEvent
from plane.events.types import BackendRequested, BackendTerminated


def overlaps(records: Iterable[RecordedEvent]) -> list[str]:
    """Every point of the log (by seq) where one key had two non-terminated backends."""
    holders: dict[tuple[str, str], set[str]] = {}
    key_of: dict[str, tuple[str, str]] = {}
    found = []
    for record in records:
        event = record.event
        if isinstance(event, BackendRequested):
            slot = event.key.slot()
            key_of[record.stream] = slot
            held = holders.setdefault(slot, set())
            held.add(record.stream)
            if len(held) > 1:
                found.append(f"seq {record.seq}: key {slot} held by {sorted(held)}")
        elif isinstance(event, BackendTerminated):
            holders[key_of[record.stream]].discard(record.stream)
    return found
