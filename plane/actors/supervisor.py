"""The supervisor: owns every backend actor, admits requests, recovers after a restart.

This module owns the nursery of the backend actors and the routing around them:

* **connect** (get-or-create by key): at most one live backend per key
  (namespace + name).  Requests for one key are serialized by a per-key lock,
  so any number of concurrent requests yield one backend; a request whose tag
  differs from the live backend's is refused; a new backend gets the key's
  next fencing token (strictly increasing per key, across restarts).
* **admission**: at most ``max_backends`` live backends; past that a request
  is refused at once and nothing is started.
* **routing**: commands for a backend (terminate, tokens, connection events,
  executor exits) go to its actor's inbox.
* **recovery** (:meth:`Supervisor.serve` before it reports started): fold the
  log, ask the executor what really runs, adopt what is alive (its address,
  tokens and idle timer carry on), start again what was still being started,
  record as lost what vanished, and remove (and record) everything
  plane-labelled of its scope that the log does not hold as live (terminated
  or unknown), running or not: an exited container whose removal a stop
  interrupted is removed on the next start.
  Plane (the Rust reference) kills everything on restart; we adopt.

Resource handling
-----------------
:meth:`Supervisor.serve` runs until cancelled.  Cancelling it stops the actors
and leaves the backends running for the next start to adopt; call
:meth:`Supervisor.terminate_all` first to stop them instead.

Error handling
--------------
Refusals are :class:`ConnectRefused` with a Plane-style ``code`` and an HTTP
status; :class:`UnknownBackend` for an id the log does not know.  Store errors
propagate.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import attrs
import trio

from plane import tokens
from plane.actors import lifecycle
from plane.actors.backend import DEFAULT_POLICY, BackendActor, ExecutorPolicy, resume_effects
from plane.actors.clock import TrioClock
from plane.actors.lifecycle import BackendState, Command
from plane.events.spec import BackendKey, SpawnConfig
from plane.events.store import ConcurrencyError, EventStore
from plane.events.types import (
    SYSTEM_STREAM,
    BackendRequested,
    Event,
    ExecutorExited,
    ExecutorStarted,
    ExecutorVanished,
    OrphanRemoved,
    Status,
    TerminationKind,
    TerminationRequested,
    TokenIssued,
    TokenRevoked,
)
from plane.executors.base import Executor, ExecutorError, ExitObserved, Running, SpawnError

log = logging.getLogger("plane.supervisor")

Slot = tuple[str, str]


@attrs.frozen
class ConnectRequest:
    """Plane's connect body, parsed."""

    key: BackendKey | None = None
    spawn_config: SpawnConfig | None = None
    backend_id: str | None = None
    user: str | None = None
    auth: str | None = None  # compact JSON, handed to the backend as x-verified-user-data
    cluster: str | None = None  # Plane's spawn_config.cluster: must name this plane's cluster


@attrs.frozen
class ConnectResult:
    backend_id: str
    spawned: bool
    status: Status
    token: str
    secret_token: str
    state: BackendState


class ConnectRefused(Exception):
    """A connect that cannot be honoured; ``code`` and ``http_status`` say why."""

    def __init__(self, code: str, message: str, http_status: int) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = http_status


class UnknownBackend(LookupError):
    def __init__(self, backend_id: str) -> None:
        super().__init__(f"no backend {backend_id!r}")
        self.backend_id = backend_id


Observer = Callable[[BackendState, list[Event]], None]


