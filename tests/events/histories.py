"""Logs with a history: finished and live backends made by the real decider.

Keys are reused (``room-{n % keys}``), each new backend of a key with the next
fencing token, as the supervisor would; so folds have fencing to get right.
"""

from __future__ import annotations

from plane.actors.lifecycle import Tick
from plane.events import types as t
from plane.events.spec import BackendKey, Executable, SpawnConfig
from plane.events.store import EventStore
from plane.testing.lives import DecidedLife

CONFIG = SpawnConfig(Executable(image="app:1", env={"A": "1"}), max_idle_seconds=30)


def started_life(backend_id: str, key: BackendKey, fencing: int, at: float) -> DecidedLife:
    """Requested, token issued, started, ready, with one open connection."""
    life = DecidedLife()
    life.feed(t.BackendRequested(at, backend_id, key, CONFIG, fencing))
    life.feed(t.TokenIssued(at, f"{backend_id:0>64}", at + 3600, "s" * 43, "user", None))
    life.feed(Tick(at))
    life.feed(t.ExecutorStarted(at + 0.1, f"127.0.0.1:{20000 + fencing % 40000}", backend_id))
    life.feed(t.ReadinessObserved(at + 0.2))
    life.feed(t.ConnectionOpened(at + 1, "c0"))
    life.feed(t.HttpActivityRecorded(at + 1.5, 3))
    return life


def finished_events(backend_id: str, key: BackendKey, fencing: int, at: float) -> list[t.Event]:
    """A whole life, ending terminated (idle, then exited)."""
    life = started_life(backend_id, key, fencing, at)
    life.feed(t.ConnectionClosed(at + 2, "c0"))
    deadline = life.next_deadline()
    life.feed(Tick(deadline))
    life.feed(t.ExecutorExited(deadline + 0.5, 0))
    assert life.state.status is t.Status.TERMINATED
    return life.events


class History:
    """Writes finished and live backends into a store, keeping the keys' fencing."""

    def __init__(self, keys: int = 7) -> None:
        self.keys = keys
        self.fencing: dict[str, int] = {}
        self.count = 0
        self.live: list[str] = []
        self.finished: list[str] = []

    def _next(self, prefix: str) -> tuple[str, BackendKey, int]:
        n = self.count
        self.count += 1
        name = f"room-{n % self.keys}"
        self.fencing[name] = self.fencing.get(name, 0) + 1
        return f"{prefix}{n:06d}", BackendKey(name, namespace="ns"), self.fencing[name]

    async def add_finished(self, store: EventStore, count: int, at: float = 1.7e9) -> None:
        for _ in range(count):
            backend_id, key, fencing = self._next("f")
            await store.append(backend_id, 0, finished_events(backend_id, key, fencing, at))
            self.finished.append(backend_id)

    async def add_live(self, store: EventStore, count: int, at: float = 1.7e9) -> None:
        """Live backends, each on a key of its own (one live backend per key)."""
        for _ in range(count):
            n = self.count
            self.count += 1
            backend_id, key = f"l{n:06d}", BackendKey(f"live-{n}", namespace="ns")
            life = started_life(backend_id, key, 1, at)
            await store.append(backend_id, 0, life.events)
            self.live.append(backend_id)
