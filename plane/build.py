"""Which build of plane is running: its version and its source hash.

This module owns the ``hash`` of ``GET /ctrl/status`` (Plane's
``plane_hash``).  It is, in order: ``PLANE_BUILD_HASH`` from the environment
(a packager sets it), the git commit of the source tree plane runs from
(``git rev-parse HEAD``, read once), or ``"unknown"`` when neither is
available (an installed wheel without the variable).  It is stable for the
life of a process.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

from plane import __version__

UNKNOWN = "unknown"

__all__ = ["UNKNOWN", "__version__", "build_hash"]


@functools.cache
def build_hash() -> str:
    """The build's hash (see the module docstring)."""
    given = os.environ.get("PLANE_BUILD_HASH", "").strip()
    if given:
        return given
    source = Path(__file__).resolve().parent.parent
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=source,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    commit = done.stdout.strip()
    if done.returncode != 0 or len(commit) < 7 or not all(c in "0123456789abcdef" for c in commit):
        return UNKNOWN
    return commit
