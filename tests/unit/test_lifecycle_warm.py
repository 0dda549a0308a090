"""The decider's warm state: a warm pool's backend holds no key until a claim,
its clocks start at the claim, and a claimed one never returns to warm.

Hypothesis drives many backends at once through random interleavings of the
shell's inputs (executor facts, claims, cold requests, exits, terminations,
ticks), with a small registry that plays the supervisor's one rule about keys
(a key is held from its backend's request or claim until that backend is
terminated; a claim or a cold request goes ahead only for an unheld key).  The
invariants are checked on the decider's states after every step.
"""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plane.actors.lifecycle import (
    BackendState,
    IllegalTransition,
    Tick,
    decide,
    evolve,
    fold,
    initial,
    is_live,
    is_terminal,
    next_deadline,
)
from plane.events.spec import BackendKey, Executable, SpawnConfig
from plane.events.types import (
    BackendClaimed,
    BackendReady,
    BackendRequested,
    BackendWarmed,
    Event,
    ExecutorExited,
    ExecutorStarted,
    ReadinessObserved,
    Status,
    TerminationKind,
    TerminationReason,
    TerminationRequested,
    WarmBackendRequested,
)

EPOCH = 1_700_000_000.0
CONFIG = SpawnConfig(Executable(image="app:1"), max_idle_seconds=10.0, lifetime_limit_seconds=100.0)
KEYS = [BackendKey(name) for name in ("a", "b", "c")]


def claim(at: float, key: BackendKey, fencing: int = 1) -> BackendClaimed:
    return BackendClaimed(at, key, fencing, "h" * 64, at + 3600, "secret", "ann", None)


def run(state: BackendState, command: object) -> BackendState:
    for event in decide(state, command):  # type: ignore[arg-type]
        state = evolve(state, event)
    return state


def warm_backend(at: float = EPOCH) -> BackendState:
    state = run(initial, WarmBackendRequested(at, "w1", "web", CONFIG))
    state = run(state, Tick(at))
    state = run(state, ExecutorStarted(at + 0.1, "127.0.0.1:5000"))
    return run(state, ReadinessObserved(at + 0.2))


def test_a_warm_backend_is_warm_without_a_key_and_without_clocks() -> None:
    state = warm_backend()
    assert state.status is Status.WARM
    assert state.key is None and state.unclaimed
    assert not is_live(state)  # holds no key
    assert next_deadline(state) is None  # no idle, no lifetime clock while warm


def test_a_claim_makes_it_ready_at_once_and_starts_its_clocks() -> None:
    state = warm_backend()
    at = EPOCH + 1000.0
    decided = decide(state, claim(at, KEYS[0], 7))
    assert [type(e) for e in decided] == [BackendClaimed, BackendReady]
    state = fold(decided, state)
    assert state.status is Status.READY
    assert state.key == KEYS[0] and state.fencing_token == 7 and state.claimed_at == at
    assert is_live(state)
    assert next_deadline(state) == at + 10.0  # idle clock from the claim
    ended = run(state, Tick(at + 10.0))
    assert ended.termination_reason is TerminationReason.IDLE


def test_the_lifetime_runs_from_the_claim() -> None:
    state = run(warm_backend(), claim(EPOCH + 50.0, KEYS[0]))
    state = run(state, ReadinessObserved(EPOCH + 51.0))  # a late probe answer: nothing
    busy = attrs.evolve(state, quiet_since=None)  # never idle: only the lifetime is left
    assert next_deadline(busy) == EPOCH + 150.0


def test_a_claim_that_finds_it_no_longer_warm_decides_nothing() -> None:
    state = run(warm_backend(), TerminationRequested(EPOCH + 1, TerminationKind.HARD))
    assert state.status is Status.TERMINATING
    assert decide(state, claim(EPOCH + 2, KEYS[0])) == []
    claimed = run(warm_backend(), claim(EPOCH + 2, KEYS[0]))
    assert decide(claimed, claim(EPOCH + 3, KEYS[1])) == []  # already claimed
    with pytest.raises(IllegalTransition):
        evolve(claimed, claim(EPOCH + 3, KEYS[1]))


def test_a_warm_backend_that_exits_ends_and_was_never_keyed() -> None:
    state = run(warm_backend(), ExecutorExited(EPOCH + 5, 1))
    assert state.status is Status.TERMINATED
    assert state.termination_reason is TerminationReason.EXITED
    assert state.key is None


# ------------------------------------------------------------------ property

