"""What the lifecycle decider's tests share: the shell's step (``decide`` a
command, then ``evolve`` through what it returned) and the times and address
they use."""

from __future__ import annotations

from plane.actors.lifecycle import BackendState, Command, decide, fold
from plane.events.types import Event

T0 = 1000.0
ADDRESS = "127.0.0.1:40001"


def step(state: BackendState, command: Command) -> tuple[BackendState, list[Event]]:
    """Decide, then evolve through what was decided (what the shell does)."""
    events = decide(state, command)
    return fold(events, state), events


def run(state: BackendState, *commands: Command) -> tuple[BackendState, list[Event]]:
    log: list[Event] = []
    for command in commands:
        state, events = step(state, command)
        log.extend(events)
    return state, log
