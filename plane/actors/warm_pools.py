"""Warm pools: backends started before anyone asks, claimed on connect.

This module owns what a warm pool *is* and the task that keeps each one full:

* :class:`WarmPool` and :func:`evolve_pools`: a pool is a named spawn-config
  template, a target size and an optional claim hook; its definition is the
  fold of the ``warm_pool.*`` events of the system stream (defined, resized,
  removed), so a restart restores every pool.
* :func:`template_problem`: what a template may not hold (plane's
  ``SESSION_BACKEND_*`` env, a static token, a subdomain, a mount named after
  the key: all are fixed at start, before the backend has a key).
* :func:`call_claim_hook`: the optional ``POST <claim_path>`` to a warm
  backend telling it who it now serves.
* :class:`WarmPoolManager`: the refill loop.  It runs under the supervisor's
  nursery; whenever something changes (a claim, a warm backend ending, a pool
  defined or resized, an engine drained) it is poked and brings each pool to
  its size: it asks the supervisor for new warm backends (placed like any
  spawn, so on many engines they spread), and terminates the excess, the
  members of removed pools or replaced templates, and the unclaimed members on
  draining or lost engines.  A pool whose backends fail before they are warm
  backs off (0.5 s doubling to 30 s) instead of spinning.

A warm backend is a backend like any other (its own stream and actor); its
lifecycle (``warm``, then ``ready`` at its claim) is the decider's
(:mod:`plane.actors.lifecycle`), and the claim itself is the supervisor's
(it holds the key rules).

Error handling: the refill loop never ends on a failure: a full or failing log
or no engine for the pool is logged and tried again after the pool's backoff.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Protocol

import attrs
import httpx
import orjson
import trio

from plane.actors.clock import TrioClock
from plane.actors.lifecycle import BackendState
from plane.events.spec import BackendKey, SpawnConfig
from plane.events.store import StoreError
from plane.events.types import (
    BackendClaimed,
    BackendTerminated,
    BackendTerminating,
    BackendWarmed,
    Event,
    TerminationReason,
    WarmBackendRequested,
    WarmPoolDefined,
    WarmPoolRemoved,
    WarmPoolResized,
)

__all__ = [
    "CLAIM_HOOK_TIMEOUT",
    "MAX_POOL_SIZE",
    "PoolHost",
    "WarmPool",
    "WarmPoolManager",
    "call_claim_hook",
    "evolve_pools",
    "template_problem",
]

log = logging.getLogger("plane.warm_pools")

CLAIM_HOOK_TIMEOUT = 2.0
"""How long a warm backend's claim hook may take before it counts as failed."""
MAX_POOL_SIZE = 1000
BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 30.0
RETRY_SECONDS = 1.0
"""How soon a pool that could not be filled (no engine, at capacity) is tried again."""


@attrs.frozen
class WarmPool:
    """One pool as the log defines it."""

    name: str
    spawn_config: SpawnConfig
    size: int
    claim_path: str | None = None


def evolve_pools(pools: Mapping[str, WarmPool], event: Event) -> dict[str, WarmPool]:
    """The pools after ``event`` (any other event leaves them as they are)."""
    new = dict(pools)
    match event:
        case WarmPoolDefined():
            new[event.name] = WarmPool(event.name, event.spawn_config, event.size, event.claim_path)
        case WarmPoolResized():
            if event.name in new:
                new[event.name] = attrs.evolve(new[event.name], size=event.size)
        case WarmPoolRemoved():
            new.pop(event.name, None)
    return new


def template_problem(spawn_config: SpawnConfig) -> tuple[str, str] | None:
    """(field path, problem) if ``spawn_config`` cannot be a warm pool's template:
    what is fixed at start cannot carry the key, user or token a claim brings."""
    for name in spawn_config.executable.env:
        if name.upper().startswith("SESSION_BACKEND_"):
            return (
                f"executable.env[{name!r}]",
                "plane sets SESSION_BACKEND_* itself; a warm backend's env is fixed "
                "before it is claimed",
            )
    if spawn_config.use_static_token:
        return "use_static_token", "a warm pool's backends cannot use a static token"
    if spawn_config.subdomain is not None:
        return "subdomain", "a warm pool's backends cannot have a subdomain"
    if spawn_config.executable.mount is True:
        return (
            "executable.mount",
            "true mounts a directory named after the key, unknown before the claim: "
            "give a path",
        )
    return None


async def call_claim_hook(
    address: str,
    path: str,
    key: BackendKey,
    fencing_token: int,
    user: str | None,
    auth: str | None,
) -> str | None:
    """``POST <path>`` to the warm backend at ``address`` with the claim as JSON.

    Returns None when the backend accepts (any 2xx) or has no hook (404), else
    the problem in words (another status, no answer within
    :data:`CLAIM_HOOK_TIMEOUT`)."""
    timeout = CLAIM_HOOK_TIMEOUT
    body = {
        "key": {"name": key.name, "namespace": key.namespace, "tag": key.tag},
        "fencing_token": fencing_token,
        "user": user,
        "auth": orjson.loads(auth) if auth is not None else None,
    }
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            with trio.fail_after(timeout):
                answer = await client.post(f"http://{address}{path}", json=body)
    except (httpx.HTTPError, trio.TooSlowError, OSError) as exc:
        return f"claim hook at {path} failed: {type(exc).__name__} {exc}".strip()
    if answer.status_code == 404 or 200 <= answer.status_code < 300:
        return None
    return f"claim hook at {path} answered {answer.status_code}"


