"""Coalescing plain-HTTP activity into at most one event per backend per interval.

This module owns the pure rule behind ``HttpActivityRecorded``: the first
request to a backend after a quiet interval is reported at once (leading
edge, carrying the requests held since the last report plus itself); requests
within ``interval`` of the last report are counted and reported together when
the interval has passed (trailing edge).  So a backend sees at most one event
per ``interval``, and no request goes uncounted.  No I/O, no clock: every call
takes ``now``.
"""

from __future__ import annotations

_FORGET_PAST = 4096


class ActivityCoalescer:
    """Per-backend held counts and when each backend may be reported again."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._next: dict[str, float] = {}
        self._pending: dict[str, int] = {}

    def record(self, backend_id: str, now: float, count: int = 1) -> int:
        """Count ``count`` requests; returns how many to report now (0: held)."""
        allowed = self._next.get(backend_id)
        if allowed is None or now >= allowed:
            if allowed is None and len(self._next) >= _FORGET_PAST:
                self._forget_quiet(now)
            self._next[backend_id] = now + self.interval
            return self._pending.pop(backend_id, 0) + count
        pending = self._pending
        pending[backend_id] = pending.get(backend_id, 0) + count
        return 0

    def has_pending(self) -> bool:
        return bool(self._pending)

    def next_due(self) -> float | None:
        """When the earliest held count may be reported, or None if none is held."""
        if not self._pending:
            return None
        allowed = self._next
        return min(allowed[b] for b in self._pending)

    def due(self, now: float) -> list[tuple[str, int]]:
        """The held counts that may be reported at ``now``; they count as reported."""
        allowed = self._next
        ready = [(b, n) for b, n in self._pending.items() if now >= allowed[b]]
        for backend_id, _ in ready:
            del self._pending[backend_id]
            allowed[backend_id] = now + self.interval
        return ready

    def _forget_quiet(self, now: float) -> None:
        """Drop backends that may be reported again anyway (bounds the memory)."""
        quiet = [b for b, t in self._next.items() if now >= t and b not in self._pending]
        for backend_id in quiet:
            del self._next[backend_id]
