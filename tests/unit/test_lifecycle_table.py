"""The transition table is the lifecycle: ``evolve`` and ``decide`` do what
``TRANSITIONS`` says in every (event type, status) pair, and nothing else.

Also here: a change naming a field ``BackendState`` does not have raises, and
``docs/lifecycle.md`` is what the table generates.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, cast

import attrs
import pytest

from plane.actors import diagram
from plane.actors.lifecycle import (
    TRANSITIONS,
    AnyStatus,
    BackendState,
    Command,
    IllegalTransition,
    StateChanges,
    Tick,
    decide,
    evolve,
    fold,
    initial,
)
from plane.events import types as ev
from plane.events.spec import BackendKey, Executable, SpawnConfig
from tests.unit.lifecycle_steps import ADDRESS, T0, run

REPO = Path(__file__).resolve().parents[2]
AT = T0 + 50
CONFIG = SpawnConfig(Executable(image="example/echo:1"), max_idle_seconds=60.0)
KEY = BackendKey("doc-1")
REQUEST = ev.BackendRequested(T0, "b-1", KEY, CONFIG, 3)
WARM_REQUEST = ev.WarmBackendRequested(T0, "b-w", "pool-1", CONFIG)
CLAIM = ev.BackendClaimed(AT, BackendKey("doc-w"), 7, "e" * 64, AT + 60)

EXAMPLES: dict[type, ev.Event] = {
    # inputs
    ev.BackendRequested: attrs.evolve(REQUEST, at=AT),
    ev.WarmBackendRequested: attrs.evolve(WARM_REQUEST, at=AT),
    ev.BackendClaimed: CLAIM,
    ev.ExecutorStarted: ev.ExecutorStarted(AT, ADDRESS, "h-2"),
    ev.ReadinessObserved: ev.ReadinessObserved(AT),
    ev.SpawnFailed: ev.SpawnFailed(AT, "no such image"),
    ev.ExecutorExited: ev.ExecutorExited(AT, 3),
    ev.ExecutorVanished: ev.ExecutorVanished(AT, "gone"),
    ev.ConnectionOpened: ev.ConnectionOpened(AT, "c9"),
    ev.ConnectionClosed: ev.ConnectionClosed(AT, "c1"),
    ev.HttpActivityRecorded: ev.HttpActivityRecorded(AT, 2),
    ev.TerminationRequested: ev.TerminationRequested(AT, ev.TerminationKind.HARD),
    ev.TokenIssued: ev.TokenIssued(AT, "f" * 64, AT + 60, "s3cret"),
    ev.TokenRevoked: ev.TokenRevoked(AT, None),
    # decisions
    ev.BackendStarting: ev.BackendStarting(AT),
    ev.BackendWarmed: ev.BackendWarmed(AT, ADDRESS),
    ev.BackendReady: ev.BackendReady(AT, ADDRESS),
    ev.BackendIdle: ev.BackendIdle(AT),
    ev.BackendActive: ev.BackendActive(AT),
    ev.BackendTerminating: ev.BackendTerminating(
        AT, ev.TerminationReason.IDLE, ev.TerminationKind.SOFT
    ),
    ev.TerminationEscalated: ev.TerminationEscalated(AT),
    ev.BackendTerminated: ev.BackendTerminated(AT, ev.TerminationReason.LOST),
    # the system stream's
    ev.OrphanRemoved: ev.OrphanRemoved(AT, "b-9", "h-9"),
    ev.HistoryArchived: ev.HistoryArchived(AT, AT - 1, ("b-8",), ()),
    ev.EngineRegistered: ev.EngineRegistered(AT, "e1", "unix:///var/run/docker.sock"),
    ev.EngineDrained: ev.EngineDrained(AT, "e1"),
    ev.EngineUndrained: ev.EngineUndrained(AT, "e1"),
    ev.EngineLost: ev.EngineLost(AT, "e1"),
    ev.EngineReturned: ev.EngineReturned(AT, "e1"),
    ev.WarmPoolDefined: ev.WarmPoolDefined(AT, "pool-1", CONFIG, 2),
    ev.WarmPoolResized: ev.WarmPoolResized(AT, "pool-1", 3),
    ev.WarmPoolRemoved: ev.WarmPoolRemoved(AT, "pool-1"),
}


def _run(state: BackendState, *commands: Command) -> BackendState:
    return run(state, *commands)[0]


def _states() -> dict[AnyStatus, BackendState]:
    """A backend in each status (None: nothing requested), each reached through
    the decider, the ready one with connection ``c1`` open."""
    starting = _run(initial, REQUEST, Tick(T0))
    ready = _run(starting, ev.ExecutorStarted(T0 + 1, ADDRESS), ev.ReadinessObserved(T0 + 2))
    connected = _run(ready, ev.ConnectionOpened(T0 + 3, "c1"))
    warm = _run(initial, WARM_REQUEST, Tick(T0), ev.ExecutorStarted(T0 + 1, ADDRESS))
    states: dict[AnyStatus, BackendState] = {
        None: initial,
        ev.Status.REQUESTED: _run(initial, REQUEST),
        ev.Status.STARTING: starting,
        ev.Status.READY: connected,
        ev.Status.WARM: _run(warm, ev.ReadinessObserved(T0 + 2)),
        ev.Status.IDLE: _run(connected, ev.ConnectionClosed(T0 + 4, "c1")),
        ev.Status.TERMINATING: _run(
            ready, ev.TerminationRequested(T0 + 5, ev.TerminationKind.SOFT)
        ),
        ev.Status.TERMINATED: _run(ready, ev.ExecutorExited(T0 + 5, 0)),
    }
    for status, state in states.items():
        assert state.status is status
    return states


STATES = _states()
ALL_TYPES = (*ev.INPUT_TYPES, *ev.DECISION_TYPES, *ev.SYSTEM_TYPES)
PAIRS = [(kind, status) for kind in ALL_TYPES for status in STATES]


def _id(pair: object) -> str:
    return type(pair).__name__ if not isinstance(pair, type) else pair.__name__


def test_every_event_type_has_an_example() -> None:
    assert set(EXAMPLES) == set(ALL_TYPES)


def test_the_table_holds_every_event_of_a_backend_and_nothing_else() -> None:
    assert set(TRANSITIONS) == set(ev.INPUT_TYPES + ev.DECISION_TYPES) - set(ev.SYSTEM_TYPES)
    for kind, row in TRANSITIONS.items():
        assert row.event is kind
        assert row.is_input == (kind in ev.INPUT_TYPES)
        assert not row.source & row.late, f"{kind.__name__}: both may happen and is late"


@pytest.mark.parametrize(("kind", "status"), PAIRS, ids=lambda p: str(_id(p)))
def test_evolve_does_what_the_table_says(kind: type, status: AnyStatus) -> None:
    state, event = STATES[status], EXAMPLES[kind]
    row = TRANSITIONS.get(kind)
    if row is None or status not in row.source:
        with pytest.raises(IllegalTransition, match=kind.__name__):
            evolve(state, event)
        return
    after = evolve(state, event)
    assert after.version == state.version + 1
    assert after.status is (row.target if row.target is not None else status)
    # what attrs would build from the table's own columns, field by field
    changes: dict[str, Any] = dict(row.changes(state, event))
    if row.target is not None:
        changes.update(status=row.target, status_at=event.at)
    assert after == attrs.evolve(state, **changes, version=state.version + 1)
    assert vars(after).keys() == vars(state).keys()


@pytest.mark.parametrize(("kind", "status"), PAIRS, ids=lambda p: str(_id(p)))
def test_decide_does_what_the_table_says(kind: type, status: AnyStatus) -> None:
    state, command = STATES[status], cast(Command, EXAMPLES[kind])  # not always one
    row = TRANSITIONS.get(kind)
    if row is None or row.decides is None:
        with pytest.raises(IllegalTransition, match=r"system stream|decision"):
            decide(state, command)
        return
    if status in row.late:
        assert decide(state, command) == []
        return
    if status not in row.source:
        with pytest.raises(IllegalTransition, match="requested"):
            decide(state, command)
        return
    decided = decide(state, command)
    assert decided[0] is command
    assert decided[1:] == row.decides(state, command)
    fold(decided, state)  # everything decided can be recorded


def test_claim_guard_makes_a_claim_of_a_claimed_warm_backend_late() -> None:
    warm = STATES[ev.Status.WARM]
    claimed_but_warm = evolve(warm, CLAIM)  # between the claim and its BackendReady
    assert claimed_but_warm.status is ev.Status.WARM
    assert decide(claimed_but_warm, CLAIM) == []


def test_state_changes_name_only_fields_of_the_state() -> None:
    fields = {f.name for f in attrs.fields(BackendState)}
    assert StateChanges.__optional_keys__ == fields - {"version", "status", "status_at"}


def test_a_misspelt_field_in_a_change_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def misspelt(state: BackendState, event: ev.TokenIssued) -> StateChanges:
        return cast(StateChanges, {"quiet_snce": event.at})

    row = TRANSITIONS[ev.TokenIssued]
    monkeypatch.setitem(TRANSITIONS, ev.TokenIssued, attrs.evolve(row, changes=misspelt))
    with pytest.raises(TypeError, match="quiet_snce"):
        evolve(STATES[ev.Status.READY], EXAMPLES[ev.TokenIssued])


def test_a_change_of_status_through_the_changes_is_still_a_field() -> None:
    # the fast path keeps exactly the fields, never one more
    after = evolve(STATES[ev.Status.READY], EXAMPLES[ev.HttpActivityRecorded])
    assert vars(after).keys() == {f.name for f in attrs.fields(BackendState)}


# -------------------------------------------------------------------- diagram


def test_committed_diagram_is_what_the_table_generates() -> None:
    committed = (REPO / diagram.OUTPUT).read_text(encoding="utf-8")
    assert committed == diagram.render(), (
        f"{diagram.OUTPUT} differs from TRANSITIONS: run `{diagram.COMMAND}` and commit it"
    )


def test_diagram_has_one_arrow_per_status_change() -> None:
    arrows = diagram.arrows()
    expected = (
        sum(len(row.source) for row in TRANSITIONS.values() if row.target is not None) + 1
    )  # terminated --> [*]
    assert len(arrows) == len(set(arrows)) == expected
    assert "    idle --> ready: BackendActive" in arrows
    assert "    [*] --> requested: WarmBackendRequested" in arrows
    assert not any("TokenIssued" in a for a in arrows)  # keeps the status: no arrow


def test_diagram_check_fails_on_a_stale_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "lifecycle.md"
    assert diagram.main(["--output", str(out), "--check"]) == 1
    assert diagram.COMMAND in capsys.readouterr().err
    assert diagram.main(["--output", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == diagram.render()
    assert diagram.main(["--output", str(out), "--check"]) == 0


def test_an_evolved_state_is_as_small_as_a_constructed_one() -> None:
    # evolve copies fields into a fresh instance dict in field order, so it stays
    # a key-sharing dict: a supervisor holds one state per backend
    after = evolve(STATES[ev.Status.READY], EXAMPLES[ev.ConnectionOpened])
    constructed = BackendState(**vars(after))
    assert after == constructed
    assert sys.getsizeof(vars(after)) == sys.getsizeof(vars(constructed))
