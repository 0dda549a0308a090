"""The backend actor: one trio task per backend, the thin shell around the decider.

This module owns the loop that makes a backend's lifecycle happen::

    wait for a command or the next deadline
      -> decide -> append (at the expected version, persist first)
      -> evolve -> perform the effects

Commands come from the supervisor (a new backend's request and first token,
terminate, tokens, what recovery and the engine watch observed), from the
proxy (connection events) and from the actor's own effect tasks (what the
executor observed: started, readiness, spawn failures).  This loop is the only
place that decides and appends a backend's events, from its very first (the
supervisor creates a new backend's actor from :data:`lifecycle.initial` and
asks it the request), so there is one path for every input.

Every command carries the time its sender observed the fact (``at``, from the
sender's :class:`~plane.actors.clock.TrioClock`); the actor does not restamp
it.  Before deciding a command it ticks the deadlines due by that time, so a
deadline that passed before the fact fires first and one after it does not:
that, with each tick recorded at its own time, is what keeps the log
re-decidable by ``plane-replay verify``.  The one exception is
:meth:`BackendActor._in_order`: a command observed before the stream's last
recorded event (it was in flight while the actor recorded a later tick or
input) is decided at that event's time instead, so a stream's times never go
backwards; readers rely on that (``plane-replay`` folds "up to time T" stop a
stream at its first event past T, views show ``status_at`` as the latest).

Resource handling
-----------------
Effects run as tasks in the actor's own nursery (a start that retries must not
stop the actor from hearing "terminate"); the actor ends when its backend is
terminated and every effect task is done.  Cancelling the actor (plane shutting
down) leaves the backend running, to be adopted on the next start.

Error handling
--------------
Executor calls each have a timeout; transient :class:`ExecutorError` s are
retried with capped exponential backoff (:func:`plane.retry.retrying`), never
in a tight loop.  A :class:`SpawnError` becomes a ``SpawnFailed`` input.

A full log (:class:`~plane.events.store.StoreFullError`, "LogFull": the disk or
the page limit) is handled in one place, :meth:`BackendActor._persist`:

* a command somebody waits for (:meth:`BackendActor.ask`: a new backend's
  request, a connect's token, terminate, revoke) is refused: the caller gets
  ``StoreFullError`` (the API answers 503 ``LogUnavailable``) and nothing of
  it is done or retried;
* any other decision (a timer firing, an exit, a connection event, what an
  effect task observed) stays pending: the actor retries the *same* append, at
  the same expected version, with capped backoff
  (``ExecutorPolicy.backoff_initial`` .. ``log_retry_max``), and acts on it only
  once it is recorded (persist first).  While it waits, the actor keeps taking
  its inbox: every input is queued in the actor's backlog (in order, with the
  time its sender observed it), and the backlog is decided, oldest first, once
  the log takes appends again, each after the deadlines due by its time.  A
  caller's command arriving meanwhile prompts one more try at once: if the log
  still refuses, the caller is refused then (it never waits out the outage),
  else it is decided in its turn.  So nothing is lost, the stream's
  times never go backwards, and nothing is written twice (a refused append
  wrote nothing).

A new backend's first command (its request) that the log refuses, full or
because its stream already exists (:class:`ConcurrencyError`: the id is
taken), is refused to the caller, and the actor ends at once: nothing was
recorded, there is nothing to drive.  Any other store error (a concurrency
conflict on a backend that exists means a second writer) propagates: the actor
does not act on a decision it could not record.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from plane.actors import lifecycle
from plane.actors.clock import TrioClock
from plane.actors.lifecycle import BackendState, Command, Effect, Tick
from plane.events.spec import BackendKey
from plane.events.store import ConcurrencyError, EventStore, StoreFullError
from plane.events.types import (
    Event,
    ExecutorStarted,
    ExecutorVanished,
    ReadinessObserved,
    SpawnFailed,
    Status,
)
from plane.executors.base import Executor, ExecutorError, SpawnError, Started, StartSpec
from plane.executors.readiness import wait_until_answers
from plane.retry import Backoff, retrying

log = logging.getLogger("plane.actor")

#: What an executor call may fail with that a retry can cure.
TRANSIENT: tuple[type[BaseException], ...] = (ExecutorError, trio.TooSlowError)


@attrs.frozen
class ExecutorPolicy:
    """How the actor calls its executor."""

    call_timeout: float = 30.0
    backoff_initial: float = 0.1
    backoff_max: float = 5.0
    probe_interval: float = 0.01
    probe: Callable[..., Awaitable[None]] = wait_until_answers
    """``probe(address, interval=...)`` returns once the backend answers HTTP."""
    log_retry_max: float = 1.0
    """The longest wait between two tries of an append the full log refused: once
    space is freed, a pending decision is recorded within about this long."""

    @property
    def backoff(self) -> Backoff:
        """The waits between two tries of an executor call."""
        return Backoff(self.backoff_initial, self.backoff_max)


DEFAULT_POLICY = ExecutorPolicy()


@attrs.define(eq=False)
class Envelope:
    """Commands in an actor's inbox, decided together (in order, no deadline
    between them) and appended in one append; ``done`` is set once they are
    recorded, ignored or (``refused``) turned down: the log is full, or (a new
    backend's request) its stream exists already.  ``waits``: somebody awaits the
    outcome (:meth:`BackendActor.ask`); ``state``: the backend's state right
    after them (None until done, or if they were refused)."""

    commands: tuple[Command, ...]
    waits: bool = False
    done: trio.Event = attrs.field(factory=trio.Event)
    recorded: list[Event] = attrs.field(factory=list)
    refused: StoreFullError | ConcurrencyError | None = None
    state: BackendState | None = None


Listener = Callable[[BackendState, list[Event]], None]


class BackendActor:
    """One backend's shell.  Create it with its folded state (a new backend:
    :data:`lifecycle.initial` and its ``backend_id``, then :meth:`ask` it the
    request); run :meth:`run`."""

    def __init__(
        self,
        state: BackendState,
        *,
        backend_id: str | None = None,
        store: EventStore,
        executor: Executor,
        clock: TrioClock,
        policy: ExecutorPolicy = DEFAULT_POLICY,
        on_change: Listener | None = None,
    ) -> None:
        self.state = state
        self.backend_id = backend_id if backend_id is not None else state.backend_id
        # the time of the stream's last event, as far as this incarnation knows
        # (the state keeps no such field: its latest times stand in, and anything
        # recorded later by a previous incarnation is before this one's clock)
        self._last_at = max(
            state.status_at, state.last_activity_at or 0.0, state.quiet_since or 0.0
        )
        self._store = store
        self._executor = executor
        self._clock = clock
        self._policy = policy
        self._on_change = on_change
        self._send, self._inbox = trio.open_memory_channel[Envelope](math.inf)
        self._backlog: deque[Envelope] = deque()  # taken, stamped, not yet decided
        self._full: StoreFullError | None = None  # set while a pending append waits for space
        self._probe_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self.ended = trio.Event()

    # ------------------------------------------------------------ public face

    @property
    def waiting_for_space(self) -> bool:
        """True while a decision waits for the full log to take it."""
        return self._full is not None

    def tell(self, command: Command) -> Envelope:
        """Queue ``command`` without waiting; await ``envelope.done`` to know it landed.
        Kept (and retried) while the log is full."""
        return self._post(Envelope((command,)))

    async def ask(self, command: Command, *more: Command) -> list[Event]:
        """Queue ``command`` (and ``more``, decided with it and appended in the
        same append) and wait until recorded; returns what was appended.  Raises
        :class:`StoreFullError` (nothing done) when the log is full, and
        :class:`ConcurrencyError` when a new backend's stream exists already."""
        return (await self.ask_state(command, *more))[0]

    async def ask_state(
        self, command: Command, *more: Command
    ) -> tuple[list[Event], BackendState]:
        """:meth:`ask`, and the backend's state right after these commands (the
        actor may have decided more since, e.g. a new backend's start)."""
        envelope = self._post(Envelope((command, *more), waits=True))
        await envelope.done.wait()
        refused = envelope.refused
        if isinstance(refused, ConcurrencyError):
            raise ConcurrencyError(refused.stream, refused.expected, refused.actual)
        if refused is not None:
            raise StoreFullError(str(refused))
        return envelope.recorded, envelope.state or self.state

    def _post(self, envelope: Envelope) -> Envelope:
        try:
            self._send.send_nowait(envelope)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            envelope.done.set()  # the actor is gone: nothing will be recorded
        return envelope

    async def run(self, *, resume: list[Effect] | None = None) -> None:
        """Drive the backend until it is terminated; ``resume`` re-performs effects
        that a previous incarnation may not have finished (recovery)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for effect in resume or ():
                    self._perform(effect)
                try:
                    while not lifecycle.is_terminal(self.state):
                        await self._step()
                        if self.state.status is None:
                            break  # a new backend's request was refused: nothing to drive
                finally:
                    self._send.close()
                    self._drain_inbox()
                    self._cancel_probe()
        finally:
            self.ended.set()

    # ------------------------------------------------------------------- loop

    async def _step(self) -> None:
        if not self._backlog:
            envelope: Envelope | None = None
            with trio.move_on_at(self._clock.to_trio(lifecycle.next_deadline(self.state))):
                envelope = await self._inbox.receive()
            if envelope is None:
                await self._tick(self._clock.now())
                return
            self._backlog.append(envelope)
        envelope = self._backlog[0]
        await self._tick(envelope.commands[0].at)  # a deadline due by then fires first
        if envelope.done.is_set():
            return  # refused while the tick waited for space
        self._backlog.popleft()
        try:
            envelope.recorded = await self._handle(envelope.commands, waits=envelope.waits)
            envelope.state = self.state
        except StoreFullError as exc:
            envelope.refused = exc
        except ConcurrencyError as exc:
            if self.state.status is not None or not envelope.waits:
                raise  # a second writer on a backend that exists
            envelope.refused = exc  # a new backend's stream exists already: its id is taken
        envelope.done.set()

    @staticmethod
    def _in_order(command: Command, last_at: float) -> Command:
        """``command``, decided no earlier than ``last_at``, the stream's last
        event: the one place an input's time is changed (see the module
        docstring: a stream's times never go backwards)."""
        if command.at >= last_at:
            return command
        return attrs.evolve(command, at=last_at)

    async def _tick(self, now: float) -> None:
        """Fire every deadline due by ``now`` (or by the stream's last event's time)."""
        now = max(now, self._last_at)
        while (due := lifecycle.next_deadline(self.state)) is not None and due <= now:
            if not await self._handle((Tick(now),)):
                return

    def _refuse_waiting(self, exc: StoreFullError) -> None:
        """Refuse every queued command somebody waits for: the log is full."""
        for envelope in [e for e in self._backlog if e.waits]:
            self._backlog.remove(envelope)
            envelope.refused = exc
            envelope.done.set()

    async def _handle(self, commands: tuple[Command, ...], *, waits: bool = False) -> list[Event]:
        """Decide ``commands`` in order, append what they imply in one append, then
        evolve and perform the effects."""
        if len(commands) == 1:  # the common case, without the fold below
            events = lifecycle.decide(self.state, self._in_order(commands[0], self._last_at))
        else:
            events, state, last_at = [], self.state, self._last_at
            for command in commands:
                decided = lifecycle.decide(state, self._in_order(command, last_at))
                if decided:
                    state = lifecycle.fold(decided, state)
                    last_at = max(last_at, decided[-1].at)
                    events += decided
        if not events:
            return []
        await self._persist(events, waits=waits)
        self._last_at = max(self._last_at, events[-1].at)
        for event in events:
            self.state = lifecycle.evolve(self.state, event)
            for effect in lifecycle.effects(event, self.state):
                self._perform(effect)
        if self.state.status is not Status.STARTING:
            self._cancel_probe()
        if self._on_change is not None:
            self._on_change(self.state, events)
        return events

    async def _persist(self, events: list[Event], *, waits: bool) -> None:
        """Append ``events`` at the stream's version: the one place that handles a
        full log (see the module docstring's Error handling).  Raises
        :class:`StoreFullError` only when ``waits`` (a caller hears it)."""
        delay = self._policy.backoff_initial
        while True:
            try:
                await self._store.append(self.backend_id, self.state.version, events)
            except StoreFullError as exc:
                if waits:
                    raise
                if self._full is None:
                    log.warning(
                        "the event log is full: %s keeps its pending %s and retries: %s",
                        self.backend_id,
                        type(events[0]).__name__,
                        exc,
                    )
                self._full = exc
                self._refuse_waiting(exc)
                if not await self._take_inbox_until(trio.current_time() + delay):
                    delay = min(delay * 2, self._policy.log_retry_max)
                continue
            if self._full is not None:
                self._full = None
                log.info(
                    "the event log took %s's pending decision; %d input(s) queued meanwhile",
                    self.backend_id,
                    len(self._backlog),
                )
            return

    async def _take_inbox_until(self, deadline: float) -> bool:
        """Take (queue) whatever arrives until ``deadline`` (trio time);
        True, early, when somebody waits for a command: then the pending append
        is tried again at once, and the caller is refused only if it fails."""
        with trio.move_on_at(deadline):
            async for envelope in self._inbox:
                self._backlog.append(envelope)
                if envelope.waits:
                    return True
        return False

    def _drain_inbox(self) -> None:
        for envelope in self._backlog:
            envelope.done.set()
        self._backlog.clear()
        while True:
            try:
                envelope = self._inbox.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return
            envelope.done.set()

    # ---------------------------------------------------------------- effects

    def _perform(self, effect: Effect) -> None:
        assert self._nursery is not None
        backend_id = self.backend_id
        match effect:
            case Effect.START:
                self._nursery.start_soon(self._start)
            case Effect.PROBE:
                self._nursery.start_soon(self._probe)
            case Effect.STOP:
                self._nursery.start_soon(self._retry, "stop", self._executor.stop, backend_id)
            case Effect.KILL:
                self._nursery.start_soon(self._retry, "kill", self._executor.kill, backend_id)
            case Effect.REMOVE:
                self._nursery.start_soon(self._retry, "remove", self._executor.remove, backend_id)

    async def _start(self) -> None:
        state = self.state
        spec = StartSpec(
            backend_id=state.backend_id,
            key=state.key or warm_key(state),
            fencing_token=state.fencing_token,
            executable=state.config.executable,
            static_token=state.static_token,
            engine=state.engine,
        )
        timeout = state.config.start_timeout_seconds  # a start may pull an image

        async def start() -> Started:
            return await self._executor.start(spec)

        try:
            started = await retrying(
                start,
                policy=self._policy.backoff,
                what=f"start of {spec.backend_id}",
                transient=TRANSIENT,
                permanent=(SpawnError,),
                each_within=timeout,
                keep_trying=lambda: self.state.status is Status.STARTING,
                logger=log,
            )
        except SpawnError as exc:
            self.tell(SpawnFailed(self._clock.now(), str(exc)))
            return
        except TRANSIENT:
            return  # it is no longer starting: nothing to start any more
        if lifecycle.is_terminal(self.state):
            # it ended (start timeout, terminate) while the start was in flight:
            # nothing can be recorded any more, but nothing may be left running
            await self._retry("kill", self._executor.kill, spec.backend_id)
            await self._retry("remove", self._executor.remove, spec.backend_id)
            return
        self.tell(ExecutorStarted(self._clock.now(), started.address, started.handle))

    async def _probe(self) -> None:
        address = self.state.address
        if address is None or self.state.status is not Status.STARTING:
            # it moved on before this task first ran (decisions taken back to back,
            # e.g. a backlog after a full log): no probe, or nothing would cancel it
            return
        self._cancel_probe()
        with trio.CancelScope() as scope:
            self._probe_scope = scope
            await self._policy.probe(address, interval=self._policy.probe_interval)
            self.tell(ReadinessObserved(self._clock.now()))

    def _cancel_probe(self) -> None:
        if self._probe_scope is not None:
            self._probe_scope.cancel()
            self._probe_scope = None

    async def _retry(
        self, what: str, call: Callable[[str], Awaitable[Any]], backend_id: str
    ) -> None:
        await retrying(
            lambda: call(backend_id),
            policy=self._policy.backoff,
            what=f"{what} of {backend_id}",
            transient=TRANSIENT,
            each_within=self._policy.call_timeout,
            logger=log,
        )


