"""Replay's fold: rebuild every backend's state from recorded events, checking as it goes.

This module owns the pure part of plane-replay.  :class:`LogFold` takes
recorded events in sequence order and keeps, per stream, the state
(:func:`plane.actors.lifecycle.evolve`) and the invariants of the log:

* sequence numbers strictly increase, versions inside a stream are 1, 2, 3...;
* every event is legal in the state it meets (so nothing follows terminated);
* determinism: every recorded input, fed back through
  :func:`~plane.actors.lifecycle.decide` with its recorded time, yields
  exactly the decisions recorded after it, and every other run of decisions is
  exactly what a :class:`~plane.actors.lifecycle.Tick` at its recorded time
  yields.

It does no I/O and reads no clock; the CLI feeds it from a log file.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import attrs

from plane.actors import lifecycle
from plane.actors.lifecycle import BackendState, IllegalTransition, Tick
from plane.actors.warm_pools import WarmPool, evolve_pools
from plane.engines.registry import EngineView, evolve_engines
from plane.events.store import RecordedEvent
from plane.events.types import INPUT_TYPES, SYSTEM_STREAM, Event, is_input
from plane.events.wire import tag_of

_INITIAL = lifecycle.initial
_INPUT_TYPES = frozenset(INPUT_TYPES)
_evolve = lifecycle.evolve
_decide = lifecycle.decide


@attrs.frozen
class Violation:
    """One broken invariant, located by sequence number."""

    seq: int
    stream: str
    kind: str  # "sequence" | "version" | "illegal" | "divergence" | "incomplete"
    message: str


@attrs.define
class LogFold:
    """Folds a log event by event; ``verify=False`` skips the determinism check."""

    verify: bool = True
    backends: dict[str, BackendState] = attrs.field(factory=dict)
    last_seq: int = 0
    events: int = 0
    violations: list[Violation] = attrs.field(factory=list)
    system: list[RecordedEvent] = attrs.field(factory=list)
    engines: dict[str, EngineView] = attrs.field(factory=dict)
    warm_pools: dict[str, WarmPool] = attrs.field(factory=dict)
    _system_version: int = 0
    _pending: dict[str, deque[Event]] = attrs.field(factory=dict)
    _diverged: set[str] = attrs.field(factory=set)

    def feed(self, record: RecordedEvent) -> None:
        """Fold one recorded event into the state."""
        self.feed_all((record,))

    def feed_all(self, records: Iterable[RecordedEvent]) -> LogFold:
        """Fold recorded events in order.  (One loop for the common case, with the
        rare ones handed to helpers: replay folds hundreds of thousands of events.)"""
        backends = self.backends
        pending_by_stream = self._pending
        diverged = self._diverged
        verify = self.verify
        evolve = _evolve
        initial = _INITIAL
        for record in records:
            seq, stream, version, event = record
            self.events += 1
            if seq > self.last_seq:
                self.last_seq = seq
            else:
                self._violate(record, "sequence", f"seq {seq} after {self.last_seq}")
            if stream == SYSTEM_STREAM:
                self._feed_system(record)
                continue
            state = backends.get(stream, initial)
            if version != state.version + 1:
                self._violate(record, "version", f"version {version} follows {state.version}")
            if verify and stream not in diverged:
                pending = pending_by_stream.get(stream)
                if not pending:
                    self._decide_afresh(record, state)
                elif not event == (expected := pending.popleft()):  # noqa: SIM201 - hot path
                    self._diverge(
                        record, f"recorded {_show(event)}, decide yields {_show(expected)}"
                    )
            try:
                backends[stream] = evolve(state, event)
            except IllegalTransition as exc:
                self._violate(record, "illegal", str(exc))
        return self

    def _feed_system(self, record: RecordedEvent) -> None:
        if record.version != self._system_version + 1:
            self._violate(
                record, "version", f"system version {record.version} follows {self._system_version}"
            )
        self._system_version = record.version
        self.system.append(record)
        self.engines = evolve_engines(self.engines, record.event)
        self.warm_pools = evolve_pools(self.warm_pools, record.event)

    def finish(self, last_seq: int | None = None) -> list[Violation]:
        """Close the fold: decisions that were due but never recorded are violations.

        They are reported at ``last_seq`` (default: the last seq folded), one
        per stream in stream order.
        """
        at = self.last_seq if last_seq is None else last_seq
        for stream in sorted(self._pending):
            pending = self._pending[stream]
            if pending and stream not in self._diverged:
                missing = ", ".join(tag_of(e) for e in pending)
                self.violations.append(
                    Violation(at, stream, "incomplete", f"decisions missing: {missing}")
                )
        return self.violations

    def _decide_afresh(self, record: RecordedEvent, state: BackendState) -> None:
        """No decision is pending: the event must be an input, or a deadline's decision;
        what ``decide`` yields for it must start with it."""
        event = record.event
        command: lifecycle.Command
        command = event if type(event) in _INPUT_TYPES else Tick(event.at)  # type: ignore[assignment]
        try:
            decided = _decide(state, command)
        except IllegalTransition as exc:
            self._diverge(record, f"decide refuses {_show(event)}: {exc}")
            return
        if not decided:
            what = "input" if is_input(event) else "decision"
            self._diverge(record, f"{what} {_show(event)} is not what decide yields (nothing)")
            return
        if decided[0] is not event and decided[0] != event:
            self._diverge(record, f"recorded {_show(event)}, decide yields {_show(decided[0])}")
            return
        if len(decided) > 1:
            self._pending[record.stream] = deque(decided[1:])

    def _diverge(self, record: RecordedEvent, message: str) -> None:
        self._diverged.add(record.stream)
        self._pending.pop(record.stream, None)
        self._violate(record, "divergence", message)

    def _violate(self, record: RecordedEvent, kind: str, message: str) -> None:
        self.violations.append(Violation(record.seq, record.stream, kind, message))


def _show(event: Event) -> str:
    return f"{tag_of(event)} {attrs.asdict(event, recurse=False)}"


@attrs.define
class FoldUntil:
    """:func:`fold_until` fed in batches, for a caller that reads the log piece by
    piece (the API's ``GET /ctrl/state``): :meth:`feed` folds what lies before the
    cut and returns False once a record lies past ``seq`` (nothing later counts)."""

    seq: int | None = None
    at: float | None = None
    fold: LogFold = attrs.Factory(lambda: LogFold(verify=False))
    last_at: float | None = None
    """The time of the last event folded (None before the first)."""
    _cut: set[str] = attrs.Factory(set)

    def feed(self, records: Iterable[RecordedEvent]) -> bool:
        seq, at, cut, fold = self.seq, self.at, self._cut, self.fold
        for record in records:
            if seq is not None and record.seq > seq:
                return False
            if at is not None:
                if record.stream in cut:
                    continue
                if record.event.at > at:
                    cut.add(record.stream)
                    continue
            fold.feed(record)
            self.last_at = record.event.at
        return True


def fold_until(
    records: Iterable[RecordedEvent], *, seq: int | None = None, at: float | None = None
) -> LogFold:
    """The fold of every event up to sequence number ``seq``, or up to time ``at``.

    By time, each stream keeps its events up to the first one later than ``at``.
    """
    until = FoldUntil(seq, at)
    until.feed(records)
    return until.fold
