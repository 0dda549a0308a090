"""Proxy worker processes sharing one listening socket, supervised.

This module owns :class:`ProxyWorkers`: N ``plane proxy`` processes, each
handed the one listening socket its parent bound (``--listen-fd``; the
kernel spreads the connections over the processes accepting on it, so a
port 0 or a slow worker loses no connection), each fed by the controller
like any ``plane proxy``.  A worker that exits is started again (after 0.1 s
doubling to 5 s while it keeps dying young), under a new proxy id; the
``on_exit`` callback is told the old id (``plane serve`` has the controller
close that worker's open connections:
:meth:`~plane.api.proxies.ProxyRegistry.forget`).

Resource handling: :meth:`ProxyWorkers.run` runs until cancelled; on
cancellation every worker is sent SIGTERM, and SIGKILL after 5 s.
:meth:`ProxyWorkers.stop` does the same without cancelling (so the caller's
API is still up to take the workers' last connection events).

Error handling: a worker that fails to start is retried like one that died.
"""

from __future__ import annotations

import logging
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Callable

import trio

log = logging.getLogger("plane.proxy.workers")

RESTART_FIRST = 0.1
RESTART_MAX = 5.0
STOP_GRACE = 5.0
"""How long a stopped worker has before SIGKILL."""
YOUNG = 10.0
"""A worker that dies sooner than this after its start backs the restarts off."""


class Worker:
    __slots__ = ("index", "process", "proxy_id", "restarts")

    def __init__(self, index: int) -> None:
        self.index = index
        self.proxy_id = ""
        self.process: trio.Process | None = None
        self.restarts = 0


class ProxyWorkers:
    """See the module docstring."""

    def __init__(
        self,
        sock: socket.socket,
        argv: list[str],
        count: int,
        *,
        on_exit: Callable[[str], None] | None = None,
        name: str = "w",
    ) -> None:
        self.sock = sock
        self.argv = argv
        self.workers = [Worker(i + 1) for i in range(count)]
        self.on_exit = on_exit
        self.name = name
        self._stopping = False

    def command(self, worker: Worker) -> list[str]:
        return [
            sys.executable,
            "-c",
            "import sys; from plane.cli import main; sys.exit(main(sys.argv[1:]))",
            "proxy",
            *self.argv,
            "--listen-fd",
            str(self.sock.fileno()),
            "--proxy-id",
            worker.proxy_id,
        ]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for worker in self.workers:
                nursery.start_soon(self._keep, worker)
            task_status.started()

    async def _keep(self, worker: Worker) -> None:
        backoff = RESTART_FIRST
        while not self._stopping:
            worker.proxy_id = f"{self.name}{worker.index}-{secrets.token_hex(3)}"
            started = trio.current_time()
            try:
                code = await self._run_one(worker)
                log.warning(
                    "proxy worker %s (%s) exited with %s; restarting",
                    worker.index,
                    worker.proxy_id,
                    code,
                )
            except OSError as exc:
                log.error("proxy worker %s could not start: %s", worker.index, exc)
            worker.process = None
            if self.on_exit is not None:
                self.on_exit(worker.proxy_id)
            if self._stopping:
                return
            worker.restarts += 1
            if trio.current_time() - started < YOUNG:
                await trio.sleep(backoff)
                backoff = min(backoff * 2, RESTART_MAX)
            else:
                backoff = RESTART_FIRST

    async def _run_one(self, worker: Worker) -> int:
        fd = self.sock.fileno()
        process = await trio.lowlevel.open_process(
            self.command(worker), pass_fds=(fd,), stdin=subprocess.DEVNULL
        )
        worker.process = process
        try:
            return await process.wait()
        finally:
            if process.returncode is None:
                with trio.CancelScope(shield=True):
                    process.send_signal(signal.SIGTERM)
                    with trio.move_on_after(5):
                        await process.wait()
                    if process.returncode is None:
                        process.kill()
                        await process.wait()

    async def stop(self) -> None:
        """Stop every worker for good (no restart): SIGTERM (a worker sends its
        controller its last connection events), SIGKILL after
        :data:`STOP_GRACE`; returns once they have exited."""
        self._stopping = True
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                worker.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_GRACE):
            for worker in self.workers:
                if worker.process is not None:
                    await worker.process.wait()
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                worker.process.kill()
                await worker.process.wait()

    def views(self) -> list[dict[str, object]]:
        return [
            {
                "index": w.index,
                "proxy_id": w.proxy_id,
                "pid": None if w.process is None else w.process.pid,
                "restarts": w.restarts,
            }
            for w in self.workers
        ]