def warm_key(state: BackendState) -> BackendKey:
    """What the executor is given as the key of a warm pool's backend, which has
    none when it starts: its own id, in the namespace ``warm-pool:<pool>``
    (so ``SESSION_BACKEND_KEY`` is the backend id; a claim cannot change it)."""
    return BackendKey(name=state.backend_id, namespace=f"warm-pool:{state.warm_pool or ''}")


def resume_effects(
    state: BackendState, *, running: bool | None, at: float
) -> tuple[list[Effect], Command | None]:
    """What an adopted backend's actor must redo after a restart.

    ``running`` says whether the executor still runs it (None: unknown, its
    engine did not answer; the supervisor checks once it does), as observed at
    ``at``.  Returns the effects to perform and, for a backend that vanished,
    the input to feed first (observed at ``at``).  Pure; used by the
    supervisor's recovery.
    """
    status = state.status
    if status is Status.REQUESTED:
        return [], None  # nothing was started yet; the first tick starts it
    if status is Status.STARTING and state.address is None and running is not True:
        # the start was in flight (or never began): start it (again); starts are
        # idempotent per backend id (one that runs is returned), and the start
        # timeout still bounds it
        return [Effect.START], None
    if running is False:
        return [], ExecutorVanished(at, "not running when plane restarted")
    if status is Status.STARTING:
        return ([Effect.PROBE] if state.address else []), None
    if status is Status.TERMINATING:
        return ([Effect.KILL] if state.killed_at is not None else [Effect.STOP]), None
    return [], None
