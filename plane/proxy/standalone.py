"""``plane proxy``: a proxy process fed by a controller (:mod:`plane.proxy.remote`).

This module owns the composition of a stand-alone proxy: its options
(:class:`ProxyOptions`), the listening socket (bound here, or inherited from
a parent that bound it: ``--listen-fd``), the route feed, the connection
events' outbox, the proxy's metrics (not served here: sent with its stats to
the controller, whose ``/metrics`` sums them), and, with ``workers`` > 1,
the worker processes sharing one socket (:mod:`plane.proxy.workers`).

A clean stop (SIGTERM, Ctrl-C: cancellation) closes the client connections
first, then sends their ``ConnectionClosed`` to the controller before the
channel closes (:meth:`~plane.proxy.remote.RemoteFeed.drain`).

Resource handling: :func:`run_proxy` runs until cancelled and closes what it
opened.  Error handling: a bad option or an unreadable key file raises
:class:`~plane.config.ConfigError` before anything listens.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import trio

from plane.actors.clock import TrioClock
from plane.config import ConfigError, parse_listen
from plane.limits import budget, raise_fd_limit
from plane.metrics import Metrics
from plane.proxy.remote import Outbox, RemoteFeed, client_ssl_context, feed_url
from plane.proxy.routes import RouteTable
from plane.proxy.server import ProxyContext, ProxyServer, listen_socket
from plane.proxy.settings import ProxySettings

log = logging.getLogger("plane.proxy")


@attrs.frozen(kw_only=True)
class ProxyOptions:
    """What ``plane proxy`` is given (see ``plane proxy --help``)."""

    controller: str
    key_file: Path
    listen: str = "127.0.0.1:9090"
    workers: int = 1
    stale_after: float = 30.0
    ca_file: str | None = None
    max_connections: int | None = None
    cluster_host: str | None = None
    trust_forwarded_from: tuple[str, ...] = ()
    root_redirect: str | None = None
    listen_fd: int | None = None
    proxy_id: str | None = None

    def check(self) -> None:
        parse_listen(self.listen, "--listen")
        try:
            feed_url(self.controller, 0, "x")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.workers < 1:
            raise ConfigError("--workers: must be at least 1")
        if not self.stale_after > 0:
            raise ConfigError("--stale-after: must be more than 0 seconds")
        if self.ca_file is not None and not Path(self.ca_file).is_file():
            raise ConfigError(f"--ca-file: {self.ca_file!r} is not a file")
        self.settings(None)

    def settings(self, max_connections: int | None) -> ProxySettings:
        """The proxy's settings (:class:`ConfigError` naming what is refused)."""
        try:
            return ProxySettings(
                cluster_host=self.cluster_host,
                trust_forwarded_from=self.trust_forwarded_from,
                root_redirect=self.root_redirect,
                **({} if max_connections is None else {"max_connections": max_connections}),
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def read_proxy_key(path: Path) -> str:
    from plane.api.keys import read_key_file

    return read_key_file(path, "--proxy-key-file")


async def run_proxy(
    options: ProxyOptions, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve as ``options`` say until cancelled; reports the bound port once listening."""
    options.check()
    key = read_proxy_key(options.key_file)
    fds = raise_fd_limit()
    caps = budget(fds, proxy_max_connections=options.max_connections, api_max_streams=None)
    settings = options.settings(caps.proxy_max_connections)
    if options.listen_fd is not None:
        sock = socket.socket(fileno=options.listen_fd)
    else:
        host, port = parse_listen(options.listen, "--listen")
        sock = await listen_socket(host, port, settings.max_connections)
    if options.workers > 1:
        from plane.proxy.workers import ProxyWorkers

        workers = ProxyWorkers(sock, worker_argv(options), options.workers)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(workers.run)
                task_status.started(sock.getsockname()[1])
        finally:
            sock.close()
        return
    proxy_id = options.proxy_id or secrets.token_hex(4)
    outbox = Outbox()
    ssl_context = (
        client_ssl_context(options.ca_file) if options.controller.startswith("https") else None
    )
    clock = TrioClock()
    metrics = Metrics()  # not served here: sent to the controller (its /metrics)
    server: ProxyServer | None = None

    def stats() -> dict[str, Any]:
        if server is None:
            return {}
        return {
            "requests": server.tracker.requests,
            "active": server.active,
            "pid": os.getpid(),
            "counters": metrics.proxy_counters(),
        }

    def make_feed(table: RouteTable) -> RemoteFeed:
        return RemoteFeed(
            options.controller,
            key,
            table,
            clock,
            proxy_id=proxy_id,
            outbox=outbox,
            stale_after=options.stale_after,
            ssl_context=ssl_context,
            stats=stats,
        )

    ctx = ProxyContext(
        store=None,
        emit=outbox.emit,
        clock=clock,
        metrics=metrics,
        settings=settings,
        make_feed=make_feed,
        proxy_id=proxy_id,
        sock=sock,
    )
    server = ProxyServer(ctx)
    log.info("proxy %s fed by %s", proxy_id, options.controller)
    if options.listen_fd is None:
        await server.serve("", 0, task_status=task_status)
        return
    async with trio.open_nursery() as nursery:  # a worker: it ends with its parent
        nursery.start_soon(_exit_with_parent, os.getppid(), nursery.cancel_scope)
        await nursery.start(partial(server.serve, "", 0))
        task_status.started(sock.getsockname()[1])


PARENT_CHECK_EVERY = 0.5


async def _exit_with_parent(parent: int, scope: trio.CancelScope) -> None:
    """A worker whose parent died (killed, never told its workers) stops too,
    rather than serve unsupervised."""
    while os.getppid() == parent:  # noqa: ASYNC110 - nothing to wait on but the pid
        await trio.sleep(PARENT_CHECK_EVERY)
    log.warning("the parent process %d is gone; this worker stops", parent)
    scope.cancel()


def worker_argv(options: ProxyOptions) -> list[str]:
    """The ``plane proxy`` arguments of one worker (the socket and id added per worker)."""
    argv = [
        "--controller",
        options.controller,
        "--proxy-key-file",
        str(options.key_file),
        "--stale-after",
        repr(options.stale_after),
    ]
    if options.ca_file is not None:
        argv += ["--ca-file", options.ca_file]
    if options.max_connections is not None:
        argv += ["--max-connections", str(options.max_connections)]
    if options.cluster_host is not None:
        argv += ["--cluster-host", options.cluster_host]
    for network in options.trust_forwarded_from:
        argv += ["--trust-forwarded-from", network]
    if options.root_redirect is not None:
        argv += ["--root-redirect", options.root_redirect]
    return argv
