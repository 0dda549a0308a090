"""Run ``plane serve`` as a real child process on free loopback ports.

For end-to-end tests and benchmarks: :class:`PlaneServe` starts it, reads the
addresses from its start-up banner, and offers a few synchronous API calls (made
with :class:`plane.client.Client`, ``client``; ``api`` is its httpx session, for
raw requests).

Resource handling: call :meth:`PlaneServe.stop` (SIGTERM, then SIGKILL after a
timeout) or :meth:`PlaneServe.kill9`; both close the client and the log file.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from plane.client import Client

BANNER = re.compile(r"^\s+(api|proxy|executor):\s+(\S+)", re.MULTILINE)


def serve_command(data_dir: Path, *extra: str) -> list[str]:
    """The argv of ``plane serve`` on ``data_dir`` with free loopback ports."""
    return [
        sys.executable,
        "-m",
        "plane.cli",
        "serve",
        "--data-dir",
        str(data_dir),
        "--api-listen",
        "127.0.0.1:0",
        "--proxy-listen",
        "127.0.0.1:0",
        *extra,
    ]


def end_process(process: subprocess.Popen[str], timeout: float) -> int:
    """SIGTERM ``process`` (if it runs), SIGKILL it after ``timeout`` seconds,
    reap it and close its stdout pipe; its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()
    return process.returncode


class PlaneServe:
    """A ``plane serve`` child process on free loopback ports."""

    def __init__(
        self,
        data_dir: Path,
        executor: str,
        *extra: str,
        umask: int = -1,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        """``umask`` (default: this process's) and ``env`` (added to this process's
        environment) are the child's; its stderr goes to ``log_path`` (default
        ``data_dir/serve.log``)."""
        self.data_dir = data_dir
        self.log_path = log_path or data_dir / "serve.log"
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._log = open(fd, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            serve_command(data_dir, "--executor", executor, *extra),
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            umask=umask,
        )
        try:
            self.urls = self._read_banner()
        except BaseException:
            end_process(self.process, 5)
            self._log.close()
            raise
        self.client = Client(self.urls["api"], api_key="", timeout=30)
        self.api = self.client.http

    def _read_banner(self, timeout: float = 60) -> dict[str, str]:
        assert self.process.stdout is not None
        found: dict[str, str] = {}
        self.banner: list[str] = []
        deadline = time.monotonic() + timeout
        while len(found) < 3:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"plane serve exited early: {self.log_path.read_text()}")
            self.banner.append(line.rstrip("\n"))
            match = BANNER.match(line)
            if match:
                found[match.group(1)] = match.group(2)
            if time.monotonic() > deadline:
                raise RuntimeError("plane serve printed no banner")
        return found

    def connect(self, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.client.request("POST", "/ctrl/connect", json=body)
        return result

    def status(self, backend_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.client.request("GET", f"/pub/b/{backend_id}/status")
        return result

    def wait_status(self, backend_id: str, *wanted: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(backend_id)
            if status["status"] in wanted:
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"{backend_id} still {status} after {timeout}s")
            time.sleep(0.05)

    def backends(self, live: bool = False) -> list[dict[str, Any]]:
        params = {"limit": 1000, **({"live": 1} if live else {})}
        result: list[dict[str, Any]] = self.client.request("GET", "/ctrl/backends", params=params)[
            "backends"
        ]
        return result

    def kill9(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)
        self.stop()

    def stop(self, timeout: float = 60) -> int:
        code = end_process(self.process, timeout)
        self.client.close()
        if not self._log.closed:
            self._log.close()
        return code
