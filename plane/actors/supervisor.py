"""The supervisor: owns every backend actor, admits requests, recovers after a restart.

This module owns the nursery of the backend actors and the routing around them:

* **connect** (get-or-create by key): a key (namespace + name) is *held* by
  its backend until that backend is terminated, not only terminating, so two
  backends of one key never run at once.  Requests for one key are serialized
  by a per-key lock, so any number of concurrent requests yield one backend; a
  request whose tag differs from the holder's is refused at once (409
  ``KeyHeld``); one without a spawn_config gets the holder even while it
  terminates (as Plane does); one with a spawn_config that finds the holder
  terminating waits for the key and spawns the next backend (ours), unless the
  holder outlives its ``stop_grace_seconds`` + 10 s, then it gets the holder.
  Nobody is handed a terminating backend when a new one could be spawned.  A
  new backend gets the key's next fencing token (strictly increasing per key,
  across restarts: recovery takes the highest in the log).
* **static tokens** (Plane's ``use_static_token``): minted once, with the
  request (``s.`` + 256 random bits, kept in ``BackendRequested``); every
  connect to that backend answers the same token, with no secret token and no
  user data (a connect with ``user`` or a non-empty ``auth`` is refused).
* **admission**: at most ``max_backends`` live backends; past that a request
  is refused at once and nothing is started.
* **routing**: commands for a backend (terminate, tokens, connection events,
  executor exits) go to its actor's inbox.
* **recovery** (:meth:`Supervisor.serve` before it reports started): fold the
  log, ask the executor what really runs, adopt what is alive (its address,
  tokens and idle timer carry on; its connections, which died with the previous
  proxy, are closed), start again what was still being started,
  record as lost what vanished, and remove
  (and record) any plane-labelled backend that the log does not hold as live.
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
    ConnectionClosed,
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


HOLD_SLACK_SECONDS = 10.0
"""How long past its ``stop_grace_seconds`` a terminating holder may take to end
before a connect waiting for its key answers with the terminating holder."""


@attrs.frozen
class ConnectResult:
    """What a connect answers.  ``token`` is the connection token, or the
    backend's static token (then ``secret_token`` is None); ``subdomain`` is the
    backend's own (from its spawn config, not the request's)."""

    backend_id: str
    spawned: bool
    status: Status
    token: str
    secret_token: str | None
    state: BackendState
    subdomain: str | None = None


@attrs.frozen
class _Wait:
    """A connect must wait for its key: until ``released`` is set or ``deadline``."""

    released: trio.Event
    deadline: float


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
        self._live_by_slot: dict[Slot, str] = {}  # live: requested .. idle
        self._held_by_slot: dict[Slot, str] = {}  # holds its key: not terminated
        self._released: dict[Slot, trio.Event] = {}  # set when the key's holder ends
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
        """Get-or-create the backend for the request's key and mint a token for it.

        A key is held until its backend is *terminated*.  With a spawn_config
        (same tag), a connect that finds the holder terminating waits, outside
        the key's lock, until the key is released and tries again, so it spawns
        the next backend (or joins the one another connect spawned); past the
        holder's ``stop_grace_seconds`` + :data:`HOLD_SLACK_SECONDS` it answers
        the terminating holder, as Plane does.
        """
        key = request.key or BackendKey(name=tokens.new_backend_id())
        slot = key.slot()
        while True:
            lock = self._locks.setdefault(slot, trio.Lock())
            try:
                async with lock:
                    outcome = await self._connect_locked(request, key, slot)
            finally:
                if (
                    not lock.locked()
                    and lock.statistics().tasks_waiting == 0
                    and self._locks.get(slot) is lock
                ):
                    del self._locks[slot]
            if isinstance(outcome, ConnectResult):
                return outcome
            with trio.move_on_at(self.clock.to_trio(outcome.deadline)):
                await outcome.released.wait()

    async def _connect_locked(
        self, request: ConnectRequest, key: BackendKey, slot: Slot
    ) -> ConnectResult | _Wait:
        holder_id = self._held_by_slot.get(slot)
        if holder_id is not None:
            holder = self.states[holder_id]
            assert holder.key is not None
            if holder.key.tag != key.tag:
                raise ConnectRefused(
                    "KeyHeld",
                    f"key {key.display()!r} is held by backend {holder_id} with tag "
                    f"{holder.key.tag!r}, not {key.tag!r}",
                    409,
                )
            wait = self._wait_for_release(request, slot, holder)
            if wait is not None:
                return wait
            result = await self._attach(request, holder)
            if result is not None:
                # the holder may have begun terminating while the token was recorded
                return self._wait_for_release(request, slot, result.state) or result
            # it ended between the lookup and the token: fall through and spawn anew
        if request.spawn_config is None:
            raise ConnectRefused(
                "KeyUnheldNoSpawnConfig",
                f"no live backend holds key {key.display()!r} and no spawn_config was given",
                409,
            )
        return await self._spawn(request, key, slot, request.spawn_config)

    def _wait_for_release(
        self, request: ConnectRequest, slot: Slot, holder: BackendState
    ) -> _Wait | None:
        """A wait for the key when a connect with a spawn_config finds its holder
        terminating and the holder's time to end has not run out; else None."""
        if request.spawn_config is None or holder.status is not Status.TERMINATING:
            return None
        began = holder.terminating_at if holder.terminating_at is not None else holder.status_at
        deadline = began + holder.config.stop_grace_seconds + HOLD_SLACK_SECONDS
        if self.clock.now() >= deadline:
            return None
        released = self._released.setdefault(slot, trio.Event())
        return _Wait(released, deadline)

    async def _attach(self, request: ConnectRequest, holder: BackendState) -> ConnectResult | None:
        """A token for the key's holder, or None if it ended before one was recorded."""
        backend_id = holder.backend_id
        if holder.static_token is not None:
            _refuse_user_data(request, backend_id)
            return self._result(holder, False, holder.static_token, None)
        token, secret, issued = self._token_event(request)
        if not await self.actors[backend_id].ask(issued):
            return None
        return self._result(self.states[backend_id], False, token, secret)

    async def _spawn(
        self, request: ConnectRequest, key: BackendKey, slot: Slot, spawn_config: SpawnConfig
    ) -> ConnectResult:
        self._check_runnable(spawn_config)
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
        static = None
        if spawn_config.use_static_token:
            _refuse_user_data(request, backend_id)
            static = tokens.mint_static()
        self._reserved += 1
        try:
            fencing = self._fencing.get(slot, 0) + 1
            now = self.clock.now()
            requested = BackendRequested(now, backend_id, key, spawn_config, fencing, static)
            events = [*lifecycle.decide(lifecycle.initial, requested)]
            token: str
            secret: str | None = None
            if static is None:
                token, secret, issued = self._token_event(request)
                events += lifecycle.decide(lifecycle.fold(events), issued)
            else:
                token = static
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
        return self._result(state, True, token, secret)

    @staticmethod
    def _result(
        state: BackendState, spawned: bool, token: str, secret: str | None
    ) -> ConnectResult:
        return ConnectResult(
            state.backend_id,
            spawned,
            _status(state),
            token,
            secret,
            state,
            state.config.subdomain,
        )

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
        if state.key is not None and not lifecycle.is_terminal(state):
            self._held_by_slot[state.key.slot()] = state.backend_id
            if lifecycle.is_live(state):
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
            if lifecycle.is_terminal(state) and self._held_by_slot.get(slot) == state.backend_id:
                del self._held_by_slot[slot]
                released = self._released.pop(slot, None)
                if released is not None:
                    released.set()
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
        running = {r.backend_id: r for r in await self._list_running()}
        for backend_id, state in list(self.states.items()):
            if lifecycle.is_terminal(state):
                continue
            seen = running.pop(backend_id, None)
            effects, first = resume_effects(state, running=seen is not None)
            actor = self._adopt(state, effects)
            for connection_id in sorted(state.connections):
                # the proxy that held it died with the previous plane: it is closed
                actor.tell(ConnectionClosed(0.0, connection_id))
            if first is not None:
                actor.tell(first)
                self.recovery_report["lost"].append(backend_id)
            elif seen is not None:
                self.recovery_report["adopted"].append(backend_id)
                if state.status is Status.STARTING and state.address is None and seen.address:
                    actor.tell(ExecutorStarted(0.0, seen.address, seen.handle))
        await self._remove_orphans(list(running.values()))
        if any(self.recovery_report.values()):
            log.info("recovery: %s", {k: len(v) for k, v in self.recovery_report.items()})

    async def _list_running(self) -> list[Running]:
        delay = self.policy.backoff_initial
        while True:
            try:
                with trio.fail_after(self.policy.call_timeout):
                    return await self.executor.list_running()
            except (ExecutorError, trio.TooSlowError) as exc:
                log.warning("listing running backends failed, retrying in %.1fs: %s", delay, exc)
                await trio.sleep(delay)
                delay = min(delay * 2, self.policy.backoff_max)

    async def _remove_orphans(self, orphans: list[Running]) -> None:
        """Kill and remove each orphan, then record those that are gone (one listing)."""
        if not orphans:
            return
        for orphan in orphans:
            with trio.fail_after(self.policy.call_timeout):
                await self.executor.kill(orphan.backend_id)
                await self.executor.remove(orphan.backend_id)
        still = {r.backend_id for r in await self._list_running()}
        for orphan in orphans:
            if orphan.backend_id in still:
                log.error(
                    "could not remove orphan %s (%s); not recording it",
                    orphan.backend_id,
                    orphan.handle,
                )
                continue
            event = OrphanRemoved(self.clock.now(), orphan.backend_id, orphan.handle)
            await self.store.append(SYSTEM_STREAM, self._system_version, [event])
            self._system_version += 1
            self.recovery_report["orphans"].append(orphan.backend_id)


def _refuse_user_data(request: ConnectRequest, backend_id: str) -> None:
    """A static token is one for everybody: no user data can be attached to it."""
    for field, given in (("user", request.user is not None), ("auth", _has_auth(request))):
        if given:
            raise ConnectRefused(
                "InvalidRequest",
                f"a static token carries no user data (backend {backend_id}) @ $.{field}",
                400,
            )


def _has_auth(request: ConnectRequest) -> bool:
    return request.auth is not None and request.auth not in ("{}", "null")


def _status(state: BackendState) -> Status:
    assert state.status is not None
    return state.status
