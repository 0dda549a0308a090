"""The process executor: each backend is a local process group on this host.

This module owns :class:`ProcessExecutor`, plane's embedded default where no
Docker engine is reachable.  A backend is ``executable.command`` (an argv
list, no shell) started in ``executable.cwd`` with a small, explicit
environment:

* ``PATH``, ``HOME`` and ``LANG`` copied from plane's own environment;
* ``executable.env``;
* ``PORT`` (a free loopback port, found by binding ``127.0.0.1:0`` and closing
  the socket), ``SESSION_BACKEND_ID``, ``SESSION_BACKEND_KEY`` (the key's
  name), ``SESSION_BACKEND_FENCING_TOKEN``, ``SESSION_BACKEND_STATIC_TOKEN``
  (static-token backends; see ``StartSpec.session_env``);
* ``PLANE_BACKEND_ID``, ``PLANE_BACKEND_KEY`` (the key's display form) and
  ``PLANE_BACKEND_SCOPE`` (which plane owns it: by default the absolute path
  of the executor's logs directory), which act as the process's *label*.

Plane's variables are applied last, so ``executable.env`` cannot override
them (a backend that listened on another ``PORT`` would never be reached).
The backend must listen on ``127.0.0.1:$PORT``.  The free-port choice has the
usual small race (another program may bind the port before the backend does);
the backend then fails to bind and exits, which is reported as its exit.

Finding backends again
----------------------
After plane restarts, :meth:`ProcessExecutor.list_running` scans
``/proc/<pid>/environ`` for ``PLANE_BACKEND_ID`` (within its own
``PLANE_BACKEND_SCOPE``): a process carrying it whose
process-group id equals its pid (the group leader plane started) is a running
backend; its address is read back from its ``PORT``.  Children of a backend
inherit the label but are not group leaders, so they are not listed.

Resource handling
-----------------
Each backend runs in its own session and process group
(``start_new_session=True``), so :meth:`~ProcessExecutor.stop` (SIGTERM) and
:meth:`~ProcessExecutor.kill` (SIGKILL) signal the whole group with
``os.killpg`` and reach the backend's children; they also signal any other
group that still holds a process labelled with the backend id.  Backends are
*not* tied to any nursery: when plane exits, or is killed with SIGKILL, they
keep running and are adopted by the next plane.  Stdout and stderr go
through a pipe to a small writer process (``plane.executors.logpipe``, in its
own session, outliving plane like the backend) that appends them to
``<logs_dir>/<backend id>.log`` (0600, the directory 0700), rotated to
``.log.1`` at ``LOG_MAX_BYTES`` (``LOG_FILES`` files in all), so logs survive a
plane restart and stay bounded; :meth:`~ProcessExecutor.remove` SIGKILLs any
process still labelled with the backend id, waits for the writer and
forgets the backend (the log files stay for ``plane logs``);
:meth:`~ProcessExecutor.forget` deletes them.  :meth:`~ProcessExecutor.list_all`
also reports leftovers (a labelled process whose group leader is gone, a pids
cgroup) so recovery removes them.

Limits and refusals
-------------------
``memory_limit_bytes`` (``RLIMIT_AS``), ``cpu_time_limit`` (``RLIMIT_CPU``) and
``pids_limit`` (a pids cgroup, v2 or v1, where plane may write one) are
applied to the child before it runs; ``plane.executors.proclimits`` says how.
Everything a local process cannot honour is refused by :meth:`ProcessExecutor.check` (the
connect answers 400 naming each field): ``cpu_period``,
``cpu_period_percent``, ``disk_limit_bytes``, ``pids_limit`` where no pids
cgroup is writable, and the Docker engine's options: ``image``, a
``pull_policy`` other than the default, ``credentials``, ``network_name``
and ``mount`` (no directory is exposed to processes; they have the host's
file system and ``cwd``).

:meth:`~ProcessExecutor.serve_exits` waits on the processes this executor
started (their exit codes are exact) and polls the liveness of adopted ones
every ``adopted_poll_interval`` seconds (their exit code is unknown:
``None``).  Exit codes follow the shell: death by signal N is ``128 + N``
(SIGTERM -> 143, SIGKILL -> 137).  Each exit is reported once per executor
instance; run one ``serve_exits`` at a time.

Error handling
--------------
A missing command, a command that is not executable, a missing or bad
``cwd``, or an empty argv raise :class:`~plane.executors.base.SpawnError`
with a message naming the culprit; :meth:`ProcessExecutor.check` already resolves the command
as ``exec`` will (``PATH`` as the backend's environment has it, a name with a
slash relative to ``cwd``), so connect refuses it with 400.  Other ``OSError`` at start (out of
processes, out of file descriptors) raise
:class:`~plane.executors.base.ExecutorError`.  ``stop``/``kill``/``remove`` of
an unknown or finished backend do nothing.  Processes plane may not inspect
(another user's ``/proc/<pid>/environ``) are skipped by the scan.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncGenerator, Iterator, Sequence
from pathlib import Path

import attrs
import trio

from plane.events.spec import Executable
from plane.executors import logpipe
from plane.executors.base import (
    LOG_FILES,
    LOG_MAX_BYTES,
    ExecutorError,
    ExitObserved,
    Running,
    SpawnError,
    Started,
    StartSpec,
    refusal,
    refuse,
)
from plane.executors.proclimits import ChildLimits, PidsCgroups, limit_problems
from plane.permissions import child_umask
from plane.tokens import is_backend_id

__all__ = [
    "MARKER_ENV",
    "MARKER_KEY_ENV",
    "MARKER_SCOPE_ENV",
    "ProcessExecutor",
    "exit_code_from_returncode",
]

#: The environment variable that labels a backend's processes with its id.
MARKER_ENV = "PLANE_BACKEND_ID"
#: The environment variable that carries the key's display form.
MARKER_KEY_ENV = "PLANE_BACKEND_KEY"
#: The environment variable naming the executor instance (its scope) that owns it.
MARKER_SCOPE_ENV = "PLANE_BACKEND_SCOPE"

_INHERITED_ENV: tuple[str, ...] = ("PATH", "HOME", "LANG")
_READ_SIZE = 64 * 1024


def exit_code_from_returncode(returncode: int) -> int:
    """Turn ``Popen.returncode`` into a shell-style code: ``-N`` becomes ``128 + N``."""
    return 128 - returncode if returncode < 0 else returncode


@attrs.frozen
class _Labelled:
    """A process found in /proc carrying a backend label."""

    pid: int
    pgid: int
    backend_id: str
    key: str
    port: str | None


def _read_environ(pid: int) -> dict[bytes, bytes] | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    env: dict[bytes, bytes] = {}
    for item in raw.split(b"\0"):
        name, sep, value = item.partition(b"=")
        if sep:
            env[name] = value
    return env


def _scan_labelled(scope: str) -> list[_Labelled]:
    """Every live process on this host labelled with a backend id in *scope* (blocking)."""
    marker = MARKER_ENV.encode()
    scope_bytes = scope.encode()
    found: list[_Labelled] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        env = _read_environ(pid)  # a zombie's environ reads as empty
        if not env or marker not in env or env.get(MARKER_SCOPE_ENV.encode()) != scope_bytes:
            continue
        try:
            pgid = os.getpgid(pid)
        except OSError:
            continue
        port = env.get(b"PORT")
        found.append(
            _Labelled(
                pid=pid,
                pgid=pgid,
                backend_id=env[marker].decode(errors="replace"),
                key=env.get(MARKER_KEY_ENV.encode(), b"").decode(errors="replace"),
                port=port.decode(errors="replace") if port is not None else None,
            )
        )
    return found


def _still_labelled(pid: int, backend_id: str, scope: str) -> bool:
    """Is *pid* alive and still the process labelled *backend_id*? (blocking)

    Checking the label, not just the pid, guards against pid reuse.
    """
    env = _read_environ(pid)
    return (
        env is not None
        and env.get(MARKER_ENV.encode()) == backend_id.encode()
        and env.get(MARKER_SCOPE_ENV.encode()) == scope.encode()
    )


def _command_problem(argv0: str, cwd: str | None, search_path: str) -> str | None:
    """Why *argv0* cannot be executed from *cwd* (None when it can), resolved as
    ``exec`` will: a name with a slash relative to *cwd*, else along *search_path*
    (blocking: a few ``stat`` calls)."""
    if cwd is not None and not os.path.isdir(cwd):
        return refusal("cwd", f"working directory {cwd!r} does not exist or is not a directory")
    if "/" not in argv0:
        if shutil.which(argv0, path=search_path) is None:
            return refusal("command", f"command {argv0!r} not found on PATH {search_path!r}")
        return None
    path = os.path.join(cwd or os.getcwd(), argv0)
    if not os.path.exists(path):
        return refusal("command", f"command {argv0!r} not found")
    if os.path.isdir(path):
        return refusal("command", f"command {argv0!r} is a directory")
    if not os.access(path, os.X_OK):
        return refusal("command", f"command {argv0!r} is not executable")
    return None


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ProcessExecutor:
    """Runs each backend as a local process group; see the module docstring.

    *logs_dir* receives one ``<backend id>.log`` per backend (created on
    demand).  *inherit_env* names the variables copied from plane's own
    environment.  *adopted_poll_interval* is how often ``serve_exits`` checks
    whether an adopted process is still alive; *follow_poll_interval* how often
    ``logs(follow=True)`` looks for new output.  *scope* tells this executor's
    processes from those of another plane on the same host; it defaults to the
    absolute path of *logs_dir*, so a plane restarted with the same data
    directory adopts its backends and no other plane's.
    """

    name = "process"

    def __init__(
        self,
        logs_dir: str | os.PathLike[str],
        *,
        inherit_env: Sequence[str] = _INHERITED_ENV,
        adopted_poll_interval: float = 0.2,
        follow_poll_interval: float = 0.05,
        scope: str | None = None,
    ) -> None:
        self._logs_dir = Path(logs_dir)
        #: Which processes are this executor's: those whose PLANE_BACKEND_SCOPE is this.
        self.scope = scope if scope is not None else str(self._logs_dir.resolve())
        self._inherit_env = tuple(inherit_env)
        self._adopted_poll_interval = adopted_poll_interval
        self._follow_poll_interval = follow_poll_interval
        self._children: dict[str, trio.Process] = {}
        self._writers: dict[str, trio.Process] = {}  # backend id -> its logpipe
        self._child_ports: dict[str, str] = {}
        self._adopted: dict[str, int] = {}
        self._reported: set[str] = set()
        self._changed = trio.Event()
        #: the backends' pids cgroups (for ``pids_limit``)
        self.cgroups = PidsCgroups(self.scope)

    # -- helpers -----------------------------------------------------------

    def log_path(self, backend_id: str) -> Path:
        """Where the backend's stdout and stderr go; ValueError for a bad id.

        The older output is in the rotated files beside it (:meth:`log_paths`).
        """
        if not is_backend_id(backend_id):
            raise ValueError(f"invalid backend id {backend_id!r}")
        return self._logs_dir / f"{backend_id}.log"

    def log_paths(self, backend_id: str) -> list[Path]:
        """The backend's output files, oldest first (rotated ones, then the current)."""
        current = self.log_path(backend_id)
        older = [Path(logpipe.rotated(str(current), i)) for i in range(LOG_FILES - 1, 0, -1)]
        return [*older, current]

    def _search_path(self, executable: Executable) -> str:
        """The ``PATH`` the backend's command is looked up on (as its environment has it)."""
        inherited = os.environ.get("PATH") if "PATH" in self._inherit_env else None
        return executable.env.get("PATH", inherited if inherited is not None else os.defpath)

    def _notify_changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _child_alive(self, backend_id: str) -> trio.Process | None:
        proc = self._children.get(backend_id)
        if proc is not None and proc.returncode is None:
            return proc
        return None

    async def _groups_of(self, backend_id: str) -> set[int]:
        """Process groups holding the backend: its own group and any labelled stragglers."""
        groups: set[int] = set()
        proc = self._child_alive(backend_id)
        if proc is not None:
            # Not yet reaped, so its pid (== its pgid) cannot have been reused.
            groups.add(proc.pid)
        labelled = await trio.to_thread.run_sync(_scan_labelled, self.scope)
        groups.update(p.pgid for p in labelled if p.backend_id == backend_id)
        groups.discard(os.getpgrp())  # never signal plane's own group
        return groups

    async def _signal(self, backend_id: str, sig: signal.Signals) -> None:
        for pgid in await self._groups_of(backend_id):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)

    def _started_from_scan(self, labelled: _Labelled) -> Started:
        address = f"127.0.0.1:{labelled.port}" if labelled.port else ""
        return Started(backend_id=labelled.backend_id, address=address, handle=str(labelled.pid))

    # -- the Executor protocol -----------------------------------------------

    def check(self, executable: Executable) -> None:
        """A process needs a command; any field a local process cannot honour is
        refused, naming it (see the module docstring)."""
        if not executable.command:
            raise SpawnError(
                "this plane runs backends as local processes: spawn_config.executable.command "
                "is required (run `plane serve --executor docker` for images)"
            )
        docker_only = "is a Docker engine option; this plane runs local processes"
        problems: list[str] = []
        if executable.image is not None:
            problems.append(refusal("image", docker_only))
        if executable.pull_policy != "IfNotPresent":
            problems.append(refusal("pull_policy", docker_only))
        if executable.credentials is not None:
            problems.append(refusal("credentials", docker_only))
        if executable.network_name is not None:
            problems.append(refusal("network_name", docker_only))
        if executable.mount is not False:
            problems.append(
                refusal("mount", "local processes get no mount (they see the host's files)")
            )
        problems += limit_problems(executable.resource_limits, self.cgroups.problem)
        command = _command_problem(
            executable.command[0], executable.cwd, self._search_path(executable)
        )
        if command is not None:
            problems.append(command)
        refuse(problems)

    async def start(self, spec: StartSpec) -> Started:
        """Start ``spec.executable.command``; return its pid and loopback address.

        Starting a backend id that is already running returns the running one.
        """
        backend_id = spec.backend_id
        if not is_backend_id(backend_id):
            raise SpawnError(f"invalid backend id {backend_id!r}")
        executable = spec.executable
        self.check(executable)
        argv = list(executable.command or ())
        cwd = executable.cwd

        proc = self._child_alive(backend_id)
        if proc is not None:
            known_port = self._child_ports.get(backend_id, "")
            return Started(backend_id, f"127.0.0.1:{known_port}", str(proc.pid))
        if backend_id in self._adopted:
            # adopted by list_running after a restart: scan /proc only then, not on
            # every start (the scan grows with the host's processes)
            for labelled in await trio.to_thread.run_sync(_scan_labelled, self.scope):
                if labelled.backend_id == backend_id and labelled.pid == labelled.pgid:
                    return self._started_from_scan(labelled)

        port = _free_loopback_port()
        env = {name: os.environ[name] for name in self._inherit_env if name in os.environ}
        env.update(executable.env)
        env.update(
            {
                "PORT": str(port),
                **spec.session_env(),
                MARKER_ENV: backend_id,
                MARKER_KEY_ENV: spec.key.display(),
                MARKER_SCOPE_ENV: self.scope,
            }
        )
        limits = executable.resource_limits
        cgroup_procs = None
        if limits.pids_limit is not None:
            cgroup_procs = await trio.to_thread.run_sync(
                self.cgroups.prepare, backend_id, limits.pids_limit
            )
        child_limits = ChildLimits.of(limits, cgroup_procs)
        writer: trio.Process | None = None
        try:
            writer, log_fd = await self._open_writer(backend_id)
            proc = await self._open(argv, cwd, env, log_fd, child_limits)
        except BaseException:
            with trio.move_on_after(5) as cleanup:
                cleanup.shield = True
                if writer is not None:
                    os.close(log_fd)  # the writer sees the end of its input and exits
                    await writer.wait()
                if cgroup_procs is not None:
                    with contextlib.suppress(ExecutorError):
                        await trio.to_thread.run_sync(self.cgroups.remove, backend_id)
            raise
        os.close(log_fd)
        self._writers[backend_id] = writer
        self._children[backend_id] = proc
        self._child_ports[backend_id] = str(port)
        self._adopted.pop(backend_id, None)
        self._reported.discard(backend_id)
        self._notify_changed()
        return Started(backend_id=backend_id, address=f"127.0.0.1:{port}", handle=str(proc.pid))

    async def _open_writer(self, backend_id: str) -> tuple[trio.Process, int]:
        """Start the backend's output writer (``plane.executors.logpipe``); returns
        it and the write end of its pipe, for the backend's stdout and stderr."""
        log_path = self.log_path(backend_id)
        try:
            self._logs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            read_fd, write_fd = os.pipe()
        except OSError as exc:
            raise ExecutorError(f"cannot prepare the output of {backend_id}: {exc}") from exc
        try:
            writer = await trio.lowlevel.open_process(
                [
                    sys.executable,
                    "-I",
                    "-S",
                    logpipe.__file__,
                    str(log_path),
                    str(LOG_MAX_BYTES),
                    str(LOG_FILES),
                ],
                stdin=read_fd,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
                env={},
            )
        except OSError as exc:
            os.close(write_fd)
            raise ExecutorError(f"cannot start the output writer of {backend_id}: {exc}") from exc
        finally:
            os.close(read_fd)
        return writer, write_fd

    async def _open(
        self,
        argv: list[str],
        cwd: str | None,
        env: dict[str, str],
        log_fd: int,
        child_limits: ChildLimits,
    ) -> trio.Process:
        try:
            return await trio.lowlevel.open_process(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                preexec_fn=child_limits.apply if child_limits else None,
                umask=child_umask(),  # the operator's, not plane serve's private 077
            )
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            raise SpawnError(self._spawn_failure_message(argv, cwd, exc)) from exc
        except OSError as exc:
            if exc.errno in (errno.ENOEXEC, errno.ELOOP, errno.EISDIR, errno.ENAMETOOLONG):
                raise SpawnError(self._spawn_failure_message(argv, cwd, exc)) from exc
            raise ExecutorError(f"could not start {argv[0]!r}: {exc}") from exc
        except subprocess.SubprocessError as exc:  # preexec_fn failed in the child
            raise ExecutorError(
                f"could not apply the resource limits to {argv[0]!r} before it ran: {exc}"
            ) from exc

    @staticmethod
    def _spawn_failure_message(argv: list[str], cwd: str | None, exc: OSError) -> str:
        if cwd is not None and exc.filename == cwd:
            return f"cannot use working directory {cwd!r}: {exc.strerror}"
        if isinstance(exc, FileNotFoundError):
            return f"command {argv[0]!r} not found ({exc.strerror})"
        if isinstance(exc, PermissionError):
            return f"command {argv[0]!r} is not executable ({exc.strerror})"
        return f"cannot run command {argv[0]!r}: {exc.strerror or exc}"

    async def stop(self, backend_id: str) -> None:
        """SIGTERM to the backend's process group(s); does not wait."""
        await self._signal(backend_id, signal.SIGTERM)

    async def kill(self, backend_id: str) -> None:
        """SIGKILL to the backend's process group(s) now."""
        await self._signal(backend_id, signal.SIGKILL)

    async def remove(self, backend_id: str) -> None:
        """SIGKILL leftovers, reap and forget the backend.

        The log file stays: ``plane logs`` of a terminated backend is how people
        learn why it ended.
        """
        await self._signal(backend_id, signal.SIGKILL)
        proc = self._children.pop(backend_id, None)
        if proc is not None:
            with trio.move_on_after(5):
                await proc.wait()
        else:  # not our child (adopted, or a stranger): wait until SIGKILL has taken it
            for _ in range(250):  # /proc can only be polled; at most 5 s
                labelled = await trio.to_thread.run_sync(_scan_labelled, self.scope)
                if all(p.backend_id != backend_id for p in labelled):
                    break
                await trio.sleep(0.02)
        writer = self._writers.pop(backend_id, None)
        if writer is not None:
            with trio.move_on_after(5):
                await writer.wait()  # it ends once it has written the last output
        self._child_ports.pop(backend_id, None)
        self._adopted.pop(backend_id, None)
        self._reported.discard(backend_id)
        await trio.to_thread.run_sync(self.cgroups.remove, backend_id)

    async def ping(self) -> None:
        """Local processes: this machine always answers."""

    async def forget(self, backend_id: str) -> None:
        """Delete the backend's output files (current and rotated)."""
        try:
            paths = self.log_paths(backend_id)
        except ValueError:
            return
        for path in paths:
            await trio.Path(path).unlink(missing_ok=True)

    async def list_all(self) -> list[Running]:
        """The running backends, and what is left of others: labelled processes
        whose group leader is gone, and pids cgroups (``running=False``)."""
        running = await self.list_running()
        seen = {r.backend_id for r in running}
        left: dict[str, Running] = {}
        for labelled in await trio.to_thread.run_sync(_scan_labelled, self.scope):
            if labelled.backend_id not in seen:
                left.setdefault(
                    labelled.backend_id,
                    Running(labelled.backend_id, None, str(labelled.pid), labelled.key, False),
                )
        for backend_id in await trio.to_thread.run_sync(self.cgroups.backend_ids):
            if backend_id not in seen:
                left.setdefault(backend_id, Running(backend_id, None, "cgroup", "", False))
        return [*running, *left.values()]

    async def list_running(self) -> list[Running]:
        """Every running labelled process-group leader on this host, adopted or not."""
        running: list[Running] = []
        changed = False
        for labelled in await trio.to_thread.run_sync(_scan_labelled, self.scope):
            if labelled.pid != labelled.pgid:
                continue  # a child of a backend, not the backend itself
            backend_id = labelled.backend_id
            address = f"127.0.0.1:{labelled.port}" if labelled.port else None
            running.append(Running(backend_id, address, str(labelled.pid), labelled.key))
            if self._child_alive(backend_id) is None and self._adopted.get(backend_id) != (
                labelled.pid
            ):
                self._adopted[backend_id] = labelled.pid
                self._reported.discard(backend_id)
                changed = True
        if changed:
            self._notify_changed()
        return running

    async def serve_exits(
        self,
        send: trio.MemorySendChannel[ExitObserved],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Report each exit of a started or adopted backend on *send*, until cancelled.

        Adopted backends are those found by :meth:`list_running`, which this
        method calls once when it begins.
        """
        watching: dict[str, object] = {}
        async with trio.open_nursery() as nursery:
            await self.list_running()
            task_status.started()
            while True:
                changed = self._changed
                for backend_id, target in self._watch_targets():
                    if backend_id in self._reported or watching.get(backend_id) == target:
                        continue
                    watching[backend_id] = target
                    nursery.start_soon(self._watch_one, backend_id, target, send, watching)
                await changed.wait()

    def _watch_targets(self) -> Iterator[tuple[str, trio.Process | int]]:
        yield from self._children.items()
        for backend_id, pid in self._adopted.items():
            if backend_id not in self._children:
                yield backend_id, pid

    async def _watch_one(
        self,
        backend_id: str,
        target: trio.Process | int,
        send: trio.MemorySendChannel[ExitObserved],
        watching: dict[str, object],
    ) -> None:
        code: int | None
        if isinstance(target, trio.Process):
            code = exit_code_from_returncode(await target.wait())
        else:
            # An adopted process is not our child: poll, since we cannot wait on it.
            while True:
                if not await trio.to_thread.run_sync(
                    _still_labelled, target, backend_id, self.scope
                ):
                    break
                await trio.sleep(self._adopted_poll_interval)
            code = None
        # Report only if the backend was not restarted or removed meanwhile.
        current = self._children.get(backend_id, self._adopted.get(backend_id))
        if current == target and backend_id not in self._reported:
            await send.send(ExitObserved(backend_id=backend_id, exit_code=code))
            self._reported.add(backend_id)
        if watching.get(backend_id) == target:
            del watching[backend_id]

    async def _is_running(self, backend_id: str) -> bool:
        if self._child_alive(backend_id) is not None:
            return True
        pid = self._adopted.get(backend_id)
        if pid is not None:
            return await trio.to_thread.run_sync(_still_labelled, pid, backend_id, self.scope)
        labelled = await trio.to_thread.run_sync(_scan_labelled, self.scope)
        return any(p.backend_id == backend_id and p.pid == p.pgid for p in labelled)

    async def logs(self, backend_id: str, *, follow: bool = False) -> AsyncGenerator[bytes, None]:
        """Read the backend's output files (rotated ones first); with *follow*,
        keep reading, across rotations, until it exits and its writer is done.

        Unknown backends (no log file) yield nothing.
        """
        try:
            paths = self.log_paths(backend_id)
        except ValueError:
            return
        current = paths[-1]
        try:
            f = await trio.open_file(current, "rb")
        except FileNotFoundError:
            return
        try:
            opened = os.fstat(f.fileno()).st_ino
            for older in paths[:-1]:  # skip one that is the file just opened, rotated since
                if await trio.to_thread.run_sync(_inode, older) not in (None, opened):
                    async with await trio.open_file(older, "rb") as old:
                        while chunk := await old.read(_READ_SIZE):
                            yield chunk
            while True:
                chunk = await f.read(_READ_SIZE)
                if chunk:
                    yield chunk
                    continue
                if not follow:
                    return
                if await trio.to_thread.run_sync(_inode, current) not in (None, opened):
                    # rotated: what is left of the old file was just read; go on with the new
                    await f.aclose()
                    f = await trio.open_file(current, "rb")
                    opened = os.fstat(f.fileno()).st_ino
                    continue
                if not await self._is_running(backend_id):
                    writer = self._writers.get(backend_id)
                    if writer is not None:
                        with trio.move_on_after(2):
                            await writer.wait()
                    if await trio.to_thread.run_sync(_inode, current) not in (None, opened):
                        continue
                    while chunk := await f.read(_READ_SIZE):
                        yield chunk
                    return
                await trio.sleep(self._follow_poll_interval)
        finally:
            await f.aclose()
