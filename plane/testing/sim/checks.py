"""The simulator's invariants, checked against the log as it grows.

This module owns :class:`Checker`, fed every new record of the log after each
step of a history (so nothing is re-read), and :class:`InvariantBroken`, what
it raises.  The invariants, by the name a failure carries:

* ``verify``: the log passes ``plane-replay verify``'s fold as it grows
  (sequence and versions, legal transitions, every decision re-decided from its
  input or tick), and nothing is left undecided at the end;
* ``one-live-backend-per-key``: never two non-terminated backends of one key
  (:class:`plane.testing.keyhold.KeyHolds`);
* ``fencing``: each key's fencing tokens strictly increase;
* ``acknowledged-in-log``: every connect that was answered is in the log (its
  request, and its token's hash or its static token);
* ``state-is-fold``: the supervisor holds the fold of the log: every backend
  not yet terminated, and (until its actor has ended) a terminated one, each
  equal to its fold; nothing else (terminated backends leave memory);
* ``terminates``: once clients stop and every timeout has passed, every
  backend is terminated and no actor is left;
* ``no-leak``: after a recovery, the executor holds nothing (running or
  exited and not removed) for a backend the log says is terminated, or does
  not know.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from plane import tokens
from plane.actors.lifecycle import BackendState
from plane.events.store import RecordedEvent
from plane.events.types import BackendRequested, Status, TokenIssued
from plane.testing.keyhold import KeyHolds
from replay.fold import LogFold


class InvariantBroken(AssertionError):
    """An invariant of the simulation does not hold; ``invariant`` names it."""

    def __init__(self, invariant: str, message: str) -> None:
        super().__init__(f"{invariant}: {message}")
        self.invariant = invariant
        self.message = message


@attrs.frozen
class Ack:
    """A connect that was answered: what the client holds."""

    backend_id: str
    fencing_token: int
    token: str
    static: bool


class Checker:
    """Folds the log record by record and checks the invariants; see the module docstring."""

    def __init__(self) -> None:
        self.fold = LogFold(verify=True)
        self.holds = KeyHolds()
        self.fencing: dict[tuple[str, str], int] = {}
        self.requested: dict[str, BackendRequested] = {}
        self.token_hashes: set[str] = set()
        self.last_seq = 0
        self.live: set[str] = set()
        """Backends the fold holds not terminated (kept as records come, not rescanned)."""
        self._violations = 0
        self._acks_checked = 0

    def feed(self, records: Iterable[RecordedEvent]) -> set[str]:
        """Fold new records; returns the streams they touched."""
        records = list(records)
        if not records:
            return set()
        self.fold.feed_all(records)
        self._raise_violations()
        touched: set[str] = set()
        for record in records:
            self.last_seq = record.seq
            touched.add(record.stream)
            overlap = self.holds.feed(record)
            if overlap is not None:
                raise InvariantBroken("one-live-backend-per-key", overlap)
            event = record.event
            if isinstance(event, BackendRequested):
                slot = event.key.slot()
                before = self.fencing.get(slot, 0)
                if event.fencing_token <= before:
                    raise InvariantBroken(
                        "fencing",
                        f"seq {record.seq}: backend {record.stream} of key {slot} got fencing "
                        f"token {event.fencing_token} after {before}",
                    )
                self.fencing[slot] = event.fencing_token
                self.requested[record.stream] = event
            elif isinstance(event, TokenIssued):
                self.token_hashes.add(event.token_hash)
        folded = self.fold.backends
        for stream in touched:
            state = folded.get(stream)
            if state is not None and state.status is not Status.TERMINATED:
                self.live.add(stream)
            else:
                self.live.discard(stream)
        return touched

    def finish(self) -> None:
        """The end of the log: decisions due but never recorded are violations."""
        self.fold.finish()
        self._raise_violations()

    def _raise_violations(self) -> None:
        violations = self.fold.violations
        if len(violations) > self._violations:
            v = violations[self._violations]
            self._violations = len(violations)
            raise InvariantBroken("verify", f"seq {v.seq} stream {v.stream}: {v.kind}: {v.message}")

    def acks(self, acked: list[Ack], upto: int) -> None:
        """Every answered connect among ``acked[:upto]`` is in the log folded so far."""
        for ack in acked[self._acks_checked : upto]:
            requested = self.requested.get(ack.backend_id)
            if requested is None:
                raise InvariantBroken(
                    "acknowledged-in-log", f"connect answered with {ack.backend_id}, not in the log"
                )
            if ack.fencing_token != requested.fencing_token:
                raise InvariantBroken(
                    "acknowledged-in-log",
                    f"{ack.backend_id} answered fencing token {ack.fencing_token}, "
                    f"the log says {requested.fencing_token}",
                )
            if ack.static:
                if requested.static_token != ack.token:
                    raise InvariantBroken(
                        "acknowledged-in-log", f"{ack.backend_id}: static token not the logged one"
                    )
            elif tokens.digest(ack.token) not in self.token_hashes:
                raise InvariantBroken(
                    "acknowledged-in-log", f"{ack.backend_id}: answered token not in the log"
                )
        self._acks_checked = max(self._acks_checked, upto)

    def states(
        self, held: Mapping[str, BackendState], streams: Iterable[str], *, exact: bool
    ) -> None:
        """The supervisor's ``held`` states equal the fold (``exact``), or trail it
        (each at most the log's version: a store whose commits land in a thread)."""
        folded = self.fold.backends
        if exact:
            missing = sorted(b for b in self.live if b not in held)
            extra = sorted(b for b in held if b not in folded)
            if missing or extra:
                raise InvariantBroken(
                    "state-is-fold",
                    f"supervisor lacks live backends {missing[:3]} or holds unknown {extra[:3]}",
                )
        for backend_id, state in held.items():
            fold = folded.get(backend_id)
            if fold is None or state.version > fold.version:
                raise InvariantBroken(
                    "state-is-fold",
                    f"{backend_id}: supervisor at version {state.version}, the log at "
                    f"{fold.version if fold else 0}",
                )
            if exact and state.version != fold.version:
                raise InvariantBroken(
                    "state-is-fold",
                    f"{backend_id}: supervisor at version {state.version}, log at {fold.version}",
                )
        if exact:
            for backend_id in streams:
                mine = held.get(backend_id)
                if mine is not None and mine != folded[backend_id]:
                    raise InvariantBroken(
                        "state-is-fold",
                        f"{backend_id}: supervisor holds {mine}, the log folds to "
                        f"{folded[backend_id]}",
                    )

    def all_terminated(self, actors: Iterable[str]) -> None:
        backends = self.fold.backends.items()
        stuck = {b: s.status for b, s in backends if s.status is not Status.TERMINATED}
        if stuck:
            shown = ", ".join(f"{b} {s}" for b, s in sorted(stuck.items())[:5])
            raise InvariantBroken("terminates", f"{len(stuck)} backends never ended: {shown}")
        left = sorted(actors)
        if left:
            raise InvariantBroken("terminates", f"actors left running for {left[:5]}")

    def no_leak(self, resources: Mapping[str, str]) -> None:
        """``resources``: what the executor holds, backend id -> how."""
        folded = self.fold.backends
        leaked = sorted(
            f"{b} ({how})"
            for b, how in resources.items()
            if b not in folded or folded[b].status is Status.TERMINATED
        )
        if leaked:
            raise InvariantBroken("no-leak", f"executor holds terminated backends: {leaked[:5]}")
