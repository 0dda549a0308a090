"""``plane serve``: one process running the log, the supervisor, the executor,
the API and the proxy.

This module owns the composition and the process-level rules: one writer per
data directory (an exclusive lock on ``DATA_DIR/plane.lock``), choosing the
executor (``auto``: Docker when an engine answers, else local processes), and
the order of start and stop.

Startup follows the live backends, not the log's length: the startup fold
(:func:`plane.events.snapshot.load_startup`: the snapshot plus the log's
tail) is made once and handed to the supervisor (live backends, fencing
tokens) and to the proxy's route table (the route records of unfinished
backends); neither keeps it.

What has to read the whole history starts only once serving is reported
(both listeners bound, ``/pub/health`` answering) and
:data:`HISTORY_WORK_AFTER` seconds more, in the background, under the serve
nursery that owns everything else: the log upkeep's first round
(:func:`plane.events.upkeep.keep_log`: retention, then the snapshot rewrite,
which serialises every id and fencing token the history holds) and the
backends index catch-up (:mod:`plane.events.backend_index`, a rebuild when its
file is missing).  Nothing answers wrongly meanwhile: the snapshot is derived
data nobody reads while serving, retention only moves terminated streams
(reads of them go to the archives either way), and every backend list
catches the index up itself before answering.

Exposure and privacy
--------------------
:class:`~plane.config.PlaneConfig` has refused an API on a non-loopback
address without a key unless ``insecure_no_auth`` (then a warning is logged
and the banner says so).  The API keys are loaded here (key files are read
before anything starts; :attr:`Serving.reload_keys` re-reads them).  While
serving, the umask is ``077`` and the data directory is made owner-only at
start (:mod:`plane.permissions`), so the log, its ``-wal``/``-shm``, backend
logs and any other file under the data directory are ``0600``.

Resource handling
-----------------
:func:`serve_plane` runs until cancelled.  On shutdown (SIGTERM, Ctrl-C) the
proxy workers (``--proxy-workers``) are stopped first, while the API still
takes the ``ConnectionClosed`` they send as they stop; then the listeners
close, pending appends are flushed by the store's
context, and the backends keep running for the next start to adopt, unless
``terminate_on_exit`` is set, in which case every live backend is terminated
first.

Error handling
--------------
A full disk (the store's ``StoreFullError``, "LogFull") does not stop
serving: the API answers 503 ``LogUnavailable`` to what needs a write, reads,
status and streams keep working, the proxy keeps relaying, and the actors keep
their pending decisions and record them once space is freed
(:mod:`plane.actors.backend`), with no restart.  The upkeep task skips a round
it cannot write (:mod:`plane.events.upkeep`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import IO

import attrs
import trio

from plane.actors.supervisor import ConnectRefused, Supervisor, load_startup_state
from plane.addresses import join_host_port
from plane.api.app import ApiContext, serve_api
from plane.api.keys import ApiKeys, file_is_shared
from plane.api.live_routes import LiveRoutes
from plane.api.proxies import ProxyRegistry
from plane.cluster import ClusterNameError, cluster_of_url, parse_cluster
from plane.config import ConfigError, PlaneConfig, base_url
from plane.events.sqlite import SqliteEventStore, open_sqlite_store
from plane.events.store import StoreError
from plane.events.types import TerminationKind
from plane.events.upkeep import keep_log
from plane.executors.base import Executor, ExecutorError
from plane.limits import Budget, budget, raise_fd_limit
from plane.metrics import Metrics
from plane.permissions import make_private, private_umask
from plane.proxy.server import ProxyContext, listen_socket, serve_proxy
from plane.proxy.settings import ProxySettings
from plane.proxy.standalone import ProxyOptions, worker_argv
from plane.proxy.workers import ProxyWorkers

log = logging.getLogger("plane.serve")


class AlreadyServing(RuntimeError):
    """Another plane serve holds the data directory."""


@attrs.frozen
class Serving:
    """What :func:`serve_plane` reports once it listens.

    ``api_url`` and ``proxy_url`` are the URLs handed to clients; ``api_bind``
    and ``proxy_bind`` the addresses really bound (``0.0.0.0:8080``: every
    interface).  ``auth`` says in a few words what the API asks for.
    ``reload_keys`` re-reads the API key files (``plane serve`` calls it on
    SIGHUP); a file that cannot be used is logged and the keys in use stay.
    """

    api_url: str
    proxy_url: str
    executor: str
    log_path: str
    recovered: dict[str, list[str]]
    api_bind: str = ""
    proxy_bind: str = ""
    auth: str = ""
    limits: str = ""
    """The connection caps in force and the file-descriptor limit behind them."""
    reload_keys: Callable[[], None] = attrs.field(default=lambda: None, eq=False)


@contextmanager
def hold_data_dir(config: PlaneConfig) -> Iterator[None]:
    """Create the data directory (owner-only) and hold its lock; :class:`AlreadyServing`
    if taken.  Whatever in an existing directory other users could read is made
    owner-only, and the log says so."""
    changed = make_private(config.data_dir)
    if changed:
        shown = "; ".join(changed[:10]) + (
            f"; and {len(changed) - 10} more" if len(changed) > 10 else ""
        )
        log.warning(
            "the data directory was readable by other users; made %d path(s) owner-only: %s",
            len(changed),
            shown,
        )
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


def cluster_host(config: PlaneConfig) -> str | None:
    """The host of the cluster name (:mod:`plane.cluster`): ``--cluster``'s host,
    else the host of the proxy's public URL (``--public-url``, else its listen
    address); IPv6 in brackets, as a Host header carries it."""
    try:
        if config.cluster:
            host = parse_cluster(config.cluster).host
        else:
            host = cluster_of_url(config.public_url or base_url(*config.proxy_address)).host
    except ClusterNameError:
        return None
    return f"[{host}]" if ":" in host else host


def connection_budget(config: PlaneConfig) -> Budget:
    """Raise the soft file-descriptor limit to the hard one and draw the
    connection caps from it (ConfigError if a cap given does not fit); a low
    result is logged."""
    fds = raise_fd_limit()
    caps = budget(
        fds,
        proxy_max_connections=config.proxy_max_connections,
        api_max_streams=config.api_max_streams,
    )
    if fds.before != fds.soft:
        log.info("file-descriptor limit raised from %d to %d", fds.before, fds.soft)
    if caps.low:
        log.warning(
            "the file-descriptor limit is low (%d, hard %d): the proxy holds at most %d "
            "connections; raise the hard limit (ulimit -Hn, systemd LimitNOFILE=)",
            fds.soft,
            fds.hard,
            caps.proxy_max_connections,
        )
    return caps


def proxy_settings(config: PlaneConfig, max_connections: int | None = None) -> ProxySettings:
    """The proxy's settings from the configuration (ConfigError if refused);
    ``max_connections`` the cap drawn by :func:`connection_budget`."""
    cap = max_connections or config.proxy_max_connections
    try:
        return ProxySettings(
            cluster_host=cluster_host(config),
            trust_forwarded_from=config.trust_forwarded_from,
            root_redirect=config.proxy_root_redirect,
            **({} if cap is None else {"max_connections": cap}),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


async def open_engines(config: PlaneConfig) -> dict[str, Executor]:
    """One executor per engine: ``--engine`` s, or the one default engine ``local``.

    An engine that does not answer now is not a reason to refuse to start: it
    is watched, and recorded lost if it stays silent."""
    if not config.engines:
        return {"local": await open_executor(config)}
    from plane.executors.docker import DockerExecutor

    executors: dict[str, Executor] = {}
    for spec in config.engines:
        executor = DockerExecutor(
            base_url=spec.url,
            publish=spec.publish,
            tls=spec.tls,
            scope=str(config.data_dir.resolve()),
            logs_dir=config.data_dir / "logs",
            mount_base=config.mount_base,
        )
        try:
            with trio.fail_after(10):
                await executor.inspect_engine()
        except (ExecutorError, trio.TooSlowError) as exc:
            log.warning("engine %s does not answer (yet): %s", spec.name, exc)
        executors[spec.name] = executor
    return executors


async def open_executor(config: PlaneConfig) -> Executor:
    choice = config.executor
    if choice in ("auto", "docker"):
        engine = await trio.to_thread.run_sync(docker_engine_answers)
        if choice == "docker" and not engine:
            raise ConfigError("--executor docker: no Docker engine answers (is dockerd running?)")
        choice = "docker" if engine else "process"
    if choice == "docker":
        from plane.executors.docker import DockerExecutor

        docker_executor = DockerExecutor(
            scope=str(config.data_dir.resolve()),
            logs_dir=config.data_dir / "logs",
            mount_base=config.mount_base,
        )
        try:
            await docker_executor.inspect_engine()  # so connect refuses what it cannot do
        except ExecutorError as exc:
            log.warning("could not read what the docker engine supports (yet): %s", exc)
        return docker_executor
    from plane.executors.process import ProcessExecutor

    return ProcessExecutor(config.data_dir / "logs")


async def _index_backends(ctx: ApiContext) -> None:
    """Bring the backends index up to date once, so the first list is quick."""
    try:
        await ctx.index.catch_up()
    except StoreError as exc:
        log.warning("could not index the backends yet (the first list will): %s", exc)


def _auth_summary(config: PlaneConfig, keys: ApiKeys) -> str:
    if keys.full is None:
        if config.exposed_without_auth:
            return "NONE (--insecure-no-auth): anyone who reaches the API controls plane"
        return "none (loopback only)"
    source = f"key file {keys.full_file}" if keys.full_file else "API key"
    read = f" + read-only key file {keys.read_file}" if keys.read_file else ""
    return f"{source}{read}; SIGHUP re-reads key files"


async def _close_at_exit(sock: socket.socket) -> None:
    try:
        await trio.sleep_forever()
    finally:
        sock.close()


WORKERS_SYNC_TIMEOUT = 30.0
"""How long ``plane serve`` waits for its proxy workers' first sync before
reporting it serves anyway (they keep trying)."""


async def _start_workers(
    nursery: trio.Nursery,
    config: PlaneConfig,
    keys: ApiKeys,
    settings: ProxySettings,
    registry: ProxyRegistry,
    sock: socket.socket,
    api_host: str,
    api_port: int,
) -> ProxyWorkers:
    """Start ``config.proxy_workers`` ``plane proxy`` processes on ``sock``, fed
    by this API; returns them once each has attached (or after
    :data:`WORKERS_SYNC_TIMEOUT`)."""
    key_file = config.proxy_key_file
    if key_file is None:  # made for the workers: owner-only, in the data directory
        key_file = config.data_dir / "proxy.key"
        key = secrets.token_urlsafe(32)
        key_file.write_text(key + "\n", encoding="utf-8")
        os.chmod(key_file, 0o600)
        keys.proxy = key
    loopback = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(api_host, api_host)
    options = ProxyOptions(
        controller=base_url(loopback, api_port),
        key_file=key_file,
        cluster_host=settings.cluster_host,
        max_connections=settings.max_connections,
        trust_forwarded_from=config.trust_forwarded_from,
        root_redirect=config.proxy_root_redirect,
    )
    workers = ProxyWorkers(
        sock, worker_argv(options), config.proxy_workers, on_exit=_forget_worker(registry)
    )
    await nursery.start(workers.run)
    with trio.move_on_after(WORKERS_SYNC_TIMEOUT):
        while True:
            ids = {w.proxy_id for w in workers.workers}
            attached = [
                e
                for e in registry.proxies.values()
                if e.proxy_id in ids and e.connected and e.synced
            ]
            if len(attached) == len(ids):
                return workers
            await trio.sleep(0.05)
    log.warning("the proxy workers have not all synced yet; serving anyway")
    return workers


def _forget_worker(registry: ProxyRegistry) -> Callable[[str], None]:
    def forget(proxy_id: str) -> None:
        closed = registry.forget(proxy_id)
        log.info("proxy worker %s gone: %d open connection(s) closed", proxy_id, closed)

    return forget


async def serve_plane(
    config: PlaneConfig,
    *,
    shutdown: trio.Event | None = None,
    executor: Executor | None = None,
    task_status: trio.TaskStatus[Serving] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run everything until ``shutdown`` is set (or until cancelled).

    ``executor``: use this executor instead of the configured one (benchmarks
    and tests compose plane with the fake executor this way).

    Reports :class:`Serving` once both listeners are bound.  While it runs the
    process umask is ``077`` (:mod:`plane.permissions`).
    """
    keys = ApiKeys.load(
        key=config.api_key,
        key_file=config.api_key_file,
        read_key_file=config.read_key_file,
        proxy_key_file=config.proxy_key_file,
    )
    for path in keys.files:
        if file_is_shared(path):
            log.warning("%s is readable by other users; chmod 600 it", path)
    if config.exposed_without_auth:
        log.warning(
            "INSECURE: the API listens on %s without an API key (--insecure-no-auth): "
            "anyone who reaches it can start backends",
            config.api_listen,
        )

    def reload_keys() -> None:
        if not keys.files:
            log.info("no API key file to re-read (--api-key-file, --read-key-file)")
            return
        try:
            keys.reload()
        except ConfigError as exc:
            log.error("API keys not re-read: %s; the keys in use are unchanged", exc)
            return
        log.info("API keys re-read from %s", ", ".join(str(p) for p in keys.files))

    caps = connection_budget(config)
    settings = proxy_settings(config, caps.proxy_max_connections)
    with private_umask(), hold_data_dir(config):
        engines = await open_engines(config) if executor is None else {"local": executor}
        metrics = Metrics()
        async with open_sqlite_store(config.log_path) as store:
            startup, how = await load_startup_state(store)
            log.info(
                "startup: %d live backends, %d ids in the history (%s)",
                len(startup.live),
                len(startup.ids),
                how,
            )
            route_seed = (startup.route_records(), startup.seq)
            live_routes = LiveRoutes(*route_seed)
            supervisor = Supervisor(
                store,
                next(iter(engines.values())),
                max_backends=config.max_backends,
                token_lifetime_seconds=config.token_lifetime_seconds,
                engines=engines,
                engine_specs=config.engines,
                engine_lost_after=config.engine_lost_after,
                startup=startup,
            )
            del startup  # the supervisor takes what it needs and drops the rest
            executor = supervisor.executor
            supervisor.observers.append(metrics.observe_backend)
            supervisor.observers.append(lambda _state, events: metrics.observe_append(len(events)))
            api_host, api_port = config.api_address
            proxy_host, proxy_port = config.proxy_address
            registry = ProxyRegistry(
                supervisor.tell, supervisor.clock, routes=live_routes, metrics=metrics
            )
            supervisor.keep_connection = registry.adopt_connection
            async with trio.open_nursery() as nursery:
                await nursery.start(supervisor.serve)
                await nursery.start(partial(live_routes.run, store))
                await _define_warm_pools(supervisor, config)
                metrics.load_statuses(
                    list(supervisor.held_states.values()), terminated=supervisor.terminated_count
                )
                await nursery.start(registry.run)
                proxy_sock: socket.socket | None = None
                workers: ProxyWorkers | None = None
                if config.proxy_workers == 1:
                    proxy_ctx = ProxyContext(
                        store=store,
                        emit=supervisor.tell,
                        clock=supervisor.clock,
                        metrics=metrics,
                        settings=settings,
                        seed=route_seed,
                    )
                    bound_proxy = await nursery.start(
                        serve_proxy, proxy_ctx, proxy_host, proxy_port
                    )
                else:  # bound once here, handed to every worker
                    proxy_sock = await listen_socket(
                        proxy_host, proxy_port, settings.max_connections
                    )
                    nursery.start_soon(_close_at_exit, proxy_sock)
                    bound_proxy = proxy_sock.getsockname()[1]
                del route_seed
                proxy_url = (config.public_url or base_url(proxy_host, bound_proxy)).rstrip("/")
                cluster = (
                    parse_cluster(config.cluster) if config.cluster else cluster_of_url(proxy_url)
                )
                api_ctx = ApiContext(
                    supervisor=supervisor,
                    store=store,
                    executor=executor,
                    metrics=metrics,
                    public_proxy_url=proxy_url,
                    public_api_url=config.api_public_url or base_url(api_host, api_port),
                    keys=keys,
                    cluster=cluster,
                    executor_name=executor.name,
                    max_streams=caps.api_max_streams,
                    proxies=registry,
                )
                bound_api = await nursery.start(serve_api, api_ctx, api_host, api_port)
                if proxy_sock is not None:
                    workers = await _start_workers(
                        nursery, config, keys, settings, registry, proxy_sock, api_host, bound_api
                    )
                if not config.api_public_url:
                    api_ctx.public_api_url = base_url(api_host, bound_api)
                task_status.started(
                    Serving(
                        api_ctx.public_api_url,
                        proxy_url,
                        executor.name,
                        str(config.log_path),
                        supervisor.recovery_report,
                        api_bind=join_host_port(api_host, bound_api),
                        proxy_bind=join_host_port(proxy_host, bound_proxy),
                        auth=_auth_summary(config, keys),
                        limits=caps.summary(),
                        reload_keys=reload_keys,
                    )
                )
                nursery.start_soon(_after_startup, store, config, api_ctx)
                try:
                    await (shutdown if shutdown is not None else trio.Event()).wait()
                finally:
                    if workers is not None:  # while the API takes their last events
                        with trio.CancelScope(shield=True):
                            await workers.stop()
                if config.terminate_on_exit:
                    log.info("terminating every live backend before exit")
                    try:
                        with trio.move_on_after(60):
                            await supervisor.terminate_all(TerminationKind.SOFT)
                    except StoreError as exc:  # a full log: they are adopted next start
                        log.error("could not terminate every backend before exit: %s", exc)
                nursery.cancel_scope.cancel()
        log.info("stopped; the log is flushed and closed")


HISTORY_WORK_AFTER = 2.0
"""Seconds after serving is reported before the work that reads the whole
history starts (the module docstring): the first answers after a restart (the
clients reconnecting) do not share the CPU with it."""


async def _after_startup(store: SqliteEventStore, config: PlaneConfig, ctx: ApiContext) -> None:
    """The log upkeep and the backends index catch-up, once serving has settled."""
    await trio.sleep(HISTORY_WORK_AFTER)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(keep_log, store, retain_days=config.retain_days))
        nursery.start_soon(_index_backends, ctx)


async def _define_warm_pools(supervisor: Supervisor, config: PlaneConfig) -> None:
    """Record the ``--warm`` pools (only what differs from the log's)."""
    for option in config.warm_pools:
        try:
            await supervisor.define_warm_pool(
                option.name, option.spawn_config, option.size, option.claim_path
            )
        except ConnectRefused as exc:
            raise ConfigError(f"--warm {option.name}: {exc}") from None

