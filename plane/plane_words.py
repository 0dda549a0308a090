"""Our lifecycle in Plane's words: the one pure mapping at the edge.

This module owns how a backend's state is said on Plane's endpoints
(``POST /ctrl/connect``, ``GET /pub/b/{id}/status`` and ``status-stream``):
Plane's ``status``, ``termination_reason``, ``termination_kind`` and
``exit_error`` (``../shared/PLANE-WIRE.md``).  It does no I/O and reads no
clock; :mod:`plane.views` and the status feed call it, nothing else decides
Plane's words.

Statuses (Plane's order; a backend only moves forward through it):

=====================================================  ====================
ours                                                   Plane ``status``
=====================================================  ====================
requested                                              ``scheduled``
starting, the executor has not reported it running     ``loading``
starting, running, readiness being probed              ``waiting``
ready, idle                                            ``ready``
terminating, soft                                      ``terminating``
terminating, hard (or a soft stop escalated)           ``hard-terminating``
terminated                                             ``terminated``
a warm pool's backend before its claim                 none: never shown
=====================================================  ====================

A warm pool's unclaimed backend does not exist for Plane: :func:`state_status`
is None for it, so Plane's endpoints answer 404 for it and a claimed one's
status stream begins at its claim, ``ready``.

Plane's drone says ``loading`` while it pulls the image and ``starting``
while Docker creates the container; our executors report one fact (the
backend runs at an address) after both, so the whole start before it is
``loading`` and ``starting`` is never sent.  A client that waits for
``ready`` or ``terminated`` (every client written for Plane) sees the same.

Reasons (Plane's ``termination_reason``):

==================================  ========================================
our reason                          Plane's
==================================  ========================================
idle, lifetime                      ``swept``
external (API, CLI)                 ``external``
lost, orphaned                      ``lost``
startuptimeout                      ``startuptimeout``
exited (the backend ended itself)   absent; ``exit_error`` says how
spawnfailed (image missing...)      absent, as Plane does
==================================  ========================================

``internalerror`` and ``keyexpired`` are Plane's; no reason of ours maps to
them today.  ``termination_kind`` is the kind of the stop plane decided on
(absent when the backend ended without one).  ``exit_error`` is present once
terminated: true when the exit code is known and not 0 (a kill's 137 too, as
in Plane), and true for a spawn that failed (the backend never ran).
"""

from __future__ import annotations

import enum
from typing import Any

from plane.actors.lifecycle import BackendState
from plane.events.types import Status, TerminationKind, TerminationReason


class PlaneStatus(enum.StrEnum):
    """Plane's ``BackendStatus``, in Plane's order."""

    SCHEDULED = "scheduled"
    LOADING = "loading"
    STARTING = "starting"
    WAITING = "waiting"
    READY = "ready"
    TERMINATING = "terminating"
    HARD_TERMINATING = "hard-terminating"
    TERMINATED = "terminated"


class PlaneReason(enum.StrEnum):
    """Plane's ``TerminationReason``."""

    SWEPT = "swept"
    EXTERNAL = "external"
    KEY_EXPIRED = "keyexpired"
    LOST = "lost"
    STARTUP_TIMEOUT = "startuptimeout"
    INTERNAL_ERROR = "internalerror"


ORDER: dict[PlaneStatus, int] = {status: i for i, status in enumerate(PlaneStatus)}
"""Each status's place in Plane's forward-only sequence."""

REASONS: dict[TerminationReason, PlaneReason | None] = {
    TerminationReason.IDLE: PlaneReason.SWEPT,
    TerminationReason.LIFETIME: PlaneReason.SWEPT,
    TerminationReason.EXTERNAL: PlaneReason.EXTERNAL,
    TerminationReason.LOST: PlaneReason.LOST,
    TerminationReason.ORPHANED: PlaneReason.LOST,
    TerminationReason.START_TIMEOUT: PlaneReason.STARTUP_TIMEOUT,
    TerminationReason.EXITED: None,
    TerminationReason.SPAWN_FAILED: None,
}
"""Our reason -> Plane's (None: Plane sends none)."""


def plane_status(
    status: Status, kind: TerminationKind | None, executor_started: bool
) -> PlaneStatus:
    """Plane's status for our ``status``; see the module's table."""
    match status:
        case Status.REQUESTED:
            return PlaneStatus.SCHEDULED
        case Status.STARTING:
            return PlaneStatus.WAITING if executor_started else PlaneStatus.LOADING
        case Status.READY | Status.IDLE | Status.WARM:  # warm: never shown (state_status)
            return PlaneStatus.READY
        case Status.TERMINATING:
            if kind is TerminationKind.HARD:
                return PlaneStatus.HARD_TERMINATING
            return PlaneStatus.TERMINATING
        case Status.TERMINATED:
            return PlaneStatus.TERMINATED


def plane_reason(reason: TerminationReason | None) -> PlaneReason | None:
    return REASONS[reason] if reason is not None else None


def exit_error(
    status: Status, reason: TerminationReason | None, exit_code: int | None
) -> bool | None:
    """Plane's ``exit_error``: None until terminated, then whether it ended in error."""
    if status is not Status.TERMINATED:
        return None
    if reason is TerminationReason.SPAWN_FAILED:
        return True
    return exit_code is not None and exit_code != 0


def state_status(state: BackendState) -> PlaneStatus | None:
    """Plane's status of a backend state (None before it is requested, and for a
    warm pool's backend nobody has claimed: Plane's endpoints never show it)."""
    if state.status is None or state.unclaimed:
        return None
    return plane_status(state.status, state.termination_kind, state.started_at is not None)


def status_time(state: BackendState) -> float:
    """When the backend entered its current Plane status (seconds since the epoch)."""
    status = state_status(state)
    if status is PlaneStatus.WAITING and state.started_at is not None:
        return state.started_at
    if status is PlaneStatus.READY and state.ready_at is not None:
        return state.ready_at
    if status is PlaneStatus.HARD_TERMINATING and state.killed_at is not None:
        return state.killed_at
    return state.status_at


def millis(seconds: float) -> int:
    return round(seconds * 1000)


def status_entry(state: BackendState) -> dict[str, Any]:
    """Plane's ``BackendStatusStreamEntry`` of a (requested) backend; absent
    optional fields are omitted, as Plane's serde omits them."""
    assert state.status is not None, "a backend never requested has no status"
    status = state_status(state)
    assert status is not None
    entry: dict[str, Any] = {"status": status.value}
    ending = state.status in (Status.TERMINATING, Status.TERMINATED)
    if ending:
        reason = plane_reason(state.termination_reason)
        if reason is not None:
            entry["termination_reason"] = reason.value
        if state.termination_kind is not None:
            entry["termination_kind"] = state.termination_kind.value
    error = exit_error(state.status, state.termination_reason, state.exit_code)
    if error is not None:
        entry["exit_error"] = error
    entry["time"] = millis(status_time(state))
    return entry
