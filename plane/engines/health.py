"""Engine health: the pure decision "lost" or "returned".

The shell (:class:`~plane.actors.supervisor.Supervisor`) pings each engine every
``ping_interval`` seconds and watches its event stream; it reports each answer
and each failure with its time to :class:`Health`, which says when the engine
is lost (no answer for ``lost_after`` seconds) and when it has returned (an
answer after it was lost).  A short silence changes nothing.  No clock is read
here: every call takes ``now``.
"""

from __future__ import annotations

import enum

import attrs

DEFAULT_LOST_AFTER = 30.0
PING_INTERVAL = 2.0


class Verdict(enum.Enum):
    LOST = "lost"
    RETURNED = "returned"


@attrs.define
class Health:
    """One engine's health.  ``last_answer`` is when it last answered (None: not
    since plane started; ``since`` then counts as the last answer)."""

    since: float
    lost: bool = False
    lost_after: float = DEFAULT_LOST_AFTER
    last_answer: float | None = None

    def answered(self, now: float) -> Verdict | None:
        """The engine answered at ``now``; RETURNED if it was lost."""
        self.last_answer = now
        if self.lost:
            self.lost = False
            return Verdict.RETURNED
        return None

    def silent(self, now: float) -> Verdict | None:
        """The engine failed to answer at ``now``; LOST once silent for ``lost_after``."""
        if self.lost:
            return None
        if now - self.deadline_base >= self.lost_after:
            self.lost = True
            return Verdict.LOST
        return None

    @property
    def deadline_base(self) -> float:
        return self.last_answer if self.last_answer is not None else self.since

    def lost_at(self) -> float:
        """When the engine will be lost if it stays silent."""
        return self.deadline_base + self.lost_after
