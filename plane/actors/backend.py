"""The backend actor: one trio task per backend, the thin shell around the decider.

This module owns the loop that makes a backend's lifecycle happen::

    wait for a command or the next deadline
      -> decide -> append (at the expected version, persist first)
      -> evolve -> perform the effects

Commands come from the supervisor (requests, terminate, tokens), from the
proxy (connection events) and from the actor's own effect tasks (what the
executor observed: started, readiness, spawn failures).  The actor stamps every
command with its clock's ``now`` when it takes it, so a stream's times never
go backwards, and it ticks a due deadline *before* handling a command that
arrives after it: that is what keeps the log re-decidable by ``plane-replay
verify``.

Resource handling
-----------------
Effects run as tasks in the actor's own nursery (a start that retries must not
stop the actor from hearing "terminate"); the actor ends when its backend is
terminated and every effect task is done.  Cancelling the actor (plane shutting
down) leaves the backend running, to be adopted on the next start.

Error handling
--------------
Executor calls each have a timeout; transient :class:`ExecutorError` s are
retried with capped exponential backoff, never in a tight loop.  A
:class:`SpawnError` becomes a ``SpawnFailed`` input.  A store error (disk full,
a concurrency conflict that means a second writer) propagates: the actor does
not act on a decision it could not record.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from plane.actors import lifecycle
from plane.actors.clock import TrioClock
from plane.actors.lifecycle import BackendState, Command, Effect, Tick
from plane.events.store import EventStore
from plane.events.types import (
    Event,
    ExecutorStarted,
    ExecutorVanished,
    ReadinessObserved,
    SpawnFailed,
    Status,
)
from plane.executors.base import Executor, ExecutorError, SpawnError, StartSpec
from plane.executors.readiness import wait_until_answers

log = logging.getLogger("plane.actor")


@attrs.frozen
class ExecutorPolicy:
    """How the actor calls its executor."""

    call_timeout: float = 30.0
    backoff_initial: float = 0.1
    backoff_max: float = 5.0
    probe_interval: float = 0.01
    probe: Callable[..., Awaitable[None]] = wait_until_answers
    """``probe(address, interval=...)`` returns once the backend answers HTTP."""


DEFAULT_POLICY = ExecutorPolicy()


@attrs.define(eq=False)
class Envelope:
    """A command in an actor's inbox; ``done`` is set once it is recorded or ignored."""

    command: Command
    done: trio.Event = attrs.field(factory=trio.Event)
    recorded: list[Event] = attrs.field(factory=list)


Listener = Callable[[BackendState, list[Event]], None]


