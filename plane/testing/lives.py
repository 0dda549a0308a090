"""Backend lifecycles made by the real decider, for tests and benchmarks.

This module owns :class:`DecidedLife`: feed it commands (inputs, or
:class:`~plane.actors.lifecycle.Tick`) and it keeps the state and every event
:func:`~plane.actors.lifecycle.decide` implies, in order, exactly as an actor
would record them.  Logs written from it are logs plane could have written.
"""

from __future__ import annotations

from plane.actors import lifecycle
from plane.actors.lifecycle import BackendState, Command
from plane.events.types import Event


class DecidedLife:
    """One backend's events so far, and its state after them."""

    def __init__(self) -> None:
        self.state: BackendState = lifecycle.initial
        self.events: list[Event] = []

    def feed(self, command: Command) -> None:
        """Decide ``command`` in the current state; record and apply what it implies."""
        for event in lifecycle.decide(self.state, command):
            self.state = lifecycle.evolve(self.state, event)
            self.events.append(event)

    def next_deadline(self) -> float:
        """When the next timer fires; ``AssertionError`` if none is set."""
        deadline = lifecycle.next_deadline(self.state)
        assert deadline is not None, f"no timer set in {self.state.status}"
        return deadline
