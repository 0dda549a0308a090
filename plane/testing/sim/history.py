"""One simulated history: the real plane against simulated clients, executor and disk.

This module owns :func:`run_history`.  From one seed it runs, in a fresh
``trio.run`` on simulated time (:class:`~plane.testing.sim.clock.JumpClock`
with the in-memory store; ``trio.testing.MockClock(autojump_threshold=0)``
with SQLite, whose writer thread the clock must wait for), the real
:class:`~plane.actors.supervisor.Supervisor` (its actors, its recovery), the
proxy's real :class:`~plane.proxy.tracking.Tracker`, and a real store (the
in-memory twin, or a SQLite file) behind :class:`~plane.testing.sim.store.FaultyStore`,
against :class:`~plane.testing.sim.executor.SimExecutor` (one engine, or two
with their own faults, placement among them, and drains).  Each of ``steps``
steps draws one action (a client's connect, terminate, revoke, WebSocket or
HTTP traffic through the tracker, a status stream; an executor fault (the engine
unreachable for a while, or lost and returned); a full
disk; a crash of plane), lets simulated time pass, and checks the invariants
(:mod:`plane.testing.sim.checks`).  Then clients stop, faults heal, every
timeout passes (every backend must be terminated), plane crashes once more and
recovers (the executor must hold nothing for a terminated backend), and the
whole log is checked as ``plane-replay verify`` checks it.

Crashes: the simulator cancels the running plane (its supervisor, actors,
tracker, and the clients talking to it) with no clean-up of its own, and starts
a new one on what the log holds (the same in-memory log; with SQLite, what was
committed) and what the executor still runs.  A store error out of the
supervisor (the disk is full) is a crash too, followed by a restart.

Determinism
-----------
With the in-memory store a seed fixes the whole history.  The simulator's
``random.Random(seed)`` is the only source of its choices; the randomness of
plane itself (backend ids, tokens, the tracker's connection-id prefix) is drawn
from a second seeded ``Random`` while a history runs (:func:`seeded_secrets`
swaps the ``secrets`` module those modules use); and the order in which trio
runs tasks is a function of the seed alone
(:func:`~plane.testing.sim.schedule.seeded_scheduling`: its Random seeded, its
batches ordered the same way with or without pytest, equal deadlines in the
order they were set, not by memory address), so a seed replays bit for bit in
any process (:attr:`Outcome.digest` says so).  With SQLite, the
writer thread makes the interleaving real: those histories are checked for the
invariants, not replayed bit for bit.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import random
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import trio
import trio.testing

from plane.actors.backend import ExecutorPolicy
from plane.actors.clock import TrioClock
from plane.actors.supervisor import ConnectRefused, ConnectRequest, Supervisor, UnknownBackend
from plane.engines.config import EngineSpec
from plane.events.memory import MemoryEventStore
from plane.events.spec import BackendKey, Executable, SpawnConfig
from plane.events.sqlite import SqliteLogReader, open_sqlite_store
from plane.events.store import EventStore, RecordedEvent, StoreError
from plane.events.types import (
    BackendTerminated,
    EngineLost,
    EngineReturned,
    Status,
    TerminationKind,
)
from plane.proxy.settings import ProxySettings
from plane.proxy.tracking import InFlight, Tracker
from plane.testing.sim.checks import Ack, Checker, InvariantBroken
from plane.testing.sim.clock import JumpClock
from plane.testing.sim.executor import SimEngines
from plane.testing.sim.schedule import seed_trio_scheduler as seed_trio_scheduler  # re-exported
from plane.testing.sim.schedule import seeded_scheduling
from plane.testing.sim.store import ClockHold, Disk, FaultyStore

EPOCH = 1_700_000_000.0
KEYS = ("a", "b", "c", "d", "e")
SETTLE_SECONDS = 400.0
"""Simulated time after clients stop within which every backend must end: longer
than any chain of the simulator's timeouts (idle 60, start 30, grace 15, kill
confirmation 30, executor retries).  Cut short, after at least a quarter of
it, once every backend has ended (:meth:`History._settled`)."""
ENGINE_LOST_AFTER = (10.0, 30.0)
"""The supervisor's ``engine_lost_after`` (``plane serve --engine-lost-after``),
one drawn per history: an outage longer than it makes the engine lost."""
PINGS_PER_LOST_AFTER = 3
"""The supervisor's ``ping_interval`` is ``engine_lost_after`` over this (3.3 s or
10 s, where ``plane serve`` pings every 2 s): an outage longer than
``engine_lost_after`` still fails at least three pings in a row and makes the
engine lost, one shorter than two intervals never does, and a history wakes for
pings a third as often (a ping and its timeout scope were a third of a
history's scheduler passes and a sixth of its CPU time)."""
HISTORY_LIMIT_SECONDS = 1e6
"""Simulated time after which a history that has not finished is stuck."""


@attrs.frozen
class Outcome:
    """What one history did; ``failure`` is None when every invariant held."""

    seed: int
    steps: int
    store: str
    failure: InvariantBroken | None
    events: list[RecordedEvent]
    stats: dict[str, int]

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def digest(self) -> str:
        """A short fingerprint of the whole log: equal for a bit-for-bit replay."""
        text = "\n".join(f"{r.seq} {r.stream} {r.version} {r.event!r}" for r in self.events)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------ randomness


class _SeededSecrets:
    """The part of :mod:`secrets` plane uses, drawn from a seeded Random."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def token_urlsafe(self, nbytes: int = 32) -> str:
        return base64.urlsafe_b64encode(self._rng.randbytes(nbytes)).rstrip(b"=").decode()

    def token_hex(self, nbytes: int = 32) -> str:
        return self._rng.randbytes(nbytes).hex()

    def choice(self, seq: Any) -> Any:
        return self._rng.choice(seq)


def _modules_with_secrets() -> list[ModuleType]:
    import plane.proxy.tracking
    import plane.tokens

    return [plane.tokens, plane.proxy.tracking]


@contextlib.contextmanager
def seeded_secrets(seed: int) -> Iterator[None]:
    """While in the block, plane's ids and tokens come from ``Random(seed)``."""
    fake = _SeededSecrets(random.Random(seed))
    modules = _modules_with_secrets()
    saved = [module.secrets for module in modules]
    for module in modules:
        setattr(module, "secrets", fake)  # noqa: B010 - a module attribute on purpose
    try:
        yield
    finally:
        for module, original in zip(modules, saved, strict=True):
            setattr(module, "secrets", original)  # noqa: B010


@contextlib.contextmanager
def _quiet_plane_logs() -> Iterator[None]:
    """Plane's retry warnings are the simulator's daily bread: keep only errors."""
    logger = logging.getLogger("plane")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# ---------------------------------------------------------------- plane


@attrs.define
class Incarnation:
    """One run of plane between a start and a crash."""

    supervisor: Supervisor
    tracker: Tracker
    store: EventStore
    clients: trio.Nursery
    number: int
    sockets: list[tuple[str, str]] = attrs.field(factory=list)
    flights: set[InFlight] = attrs.field(factory=set)
    streams: int = 0


@asynccontextmanager
async def _sqlite(path: Path, hold: ClockHold) -> AsyncIterator[EventStore]:
    """The SQLite log at ``path``; opening and closing it take no simulated time."""
    opened = open_sqlite_store(path)
    with hold.held():
        store = await opened.__aenter__()
    raised: tuple[Any, Any, Any] = (None, None, None)
    try:
        yield store
    except BaseException as exc:
        raised = (type(exc), exc, exc.__traceback__)
        raise
    finally:
        with hold.held():
            await opened.__aexit__(*raised)


async def _host_nursery(*, task_status: trio.TaskStatus[trio.Nursery]) -> None:
    async with trio.open_nursery() as nursery:
        task_status.started(nursery)
        await trio.sleep_forever()


class History:
    """The world of one history; see the module docstring."""

    def __init__(
        self, seed: int, steps: int, world: trio.Nursery, sqlite_path: Path | None
    ) -> None:
        self.seed = seed
        self.steps = steps
        self.rng = random.Random(seed)
        self.world = world
        names = ["local"] if self.rng.random() < 0.6 else ["a", "b"]
        self.executors = SimEngines(self.rng, world, names)
        self.disk = Disk()
        self.hold = ClockHold()
        self.sqlite_path = sqlite_path
        self.memory = MemoryEventStore() if sqlite_path is None else None
        self.checker = Checker()
        self.plane: Incarnation | None = None
        self.acked: list[Ack] = []
        self.known: list[str] = []
        self.stats: dict[str, int] = {f"engines-{len(names)}": 1}
        self.max_backends = self.rng.choice([None, None, 3])
        self.engine_lost_after = self.rng.choice(ENGINE_LOST_AFTER)
        self.quiet = False
        self._stopping = False
        self._scope: trio.CancelScope | None = None
        self._up = trio.Event()
        self._stopped = trio.Event()
        self._incarnations = 0
        self._compared = -1

    def count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    # ------------------------------------------------------------ plane

    async def keep_plane(self) -> None:
        """Run plane; after a crash (or a store error) start it again."""
        try:
            await self._keep_plane()
        finally:
            self._stopped.set()

    async def _keep_plane(self) -> None:
        while not self._stopping:
            with trio.CancelScope() as scope:
                self._scope = scope
                try:
                    await self._incarnation()
                except* StoreError:
                    self.count("store-crash")
            self.plane = None
            self._up = trio.Event()
            if self._stopping:
                return
            await trio.sleep(self.rng.uniform(1.0, 8.0))  # as a service manager restarts it

    async def _incarnation(self) -> None:
        async with AsyncExitStack() as stack:
            inner: EventStore
            if self.memory is not None:
                inner = self.memory
            else:
                assert self.sqlite_path is not None
                inner = await stack.enter_async_context(_sqlite(self.sqlite_path, self.hold))
            store = FaultyStore(inner, self.disk, None if self.memory else self.hold)
            engines = self.executors.engines
            supervisor = Supervisor(
                store,
                next(iter(engines.values())),
                clock=TrioClock(offset=EPOCH),
                max_backends=self.max_backends,
                engine_lost_after=self.engine_lost_after,
                ping_interval=self.engine_lost_after / PINGS_PER_LOST_AFTER,
                policy=ExecutorPolicy(call_timeout=10.0, probe=self.executors.probe),
                engines=None if list(engines) == ["local"] else engines,
                engine_specs=tuple(
                    EngineSpec(name, f"unix:///sim/{name}") for name in engines if name != "local"
                ),
                rng=random.Random(self.rng.getrandbits(64)),  # placement among tied engines
            )
            tracker = Tracker(supervisor.tell, supervisor.clock, None, ProxySettings())
            async with trio.open_nursery() as nursery:
                await nursery.start(supervisor.serve)
                nursery.start_soon(tracker.run)
                clients = await nursery.start(_host_nursery)
                self._incarnations += 1
                self.plane = Incarnation(supervisor, tracker, inner, clients, self._incarnations)
                self._up.set()

    def crash(self) -> None:
        """Plane dies now: everything in memory is gone."""
        self.count("crash")
        self.plane = None
        if self._scope is not None:
            self._scope.cancel()

    async def wait_up(self) -> Incarnation:
        while self.plane is None:
            await self._up.wait()
        return self.plane

    # ------------------------------------------------------------ steps

    async def run(self) -> None:
        if self.memory is None:
            self.world.start_soon(self.hold.run)
        self.world.start_soon(self.keep_plane)
        await self.wait_up()
        for _ in range(self.steps):
            if self.plane is not None:
                self.act(self.plane)
            await trio.sleep(self.rng.expovariate(1 / 2.5))
            await self.check()
        await self.finish()

    def act(self, plane: Incarnation) -> None:
        actions: list[tuple[float, Callable[[Incarnation], None]]] = [
            (30, self.connect),
            (6, self.terminate),
            (3, self.revoke),
            (8, self.ws_open),
            (6, self.ws_close),
            (12, self.http),
            (2, self.status_stream),
            (4, self.exit),
            (1.5, self.vanish),
            (1.5, self.outage),
            (1, self.drain),
            (1.5, self.disk_full),
            (2, lambda _: self.crash()),
            (22.5, lambda _: None),
        ]
        weights = [w for w, _ in actions]
        (action,) = self.rng.choices([a for _, a in actions], weights)
        action(plane)

    def spawn_config(self) -> SpawnConfig:
        rng = self.rng
        return SpawnConfig(
            Executable(image="sim:1"),
            max_idle_seconds=rng.choice([5.0, 20.0, 60.0]),
            lifetime_limit_seconds=rng.choice([None, None, 90.0, 300.0]),
            start_timeout_seconds=rng.choice([5.0, 15.0, 30.0]),
            stop_grace_seconds=rng.choice([1.0, 5.0, 15.0]),
            use_static_token=rng.random() < 0.15,
        )

    def connect(self, plane: Incarnation) -> None:
        rng = self.rng
        key = BackendKey(
            name=rng.choice(KEYS),
            namespace=rng.choice(["", "", "ns"]),
            tag="" if rng.random() < 0.9 else "t",
        )
        config = None if rng.random() < 0.2 else self.spawn_config()
        request = ConnectRequest(key=key, spawn_config=config)
        plane.clients.start_soon(self._connect, plane, request)

    async def _connect(self, plane: Incarnation, request: ConnectRequest) -> None:
        try:
            result = await plane.supervisor.connect(request)
        except ConnectRefused as refused:
            self.count(f"refused-{refused.code}")
            return
        except StoreError:
            self.count("connect-store-error")
            return
        static = result.secret_token is None
        self.acked.append(Ack(result.backend_id, result.state.fencing_token, result.token, static))
        if result.backend_id not in self.known:
            self.known.append(result.backend_id)
        self.count("connected")

    def _pick(self, backend_ids: list[str]) -> str | None:
        return self.rng.choice(backend_ids) if backend_ids else None

    def _serving(self, plane: Incarnation) -> list[str]:
        """Backends the proxy would route to (ready or idle)."""
        states = plane.supervisor.states
        return [
            b for b in self.known if b in states and states[b].status in (Status.READY, Status.IDLE)
        ]

    async def _call(self, what: str, call: Callable[[], Awaitable[Any]]) -> None:
        try:
            await call()
        except (UnknownBackend, StoreError):
            self.count(f"{what}-refused")

    def terminate(self, plane: Incarnation) -> None:
        backend_id = self._pick(self.known)
        kind = self.rng.choice([TerminationKind.SOFT, TerminationKind.HARD])
        if backend_id is not None:
            call = lambda: plane.supervisor.terminate(backend_id, kind)  # noqa: E731
            plane.clients.start_soon(self._call, "terminate", call)

    def revoke(self, plane: Incarnation) -> None:
        backend_id = self._pick(self.known)
        if backend_id is not None:
            call = lambda: plane.supervisor.revoke(backend_id)  # noqa: E731
            plane.clients.start_soon(self._call, "revoke", call)

    def ws_open(self, plane: Incarnation) -> None:
        backend_id = self._pick(self._serving(plane))
        if backend_id is not None:
            plane.sockets.append((backend_id, plane.tracker.open(backend_id)))

    def ws_close(self, plane: Incarnation) -> None:
        if plane.sockets:
            backend_id, connection_id = plane.sockets.pop(self.rng.randrange(len(plane.sockets)))
            plane.tracker.close(backend_id, connection_id)

    def http(self, plane: Incarnation) -> None:
        backend_id = self._pick(self._serving(plane))
        if backend_id is None:
            return
        rng = self.rng
        lasts = rng.uniform(0, 0.5) if rng.random() < 0.8 else rng.uniform(1, 6)
        flight = plane.tracker.request(backend_id, trio.current_time())
        plane.flights.add(flight)
        plane.clients.start_soon(self._answer, plane, flight, lasts)

    async def _answer(self, plane: Incarnation, flight: InFlight, lasts: float) -> None:
        await trio.sleep(lasts)  # a crash cancels this: a dead proxy reports nothing
        plane.flights.discard(flight)
        plane.tracker.done(flight)

    def status_stream(self, plane: Incarnation) -> None:
        backend_id = self._pick(self.known)
        if backend_id is not None and plane.streams < 3:
            plane.streams += 1
            plane.clients.start_soon(self._stream, plane, backend_id)

    async def _stream(self, plane: Incarnation, backend_id: str) -> None:
        """A status stream: the backend's events as the log tails them, until it ends."""
        seen = []
        try:
            async with contextlib.aclosing(plane.store.tail(0)) as records:
                async for record in records:
                    if record.stream == backend_id:
                        seen.append(record.event)
                        if isinstance(record.event, BackendTerminated):
                            break
            logged = await plane.store.read_stream(backend_id)
        except StoreError:
            return
        finally:
            plane.streams -= 1
        if seen != [r.event for r in logged[: len(seen)]]:
            raise InvariantBroken("status-stream", f"{backend_id}: the stream and the log differ")
        self.count("stream-ended")

    def exit(self, plane: Incarnation) -> None:
        running = self.executors.running()
        if running:
            backend_id, engine = self.rng.choice(running)
            engine.exit(backend_id, self.rng.choice([0, 1, 2, 137, 143, None]))

    def vanish(self, plane: Incarnation) -> None:
        running = self.executors.running()
        if running:
            backend_id, engine = self.rng.choice(running)
            engine.vanish(backend_id)

    def outage(self, plane: Incarnation) -> None:
        """The engine does not answer for a while: mostly a blip, sometimes longer
        than ``engine_lost_after`` (the engine is lost, then returns)."""
        self.count("outage")
        rng = self.rng
        short = rng.random() < 0.6
        longest = self.engine_lost_after * (0.9 if short else 3.0)
        engines = self.executors.engines
        engines[rng.choice(sorted(engines))].outage(rng.uniform(1, longest))

    def drain(self, plane: Incarnation) -> None:
        """With two engines, drain one or undrain it (new backends go elsewhere)."""
        engines = sorted(self.executors.engines)
        if len(engines) < 2:
            return
        name = self.rng.choice(engines)
        draining = self.rng.random() < 0.6
        call = lambda: plane.supervisor.drain(name, draining=draining)  # noqa: E731
        plane.clients.start_soon(self._call, "drain", call)

    def disk_full(self, plane: Incarnation) -> None:
        self.count("disk-full")
        self.disk.fill(self.rng.uniform(1, 20))

    # ----------------------------------------------------------- checks

    async def check(self) -> None:
        plane = self.plane
        store: EventStore | None = self.memory or (plane.store if plane else None)
        if store is None:
            return
        acked = len(self.acked)
        if self.memory is not None:  # at this instant: a checkpoint is a scheduler pass a step
            records = self.memory.read_all_now(self.checker.last_seq)
        else:
            try:
                with self.hold.held():
                    records = await store.read_all(self.checker.last_seq)
            except StoreError:
                return  # the SQLite store closed under us by a crash: check next time
        touched = self.checker.feed(records)
        self.checker.acks(self.acked, acked)
        if self.plane is not None and self.plane is plane:
            if self._compared != plane.number:
                touched = set(plane.supervisor.states)  # a new incarnation: compare all
                self._compared = plane.number
            exact = self.memory is not None
            self.checker.states(plane.supervisor.states, touched, exact=exact)

    async def finish(self) -> None:
        """Clients stop and faults heal; every backend must end; then a last recovery."""
        self.quiet = True
        self.executors.heal()
        self.disk.free()
        plane = await self.wait_up()
        plane.clients.cancel_scope.cancel()
        for connection_id, backend_id in list(plane.tracker.open_connections.items()):
            plane.tracker.close(backend_id, connection_id)
        for flight in list(plane.flights):
            plane.tracker.done(flight)
        for chunk in range(8):
            await trio.sleep(SETTLE_SECONDS / 8)
            await self.check()
            if chunk >= 1 and self._settled():
                break  # all ended: the rest would be pings and nothing else
        plane = await self.wait_up()
        await self.check()
        self.checker.all_terminated(plane.supervisor.actors)
        self.crash()
        plane = await self.wait_up()
        await trio.sleep(60.0)
        await self.check()
        self.checker.no_leak(self.executors.resources())
        self._stopping = True
        self.crash()
        await self._stopped.wait()  # the last plane has closed its log

    def _settled(self) -> bool:
        """Plane is up, every backend in the log is terminated and no actor runs:
        nothing is left to happen but health pings (engines healed at least
        ``SETTLE_SECONDS / 4`` ago have answered and been reconciled), so the rest
        of the settling time is skipped.  A backend that never ends (a lost
        timer, a stuck actor) keeps the whole ``SETTLE_SECONDS``, then fails."""
        plane = self.plane
        return (
            plane is not None
            and not plane.supervisor.actors
            and not self.checker.live
            and all(e.reachable() for e in self.executors.engines.values())
        )

    async def final_log(self) -> list[RecordedEvent]:
        if self.memory is not None:
            return await self.memory.read_all()
        assert self.sqlite_path is not None
        with SqliteLogReader(self.sqlite_path, check=False) as reader:
            return list(reader.iter_events())


async def _history(seed: int, steps: int, sqlite_path: Path | None) -> Outcome:
    failure: InvariantBroken | None = None
    history: History | None = None
    try:
        with trio.fail_after(HISTORY_LIMIT_SECONDS):
            async with trio.open_nursery() as world:
                history = History(seed, steps, world, sqlite_path)
                await history.run()
                world.cancel_scope.cancel()
        assert history is not None
        records = await history.final_log()
        history.checker.feed(records[history.checker.last_seq :])  # seq n is at index n-1
        history.checker.finish()
    except BaseException as exc:  # a history's failure is a result, not a crash of the run
        failure = _as_failure(exc)
        if failure is None:
            raise
    events: list[RecordedEvent] = []
    if history is not None:
        with trio.CancelScope(shield=True):
            events = await history.final_log()
    stats = history.stats if history is not None else {}
    for record in events:
        if isinstance(record.event, EngineLost | EngineReturned):
            what = "engine-lost" if isinstance(record.event, EngineLost) else "engine-returned"
            stats[what] = stats.get(what, 0) + 1
    store = "memory" if sqlite_path is None else "sqlite"
    return Outcome(seed, steps, store, failure, events, stats)


def _as_failure(exc: BaseException) -> InvariantBroken | None:
    """The invariant a history broke, from what its run raised (None: not ours)."""
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        return None
    if isinstance(exc, InvariantBroken):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _as_failure(inner)
            if found is not None and found.invariant != "no-exception":
                return found
        return _as_failure(exc.exceptions[0]) if exc.exceptions else None
    if isinstance(exc, trio.TooSlowError):
        return InvariantBroken(
            "terminates", f"the history did not finish in {HISTORY_LIMIT_SECONDS:.0f} s"
        )
    text = "".join(traceback.format_exception(exc)).strip().splitlines()
    return InvariantBroken("no-exception", f"{type(exc).__name__}: {exc} ({text[-3:]})")


def run_history(seed: int, steps: int, *, sqlite_path: Path | None = None) -> Outcome:
    """Run the history of ``seed`` with ``steps`` steps; see the module docstring.

    With ``sqlite_path`` (a file that does not exist yet) the log is a real
    SQLite file, else the in-memory twin.
    """
    clock: trio.abc.Clock = JumpClock()
    if sqlite_path is not None:  # a writer thread: only MockClock's autojump waits for it
        clock = trio.testing.MockClock(autojump_threshold=0)
    with seeded_secrets(seed ^ 0x5EED5), seeded_scheduling(seed), _quiet_plane_logs():
        return trio.run(_history, seed, steps, sqlite_path, clock=clock)
