"""Each invariant of the simulator catches a bug planted in plane (monkeypatched):
without the plant the same seeds pass (tests/sim/test_simulate.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import pytest

from plane.actors import lifecycle
from plane.actors.backend import BackendActor
from plane.actors.lifecycle import BackendState, Effect
from plane.actors.supervisor import Supervisor
from plane.events.store import RecordedEvent
from plane.events.types import (
    BackendTerminating,
    Event,
    HttpActivityRecorded,
    Status,
    TerminationKind,
    TerminationReason,
)
from plane.testing import simulate
from plane.testing.sim.history import Outcome
from plane.testing.sim.store import FaultyStore

SEEDS = range(500, 560)


def first_failure(*invariants: str, steps: int = 200) -> Outcome:
    """The first history among SEEDS that breaks one of ``invariants`` (any other
    failure is a failure of the test: the plant must be caught by the invariant meant)."""
    for seed in SEEDS:
        outcome = simulate.run(seed, steps)
        if outcome.failure is not None:
            assert outcome.failure.invariant in invariants, simulate.report(outcome)
            report = simulate.report(outcome)
            assert f"seed={seed}" in report
            assert simulate.command(seed, steps) in report
            return outcome
    raise AssertionError(f"no history among seeds {SEEDS} broke {invariants}")


def test_a_key_freed_at_terminating_is_two_live_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    notify = Supervisor._notify

    def freed_early(self: Supervisor, state: BackendState, events: list[Event]) -> None:
        notify(self, state, events)
        slot = state.key.slot() if state.key is not None else None
        terminating = state.status is Status.TERMINATING
        if slot is not None and terminating and self._held_by_slot.get(slot) == state.backend_id:
            del self._held_by_slot[slot]

    monkeypatch.setattr(Supervisor, "_notify", freed_early)
    first_failure("one-live-backend-per-key")


def test_a_lost_timer_leaves_a_backend_that_never_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    next_deadline = lifecycle.next_deadline

    def losing(state: BackendState) -> float | None:
        return None if state.status is Status.IDLE else next_deadline(state)

    monkeypatch.setattr(lifecycle, "next_deadline", losing)
    first_failure("terminates")


def test_an_append_acknowledged_but_not_written_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    append = FaultyStore.append

    async def lying(
        self: FaultyStore, stream: str, expected: int, events: Sequence[Event]
    ) -> list[RecordedEvent]:
        if self.disk.is_full():  # acknowledged, never committed
            return [RecordedEvent(0, stream, expected + i, e) for i, e in enumerate(events, 1)]
        return await append(self, stream, expected, events)

    monkeypatch.setattr(FaultyStore, "append", lying)
    outcome = first_failure("acknowledged-in-log", "state-is-fold")
    assert outcome.failure is not None and "log" in outcome.failure.message


def test_fencing_forgotten_at_recovery_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    recover = Supervisor._recover

    async def forgetful(self: Supervisor) -> None:
        await recover(self)
        self._fencing.clear()

    monkeypatch.setattr(Supervisor, "_recover", forgetful)
    first_failure("fencing")


def test_a_decision_replay_cannot_redecide_fails_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    decide = lifecycle.decide  # replay.fold keeps its own reference: only the actor changes

    def harsh(state: BackendState, command: Any) -> list[Event]:
        return [
            attrs.evolve(e, kind=TerminationKind.HARD)
            if isinstance(e, BackendTerminating) and e.reason is TerminationReason.IDLE
            else e
            for e in decide(state, command)
        ]

    monkeypatch.setattr(lifecycle, "decide", harsh)
    outcome = first_failure("verify")
    assert outcome.failure is not None and "divergence" in outcome.failure.message


def test_a_state_the_log_does_not_hold_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    notify = Supervisor._notify

    def stale(self: Supervisor, state: BackendState, events: list[Event]) -> None:
        before = self.states.get(state.backend_id)
        notify(self, state, events)
        if before is not None and any(isinstance(e, HttpActivityRecorded) for e in events):
            self.states[state.backend_id] = before

    monkeypatch.setattr(Supervisor, "_notify", stale)
    first_failure("state-is-fold")


def test_a_backend_left_running_after_recovery_is_a_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    perform = BackendActor._perform

    def no_remove(self: BackendActor, effect: Effect) -> None:
        if effect is not Effect.REMOVE:
            perform(self, effect)

    async def no_orphans(self: Supervisor, orphans: list[Any], engine: str) -> None:
        return None

    monkeypatch.setattr(BackendActor, "_perform", no_remove)
    monkeypatch.setattr(Supervisor, "_remove_orphans", no_orphans)
    first_failure("no-leak")