steps = st.lists(
    st.tuples(
        st.sampled_from(  # weighted towards what makes warm backends and claims
            [
                "warm",
                "warm",
                "cold",
                "tick",
                "tick",
                "start",
                "start",
                "ready",
                "ready",
                "claim",
                "claim",
                "claim",
                "exit",
                "terminate",
            ]
        ),
        st.integers(min_value=0, max_value=5),  # which backend
        st.integers(min_value=0, max_value=2),  # which key
        st.sampled_from([0.0, 0.1, 1.0, 5.0, 11.0, 40.0]),  # time passing
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_warm_backends_never_hold_keys_and_no_key_has_two_live_holders(
    plan: list[tuple[str, int, int, float]],
) -> None:
    now = EPOCH
    states: dict[str, BackendState] = {}
    claimed_once: set[str] = set()
    holder: dict[tuple[str, str], str] = {}  # the supervisor's rule: held until terminated
    fencing: dict[tuple[str, str], int] = {}
    count = 0

    def apply(backend_id: str, command: object) -> None:
        events: list[Event] = decide(states[backend_id], command)  # type: ignore[arg-type]
        state = states[backend_id]
        for event in events:
            state = evolve(state, event)
        states[backend_id] = state
        if (
            state.key is not None
            and is_terminal(state)
            and holder.get(state.key.slot()) == backend_id
        ):
            del holder[state.key.slot()]

    for action, pick, key_index, delay in plan:
        now += delay
        ids = sorted(states)
        chosen = ids[pick % len(ids)] if ids else None
        key = KEYS[key_index]
        slot = key.slot()
        if action in ("warm", "cold"):
            count += 1
            backend_id = f"b{count}"
            states[backend_id] = initial
            if action == "warm":
                apply(backend_id, WarmBackendRequested(now, backend_id, "web", CONFIG))
            elif slot not in holder:  # a cold spawn only for an unheld key
                fencing[slot] = fencing.get(slot, 0) + 1
                request = BackendRequested(now, backend_id, key, CONFIG, fencing[slot])
                apply(backend_id, request)
                holder[slot] = backend_id
            else:
                del states[backend_id]
        elif chosen is None:
            continue
        elif action == "start" and states[chosen].status is Status.STARTING:
            apply(chosen, ExecutorStarted(now, f"127.0.0.1:{5000 + pick}"))
        elif action == "ready" and states[chosen].status is not None:
            apply(chosen, ReadinessObserved(now))
        elif action == "claim" and slot not in holder:
            warm_ids = [i for i in ids if states[i].status is Status.WARM]
            if warm_ids and pick % 2 == 0:  # mostly a warm one, as the supervisor picks
                chosen = warm_ids[pick % len(warm_ids)]
            decided = decide(states[chosen], claim(now, key, fencing.get(slot, 0) + 1))
            if decided:
                fencing[slot] = fencing.get(slot, 0) + 1
                apply(chosen, claim(now, key, fencing[slot]))
                holder[slot] = chosen
                claimed_once.add(chosen)
        elif action == "exit":
            apply(chosen, ExecutorExited(now, 0))
        elif action == "terminate":
            apply(chosen, TerminationRequested(now, TerminationKind.SOFT))
        elif action == "tick":
            for backend_id in ids:
                while (due := next_deadline(states[backend_id])) is not None and due <= now:
                    apply(backend_id, Tick(now))

        for backend_id, state in states.items():
            if state.status is Status.WARM or (state.warm_pool and backend_id not in claimed_once):
                assert state.key is None, "a warm backend holds a key"
            if backend_id in claimed_once:
                assert state.status is not Status.WARM, "a claimed backend is warm again"
                assert state.key is not None and state.claimed_at is not None
        live_by_key: dict[tuple[str, str], list[str]] = {}
        for backend_id, state in states.items():
            if state.key is not None and not is_terminal(state):
                live_by_key.setdefault(state.key.slot(), []).append(backend_id)
        for slot, holders in live_by_key.items():
            assert len(holders) == 1, f"key {slot} has live holders {holders}"
            assert holder[slot] == holders[0]


def test_a_warm_pool_backend_goes_starting_then_warm_never_ready_on_its_own() -> None:
    state = run(initial, WarmBackendRequested(EPOCH, "w1", "web", CONFIG))
    state = run(state, Tick(EPOCH))
    assert state.status is Status.STARTING
    state = run(state, ExecutorStarted(EPOCH + 1, "127.0.0.1:5000"))
    decided = decide(state, ReadinessObserved(EPOCH + 2))
    assert [type(e) for e in decided] == [ReadinessObserved, BackendWarmed]
