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
* **warm pools** (:mod:`plane.actors.warm_pools`): a connect naming a warm
  pool, for a key nobody holds (under the key's lock, so claims and cold
  spawns obey the same per-key rules), claims the oldest warm backend of the
  pool not on a draining or lost engine: its claim hook first (if the pool has
  one; a failure discards it and the next is tried), then one
  :class:`~plane.events.types.BackendClaimed` (key, fencing token, token); with
  none warm it spawns cold from the pool's template.  The pool manager, in this
  nursery, refills the pools through :meth:`Supervisor.spawn_warm`.
* **admission**: at most ``max_backends`` live backends (warm pools'
  unclaimed backends count); past that a request is refused at once and
  nothing is started.
* **routing**: commands for a backend (terminate, tokens, connection events,
  executor exits) go to its actor's inbox.
* **recovery** (:meth:`Supervisor.serve` before it reports started): take the
  startup fold (:class:`~plane.events.snapshot.StartupState`: the snapshot
  plus the log's tail, so its cost follows the live backends, not the log's
  length), ask the executor what really runs, adopt what is alive (its address,
  tokens and idle timer carry on; its connections, which died with the previous
  in-process proxy, are closed, but those a proxy process may still hold:
  :attr:`Supervisor.keep_connection`), start again what was still being started,
  record as lost what vanished, and remove (and record) everything
  plane-labelled of its scope that the log does not hold as live (terminated
  or unknown), running or not: an exited container whose removal a stop
  interrupted is removed on the next start.
  Plane (the Rust reference) kills everything on restart; we adopt.

Memory
------
The supervisor holds live backends, not history: :attr:`Supervisor.actors`
holds a backend from its request (a new backend's actor decides and records
it), :attr:`Supervisor.states` from its request recorded, both until its actor
ends after ``terminated``, then drop it.  A terminated backend's state is
read from the log (and its archives) when asked (:meth:`Supervisor.lookup`).
Readers outside the actors (the API, metrics) read the held backends through
:attr:`Supervisor.held_states`, a read-only projection, never the mutable
dicts.
What outlives a backend in memory is per *key*, not per backend: the key's
highest fencing token (one int per key ever used).  Ids used by terminated
backends are not kept: a connect naming its ``backend_id`` is checked against
the log and its archives (``read_stream``), and the log's unique
``(stream, version)`` index refuses a live-log duplicate in any case.

Resource handling
-----------------
:meth:`Supervisor.serve` runs until cancelled.  Cancelling it stops the actors
and leaves the backends running for the next start to adopt; call
:meth:`Supervisor.terminate_all` first to stop them instead.

