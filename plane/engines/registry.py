"""The engines' state: a pure fold of the ``engine.*`` events of the log.

This module owns :class:`EngineView` (what the log says about one engine) and
:func:`evolve_engines`.  Live backend counts and the last answer are not in the
log: the supervisor adds them when it asks for placement or shows engines.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping

import attrs

from plane.events.types import (
    ENGINE_TYPES,
    EngineDrained,
    EngineLost,
    EngineRegistered,
    EngineReturned,
    EngineUndrained,
    Event,
)


class EngineState(enum.StrEnum):
    """How an engine stands, as ``GET /ctrl/engines`` shows it."""

    HEALTHY = "healthy"
    DRAINING = "draining"
    LOST = "lost"


@attrs.frozen
class EngineView:
    """One engine as the log has it."""

    name: str
    url: str = "default"
    publish: str = "127.0.0.1"
    pool: str = ""
    max_backends: int | None = None
    draining: bool = False
    lost: bool = False

    @property
    def state(self) -> EngineState:
        if self.lost:
            return EngineState.LOST
        return EngineState.DRAINING if self.draining else EngineState.HEALTHY


Engines = Mapping[str, EngineView]


def evolve_engines(engines: Engines, event: Event) -> dict[str, EngineView]:
    """The engines after ``event`` (any other event leaves them as they are)."""
    new = dict(engines)
    match event:
        case EngineRegistered():
            old = engines.get(event.name)
            new[event.name] = EngineView(
                event.name,
                event.url,
                event.publish,
                event.pool,
                event.max_backends,
                draining=old.draining if old else False,
                lost=old.lost if old else False,
            )
        case EngineDrained() | EngineUndrained() | EngineLost() | EngineReturned():
            old = engines.get(event.name) or EngineView(event.name)
            new[event.name] = _CHANGES[type(event)](old)
    return new


def _drained(view: EngineView) -> EngineView:
    return attrs.evolve(view, draining=True)


def _undrained(view: EngineView) -> EngineView:
    return attrs.evolve(view, draining=False)


def _lost(view: EngineView) -> EngineView:
    return attrs.evolve(view, lost=True)


def _returned(view: EngineView) -> EngineView:
    return attrs.evolve(view, lost=False)


_CHANGES: dict[type, Callable[[EngineView], EngineView]] = {
    EngineDrained: _drained,
    EngineUndrained: _undrained,
    EngineLost: _lost,
    EngineReturned: _returned,
}


def fold_engines(events: Iterable[Event], engines: Engines | None = None) -> dict[str, EngineView]:
    """Fold ``events`` (engine events and any others, which are skipped)."""
    state: dict[str, EngineView] = dict(engines or {})
    for event in events:
        state = evolve_engines(state, event)
    return state


def is_engine_event(event: Event) -> bool:
    return isinstance(event, ENGINE_TYPES)
