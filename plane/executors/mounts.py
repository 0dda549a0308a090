"""Plane's ``mount``: which host directory under the mount base a backend gets.

This module owns the rule that maps ``executable.mount`` to a directory of the
host, inside ``MOUNT_BASE`` (``plane serve --mount-base DIR``), and never
outside it:

* ``False``: no mount;
* ``True``: ``MOUNT_BASE/<key name>``;
* a string: ``MOUNT_BASE/<string>``, a relative path.

The executor mounts that directory at :data:`MOUNT_TARGET` (Docker) and
creates it when missing.  Refused, naming ``$.spawn_config.executable.mount``:
no mount base configured; an empty, absolute or ``..``-containing path; a
path (or key name) whose resolution leaves the base or is the base itself,
including through a symlink anywhere on the way (the path is resolved, with
every symlink followed, and must stay strictly inside the resolved base).

:func:`mount_problem` is the cheap check done before a request is recorded
(``Executor.check``); :func:`mount_source` is done at start, creates the
directory, and checks the resolution again after creating it (a symlink may
have appeared since).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from plane.executors.base import SpawnError, refusal

__all__ = ["MOUNT_TARGET", "mount_problem", "mount_source"]

#: Where the directory appears inside a backend container (Plane's path).
MOUNT_TARGET = "/plane-data"

_FIELD = "mount"


def _path_problem(relative: str, what: str) -> str | None:
    if not relative or "\x00" in relative:
        return refusal(_FIELD, f"{what} must be a non-empty relative path")
    parts = PurePosixPath(relative).parts
    if relative.startswith("/") or PurePosixPath(relative).is_absolute():
        return refusal(
            _FIELD, f"{what} {relative!r} is absolute; it must be relative to the mount base"
        )
    if ".." in parts:
        return refusal(
            _FIELD, f"{what} {relative!r} contains '..'; it must stay inside the mount base"
        )
    if all(part == "." for part in parts):
        return refusal(_FIELD, f"{what} {relative!r} names the mount base itself")
    return None


def _inside(base: Path, relative: str, what: str) -> Path:
    """``base/relative`` resolved; SpawnError unless strictly inside ``base`` resolved."""
    root = base.resolve()
    target = (root / relative).resolve()
    if target == root or not target.is_relative_to(root):
        raise SpawnError(
            refusal(
                _FIELD,
                f"{what} {relative!r} resolves outside the mount base "
                "(a symlink or '..' leaves it); refused",
            )
        )
    return target


def mount_problem(base: Path | None, mount: bool | str) -> str | None:
    """Why ``mount`` cannot be honoured with this mount *base*, or None.

    Cheap: the key name of ``mount=True`` is checked at start
    (:func:`mount_source`), since it is not part of the executable.
    """
    if mount is False:
        return None
    if base is None:
        return refusal(
            _FIELD, "this plane has no mount base (start plane serve with --mount-base DIR)"
        )
    if mount is True:
        return None
    problem = _path_problem(mount, "the mount path")
    if problem is not None:
        return problem
    try:
        _inside(base, mount, "the mount path")
    except SpawnError as exc:
        return str(exc)
    return None


def mount_source(base: Path | None, mount: bool | str, key_name: str) -> Path | None:
    """The host directory to mount (created if missing), or None for no mount.

    Raises :class:`SpawnError` naming the field when it cannot be honoured.
    """
    if mount is False:
        return None
    problem = mount_problem(base, mount)
    if problem is not None:
        raise SpawnError(problem)
    assert base is not None
    relative, what = (key_name, "the key name") if mount is True else (str(mount), "the mount path")
    problem = _path_problem(relative, what)
    if problem is not None:
        raise SpawnError(problem)
    target = _inside(base, relative, what)
    try:
        base.mkdir(parents=True, exist_ok=True)
        os.makedirs(target, exist_ok=True)
    except OSError as exc:
        raise SpawnError(
            refusal(_FIELD, f"cannot create the mount directory {str(target)!r}: {exc.strerror}")
        ) from exc
    # Resolve again: a symlink created in the meantime must not lead outside.
    checked = _inside(base, relative, what)
    if not checked.is_dir():
        raise SpawnError(
            refusal(_FIELD, f"the mount directory {str(checked)!r} is not a directory")
        )
    return checked
