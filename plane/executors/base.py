"""The executor contract: how a backend is run, observed and cleaned up.

This module owns the :class:`Executor` protocol, the value types that cross it
(:class:`StartSpec`, :class:`Started`, :class:`Running`, :class:`ExitObserved`)
and its two errors.  Two executors implement it: ``plane.executors.docker``
(one container per backend) and ``plane.executors.process`` (one local process
group per backend); tests use the fake in ``plane.testing``.  All three pass
one contract suite, ``tests/executors/test_contract.py`` (Docker on each
engine); :mod:`plane.executors.multi` routes it over many engines.

An executor performs effects and reports observations; it decides nothing.  In
particular the grace period between :meth:`Executor.stop` and
:meth:`Executor.kill` is *not* the executor's job: the lifecycle decider owns
that deadline and asks for the kill when it expires.

Every running backend carries a label (a container label, or an environment
variable of the process) naming its backend id, so :meth:`Executor.list_running`
finds it again after plane restarts, and :meth:`Executor.serve_exits` reports
the exit of any labelled backend, adopted or not.

Resource handling
-----------------
Backends outlive the plane process on purpose: nothing here is tied to a
nursery that would kill a backend when plane stops or crashes.  A backend ends
only through ``stop``/``kill`` or by itself, and ``remove`` frees what is left
after its exit (the container, its cgroup); ``forget`` deletes its output
files when its stream leaves the log.  Output files are created 0600 and
rotate at :data:`LOG_MAX_BYTES` (:data:`LOG_FILES` files in all).  ``serve_exits`` is a
long-running task; cancel it to stop watching.  ``logs`` is an async generator:
drive it inside ``contextlib.aclosing`` so its stream is closed promptly.

Error handling
--------------
:class:`ExecutorError` is transient (the engine did not answer, a call timed
out): the caller retries with backoff.  :class:`SpawnError`, a subclass, is
permanent for this spawn configuration (the image is missing and cannot be
pulled, the command does not exist, the working directory is bad); retrying
will not help, and its message is written for people.  ``stop``, ``kill`` and
``remove`` treat an unknown or already finished backend as success.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

import attrs
import trio

from plane.events.spec import BackendKey, Executable

__all__ = [
    "EXECUTABLE",
    "LOG_FILES",
    "LOG_MAX_BYTES",
    "Executor",
    "ExecutorError",
    "ExitObserved",
    "Running",
    "SpawnError",
    "StartSpec",
    "Started",
    "refusal",
    "refuse",
]


@attrs.frozen
class StartSpec:
    """Everything an executor needs to start one backend."""

    backend_id: str
    key: BackendKey
    fencing_token: int
    executable: Executable
    static_token: str | None = attrs.field(default=None, repr=False)
    """Plane's static token, for a ``use_static_token`` backend."""
    engine: str = "local"
    """The engine the backend was placed on (:mod:`plane.executors.multi` routes by it)."""

    def session_env(self) -> dict[str, str]:
        """plane's variables for the backend (every executor sets them, after the
        spawn's own ``env``, so they win): ``SESSION_BACKEND_ID``,
        ``SESSION_BACKEND_KEY`` (the key's name), ``SESSION_BACKEND_FENCING_TOKEN``
        and, for a static-token backend, ``SESSION_BACKEND_STATIC_TOKEN``.
        ``PORT`` is the executor's to set."""
        env = {
            "SESSION_BACKEND_ID": self.backend_id,
            "SESSION_BACKEND_KEY": self.key.name,
            "SESSION_BACKEND_FENCING_TOKEN": str(self.fencing_token),
        }
        if self.static_token is not None:
            env["SESSION_BACKEND_STATIC_TOKEN"] = self.static_token
        return env


@attrs.frozen
class Started:
    """A backend is running (not necessarily ready yet).

    ``address`` is ``"127.0.0.1:PORT"``, the loopback address the proxy
    connects to; ``handle`` is the container id or the process id.
    """

    backend_id: str
    address: str
    handle: str


