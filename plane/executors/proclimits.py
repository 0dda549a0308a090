"""Resource limits of a local backend process (the process executor's).

This module owns how ``executable.resource_limits`` reach a child process:

* ``memory_limit_bytes`` -> ``RLIMIT_AS`` (address space), soft = hard: an
  allocation beyond it fails (``MemoryError`` in Python, ``ENOMEM`` in C);
* ``cpu_time_limit`` (seconds) -> ``RLIMIT_CPU``, soft = hard: the kernel
  sends ``SIGXCPU`` (and then ``SIGKILL``) once the process used that much
  CPU time;
* ``pids_limit`` -> ``pids.max`` of a pids cgroup made for the backend
  (``RLIMIT_NPROC`` counts every process of the *user*, not of the backend,
  so it is not used).  The cgroup is ``plane-<scope hash>-<backend id>``
  directly under the pids hierarchy: cgroup v2 at ``/sys/fs/cgroup`` when
  its ``cgroup.controllers`` lists ``pids`` (``+pids`` is then enabled in
  its ``cgroup.subtree_control``), else cgroup v1 at
  ``/sys/fs/cgroup/pids``.  When neither is writable, ``pids_limit`` is
  refused (400 naming it).

The rlimits are set, and the cgroup joined, in the child between ``fork``
and ``exec`` (``preexec_fn``), so the backend never runs a moment without
them and its children inherit them.  Rlimits are per process: a child that
forks gets its own budget of CPU time and address space each.  A backend
running as root (``CAP_SYS_RESOURCE``) could raise its rlimits again: they
bound runaway backends, not hostile ones.

``cpu_period``, ``cpu_period_percent`` and ``disk_limit_bytes`` have no
per-process equivalent here and are refused, naming each.

Resource handling: :meth:`PidsCgroups.remove` deletes a backend's cgroup
once its processes are gone (the executor's ``remove``); a cgroup that still
holds a process is left in place.
"""

from __future__ import annotations

import errno
import hashlib
import os
import resource
from collections.abc import Callable
from pathlib import Path

import attrs

from plane.events.spec import ResourceLimits
from plane.executors.base import ExecutorError, refusal

__all__ = ["CGROUP_ROOT", "ChildLimits", "PidsCgroups", "limit_problems"]

#: Where the cgroup hierarchies are mounted.
CGROUP_ROOT = Path("/sys/fs/cgroup")

_UNSUPPORTED = {
    "cpu_period": "a local process has no CPU period (use the Docker executor)",
    "cpu_period_percent": "a local process has no CPU quota (use the Docker executor)",
    "disk_limit_bytes": "a local process has no disk quota (use the Docker executor)",
}


def limit_problems(limits: ResourceLimits, pids_problem: Callable[[], str | None]) -> list[str]:
    """Why each limit of *limits* cannot be applied to a local process.

    *pids_problem* tells why ``pids_limit`` cannot be applied (None if it can);
    it is called only when a ``pids_limit`` is given.
    """
    problems = [
        refusal(f"resource_limits.{name}", why)
        for name, why in _UNSUPPORTED.items()
        if getattr(limits, name) is not None
    ]
    if limits.pids_limit is not None:
        problem = pids_problem()
        if problem is not None:
            problems.append(refusal("resource_limits.pids_limit", problem))
    return problems


@attrs.frozen
class ChildLimits:
    """What the child applies to itself before ``exec``."""

    rlimits: tuple[tuple[int, int], ...] = ()
    """``(resource, value)`` pairs, each set as soft and hard limit."""
    cgroup_procs: str | None = None
    """The ``cgroup.procs`` file the child writes its pid to (its pids cgroup)."""

    @classmethod
    def of(cls, limits: ResourceLimits, cgroup_procs: str | None) -> ChildLimits:
        rlimits: list[tuple[int, int]] = []
        if limits.memory_limit_bytes is not None:
            rlimits.append((resource.RLIMIT_AS, limits.memory_limit_bytes))
        if limits.cpu_time_limit is not None:
            rlimits.append((resource.RLIMIT_CPU, limits.cpu_time_limit))
        return cls(tuple(rlimits), cgroup_procs)

    def __bool__(self) -> bool:
        return bool(self.rlimits) or self.cgroup_procs is not None

    def apply(self) -> None:
        """In the child, after fork and before exec: only system calls here."""
        if self.cgroup_procs is not None:
            fd = os.open(self.cgroup_procs, os.O_WRONLY)
            try:
                os.write(fd, str(os.getpid()).encode())
            finally:
                os.close(fd)
        for which, value in self.rlimits:
            resource.setrlimit(which, (value, value))


class PidsCgroups:
    """One pids cgroup per backend, named after the executor's *scope*."""

    def __init__(self, scope: str, root: Path = CGROUP_ROOT) -> None:
        self._prefix = "plane-" + hashlib.sha256(scope.encode()).hexdigest()[:12] + "-"
        self._root = root
        self._hierarchy: Path | None = None
        self._problem: str | None = None
        self._probed = False

    def problem(self) -> str | None:
        """Why no pids cgroup can be made here, or None (probed once, then cached)."""
        if not self._probed:
            self._hierarchy, self._problem = self._probe()
            self._probed = True
        return self._problem

    def _probe(self) -> tuple[Path | None, str | None]:
        v2 = self._root / "cgroup.controllers"
        try:
            if v2.exists() and "pids" in v2.read_text().split():
                control = self._root / "cgroup.subtree_control"
                if "pids" not in control.read_text().split():
                    control.write_text("+pids")
                return self._writable(self._root)
            v1 = self._root / "pids"
            if (v1 / "cgroup.procs").exists():
                return self._writable(v1)
        except OSError as exc:
            return None, f"no pids cgroup can be made here ({exc.strerror or exc})"
        return None, f"no pids cgroup controller under {self._root}"

    @staticmethod
    def _writable(hierarchy: Path) -> tuple[Path | None, str | None]:
        if os.access(hierarchy, os.W_OK):
            return hierarchy, None
        return None, f"the pids cgroup {hierarchy} is not writable by plane"

    def path(self, backend_id: str) -> Path | None:
        """The backend's cgroup directory (None when cgroups are unavailable)."""
        if self.problem() is not None or self._hierarchy is None:
            return None
        return self._hierarchy / f"{self._prefix}{backend_id}"

    def prepare(self, backend_id: str, pids_max: int) -> str:
        """Make the backend's cgroup with ``pids.max``; returns its ``cgroup.procs``."""
        path = self.path(backend_id)
        if path is None:
            raise ExecutorError(f"no pids cgroup for backend {backend_id}: {self.problem()}")
        try:
            path.mkdir(exist_ok=True)
            (path / "pids.max").write_text(str(pids_max))
        except OSError as exc:
            raise ExecutorError(f"cannot set up the pids cgroup {path}: {exc}") from exc
        return str(path / "cgroup.procs")

    def backend_ids(self) -> list[str]:
        """The backend ids that have a cgroup of this scope now (blocking)."""
        if self.problem() is not None or self._hierarchy is None:
            return []
        try:
            names = os.listdir(self._hierarchy)
        except OSError:
            return []
        return sorted(n[len(self._prefix) :] for n in names if n.startswith(self._prefix))

    def remove(self, backend_id: str) -> None:
        """Delete the backend's cgroup if it exists and is empty (blocking)."""
        if not self._probed:
            self.problem()
        path = self.path(backend_id)
        if path is None:
            return
        try:
            path.rmdir()
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.EBUSY):
                raise ExecutorError(f"cannot remove the pids cgroup {path}: {exc}") from exc
