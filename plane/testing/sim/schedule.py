"""trio's scheduling made a function of the seed, for the simulator.

This module owns what makes the order in which trio runs a history's tasks
depend on the seed and on nothing else (the process, its hash seed, its memory
layout, whether pytest and Hypothesis are loaded).  It reaches into trio's
private state on purpose, for a test harness only:

* ``trio._core._run._r``, the Random that orders each batch of runnable tasks,
  is seeded (:func:`seed_trio_scheduler`);
* the batch is ordered as trio orders it under Hypothesis
  (``_ALLOW_DETERMINISTIC_SCHEDULING``: sorted by task creation, then shuffled
  with ``_r``), in every process.  pytest-trio and Hypothesis's trio plugin turn
  that mode on when loaded, plain ``python -m plane.testing.simulate`` does not:
  without this a history found failing in the suite ran differently from its
  re-run command;
* trio breaks a tie between equal deadlines by the ``id()`` of their cancel
  scopes, a memory address: which of two timers due at the same simulated
  instant (frequent: equal timeouts set at one instant) fired first changed from
  one process to another.  Equal deadlines expire in the order they were set.

:func:`seeded_scheduling` does all three for the duration of a block.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
from collections.abc import Iterator
from typing import Any

import trio._core._run as trio_run


def seed_trio_scheduler(seed: int) -> None:
    """Seed the Random trio orders runnable tasks with."""
    trio_run._r.seed(seed)


@contextlib.contextmanager
def seeded_scheduling(seed: int) -> Iterator[None]:
    """See the module docstring; trio's own state is restored at the end (the
    Random stays seeded)."""
    order = itertools.count()
    add = trio_run.Deadlines.add
    deterministic = trio_run._ALLOW_DETERMINISTIC_SCHEDULING

    def add_in_order(self: Any, deadline: float, cancel_scope: Any) -> None:
        heapq.heappush(self._heap, (deadline, next(order), cancel_scope))
        self._active += 1

    seed_trio_scheduler(seed)
    setattr(trio_run.Deadlines, "add", add_in_order)  # noqa: B010 - a harness patch
    setattr(trio_run, "_ALLOW_DETERMINISTIC_SCHEDULING", True)  # noqa: B010
    try:
        yield
    finally:
        setattr(trio_run.Deadlines, "add", add)  # noqa: B010
        setattr(trio_run, "_ALLOW_DETERMINISTIC_SCHEDULING", deterministic)  # noqa: B010
