"""Who may read plane's files: the data directory is the owner's alone.

The event log holds connection-token hashes, ``secret_token`` values and the
backends' environment in plain text, and the backends' logs hold whatever
they print; so everything ``plane serve`` keeps under its data directory is
private to the user running it, whatever that user's umask:

* :func:`private_umask` sets the process umask to ``077`` while plane serves,
  so every file plane (or SQLite, for ``events.db-wal`` / ``-shm``, or any
  later part: snapshots, archives, kept logs) creates is ``0600`` and every
  directory ``0700``.  Child processes started by the process executor get the
  operator's own umask back (:func:`child_umask`): the policy is for plane's
  files, not the backends'.
* :func:`make_private` creates the data directory ``0700`` and takes group
  and other permissions away from anything already in it (a data directory
  written by an older plane, or by hand), returning what it changed so that
  ``plane serve`` can say so in its log.

Symbolic links are neither followed nor changed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
OWNER_ONLY = 0o700
"""The permission bits kept on what is already there: the owner's (``0644`` -> ``0600``)."""

_operator_umask: int | None = None


@contextmanager
def private_umask() -> Iterator[None]:
    """Run the body with umask ``077``; restore the previous one after."""
    global _operator_umask
    previous = os.umask(PRIVATE_UMASK)
    outer = _operator_umask
    if outer is None:
        _operator_umask = previous
    try:
        yield
    finally:
        os.umask(previous)
        _operator_umask = outer


def child_umask() -> int:
    """The umask for a backend's process: the operator's (``-1``: leave it as is)."""
    return _operator_umask if _operator_umask is not None else -1


def _tighten(path: Path, mode: int, wanted: int, changed: list[str]) -> None:
    if stat.S_IMODE(mode) & ~wanted & 0o777:
        os.chmod(path, stat.S_IMODE(mode) & wanted)
        changed.append(f"{path} {stat.S_IMODE(mode):04o} -> {stat.S_IMODE(mode) & wanted:04o}")


def make_private(data_dir: Path) -> list[str]:
    """Create ``data_dir`` (``0700``) or make it and everything in it owner-only.

    Returns one ``"PATH OLD -> NEW"`` line per path whose mode changed.
    """
    changed: list[str] = []
    data_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    _tighten(data_dir, data_dir.stat().st_mode, OWNER_ONLY, changed)
    for top, dirs, files in os.walk(data_dir):
        for name in [*dirs, *files]:
            path = Path(top) / name
            try:
                mode = path.lstat().st_mode
            except FileNotFoundError:  # gone meanwhile (e.g. a -wal file)
                continue
            if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
                _tighten(path, mode, OWNER_ONLY, changed)
    return changed