class Supervisor:
    """Owns the actors; see the module docstring."""

    def __init__(
        self,
        store: EventStore,
        executor: Executor,
        *,
        clock: TrioClock | None = None,
        max_backends: int | None = None,
        token_lifetime_seconds: float = 3600.0,
        policy: ExecutorPolicy = DEFAULT_POLICY,
    ) -> None:
        self.store = store
        self.executor = executor
        self._clock = clock
        self.max_backends = max_backends
        self.token_lifetime_seconds = token_lifetime_seconds
        self.policy = policy
        self.states: dict[str, BackendState] = {}
        self.actors: dict[str, BackendActor] = {}
        self._live_by_slot: dict[Slot, str] = {}
        self._fencing: dict[Slot, int] = {}
        self._reserved = 0
        self._locks: dict[Slot, trio.Lock] = {}
        self._system_version = 0
        self._nursery: trio.Nursery | None = None
        self.observers: list[Observer] = []
        self.recovery_report: dict[str, list[str]] = {"adopted": [], "lost": [], "orphans": []}

    @property
    def clock(self) -> TrioClock:
        if self._clock is None:
            self._clock = TrioClock()
        return self._clock

    # ------------------------------------------------------------------ serve

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Recover, then run every actor until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            exits_send, exits_recv = trio.open_memory_channel[ExitObserved](math.inf)
            await nursery.start(self._watch_exits, exits_send)
            await self._recover()
            nursery.start_soon(self._route_exits, exits_recv)
            task_status.started()

    def live_count(self) -> int:
        return len(self._live_by_slot)

    def state_of(self, backend_id: str) -> BackendState:
        state = self.states.get(backend_id)
        if state is None:
            raise UnknownBackend(backend_id)
        return state

    # ---------------------------------------------------------------- connect

    async def connect(self, request: ConnectRequest) -> ConnectResult:
        """Get-or-create the backend for the request's key and mint a token for it."""
        key = request.key or BackendKey(name=tokens.new_backend_id())
        slot = key.slot()
        lock = self._locks.setdefault(slot, trio.Lock())
        try:
            async with lock:
                return await self._connect_locked(request, key, slot)
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._locks.pop(slot, None)

    async def _connect_locked(
        self, request: ConnectRequest, key: BackendKey, slot: Slot
    ) -> ConnectResult:
        live_id = self._live_by_slot.get(slot)
        if live_id is not None:
            live = self.states[live_id]
            assert live.key is not None
            if live.key.tag != key.tag:
                raise ConnectRefused(
                    "KeyHeld",
                    f"key {key.display()!r} is held by backend {live_id} with tag "
                    f"{live.key.tag!r}, not {key.tag!r}",
                    409,
                )
            token, secret, issued = self._token_event(request)
            recorded = await self.actors[live_id].ask(issued)
            if recorded:
                state = self.states[live_id]
                return ConnectResult(live_id, False, _status(state), token, secret, state)
            # it ended between the lookup and the token: fall through and spawn anew
        if request.spawn_config is None:
            raise ConnectRefused(
                "KeyUnheldNoSpawnConfig",
                f"no live backend holds key {key.display()!r} and no spawn_config was given",
                409,
            )
        self._check_runnable(request.spawn_config)
        limit = self.max_backends
        if limit is not None and self.live_count() + self._reserved >= limit:
            raise ConnectRefused(
                "CapacityExceeded",
                f"plane is at its limit of {limit} live backends",
                503,
            )
        backend_id = request.backend_id or tokens.new_backend_id()
        if backend_id in self.states:
            raise ConnectRefused("BackendIdTaken", f"backend id {backend_id!r} is taken", 409)
        self._reserved += 1
        try:
            fencing = self._fencing.get(slot, 0) + 1
            now = self.clock.now()
            requested = BackendRequested(now, backend_id, key, request.spawn_config, fencing)
            token, secret, issued = self._token_event(request)
            events = [*lifecycle.decide(lifecycle.initial, requested)]
            state = lifecycle.fold(events)
            events += lifecycle.decide(state, issued)
            try:
                await self.store.append(backend_id, 0, events)
            except ConcurrencyError:
                raise ConnectRefused(
                    "BackendIdTaken", f"backend id {backend_id!r} is taken", 409
                ) from None
            state = lifecycle.fold(events)
            self._fencing[slot] = fencing
            self._adopt(state, [])
            self._notify(state, events)
        finally:
            self._reserved -= 1
        return ConnectResult(backend_id, True, _status(state), token, secret, state)

    def _check_runnable(self, spawn_config: SpawnConfig) -> None:
        """Refuse at once what this executor could never start."""
        try:
            self.executor.check(spawn_config.executable)
        except SpawnError as exc:
            raise ConnectRefused("InvalidRequest", str(exc), 400) from None

    def _token_event(self, request: ConnectRequest) -> tuple[str, str, TokenIssued]:
        token = tokens.mint()
        secret = tokens.mint()
        now = self.clock.now()
        event = TokenIssued(
            now,
            tokens.digest(token),
            now + self.token_lifetime_seconds,
            secret,
            request.user,
            request.auth,
        )
        return token, secret, event

    # ------------------------------------------------------------ other calls

    async def terminate(self, backend_id: str, kind: TerminationKind) -> BackendState:
        """Ask a backend to terminate; returns its state once the request is recorded."""
        state = self.state_of(backend_id)
        actor = self.actors.get(backend_id)
        if actor is not None:
            await actor.ask(TerminationRequested(self.clock.now(), kind))
            return self.states[backend_id]
        return state

    async def revoke(self, backend_id: str, token_hash: str | None = None) -> BackendState:
        """Revoke one token (by hash) or all of a backend's tokens."""
        state = self.state_of(backend_id)
        actor = self.actors.get(backend_id)
        if actor is not None:
            await actor.ask(TokenRevoked(self.clock.now(), token_hash))
            return self.states[backend_id]
        return state

    def tell(self, backend_id: str, command: Command) -> None:
        """Deliver a command without waiting (proxy connection events); dropped if
        the backend has no live actor."""
        actor = self.actors.get(backend_id)
        if actor is not None:
            actor.tell(command)

    async def terminate_all(self, kind: TerminationKind = TerminationKind.SOFT) -> None:
        """Terminate every live backend and wait until all are terminated."""
        actors = list(self.actors.values())
        for actor in actors:
            await self.terminate(actor.backend_id, kind)
        for actor in actors:
            await actor.ended.wait()

    # ---------------------------------------------------------------- actors

    def _adopt(self, state: BackendState, resume: list[lifecycle.Effect]) -> BackendActor:
        assert self._nursery is not None, "Supervisor.serve is not running"
        actor = BackendActor(
            state,
            store=self.store,
            executor=self.executor,
            clock=self.clock,
            policy=self.policy,
            on_change=self._notify,
        )
        self.actors[state.backend_id] = actor
        self.states[state.backend_id] = state
        if lifecycle.is_live(state) and state.key is not None:
            self._live_by_slot[state.key.slot()] = state.backend_id
        self._nursery.start_soon(self._run_actor, actor, resume)
        return actor

    async def _run_actor(self, actor: BackendActor, resume: list[lifecycle.Effect]) -> None:
        try:
            await actor.run(resume=resume)
        finally:
            if self.actors.get(actor.backend_id) is actor:
                del self.actors[actor.backend_id]

    def _notify(self, state: BackendState, events: list[Event]) -> None:
        self.states[state.backend_id] = state
        if state.key is not None and not lifecycle.is_live(state):
            slot = state.key.slot()
            if self._live_by_slot.get(slot) == state.backend_id:
                del self._live_by_slot[slot]
        for observer in self.observers:
            observer(state, events)

    async def _watch_exits(
        self,
        send: trio.MemorySendChannel[ExitObserved],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep the executor's exit watch running; after a gap, reconcile.

        If the engine's event stream breaks, exits during the gap are not seen:
        once watching again, every started backend the executor no longer runs
        is told it vanished.
        """
        delay = self.policy.backoff_initial
        started = False
        while True:
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.executor.serve_exits, send)
                    if not started:
                        started = True
                        task_status.started()
                    else:
                        await self._reconcile_running()
                    delay = self.policy.backoff_initial
            except* ExecutorError as group:
                log.warning("watching exits failed, retrying in %.1fs: %s", delay, group.exceptions)
            await trio.sleep(delay)
            delay = min(delay * 2, self.policy.backoff_max)

    async def _reconcile_running(self) -> None:
        running = {r.backend_id for r in await self._list_running()}
        for backend_id, actor in list(self.actors.items()):
            state = actor.state
            if state.address is not None and backend_id not in running:
                actor.tell(ExecutorVanished(0.0, "exit not observed: the executor lost track"))

    async def _route_exits(self, exits: trio.MemoryReceiveChannel[ExitObserved]) -> None:
        async for observed in exits:
            self.tell(observed.backend_id, ExecutorExited(self.clock.now(), observed.exit_code))

    # --------------------------------------------------------------- recovery

    async def _recover(self) -> None:
        records = await self.store.read_all()
        streams: dict[str, list[Event]] = {}
        for record in records:
            if record.stream == SYSTEM_STREAM:
                self._system_version = record.version
                continue
            streams.setdefault(record.stream, []).append(record.event)
        for backend_id, events in streams.items():
            state = lifecycle.fold(events)
            self.states[backend_id] = state
            if state.key is not None:
                slot = state.key.slot()
                self._fencing[slot] = max(self._fencing.get(slot, 0), state.fencing_token)
        found = await self._list(everything=True)
        running = {r.backend_id: r for r in found if r.running}
        for backend_id, state in list(self.states.items()):
            if lifecycle.is_terminal(state):
                continue
            seen = running.get(backend_id)
            effects, first = resume_effects(state, running=seen is not None)
            actor = self._adopt(state, effects)
            if first is not None:
                actor.tell(first)
                self.recovery_report["lost"].append(backend_id)
            elif seen is not None:
                self.recovery_report["adopted"].append(backend_id)
                if state.status is Status.STARTING and state.address is None and seen.address:
                    actor.tell(ExecutorStarted(0.0, seen.address, seen.handle))
        # what the log does not hold live (terminated, or unknown to it), running or not
        leftovers: dict[str, Running] = {}
        for item in found:
            known = self.states.get(item.backend_id)
            if known is not None and not lifecycle.is_terminal(known):
                continue
            if item.running or item.backend_id not in leftovers:
                leftovers[item.backend_id] = item
        await self._remove_orphans(list(leftovers.values()))
        if any(self.recovery_report.values()):
            log.info("recovery: %s", {k: len(v) for k, v in self.recovery_report.items()})

    async def _list_running(self) -> list[Running]:
        return await self._list(everything=False)

    async def _list(self, *, everything: bool) -> list[Running]:
        """The executor's listing (``list_all`` or ``list_running``), retried until it answers."""
        delay = self.policy.backoff_initial
        call = self.executor.list_all if everything else self.executor.list_running
        while True:
            try:
                with trio.fail_after(self.policy.call_timeout):
                    return await call()
            except (ExecutorError, trio.TooSlowError) as exc:
                log.warning("listing backends failed, retrying in %.1fs: %s", delay, exc)
                await trio.sleep(delay)
                delay = min(delay * 2, self.policy.backoff_max)

    async def _remove_orphans(self, orphans: list[Running]) -> None:
        """Kill and remove each leftover (its output kept first, by ``remove``), a few
        at a time, then record those that are gone (one listing).

        A leftover that cannot be removed now is logged and not recorded; the
        next start finds it again (``list_all`` reports it whatever its state),
        so a plane stopped in the middle of a removal leaves nothing behind.
        """
        if not orphans:
            return
        limiter = trio.CapacityLimiter(_ORPHAN_REMOVALS_AT_ONCE)

        async def remove(orphan: Running) -> None:
            async with limiter:
                try:
                    with trio.fail_after(self.policy.call_timeout):
                        if orphan.running:
                            await self.executor.kill(orphan.backend_id)
                        await self.executor.remove(orphan.backend_id)
                except (ExecutorError, trio.TooSlowError) as exc:
                    log.error(
                        "could not remove leftover %s (%s): %s",
                        orphan.backend_id,
                        orphan.handle,
                        exc,
                    )

        async with trio.open_nursery() as nursery:
            for orphan in orphans:
                nursery.start_soon(remove, orphan)
        still = {r.backend_id for r in await self._list(everything=True)}
        for orphan in orphans:
            if orphan.backend_id in still:
                log.error(
                    "could not remove leftover %s (%s); not recording it",
                    orphan.backend_id,
                    orphan.handle,
                )
                continue
            event = OrphanRemoved(self.clock.now(), orphan.backend_id, orphan.handle)
            await self.store.append(SYSTEM_STREAM, self._system_version, [event])
            self._system_version += 1
            self.recovery_report["orphans"].append(orphan.backend_id)


#: How many leftovers recovery removes at once.
_ORPHAN_REMOVALS_AT_ONCE = 8


def _status(state: BackendState) -> Status:
    assert state.status is not None
    return state.status
