"""The output writer of a process backend: copies a pipe into size-rotated files.

This module owns the small program the process executor starts beside each
backend (``python -I -S logpipe.py PATH MAX_BYTES FILES``): it reads the
backend's stdout and stderr from its own stdin and appends them to ``PATH``
(created 0600); when ``PATH`` would grow past ``MAX_BYTES`` it is renamed to
``PATH.1`` (older ones shift to ``PATH.2``..., the oldest beyond ``FILES - 1``
rotated files dropped) and a fresh ``PATH`` begins, so a backend's output never
takes more than ``MAX_BYTES * FILES`` on disk.

It runs in its own session, like the backend outlives plane, and ignores
SIGTERM, SIGINT and SIGHUP: it ends when every writer has closed the pipe
(the backend and its children have exited), after writing everything they
wrote.  It imports the standard library only (it runs with ``-I -S``), so it
starts fast and does not depend on how plane is installed.

Error handling: a write error (disk full) drops that chunk and carries on, so
the backend never blocks on a full pipe nor dies of SIGPIPE; nothing is
printed (its stdout and stderr are /dev/null).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

_READ_SIZE = 64 * 1024


def rotated(path: str, index: int) -> str:
    """The name of the *index*-th rotated file of *path* (``path.1`` is the newest)."""
    return f"{path}.{index}"


class RotatingFile:
    """Appends to *path*, rotating at *max_bytes*, keeping *files* files in all."""

    def __init__(self, path: str, max_bytes: int, files: int) -> None:
        self.path = path
        self.max_bytes = max(1, max_bytes)
        self.files = max(1, files)
        self.fd = -1
        self.size = 0
        self._open()

    def _open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(self.fd, 0o600)
        self.size = os.fstat(self.fd).st_size

    def _rotate(self) -> None:
        os.close(self.fd)
        self.fd = -1
        if self.files == 1:
            os.unlink(self.path)
        else:
            for index in range(self.files - 1, 1, -1):
                if os.path.exists(rotated(self.path, index - 1)):
                    os.replace(rotated(self.path, index - 1), rotated(self.path, index))
            os.replace(self.path, rotated(self.path, 1))
        self._open()

    def write(self, data: bytes) -> None:
        if self.fd < 0:  # a rotation failed half-way: begin a file again
            self._open()
        view = memoryview(data)
        while view:
            if self.size >= self.max_bytes:
                self._rotate()
            room = self.max_bytes - self.size
            written = os.write(self.fd, view[:room])
            self.size += written
            view = view[written:]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)


def main(argv: list[str]) -> int:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    path, max_bytes, files = argv[1], int(argv[2]), int(argv[3])
    out = RotatingFile(path, max_bytes, files)
    try:
        while True:
            chunk = os.read(0, _READ_SIZE)
            if not chunk:
                return 0
            with contextlib.suppress(OSError):  # disk full...: drop it, never block the backend
                out.write(chunk)
    finally:
        out.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
