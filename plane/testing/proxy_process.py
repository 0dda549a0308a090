"""Run ``plane proxy`` as a real child process (e2e tests and benchmarks).

:class:`PlaneProxy` starts ``plane proxy --controller <api> --listen
127.0.0.1:<port>`` and reads its bound address from its banner.

Resource handling: call :meth:`PlaneProxy.stop` (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from plane.testing.serve_process import end_process

BANNER = re.compile(r"proxy on (\S+), fed by")


class PlaneProxy:
    """A ``plane proxy`` child process."""

    def __init__(
        self,
        controller: str,
        key_file: Path,
        *extra: str,
        listen: str = "127.0.0.1:0",
        log_path: Path | None = None,
    ) -> None:
        self.log_path = log_path
        log = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "plane.cli",
                "proxy",
                "--controller",
                controller,
                "--listen",
                listen,
                "--proxy-key-file",
                str(key_file),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        if log_path is not None and not isinstance(log, int):
            log.close()
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        match = BANNER.search(line)
        if match is None:
            self.stop()
            shown = log_path.read_text() if log_path is not None else ""
            raise RuntimeError(f"plane proxy did not start: {line!r} {shown}")
        self.address = match.group(1)
        self.url = f"http://{self.address}"

    def stop(self, timeout: float = 30) -> int:
        return end_process(self.process, timeout)