Error handling
--------------
Refusals are :class:`ConnectRefused` with a Plane-style ``code`` and an HTTP
status; :class:`UnknownBackend` for an id the log does not know.  Store errors
propagate: on a full log (``StoreFullError``) connect, terminate and revoke
raise it with nothing done (the API answers 503 ``LogUnavailable``), while the
actors keep their own pending decisions (:mod:`plane.actors.backend`).
"""

from __future__ import annotations

import collections
import logging
import math
import random
import types
from collections.abc import Callable, Mapping

import attrs
import trio

from plane import tokens
from plane.actors import lifecycle
from plane.actors.backend import (
    DEFAULT_POLICY,
    TRANSIENT,
    BackendActor,
    ExecutorPolicy,
    resume_effects,
)
from plane.actors.clock import TrioClock
from plane.actors.lifecycle import BackendState, Command
from plane.actors.warm_pools import (
    MAX_POOL_SIZE,
    WarmPool,
    WarmPoolManager,
    call_claim_hook,
    template_problem,
)
from plane.engines.config import DEFAULT_ENGINE, EngineSpec
from plane.engines.health import DEFAULT_LOST_AFTER, PING_INTERVAL, Health, Verdict
from plane.engines.placement import Load, place, why_none
from plane.engines.registry import EngineView, evolve_engines
from plane.events.snapshot import StartupState, load_startup
from plane.events.spec import BackendKey, SpawnConfig
from plane.events.store import ConcurrencyError, EventStore, StoreFullError
from plane.events.types import (
    SYSTEM_STREAM,
    BackendClaimed,
    BackendRequested,
    ConnectionClosed,
    EngineDrained,
    EngineLost,
    EngineRegistered,
    EngineReturned,
    EngineUndrained,
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
    WarmBackendRequested,
    WarmPoolDefined,
    WarmPoolRemoved,
    WarmPoolResized,
)
from plane.executors.base import Executor, ExecutorError, ExitObserved, Running, SpawnError
from plane.executors.multi import MultiExecutor
from plane.retry import retrying

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
    warm_pool: str | None = None
    """``spawn_config.warm_pool`` (ours): claim a backend of this warm pool, or
    spawn one cold from its template (then ``spawn_config`` is None)."""


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
    engine: str | None = None
    """The engine (Plane's ``drone``) the backend runs on."""


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


class UnknownEngine(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no engine {name!r}")
        self.name = name


class UnknownWarmPool(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no warm pool {name!r}")
        self.name = name


class UnknownBackend(LookupError):
    def __init__(self, backend_id: str) -> None:
        super().__init__(f"no backend {backend_id!r}")
        self.backend_id = backend_id


StateObserver = Callable[[BackendState, list[Event]], None]
"""Told every committed change of a backend: its new state and the events appended."""


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
        engines: Mapping[str, Executor] | None = None,
        engine_specs: tuple[EngineSpec, ...] = (),
        engine_lost_after: float = DEFAULT_LOST_AFTER,
        ping_interval: float = PING_INTERVAL,
        rng: random.Random | None = None,
        startup: StartupState | None = None,
    ) -> None:
        self.store = store
        self._startup = startup  # given (plane serve shares it with the proxy), else loaded
        if engines is None:
            engines = {DEFAULT_ENGINE: executor}
        specs = {spec.name: spec for spec in engine_specs}
        self._explicit = set(specs)  # recorded in the log; the implicit default is not
        self.engine_specs = {name: specs.get(name, EngineSpec(name)) for name in engines}
        self.engine_lost_after = engine_lost_after
        self.ping_interval = ping_interval
        self.rng = rng if rng is not None else random.Random()
        self.engine_views: dict[str, EngineView] = {}
        self.engine_answers: dict[str, float] = {}  # engine -> when it last answered
        self._deferred: set[str] = set()  # engines not listed at start: recover when they answer
        self._reserved_on: dict[str, int] = {}
        self._system_lock = trio.Lock()
        self.executor = MultiExecutor(engines, locate=self._engine_of, is_lost=self._is_lost)
        self._clock = clock
        self.max_backends = max_backends
        self.token_lifetime_seconds = token_lifetime_seconds
        self.policy = policy
        self.states: dict[str, BackendState] = {}
        self.actors: dict[str, BackendActor] = {}
        self.held_states: Mapping[str, BackendState] = types.MappingProxyType(self.states)
        """The projection the API reads: every backend held in memory (live, or
        just ended), by id, kept by :meth:`_notify` as each change is recorded.
        Read-only and live: copy it (``dict(...)``) to hold it across an await."""
        self._live_by_slot: dict[Slot, str] = {}  # live: requested .. idle
        self._live_per_engine: collections.Counter[str] = collections.Counter()
        """How many keys each engine's backends hold (kept with ``_live_by_slot``)."""
        self._unclaimed: set[str] = set()
        """Ids of warm pools' unclaimed backends that still count (requested .. warm)."""
        self._held_by_slot: dict[Slot, str] = {}  # holds its key: not terminated
        self._released: dict[Slot, trio.Event] = {}  # set when the key's holder ends
        self._fencing: dict[Slot, int] = {}  # per key ever used: its highest fencing token
        self.terminated_count = 0
        """Backends the history holds as terminated (archived ones too)."""
        self._reserved = 0
        self._locks: dict[Slot, trio.Lock] = {}
        self._system_version = 0
        self._nursery: trio.Nursery | None = None
        self.observers: list[StateObserver] = []
        self.keep_connection: Callable[[str, str], bool] | None = None
        """At recovery, asked ``(backend_id, connection_id)`` for each connection
        the log holds open: True if a proxy process may still hold it and the
        caller takes charge of it (``plane serve``:
        :meth:`~plane.api.proxies.ProxyRegistry.adopt_connection`); else it is
        closed."""
        self.recovery_report: dict[str, list[str]] = {"adopted": [], "lost": [], "orphans": []}
        self.warm_pools = WarmPoolManager(self, self.clock)
        self._claiming: set[str] = set()  # warm backends a connect is claiming now

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
            for name in self.executor.engines:
                await nursery.start(self._watch_exits, name, exits_send)
            await self._recover()
            nursery.start_soon(self._route_exits, exits_recv)
            nursery.start_soon(self.warm_pools.run)
            for name in self.executor.engines:
                nursery.start_soon(self._monitor_engine, name)
            task_status.started()

    def live_count(self) -> int:
        """Live backends: those holding a key, and warm pools' unclaimed ones."""
        return len(self._live_by_slot) + len(self.unclaimed_members())

    def known_count(self) -> int:
        """Every backend the history holds: in memory, or terminated and dropped."""
        in_memory_terminated = sum(1 for s in self.states.values() if lifecycle.is_terminal(s))
        return len(self.states) + self.terminated_count - in_memory_terminated

    def state_of(self, backend_id: str) -> BackendState:
        """The state of a backend held in memory (not yet dropped after it ended)."""
        state = self.states.get(backend_id)
        if state is None:
            raise UnknownBackend(backend_id)
        return state

    async def lookup(self, backend_id: str) -> BackendState:
        """The state of any backend the history holds: from memory while it is
        held, else folded from its stream in the log or its archive."""
        state = self.states.get(backend_id)
        if state is not None:
            return state
        records = await self.store.read_stream(backend_id) if backend_id else []
        if not records or records[0].stream == SYSTEM_STREAM:
            raise UnknownBackend(backend_id)
        return lifecycle.fold(r.event for r in records)

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
        if request.warm_pool is not None:
            pool = self.warm_pools.pools.get(request.warm_pool)
            if pool is None:
                raise ConnectRefused(
                    "InvalidRequest",
                    f"no warm pool {request.warm_pool!r} @ $.spawn_config.warm_pool",
                    400,
                )
            request = attrs.evolve(request, spawn_config=pool.spawn_config)
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
        if request.warm_pool is not None:
            pool = self.warm_pools.pools.get(request.warm_pool)
            if pool is not None:
                claimed = await self._claim(request, key, slot, pool)
                if claimed is not None:
                    return claimed
        return await self._spawn(request, key, slot, request.spawn_config)

    async def _claim(
        self, request: ConnectRequest, key: BackendKey, slot: Slot, pool: WarmPool
    ) -> ConnectResult | None:
        """Claim a warm backend of ``pool`` for ``key`` (whose lock the caller
        holds, and which nobody holds): the oldest warm one not on a draining or
        lost engine.  Its claim hook (if the pool has one) is told first; one
        that fails it is discarded and the next is tried.  None if none is left."""
        tried: set[str] = set()
        while True:
            candidates = [
                s
                for s in self.warm_members(pool.name)
                if s.status is Status.WARM
                and s.backend_id not in self._claiming
                and s.backend_id not in tried
                and s.backend_id in self.actors
                and not self.engine_unavailable(s.engine)
            ]
            if not candidates:
                return None
            chosen = min(candidates, key=lambda s: (s.status_at, s.backend_id))
            backend_id = chosen.backend_id
            tried.add(backend_id)
            self._claiming.add(backend_id)
            try:
                fencing = self._fencing.get(slot, 0) + 1
                if pool.claim_path is not None and chosen.address is not None:
                    problem = await call_claim_hook(
                        chosen.address, pool.claim_path, key, fencing, request.user, request.auth
                    )
                    if problem is not None:
                        log.warning("discarding warm backend %s: %s", backend_id, problem)
                        self._claiming.discard(backend_id)
                        await self.discard_warm(backend_id)
                        continue
                token, secret, issued = self._token_event(request)
                claim = BackendClaimed(
                    issued.at,
                    key,
                    fencing,
                    issued.token_hash,
                    issued.expires_at,
                    secret,
                    issued.user,
                    issued.auth,
                )
                actor = self.actors.get(backend_id)
                if actor is None or not await actor.ask(claim):
                    continue  # it ended meanwhile: take the next one
                self._fencing[slot] = fencing
                return self._result(actor.state, True, token, secret)
            finally:
                self._claiming.discard(backend_id)

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
        actor = self.actors[backend_id]
        if not await actor.ask(issued):
            return None
        return self._result(actor.state, False, token, secret)

    async def _spawn(
        self, request: ConnectRequest, key: BackendKey, slot: Slot, spawn_config: SpawnConfig
    ) -> ConnectResult:
        engine = self._place(spawn_config.pool)
        self._check_runnable(engine, spawn_config)
        limit = self.max_backends
        if limit is not None and self.live_count() + self._reserved >= limit:
            raise ConnectRefused(
                "CapacityExceeded",
                f"plane is at its limit of {limit} live backends",
                503,
            )
        backend_id = request.backend_id or tokens.new_backend_id()
        used = request.backend_id is not None and await self._id_used(backend_id)
        if used or backend_id in self.states or backend_id in self.actors:
            raise ConnectRefused("BackendIdTaken", f"backend id {backend_id!r} is taken", 409)
        static = None
        if spawn_config.use_static_token:
            _refuse_user_data(request, backend_id)
            static = tokens.mint_static()
        self._reserved += 1
        self._reserved_on[engine] = self._reserved_on.get(engine, 0) + 1
        try:
            fencing = self._fencing.get(slot, 0) + 1
            requested = BackendRequested(
                self.clock.now(), backend_id, key, spawn_config, fencing, static, engine
            )
            token: str
            secret: str | None = None
            commands: list[Command] = [requested]
            if static is None:
                token, secret, issued = self._token_event(request)
                commands.append(issued)
            else:
                token = static
            try:
                state = await self._create(backend_id, *commands)
            except ConcurrencyError:
                raise ConnectRefused(
                    "BackendIdTaken", f"backend id {backend_id!r} is taken", 409
                ) from None
            self._fencing[slot] = fencing
        finally:
            self._reserved -= 1
            self._reserved_on[engine] -= 1
        return self._result(state, True, token, secret)

    async def _create(self, backend_id: str, *commands: Command) -> BackendState:
        """Create a new backend: its actor, made from :data:`lifecycle.initial`, is
        asked ``commands`` (the request, and a connect's first token) and decides
        and appends them in one append, as it does every later input; the
        supervisor learns the new state through :meth:`_notify`, like any change.
        Returns the state right after them (still ``requested``: the start is
        decided after).  Raises what the log raised (:class:`StoreFullError`;
        :class:`ConcurrencyError`: the stream exists); then the actor has ended
        and nothing of the backend is left."""
        actor = self._start_actor(lifecycle.initial, [], backend_id=backend_id)
        try:
            _, state = await actor.ask_state(*commands)
        except (StoreFullError, ConcurrencyError):
            await actor.ended.wait()
            raise
        return state

    # ------------------------------------------------------------ warm pools

    def warm_members(self, pool: str) -> list[BackendState]:
        """The unclaimed backends counting towards ``pool`` (requested .. warm)."""
        return [
            s
            for s in self.states.values()
            if s.warm_pool == pool and lifecycle.is_warm_member(s)
        ]

    def unclaimed_members(self) -> list[BackendState]:
        """Every warm pool's unclaimed backend that still counts (requested .. warm)."""
        return [self.states[b] for b in self._unclaimed if b in self.states]

    def engine_unavailable(self, engine: str) -> bool:
        """True if ``engine`` takes no new backends (draining or lost) or is gone."""
        view = self.engine_views.get(engine)
        if engine not in self.executor.engines:
            return True
        return view is not None and (view.draining or view.lost)

    async def spawn_warm(self, pool: WarmPool) -> str | None:
        """Record one more warm backend of ``pool`` and start it; None (nothing
        done) when no engine can take it or plane is at ``max_backends``."""
        loads = self.engine_loads()
        engine = place(loads, pool.spawn_config.pool, self.rng)
        if engine is None:
            return None
        limit = self.max_backends
        if limit is not None and self.live_count() + self._reserved >= limit:
            return None
        backend_id = tokens.new_backend_id()
        requested = WarmBackendRequested(
            self.clock.now(), backend_id, pool.name, pool.spawn_config, engine
        )
        self._reserved += 1
        self._reserved_on[engine] = self._reserved_on.get(engine, 0) + 1
        try:
            await self._create(backend_id, requested)
        finally:
            self._reserved -= 1
            self._reserved_on[engine] -= 1
        return backend_id

    async def discard_warm(self, backend_id: str) -> None:
        """Terminate an unclaimed warm backend at once (hard)."""
        actor = self.actors.get(backend_id)
        if actor is not None and actor.state.unclaimed and backend_id not in self._claiming:
            await actor.ask(TerminationRequested(self.clock.now(), TerminationKind.HARD))

    def check_warm_pool(self, spawn_config: SpawnConfig, size: int) -> None:
        """Refuse (:class:`ConnectRefused` 400) a template or size a pool cannot have."""
        if not 0 <= size <= MAX_POOL_SIZE:
            raise ConnectRefused(
                "InvalidRequest", f"must be between 0 and {MAX_POOL_SIZE} @ $.size", 400
            )
        problem = template_problem(spawn_config)
        if problem is not None:
            field, message = problem
            raise ConnectRefused("InvalidRequest", f"{message} @ $.spawn_config.{field}", 400)
        engines = [s.name for s in self.engine_specs.values() if s.pool == spawn_config.pool]
        for engine in engines[:1] or [next(iter(self.executor.engines))]:
            self._check_runnable(engine, spawn_config)

    async def define_warm_pool(
        self, name: str, spawn_config: SpawnConfig, size: int, claim_path: str | None
    ) -> bool:
        """Define (or redefine) a warm pool; True if that changed anything."""
        self.check_warm_pool(spawn_config, size)
        now = self.clock.now()
        known = self.warm_pools.pools.get(name)
        event: Event
        if known == WarmPool(name, spawn_config, size, claim_path):
            return False
        if known is not None and (known.spawn_config, known.claim_path) == (
            spawn_config,
            claim_path,
        ):
            event = WarmPoolResized(now, name, size)
        else:
            event = WarmPoolDefined(now, name, spawn_config, size, claim_path)
        await self._append_system([event])
        self.warm_pools.poke()
        log.info("warm pool %s: size %d", name, size)
        return True

    async def resize_warm_pool(self, name: str, size: int) -> None:
        known = self.warm_pools.pools.get(name)
        if known is None:
            raise UnknownWarmPool(name)
        await self.define_warm_pool(name, known.spawn_config, size, known.claim_path)

    async def remove_warm_pool(self, name: str) -> None:
        """Remove a pool; its unclaimed backends are terminated."""
        if name not in self.warm_pools.pools:
            raise UnknownWarmPool(name)
        await self._append_system([WarmPoolRemoved(self.clock.now(), name)])
        self.warm_pools.poke()

    async def _id_used(self, backend_id: str) -> bool:
        """Whether the history (log or archives) holds a stream ``backend_id``."""
        return backend_id == SYSTEM_STREAM or bool(await self.store.read_stream(backend_id))

    @staticmethod
    def _result(
        state: BackendState, spawned: bool, token: str, secret: str | None
    ) -> ConnectResult:
        return ConnectResult(
            state.backend_id,
            spawned,
            _known_status(state),
            token,
            secret,
            state,
            state.config.subdomain,
            state.engine,
        )

    def _check_runnable(self, engine: str, spawn_config: SpawnConfig) -> None:
        """Refuse at once what the engine's executor could never start."""
        try:
            self.executor.engine(engine).check(spawn_config.executable)
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
        actor = self.actors.get(backend_id)
        if actor is not None:
            await actor.ask(TerminationRequested(self.clock.now(), kind))
            return actor.state
        return await self.lookup(backend_id)

    async def revoke(self, backend_id: str, token_hash: str | None = None) -> BackendState:
        """Revoke one token (by hash) or all of a backend's tokens."""
        actor = self.actors.get(backend_id)
        if actor is not None:
            await actor.ask(TokenRevoked(self.clock.now(), token_hash))
            return actor.state
        return await self.lookup(backend_id)

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
        """Hold a recovered backend and run its actor (re-performing ``resume``)."""
        self.states[state.backend_id] = state
        self._track_unclaimed(state)
        if state.key is not None and not lifecycle.is_terminal(state):
            self._held_by_slot[state.key.slot()] = state.backend_id
            if lifecycle.is_live(state):
                self._hold_live(state.key.slot(), state)
        return self._start_actor(state, resume)

    def _start_actor(
        self,
        state: BackendState,
        resume: list[lifecycle.Effect],
        *,
        backend_id: str | None = None,
    ) -> BackendActor:
        """Run an actor for ``state`` (a new backend: the initial state and its id)."""
        assert self._nursery is not None, "Supervisor.serve is not running"
        actor = BackendActor(
            state,
            backend_id=backend_id,
            store=self.store,
            executor=self.executor,
            clock=self.clock,
            policy=self.policy,
            on_change=self._notify,
        )
        self.actors[actor.backend_id] = actor
        self._nursery.start_soon(self._run_actor, actor, resume)
        return actor

    async def _run_actor(self, actor: BackendActor, resume: list[lifecycle.Effect]) -> None:
        try:
            await actor.run(resume=resume)
        finally:
            if self.actors.get(actor.backend_id) is actor:
                del self.actors[actor.backend_id]
                # history from here on: read from the log when asked (lookup)
                state = self.states.get(actor.backend_id)
                if state is not None and lifecycle.is_terminal(state):
                    del self.states[actor.backend_id]
                    self._unclaimed.discard(actor.backend_id)

    def _hold_live(self, slot: Slot, state: BackendState) -> None:
        """``state``'s backend is the live holder of ``slot`` (kept with the per-engine count)."""
        before = self._live_by_slot.get(slot)
        if before == state.backend_id:
            return
        if before is not None and before in self.states:
            self._live_per_engine[self.states[before].engine] -= 1
        self._live_by_slot[slot] = state.backend_id
        self._live_per_engine[state.engine] += 1

    def _track_unclaimed(self, state: BackendState) -> None:
        if lifecycle.is_warm_member(state):
            self._unclaimed.add(state.backend_id)
        else:
            self._unclaimed.discard(state.backend_id)

    def _notify(self, state: BackendState, events: list[Event]) -> None:
        previous = self.states.get(state.backend_id)
        if lifecycle.is_terminal(state) and not (previous and lifecycle.is_terminal(previous)):
            self.terminated_count += 1
        self.states[state.backend_id] = state
        self._track_unclaimed(state)
        if state.key is not None and lifecycle.is_live(state):
            # a claimed warm backend takes its key here (its claim was recorded)
            self._held_by_slot.setdefault(state.key.slot(), state.backend_id)
            if state.key.slot() not in self._live_by_slot:
                self._hold_live(state.key.slot(), state)
        elif state.key is not None and not lifecycle.is_live(state):
            slot = state.key.slot()
            if self._live_by_slot.get(slot) == state.backend_id:
                del self._live_by_slot[slot]
                self._live_per_engine[state.engine] -= 1
            if lifecycle.is_terminal(state) and self._held_by_slot.get(slot) == state.backend_id:
                del self._held_by_slot[slot]
                released = self._released.pop(slot, None)
                if released is not None:
                    released.set()
        if state.warm_pool is not None:
            self.warm_pools.observe(state, events)
        for observer in self.observers:
            observer(state, events)

    async def _watch_exits(
        self,
        engine: str,
        send: trio.MemorySendChannel[ExitObserved],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep one engine's exit watch running; after a gap, reconcile.

        If the engine's event stream breaks, exits during the gap are not seen:
        once watching again, every started backend the engine no longer runs
        is told it vanished.  An engine that cannot be watched at start does not
        hold plane's start up: it is reported started after its first failure.
        """
        executor = self.executor.engine(engine)
        started = False

        def report_started() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        async def watch() -> None:
            """Watch until the stream breaks: raise if it could not be watched at
            all (retried with growing waits), return if it was (then again)."""
            watching = False
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(executor.serve_exits, send)
                    watching = True
                    if started and not self._is_lost(engine) and engine not in self._deferred:
                        await self._reconcile_engine(engine, orphans=False)  # after a gap
                    report_started()
            except* ExecutorError as group:
                report_started()
                if not watching:
                    raise
                log.warning("watching exits on engine %s stopped: %s", engine, group.exceptions)

        while True:
            await retrying(
                watch,
                policy=self.policy.backoff,
                what=f"watching exits on engine {engine}",
                transient=TRANSIENT,
                logger=log,
            )
            await trio.sleep(self.policy.backoff_initial)

    async def _reconcile_running(self) -> None:
        for engine in self.executor.engines:
            await self._reconcile_engine(engine, orphans=False)

    async def _reconcile_engine(self, engine: str, *, orphans: bool) -> bool:
        """Tell every started backend of ``engine`` that it no longer runs that it
        vanished; with ``orphans``, also remove what the engine holds, running or
        not, that the log does not hold as live there (recovery of an engine, or
        its return).  False if the engine could not be listed (nothing done)."""
        try:
            listing = await self._list(engine, everything=orphans, attempts=_LISTING_ATTEMPTS)
        except TRANSIENT as exc:
            log.warning("listing engine %s failed: %s", engine, exc)
            return False
        listed_at = self.clock.now()
        running = {r.backend_id: r for r in listing if r.running}
        for backend_id, actor in list(self.actors.items()):
            state = actor.state
            if state.engine != engine:
                continue
            if state.address is not None and backend_id not in running:
                message = "exit not observed: the executor lost track"
                actor.tell(ExecutorVanished(listed_at, message))
        if orphans:
            stray = {
                r.backend_id: r
                for r in sorted(listing, key=lambda r: r.running)  # a running one wins
                if not (
                    r.backend_id in self.actors
                    and self.actors[r.backend_id].state.engine == engine
                    and not lifecycle.is_terminal(self.actors[r.backend_id].state)
                )
            }
            await self._remove_orphans(list(stray.values()), engine)
        return True

    # ---------------------------------------------------------------- engines

    def _engine_of(self, backend_id: str) -> str | None:
        state = self.states.get(backend_id)
        return state.engine if state is not None else None

    def _is_lost(self, engine: str) -> bool:
        view = self.engine_views.get(engine)
        return view is not None and view.lost

    def engine_loads(self) -> list[Load]:
        """Each configured engine with its live backends (and reservations)."""
        live: dict[str, int] = dict.fromkeys(self.executor.engines, 0)
        live.update(+self._live_per_engine)  # kept as backends take and free keys: O(engines)
        for member in self.unclaimed_members():
            live[member.engine] = live.get(member.engine, 0) + 1
        loads = []
        for name in self.executor.engines:
            view = self.engine_views.get(name) or EngineView(name)
            spec = self.engine_specs[name]
            loads.append(
                Load(
                    name,
                    spec.pool,
                    live[name] + self._reserved_on.get(name, 0),
                    spec.max_backends,
                    view.draining,
                    view.lost,
                )
            )
        return loads

    def _place(self, pool: str) -> str:
        loads = self.engine_loads()
        engine = place(loads, pool, self.rng)
        if engine is None:
            raise ConnectRefused("NoDroneAvailable", why_none(loads, pool), 503)
        return engine

    async def _append_system(self, events: list[Event]) -> None:
        async with self._system_lock:
            await self.store.append(SYSTEM_STREAM, self._system_version, events)
            self._system_version += len(events)
            for event in events:
                self.engine_views = evolve_engines(self.engine_views, event)
                self.warm_pools.apply(event)

    async def drain(self, name: str, *, draining: bool = True) -> bool:
        """Drain (or undrain) an engine; True if that changed anything."""
        if name not in self.executor.engines:
            raise UnknownEngine(name)
        view = self.engine_views.get(name) or EngineView(name)
        if view.draining == draining:
            return False
        event = EngineDrained if draining else EngineUndrained
        await self._append_system([event(self.clock.now(), name)])
        log.info("engine %s %s", name, "drained" if draining else "undrained")
        if draining:  # its unclaimed warm backends end at once; the pools refill elsewhere
            for member in self.unclaimed_members():
                if member.engine == name:
                    await self.discard_warm(member.backend_id)
        self.warm_pools.poke()
        return True

    async def _register_engines(self) -> None:
        events: list[Event] = []
        now = self.clock.now()
        for name, spec in self.engine_specs.items():
            if name not in self._explicit:
                continue
            registered = EngineRegistered(
                now, name, spec.shown_url, spec.publish, spec.pool, spec.max_backends
            )
            view = self.engine_views.get(name)
            if view is None or (view.url, view.publish, view.pool, view.max_backends) != (
                registered.url,
                registered.publish,
                registered.pool,
                registered.max_backends,
            ):
                events.append(registered)
        if events:
            await self._append_system(events)

    async def _monitor_engine(self, engine: str) -> None:
        """Ping ``engine`` every ``ping_interval``; record it lost after
        ``engine_lost_after`` of silence (its live backends end as lost) and
        returned when it answers again (what it still runs of them is removed)."""
        executor = self.executor.engine(engine)
        health = Health(
            since=self.clock.now(), lost=self._is_lost(engine), lost_after=self.engine_lost_after
        )
        timeout = max(0.5, min(5.0, self.engine_lost_after / 3))
        while True:
            try:
                with trio.fail_after(timeout):
                    await executor.ping()
                answered = True
            except (ExecutorError, trio.TooSlowError) as exc:
                answered = False
                problem = str(exc) or "no answer"
            now = self.clock.now()
            if answered:
                self.engine_answers[engine] = now
                if health.answered(now) is Verdict.RETURNED:
                    log.warning("engine %s answers again", engine)
                    await self._append_system([EngineReturned(now, engine)])
                    self._deferred.add(engine)  # what it still runs of ours: removed below
                if engine in self._deferred and await self._reconcile_engine(engine, orphans=True):
                    # kept until one succeeds: the engine may fail the listing right after
                    # answering a ping, and its recovery must not be forgotten then
                    self._deferred.discard(engine)
            elif health.silent(now) is Verdict.LOST:
                await self._lose_engine(engine, now, problem)
            await trio.sleep(self.ping_interval)

    async def _lose_engine(self, engine: str, now: float, problem: str) -> None:
        message = f"engine {engine} lost: no answer for {self.engine_lost_after:g} s ({problem})"
        log.error("%s", message)
        await self._append_system([EngineLost(now, engine, message[:500])])
        for actor in list(self.actors.values()):
            state = actor.state
            if state.status is None or lifecycle.is_terminal(state):
                continue  # a new backend whose request is not recorded yet, or one that ended
            if state.engine == engine:
                actor.tell(ExecutorVanished(now, message[:500]))

    def engines_view(self) -> list[dict[str, object]]:
        """Every configured engine, as ``GET /ctrl/engines`` shows it."""
        out: list[dict[str, object]] = []
        for load in self.engine_loads():
            view = self.engine_views.get(load.name) or EngineView(load.name)
            answered = self.engine_answers.get(load.name)
            out.append(
                {
                    "name": load.name,
                    "url": view.url,
                    "publish": view.publish,
                    "pool": load.pool,
                    "max": load.max_backends,
                    "state": view.state.value,
                    "live_backends": load.live,
                    "last_answer": round(answered * 1000) if answered is not None else None,
                }
            )
        return out

    async def _route_exits(self, exits: trio.MemoryReceiveChannel[ExitObserved]) -> None:
        async for observed in exits:
            self.tell(observed.backend_id, ExecutorExited(self.clock.now(), observed.exit_code))

    # --------------------------------------------------------------- recovery

    async def _recover(self) -> None:
        startup, self._startup = self._startup, None  # not kept: it holds every id
        if startup is None:
            startup, how = await load_startup_state(self.store)
            log.info("startup fold: %s", how)
        self._system_version = startup.system_version
        self._fencing = startup.fencing
        self.terminated_count = len(startup.ids) - len(startup.live)
        self.states.update(startup.live)
        del startup
        # the engines' views: a fold of the system stream (small: engine and upkeep facts)
        for record in await self.store.read_stream(SYSTEM_STREAM):
            self.engine_views = evolve_engines(self.engine_views, record.event)
            self.warm_pools.apply(record.event)
        await self._register_engines()
        # each input below carries the time its fact was observed: what an engine
        # runs (and so that the previous plane's connections are gone) when its
        # listing answered; a missing engine, or one that did not answer, now
        listings: dict[str, list[Running] | None] = {}
        listed_at: dict[str, float] = {}
        for engine in self.executor.engines:
            listings[engine] = await self._list_engine_at_start(engine)
            listed_at[engine] = self.clock.now()
        running_on = {  # per engine, backend id -> what runs: one lookup per backend
            engine: {r.backend_id: r for r in reversed(found) if r.running}
            for engine, found in listings.items()
            if found is not None
        }
        for backend_id, state in list(self.states.items()):
            if lifecycle.is_terminal(state):
                continue
            listing = listings.get(state.engine)
            now = self.clock.now() if listing is None else listed_at[state.engine]
            if state.engine not in self.executor.engines:
                actor = self._adopt(state, [])
                actor.tell(ExecutorVanished(now, f"engine {state.engine} is not configured"))
                self.recovery_report["lost"].append(backend_id)
                continue
            if listing is None:  # the engine did not answer: recovered when it does
                actor = self._adopt(state, resume_effects(state, running=None, at=now)[0])
                self._close_connections(actor, now)
                continue
            seen = running_on[state.engine].get(backend_id)
            effects, first = resume_effects(state, running=seen is not None, at=now)
            actor = self._adopt(state, effects)
            self._close_connections(actor, now)
            if first is not None:
                actor.tell(first)
                self.recovery_report["lost"].append(backend_id)
            elif seen is not None:
                self.recovery_report["adopted"].append(backend_id)
                if state.status is Status.STARTING and state.address is None and seen.address:
                    actor.tell(ExecutorStarted(now, seen.address, seen.handle))
        for engine, found in listings.items():
            if found:
                await self._remove_orphans(self._leftovers(found), engine)
        if any(self.recovery_report.values()):
            log.info("recovery: %s", {k: len(v) for k, v in self.recovery_report.items()})

    def _close_connections(self, actor: BackendActor, now: float) -> None:
        """The in-process proxy that held an adopted backend's connections died
        with the previous plane: they are closed as observed ``now`` (recovery;
        else the backend never goes idle), but for those :attr:`keep_connection`
        takes (a proxy process's)."""
        keep = self.keep_connection
        for connection_id in sorted(actor.state.connections):
            if keep is None or not keep(actor.state.backend_id, connection_id):
                actor.tell(ConnectionClosed(now, connection_id))

    def _leftovers(self, found: list[Running]) -> list[Running]:
        """What the log does not hold live (terminated, or unknown to it), running or
        not: one entry per backend, a running one first."""
        leftovers: dict[str, Running] = {}
        for item in found:
            known = self.states.get(item.backend_id)
            if known is not None and not lifecycle.is_terminal(known):
                continue
            if item.running or item.backend_id not in leftovers:
                leftovers[item.backend_id] = item
        return list(leftovers.values())

    async def _list_engine_at_start(self, engine: str) -> list[Running] | None:
        """Everything of ours on ``engine`` (running or not), or None (deferred) if
        it does not answer within a few tries: an engine that is down does not stop
        plane from starting."""
        try:
            return await self._list(engine, everything=True, attempts=_LISTING_ATTEMPTS)
        except TRANSIENT:
            pass
        log.error("engine %s does not answer; its backends are recovered when it does", engine)
        self._deferred.add(engine)
        return None

    async def _list(self, engine: str, *, everything: bool, attempts: int) -> list[Running]:
        """One engine's listing (see :meth:`MultiExecutor.list_engine`), tried up to
        ``attempts`` times with backoff; the last failure propagates."""
        return await retrying(
            lambda: self.executor.list_engine(engine, everything=everything),
            policy=self.policy.backoff,
            what=f"listing engine {engine}",
            transient=TRANSIENT,
            each_within=self.policy.call_timeout,
            attempts=attempts,
            logger=log,
        )

    async def _remove_orphans(self, orphans: list[Running], engine: str) -> None:
        """Kill and remove each leftover on ``engine`` (its output kept first, by
        ``remove``), a few at a time, then record those that are gone (one listing).

        A leftover that cannot be removed now is logged and not recorded; the
        next start finds it again (``list_all`` reports it whatever its state),
        so a plane stopped in the middle of a removal leaves nothing behind.
        """
        if not orphans:
            return
        executor = self.executor.engine(engine)
        limiter = trio.CapacityLimiter(_ORPHAN_REMOVALS_AT_ONCE)

        async def remove(orphan: Running) -> None:
            async with limiter:

                async def kill_and_remove() -> None:
                    if orphan.running:
                        await executor.kill(orphan.backend_id)
                    await executor.remove(orphan.backend_id)

                try:
                    await retrying(
                        kill_and_remove,
                        policy=self.policy.backoff,
                        what=f"removing leftover {orphan.backend_id} on engine {engine}",
                        transient=TRANSIENT,
                        each_within=self.policy.call_timeout,
                        attempts=_ORPHAN_REMOVAL_ATTEMPTS,
                        logger=log,
                    )
                except TRANSIENT as exc:
                    log.error(
                        "could not remove leftover %s (%s): %s",
                        orphan.backend_id,
                        orphan.handle,
                        exc,
                    )

        async with trio.open_nursery() as nursery:
            for orphan in orphans:
                nursery.start_soon(remove, orphan)
        try:
            listed = await self._list(engine, everything=True, attempts=_LISTING_ATTEMPTS)
        except TRANSIENT as exc:
            log.warning("listing engine %s after removing leftovers failed: %s", engine, exc)
            return
        still = {r.backend_id for r in listed}
        now = self.clock.now()
        removed: list[OrphanRemoved] = []
        for orphan in orphans:
            if orphan.backend_id in still:
                log.error(
                    "could not remove leftover %s (%s); not recording it",
                    orphan.backend_id,
                    orphan.handle,
                )
                continue
            removed.append(OrphanRemoved(now, orphan.backend_id, orphan.handle))
        if removed:  # one append: recorded together, or (stopped first) not at all
            await self._append_system([*removed])
            self.recovery_report["orphans"] += [e.backend_id for e in removed]


async def load_startup_state(store: EventStore) -> tuple[StartupState, str]:
    """The startup fold of ``store``: for a SQLite store its snapshot plus the
    tail (:func:`plane.events.snapshot.load_startup`, in a worker thread), for
    any other store a fold of its whole log; and how it was made."""
    path = getattr(store, "path", None)
    if path is not None:
        return await trio.to_thread.run_sync(load_startup, path)
    return StartupState().apply_all(await store.read_all()), "folded the whole log"


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


#: How many leftovers recovery removes at once.
_ORPHAN_REMOVALS_AT_ONCE = 8
#: How many times a leftover's removal is tried (then the next recovery finds it).
_ORPHAN_REMOVAL_ATTEMPTS = 3
#: How many times an engine's listing is tried before giving up for now.
_LISTING_ATTEMPTS = 3


def _known_status(state: BackendState) -> Status:
    assert state.status is not None
    return state.status
