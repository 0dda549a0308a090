"""Retrying a call with capped exponential backoff: the one retry loop of plane.

This module owns :class:`Backoff` (how long to wait between tries) and
:func:`retrying` (call, and on a transient failure wait and call again).  The
actors use it for every executor call (start, stop, kill, remove), the
supervisor for watching exits, listing an engine and removing leftovers.

Error handling
--------------
Only the exceptions named ``transient`` are retried (an exception group is
transient when every exception in it is); ``permanent`` ones (checked first:
e.g. :class:`~plane.executors.base.SpawnError`, a subclass of the transient
``ExecutorError``) and anything else propagate at once.  Each failure is
logged as a warning with ``what`` and the wait before the next try.  When the
tries run out (``attempts``) or the caller stops wanting them (``keep_trying``
returns False after a failure), the last failure propagates.  Cancellation is
never caught: a retry loop ends promptly with its scope.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import attrs
import trio

__all__ = ["Backoff", "retrying"]

T = TypeVar("T")

log = logging.getLogger("plane.retry")


@attrs.frozen
class Backoff:
    """Waits of ``initial`` seconds, doubling up to ``maximum``."""

    initial: float = 0.1
    maximum: float = 5.0

    def delays(self) -> Iterator[float]:
        """The waits between tries, forever: ``initial``, twice that, ... capped."""
        delay = self.initial
        while True:
            yield delay
            delay = min(delay * 2, self.maximum)


def _matches(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    """``exc`` is one of ``kinds``, or a group made only of such exceptions."""
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(kinds)
        return matched is not None and rest is None
    return isinstance(exc, kinds)


async def retrying(
    call: Callable[[], Awaitable[T]],
    *,
    policy: Backoff,
    what: str,
    transient: tuple[type[BaseException], ...] = (Exception,),
    permanent: tuple[type[BaseException], ...] = (),
    each_within: float | None = None,
    attempts: int | None = None,
    keep_trying: Callable[[], bool] = lambda: True,
    logger: logging.Logger = log,
) -> T:
    """``await call()`` until it returns, waiting ``policy``'s delays between tries.

    ``each_within`` (seconds) bounds each try (``trio.TooSlowError``, retried when it is
    listed in ``transient``); ``attempts`` bounds the number of tries (None:
    no bound).  See the module docstring for what is retried.
    """
    delays = policy.delays()
    tried = 0
    while True:
        tried += 1
        try:
            if each_within is None:
                return await call()
            with trio.fail_after(each_within):
                return await call()
        except BaseException as exc:
            if _matches(exc, (trio.Cancelled, KeyboardInterrupt)) or _matches(exc, permanent):
                raise
            if not _matches(exc, transient):
                raise
            if (attempts is not None and tried >= attempts) or not keep_trying():
                raise
            delay = next(delays)
            logger.warning("%s failed, retrying in %.1fs: %s", what, delay, _describe(exc))
        await trio.sleep(delay)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    return str(exc) or type(exc).__name__