class BackendActor:
    """One backend's shell.  Create it with its folded state; run :meth:`run`."""

    def __init__(
        self,
        state: BackendState,
        *,
        store: EventStore,
        executor: Executor,
        clock: TrioClock,
        policy: ExecutorPolicy = DEFAULT_POLICY,
        on_change: Listener | None = None,
    ) -> None:
        self.state = state
        self.backend_id = state.backend_id
        self._store = store
        self._executor = executor
        self._clock = clock
        self._policy = policy
        self._on_change = on_change
        self._send, self._inbox = trio.open_memory_channel[Envelope](math.inf)
        self._probe_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self.ended = trio.Event()

    # ------------------------------------------------------------ public face

    def tell(self, command: Command) -> Envelope:
        """Queue ``command`` without waiting; await ``envelope.done`` to know it landed."""
        envelope = Envelope(command)
        try:
            self._send.send_nowait(envelope)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            envelope.done.set()  # the actor is gone: nothing will be recorded
        return envelope

    async def ask(self, command: Command) -> list[Event]:
        """Queue ``command`` and wait until it is recorded; returns what was appended."""
        envelope = self.tell(command)
        await envelope.done.wait()
        return envelope.recorded

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
                finally:
                    self._send.close()
                    self._drain_inbox()
                    self._cancel_probe()
        finally:
            self.ended.set()

    # ------------------------------------------------------------------- loop

    async def _step(self) -> None:
        deadline = lifecycle.next_deadline(self.state)
        envelope: Envelope | None = None
        with trio.move_on_at(self._clock.to_trio(deadline)):
            envelope = await self._inbox.receive()
        now = self._clock.now()
        if deadline is not None and now >= deadline:
            await self._handle(Tick(now))
            while (due := lifecycle.next_deadline(self.state)) is not None and due <= now:
                if not await self._handle(Tick(now)):
                    break
        if envelope is not None:
            command = envelope.command
            if not isinstance(command, Tick):
                command = attrs.evolve(command, at=now)
            envelope.recorded = await self._handle(command)
            envelope.done.set()

    async def _handle(self, command: Command) -> list[Event]:
        events = lifecycle.decide(self.state, command)
        if not events:
            return []
        await self._store.append(self.backend_id, self.state.version, events)
        for event in events:
            self.state = lifecycle.evolve(self.state, event)
            for effect in lifecycle.effects(event, self.state):
                self._perform(effect)
        if self.state.status is not Status.STARTING:
            self._cancel_probe()
        if self._on_change is not None:
            self._on_change(self.state, events)
        return events

    def _drain_inbox(self) -> None:
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
        assert state.key is not None
        spec = StartSpec(
            backend_id=state.backend_id,
            key=state.key,
            fencing_token=state.fencing_token,
            executable=state.config.executable,
            static_token=state.static_token,
            engine=state.engine,
        )
        delay = self._policy.backoff_initial
        while True:
            try:
                # a start may pull an image: it gets the whole start timeout
                with trio.fail_after(state.config.start_timeout_seconds):
                    started = await self._executor.start(spec)
            except SpawnError as exc:
                self.tell(SpawnFailed(self._clock.now(), str(exc)))
                return
            except (ExecutorError, trio.TooSlowError) as exc:
                if self.state.status is not Status.STARTING:
                    return
                log.warning(
                    "start of %s failed, retrying in %.1fs: %s", spec.backend_id, delay, exc
                )
                await trio.sleep(delay)
                delay = min(delay * 2, self._policy.backoff_max)
                continue
            if lifecycle.is_terminal(self.state):
                # it ended (start timeout, terminate) while the start was in flight:
                # nothing can be recorded any more, but nothing may be left running
                await self._retry("kill", self._executor.kill, spec.backend_id)
                await self._retry("remove", self._executor.remove, spec.backend_id)
                return
            self.tell(ExecutorStarted(self._clock.now(), started.address, started.handle))
            return

    async def _probe(self) -> None:
        address = self.state.address
        if address is None:
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
        delay = self._policy.backoff_initial
        while True:
            try:
                with trio.fail_after(self._policy.call_timeout):
                    await call(backend_id)
                return
            except (ExecutorError, trio.TooSlowError) as exc:
                log.warning("%s of %s failed, retrying in %.1fs: %s", what, backend_id, delay, exc)
                await trio.sleep(delay)
                delay = min(delay * 2, self._policy.backoff_max)


def resume_effects(state: BackendState, *, running: bool) -> tuple[list[Effect], Command | None]:
    """What an adopted backend's actor must redo after a restart.

    ``running`` says whether the executor still runs it.  Returns the effects
    to perform and, for a backend that vanished, the input to feed first.
    Pure; used by the supervisor's recovery.
    """
    status = state.status
    if status is Status.REQUESTED:
        return [], None  # nothing was started yet; the first tick starts it
    if status is Status.STARTING and state.address is None and not running:
        # the start was in flight (or never began): start it (again); starts are
        # idempotent per backend id, and the start timeout still bounds it
        return [Effect.START], None
    if not running:
        return [], ExecutorVanished(0.0, "not running when plane restarted")
    if status is Status.STARTING:
        return ([Effect.PROBE] if state.address else []), None
    if status is Status.TERMINATING:
        return ([Effect.KILL] if state.killed_at is not None else [Effect.STOP]), None
    return [], None