_POOL_CHANGES = (
    WarmBackendRequested,
    BackendWarmed,
    BackendClaimed,
    BackendTerminating,
    BackendTerminated,
)
"""What changes a pool's count (connections and HTTP activity do not)."""


class PoolHost(Protocol):
    """What the manager needs from the supervisor."""

    def warm_members(self, pool: str) -> list[BackendState]: ...

    def unclaimed_members(self) -> list[BackendState]: ...

    def engine_unavailable(self, engine: str) -> bool: ...

    async def spawn_warm(self, pool: WarmPool) -> str | None: ...

    async def discard_warm(self, backend_id: str) -> None: ...


class WarmPoolManager:
    """Keeps every pool at its size; see the module docstring."""

    def __init__(self, host: PoolHost, clock: TrioClock) -> None:
        self._host = host
        self._clock = clock
        self.pools: dict[str, WarmPool] = {}
        self._wake = trio.Event()
        self._backoff: dict[str, float] = {}  # pool -> its current delay
        self._not_before: dict[str, float] = {}  # pool -> no spawn before (clock time)
        self.refilled = trio.Event()
        """Set (and replaced) whenever a pass leaves every pool at its size."""

    def apply(self, event: Event) -> None:
        """Fold one system-stream event (pool definitions)."""
        self.pools = evolve_pools(self.pools, event)

    def poke(self) -> None:
        """Something changed: reconcile soon."""
        self._wake.set()

    def observe(self, state: BackendState, events: list[Event]) -> None:
        """The supervisor saw ``events`` happen to ``state``'s backend."""
        pool = state.warm_pool
        if pool is None:
            return
        for event in events:
            if isinstance(event, BackendWarmed):
                self._backoff.pop(pool, None)
                self._not_before.pop(pool, None)
            elif (
                isinstance(event, BackendTerminated)
                and state.claimed_at is None
                and event.reason not in (TerminationReason.EXTERNAL, TerminationReason.ORPHANED)
            ):
                delay = self._backoff.get(pool, BACKOFF_INITIAL / 2) * 2
                self._backoff[pool] = min(delay, BACKOFF_MAX)
                self._not_before[pool] = self._clock.now() + self._backoff[pool]
                log.warning(
                    "warm backend %s of pool %s ended (%s); refilling in %.1fs",
                    state.backend_id,
                    pool,
                    event.reason.value,
                    self._backoff[pool],
                )
        if any(isinstance(e, _POOL_CHANGES) for e in events):
            self.poke()

    async def run(self) -> None:
        """Reconcile whenever poked (or a backoff or retry is due), until cancelled."""
        while True:
            self._wake = trio.Event()
            retry_at = await self.reconcile()
            if retry_at is None:
                await self._wake.wait()
            else:
                with trio.move_on_at(self._clock.to_trio(retry_at)):
                    await self._wake.wait()

    async def reconcile(self) -> float | None:
        """One pass over every pool; returns when to try again (clock time) if a
        pool is still short, else None."""
        host = self._host
        retry_at = math.inf
        for member in host.unclaimed_members():
            pool = self.pools.get(member.warm_pool or "")
            stale = pool is None or member.spawn_config != pool.spawn_config
            if stale or host.engine_unavailable(member.engine):
                await host.discard_warm(member.backend_id)
        for name, pool in sorted(self.pools.items()):
            members = host.warm_members(name)
            if len(members) > pool.size:
                # the ones not yet warm first, then the newest
                order = sorted(members, key=lambda s: (s.address is not None, -s.requested_at))
                for extra in order[: len(members) - pool.size]:
                    await host.discard_warm(extra.backend_id)
                continue
            missing = pool.size - len(members)
            if missing <= 0:
                continue
            not_before = self._not_before.get(name, 0.0)
            now = self._clock.now()
            if now < not_before:
                retry_at = min(retry_at, not_before)
                continue
            for _ in range(missing):
                try:
                    spawned = await host.spawn_warm(pool)
                except StoreError as exc:
                    log.warning("warm pool %s: could not record a spawn: %s", name, exc)
                    spawned = None
                if spawned is None:
                    retry_at = min(retry_at, now + RETRY_SECONDS)
                    break
        if retry_at == math.inf:
            self.refilled.set()
            self.refilled = trio.Event()
            return None
        return retry_at

    def view(self) -> list[dict[str, object]]:
        """Every pool, as ``GET /ctrl/warm-pools`` shows it."""
        out: list[dict[str, object]] = []
        for name, pool in sorted(self.pools.items()):
            members = self._host.warm_members(name)
            warm = sum(1 for m in members if m.address is not None and m.status == "warm")
            out.append(
                {
                    "name": name,
                    "size": pool.size,
                    "warm": warm,
                    "starting": len(members) - warm,
                    "claim_path": pool.claim_path,
                }
            )
        return out