@attrs.frozen
class Running:
    """What :meth:`Executor.list_running` reports for each live backend, and
    :meth:`Executor.list_all` for each backend it holds anything of.

    ``address`` is ``None`` when the executor cannot tell where it listens;
    ``key`` is the key's display form (``BackendKey.display()``).  ``running``
    is False for what is left of a backend that no longer runs (an exited or
    never started container, a labelled straggler whose backend process is
    gone, a pids cgroup): :meth:`Executor.remove` frees it.
    """

    backend_id: str
    address: str | None
    handle: str
    key: str
    running: bool = True
    engine: str = ""
    """The engine it runs on (set by :mod:`plane.executors.multi`)."""


@attrs.frozen
class ExitObserved:
    """A backend's main process ended.

    ``exit_code`` follows the shell convention (``128 + N`` for death by
    signal N) and is ``None`` when the executor could not learn it (an adopted
    process that is not plane's child).
    """

    backend_id: str
    exit_code: int | None


class ExecutorError(Exception):
    """Transient failure (engine unreachable, timeout): retry with backoff."""


class SpawnError(ExecutorError):
    """Permanent failure of a spawn configuration; the message is for people."""


#: Size at which a backend's output file is rotated (process executor's log
#: files, Docker's ``json-file`` log, the output kept of a removed container).
LOG_MAX_BYTES = 1 << 20
#: How many output files a backend keeps: the current one and the rotated ones.
LOG_FILES = 2


#: The JSON path of the connect body's executable, which refusals name.
EXECUTABLE = "$.spawn_config.executable"


def refusal(field: str, why: str) -> str:
    """One reason to refuse a spawn configuration, naming the field as the API's
    400s do: ``"<why> @ $.spawn_config.executable.<field>"``."""
    return f"{why} @ {EXECUTABLE}.{field}"


def refuse(problems: list[str]) -> None:
    """Raise :class:`SpawnError` listing *problems* (see :func:`refusal`), if any.

    The supervisor answers a :class:`SpawnError` from ``check`` with 400
    ``InvalidRequest`` and this message; from ``start``, the backend ends
    ``spawnfailed`` with it.
    """
    if problems:
        raise SpawnError("; ".join(problems))


class Executor(Protocol):
    """Runs backends; see the module docstring for the contract."""

    #: ``"docker"`` or ``"process"`` (or ``"fake"`` in tests).
    name: str

    def check(self, executable: Executable) -> None:
        """Raise :class:`SpawnError` at once if this executor could never run
        ``executable`` (e.g. no image for Docker, no command for processes),
        or cannot honour one of its fields (a limit, a mount, a network): the
        message names each such field (see :func:`refusal`).  A field is never
        accepted and then ignored.

        Pure and cheap: callers use it to refuse a request before recording it.
        """
        ...

    async def ping(self) -> None:
        """Return once the engine answers; :class:`ExecutorError` if it does not.
        (Engine health: :mod:`plane.engines.health`.)"""
        ...

    async def start(self, spec: StartSpec) -> Started:
        """Create and start the backend; return once it runs, with its address.

        Does not wait for readiness (see ``plane.executors.readiness``).
        """
        ...

    async def stop(self, backend_id: str) -> None:
        """Send the polite stop signal (SIGTERM) and return without waiting.

        An unknown or finished backend is not an error.
        """
        ...

    async def kill(self, backend_id: str) -> None:
        """Send SIGKILL now.  An unknown or finished backend is not an error."""
        ...

    async def remove(self, backend_id: str) -> None:
        """Forget the backend and free what is left after its exit.

        An unknown backend is not an error.
        """
        ...

    async def forget(self, backend_id: str) -> None:
        """Delete what the executor keeps of a removed backend (its output files).

        Called when the backend's stream leaves the log (retention); an unknown
        backend is not an error.
        """
        ...

    async def list_running(self) -> list[Running]:
        """Every plane-labelled backend this executor runs now."""
        ...

    async def list_all(self) -> list[Running]:
        """Everything plane-labelled of this executor's scope, running or not
        (``Running.running`` says which); recovery removes what the log does
        not hold live."""
        ...

    async def serve_exits(
        self,
        send: trio.MemorySendChannel[ExitObserved],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Report each exit of a plane backend on *send*, until cancelled.

        Calls ``task_status.started()`` once it is watching: exits after that
        point are not missed.
        """
        ...

    def logs(self, backend_id: str, *, follow: bool = False) -> AsyncGenerator[bytes, None]:
        """The backend's stdout and stderr so far; with *follow*, then new output.

        Following ends when the backend has exited and its output is drained.
        An unknown backend yields nothing.
        """
        ...
