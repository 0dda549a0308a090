"""``plane serve``: one process running the log, the supervisor, the executor,
the API and the proxy.

This module owns the composition and the process-level rules: one writer per
data directory (an exclusive lock on ``DATA_DIR/plane.lock``), choosing the
executor (``auto``: Docker when an engine answers, else local processes), and
the order of start and stop.

Resource handling
-----------------
:func:`serve_plane` runs until cancelled.  On cancellation (SIGTERM, Ctrl-C)
the listeners close first, pending appends are flushed by the store's
context, and the backends keep running for the next start to adopt, unless
``terminate_on_exit`` is set, in which case every live backend is terminated
first.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import IO

import attrs
import trio

from plane.actors.supervisor import Supervisor
from plane.api.app import ApiContext, serve_api
from plane.config import ConfigError, PlaneConfig, base_url
from plane.events.sqlite import open_sqlite_store
from plane.events.types import TerminationKind
from plane.events.upkeep import keep_log
from plane.executors.base import Executor
from plane.metrics import Metrics
from plane.proxy.server import ProxyContext, serve_proxy
from plane.proxy.settings import ProxySettings

log = logging.getLogger("plane.serve")


class AlreadyServing(RuntimeError):
    """Another plane serve holds the data directory."""


@attrs.frozen
class Serving:
    """What :func:`serve_plane` reports once it listens."""

    api_url: str
    proxy_url: str
    executor: str
    log_path: str
    recovered: dict[str, list[str]]


@contextmanager
def hold_data_dir(config: PlaneConfig) -> Iterator[None]:
    """Create the data directory and hold its lock; :class:`AlreadyServing` if taken."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    path = config.data_dir / "plane.lock"
    handle: IO[str] = open(path, "a+")  # noqa: SIM115 - held for the whole serve
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise AlreadyServing(
                f"another plane serve (pid {holder}) is using {config.data_dir}; "
                "the event log has one writer"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()


def docker_engine_answers(timeout: float = 3.0) -> bool:
    """True when a Docker engine answers a ping (blocking; run it in a thread)."""
    try:
        import docker

        client = docker.from_env(timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


async def open_executor(config: PlaneConfig) -> Executor:
    choice = config.executor
    if choice in ("auto", "docker"):
        engine = await trio.to_thread.run_sync(docker_engine_answers)
        if choice == "docker" and not engine:
            raise ConfigError("--executor docker: no Docker engine answers (is dockerd running?)")
        choice = "docker" if engine else "process"
    if choice == "docker":
        from plane.executors.docker import DockerExecutor

        return DockerExecutor(
            scope=str(config.data_dir.resolve()), logs_dir=config.data_dir / "logs"
        )
    from plane.executors.process import ProcessExecutor

    return ProcessExecutor(config.data_dir / "logs")


async def serve_plane(
    config: PlaneConfig,
    *,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[Serving] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run everything until ``shutdown`` is set (or until cancelled).

    Reports :class:`Serving` once both listeners are bound.
    """
    with hold_data_dir(config):
        executor = await open_executor(config)
        metrics = Metrics()
        async with open_sqlite_store(config.log_path) as store:
            supervisor = Supervisor(
                store,
                executor,
                max_backends=config.max_backends,
                token_lifetime_seconds=config.token_lifetime_seconds,
            )
            supervisor.observers.append(metrics.observe_backend)
            supervisor.observers.append(lambda _state, events: metrics.observe_append(len(events)))
            api_host, api_port = config.api_address
            proxy_host, proxy_port = config.proxy_address
            async with trio.open_nursery() as nursery:
                await nursery.start(supervisor.serve)
                await nursery.start(partial(keep_log, store, retain_days=config.retain_days))
                metrics.load_statuses(list(supervisor.states.values()))
                proxy_ctx = ProxyContext(
                    store=store,
                    emit=supervisor.tell,
                    clock=supervisor.clock,
                    metrics=metrics,
                    settings=ProxySettings(),
                )
                bound_proxy = await nursery.start(serve_proxy, proxy_ctx, proxy_host, proxy_port)
                proxy_url = (config.public_url or base_url(proxy_host, bound_proxy)).rstrip("/")
                api_ctx = ApiContext(
                    supervisor=supervisor,
                    store=store,
                    executor=executor,
                    metrics=metrics,
                    public_proxy_url=proxy_url,
                    public_api_url=config.api_public_url or base_url(api_host, api_port),
                    api_key=config.api_key,
                    executor_name=executor.name,
                )
                bound_api = await nursery.start(serve_api, api_ctx, api_host, api_port)
                if not config.api_public_url:
                    api_ctx.public_api_url = base_url(api_host, bound_api)
                task_status.started(
                    Serving(
                        api_ctx.public_api_url,
                        proxy_url,
                        executor.name,
                        str(config.log_path),
                        supervisor.recovery_report,
                    )
                )
                await (shutdown if shutdown is not None else trio.Event()).wait()
                if config.terminate_on_exit:
                    log.info("terminating every live backend before exit")
                    with trio.move_on_after(60):
                        await supervisor.terminate_all(TerminationKind.SOFT)
                nursery.cancel_scope.cancel()
        log.info("stopped; the log is flushed and closed")
