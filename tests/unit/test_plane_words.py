"""The one mapping from our lifecycle to Plane's words, as a table (PLANE-WIRE.md)."""

from __future__ import annotations

import attrs
import pytest

from plane.actors import lifecycle
from plane.events.spec import BackendKey, Executable, SpawnConfig
from plane.events.types import (
    BackendReady,
    BackendRequested,
    BackendStarting,
    BackendTerminated,
    BackendTerminating,
    Event,
    ExecutorStarted,
    Status,
    TerminationEscalated,
    TerminationKind,
    TerminationReason,
)
from plane.plane_words import (
    ORDER,
    REASONS,
    PlaneReason,
    PlaneStatus,
    exit_error,
    plane_reason,
    plane_status,
    state_status,
    status_entry,
)

S, K, R = Status, TerminationKind, TerminationReason


@pytest.mark.parametrize(
    ("status", "kind", "started", "expected"),
    [
        (S.REQUESTED, None, False, "scheduled"),
        (S.STARTING, None, False, "loading"),
        (S.STARTING, None, True, "waiting"),
        (S.READY, None, True, "ready"),
        (S.IDLE, None, True, "ready"),
        (S.TERMINATING, K.SOFT, True, "terminating"),
        (S.TERMINATING, K.SOFT, False, "terminating"),
        (S.TERMINATING, K.HARD, True, "hard-terminating"),
        (S.TERMINATED, K.SOFT, True, "terminated"),
        (S.TERMINATED, None, False, "terminated"),
    ],
)
def test_status_table(
    status: Status, kind: TerminationKind | None, started: bool, expected: str
) -> None:
    assert plane_status(status, kind, started).value == expected


@pytest.mark.parametrize(
    ("ours", "plane"),
    [
        (R.IDLE, "swept"),
        (R.LIFETIME, "swept"),
        (R.EXTERNAL, "external"),
        (R.LOST, "lost"),
        (R.ORPHANED, "lost"),
        (R.START_TIMEOUT, "startuptimeout"),
        (R.EXITED, None),
        (R.SPAWN_FAILED, None),
        (None, None),
    ],
)
def test_reason_table(ours: TerminationReason | None, plane: str | None) -> None:
    mapped = plane_reason(ours)
    assert (mapped.value if mapped else None) == plane


def test_every_reason_of_ours_is_mapped_into_plane_s_enum() -> None:
    assert set(REASONS) == set(TerminationReason)
    assert {r.value for r in PlaneReason} == {
        "swept",
        "external",
        "keyexpired",
        "lost",
        "startuptimeout",
        "internalerror",
    }


@pytest.mark.parametrize(
    ("status", "reason", "code", "expected"),
    [
        (S.READY, None, None, None),
        (S.TERMINATING, R.EXTERNAL, None, None),
        (S.TERMINATED, R.EXITED, 0, False),
        (S.TERMINATED, R.EXITED, 3, True),
        (S.TERMINATED, R.EXTERNAL, 137, True),  # a kill's code, as Plane reports it
        (S.TERMINATED, R.EXTERNAL, None, False),
        (S.TERMINATED, R.SPAWN_FAILED, None, True),
    ],
)
def test_exit_error_table(
    status: Status, reason: TerminationReason | None, code: int | None, expected: bool | None
) -> None:
    assert exit_error(status, reason, code) is expected


def test_plane_order_is_plane_s() -> None:
    assert [s.value for s in sorted(ORDER, key=ORDER.__getitem__)] == [
        "scheduled",
        "loading",
        "starting",
        "waiting",
        "ready",
        "terminating",
        "hard-terminating",
        "terminated",
    ]


def _requested(at: float = 100.0) -> BackendRequested:
    return BackendRequested(at, "b1", BackendKey("k"), SpawnConfig(Executable(image="i")), 1)


def test_a_whole_lifecycle_only_moves_forward_with_the_time_of_each_status() -> None:
    events: list[Event] = [
        _requested(100.0),
        BackendStarting(101.0),
        ExecutorStarted(103.0, "127.0.0.1:1"),
        BackendReady(104.0, "127.0.0.1:1"),
        BackendTerminating(110.0, R.IDLE, K.SOFT),
        TerminationEscalated(140.0),
        BackendTerminated(141.0, R.IDLE, 137),
    ]
    state = lifecycle.initial
    seen: list[dict[str, object]] = []
    for event in events:
        state = lifecycle.evolve(state, event)
        seen.append(status_entry(state))
    assert [e["status"] for e in seen] == [
        "scheduled",
        "loading",
        "waiting",
        "ready",
        "terminating",
        "hard-terminating",
        "terminated",
    ]
    assert [e["time"] for e in seen] == [100000, 101000, 103000, 104000, 110000, 140000, 141000]
    statuses = [PlaneStatus(str(e["status"])) for e in seen]
    assert [ORDER[s] for s in statuses] == sorted(ORDER[s] for s in statuses)
    assert seen[0] == {"status": "scheduled", "time": 100000}  # absent fields omitted
    assert seen[4] == {
        "status": "terminating",
        "termination_reason": "swept",
        "termination_kind": "soft",
        "time": 110000,
    }
    assert seen[-1] == {
        "status": "terminated",
        "termination_reason": "swept",
        "termination_kind": "hard",
        "exit_error": True,
        "time": 141000,
    }


def test_an_exit_of_its_own_has_no_reason_and_says_how_it_ended() -> None:
    state = lifecycle.fold(
        [
            _requested(),
            BackendStarting(101.0),
            ExecutorStarted(102.0, "a"),
            BackendReady(103.0, "a"),
            BackendTerminated(150.0, R.EXITED, 0),
        ]
    )
    assert status_entry(state) == {"status": "terminated", "exit_error": False, "time": 150000}
    failed = attrs.evolve(state, exit_code=2)
    assert status_entry(failed)["exit_error"] is True


def test_a_state_never_requested_has_no_plane_status() -> None:
    assert state_status(lifecycle.initial) is None
