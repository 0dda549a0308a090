"""Placement: the pure choice of the engine a new backend runs on.

:func:`place` takes each engine's :class:`Load` and the requested pool and
returns the engine's name, or None when none can take it: among the engines of
the pool that are neither lost nor draining and are under their ``max``, the
one with the fewest live backends; ties are broken by ``rng`` (injected, so
tests are deterministic).
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import attrs


@attrs.frozen
class Load:
    """What placement needs to know about one engine."""

    name: str
    pool: str = ""
    live: int = 0
    max_backends: int | None = None
    draining: bool = False
    lost: bool = False

    @property
    def available(self) -> bool:
        under = self.max_backends is None or self.live < self.max_backends
        return under and not self.draining and not self.lost


def place(loads: Iterable[Load], pool: str, rng: random.Random) -> str | None:
    """The engine for a new backend of ``pool``, or None if none is available."""
    candidates = [load for load in loads if load.pool == pool and load.available]
    if not candidates:
        return None
    fewest = min(load.live for load in candidates)
    tied = sorted(load.name for load in candidates if load.live == fewest)
    return tied[0] if len(tied) == 1 else rng.choice(tied)


def why_none(loads: Iterable[Load], pool: str) -> str:
    """Why :func:`place` found no engine, in words for the API's 503."""
    in_pool = [load for load in loads if load.pool == pool]
    if not in_pool:
        return f"no engine serves pool {pool!r}"
    states = ", ".join(
        f"{load.name}: "
        + ("lost" if load.lost else "draining" if load.draining else f"full ({load.live})")
        for load in sorted(in_pool, key=lambda x: x.name)
    )
    return f"no engine of pool {pool!r} can take a backend ({states})"
