"""The ``plane`` command: ``serve`` runs plane; the rest talk to a running plane's API.

This module owns the command line: options (every option of ``plane serve``,
and the client commands' ``--api`` and ``--api-key``, is also read from an
environment variable ``PLANE_<OPTION>``, e.g. ``PLANE_API_LISTEN``; a switch's
variable takes 1/true/yes/on or 0/false/no/off), what is printed for people
(tables, a progress line) and for scripts (``--json``), and turning every
failure into one clear line on stderr with a non-zero exit code, never a
traceback.

``plane serve`` handles SIGTERM and SIGINT (stop) and SIGHUP (re-read the API
key files: rotation without a restart).

Exit codes: 0 success; 1 the API refused (404, 409, 503...); 2 usage error or
the API is unreachable; 3 the backend ended before it was ready (``connect``).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import logging
import os
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import trio

from plane import __version__
from plane.addresses import join_host_port, split_host_port
from plane.client import (
    Backend,
    BackendKey,
    BackendStatus,
    BackendTerminated,
    Client,
    Executable,
    PlaneConnectionError,
    PlaneError,
    ResourceLimits,
    SpawnConfig,
    Status,
    Unauthorized,
)
from plane.client.core import DEFAULT_API
from plane.client.models import unstructure
from plane.config import ConfigError, PlaneConfig, WarmPoolOption, parse_listen
from plane.engines.config import engine_specs
from plane.text_tables import iso, render_table

if TYPE_CHECKING:
    from plane.events.spec import SpawnConfig
    from plane.serve import Serving


class CliError(Exception):
    """A failure to report in one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"PLANE_{name}", default)


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def _flag(value: bool | str | None, option: str) -> bool:
    """A switch's value: True when given, else its ``PLANE_*`` variable's (as a
    string, checked here: a value that is neither true nor false is refused)."""
    if isinstance(value, bool):
        return value
    text = (value or "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    env = "PLANE_" + option.removeprefix("--").upper().replace("-", "_")
    raise CliError(f"{env}={value!r}: use one of {', '.join(_TRUE + _FALSE[1:])}", 2)


# ------------------------------------------------------------------- serve


class JsonLogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def _setup_logging(log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        config = PlaneConfig(
            data_dir=Path(args.data_dir),
            api_listen=args.api_listen,
            proxy_listen=args.proxy_listen,
            public_url=args.public_url,
            executor=args.executor,
            api_key=args.api_key,
            api_key_file=Path(args.api_key_file) if args.api_key_file else None,
            read_key_file=Path(args.read_key_file) if args.read_key_file else None,
            insecure_no_auth=_flag(args.insecure_no_auth, "--insecure-no-auth"),
            max_backends=args.max_backends,
            token_lifetime_seconds=args.token_lifetime,
            log_format=args.log_format,
            terminate_on_exit=_flag(args.terminate_on_exit, "--terminate-on-exit"),
            api_public_url=args.api_public_url,
            cluster=args.cluster,
            mount_base=Path(args.mount_base) if args.mount_base else None,
            trust_forwarded_from=tuple(args.trust_forwarded_from),
            proxy_root_redirect=args.proxy_root_redirect,
            retain_days=args.retain,
            engines=engine_specs(
                args.engine, Path(args.engines_file) if args.engines_file else None
            ),
            engine_lost_after=args.engine_lost_after,
            proxy_max_connections=args.proxy_max_connections,
            api_max_streams=args.api_max_streams,
            warm_pools=tuple(_warm_option(text) for text in args.warm),
            proxy_key_file=Path(args.proxy_key_file) if args.proxy_key_file else None,
            proxy_workers=args.proxy_workers,
        )
    except ConfigError as exc:
        raise CliError(str(exc), 2) from None
    _setup_logging(config.log_format)
    from plane.events.store import StoreError
    from plane.serve import AlreadyServing

    try:
        trio.run(_serve_until_signal, config)
    except BaseException as exc:  # an ExceptionGroup from the nurseries, most of the time
        known = _find(exc, (AlreadyServing, ConfigError, StoreError, OSError))
        if known is None:
            raise
        prefix = "cannot serve: " if isinstance(known, OSError) else ""
        raise CliError(f"{prefix}{known}", 2) from None
    return 0


def _warm_option(text: str) -> WarmPoolOption:
    """``NAME=SIZE:TEMPLATE.json`` -> a warm pool to define at start.  The file
    holds a spawn_config (as in a connect), or a whole ``PUT /ctrl/warm-pools``
    body (then its ``claim_path`` is used; ``SIZE`` wins over its ``size``)."""

    name, eq, rest = text.partition("=")
    size_text, colon, path = rest.partition(":")
    if not eq or not colon or not size_text.isdigit() or not path:
        raise ConfigError(f"--warm: expected NAME=SIZE:TEMPLATE.json, not {text!r}")
    template, size, claim_path = _read_template(name, int(size_text), path)
    return WarmPoolOption(name, template, size, claim_path)


def _read_template(name: str, size: int, path: str) -> tuple[SpawnConfig, int, str | None]:
    """A warm pool's template file, read as the API reads a ``PUT`` body
    (:class:`ConfigError` naming what is wrong)."""
    from plane.api.body import check_warm_pool_name, parse_warm_pool
    from plane.api.errors import ApiError

    try:
        document = orjson.loads(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"warm pool {name}: cannot read {path}: {exc}") from None
    if not (isinstance(document, dict) and "spawn_config" in document):
        document = {"spawn_config": document}
    document["size"] = size
    try:
        check_warm_pool_name(name)
        template, size, claim_path = parse_warm_pool(orjson.dumps(document))
    except ApiError as exc:
        raise ConfigError(f"warm pool {name}: {exc.message}") from None
    assert template is not None
    return template, size, claim_path


def cmd_warm_pools(args: argparse.Namespace) -> int:
    if args.action in ("set", "rm") and not args.name:
        raise CliError(f"warm-pools {args.action} needs a pool NAME", 2)
    if args.action == "set" and args.size is None:
        raise CliError("warm-pools set needs NAME SIZE", 2)
    api = _api(args)
    if args.action == "set":
        template = None
        claim_path = args.claim_path
        if args.template:
            try:
                template, _, from_file = _read_template(args.name, args.size, args.template)
            except ConfigError as exc:
                raise CliError(str(exc), 2) from None
            claim_path = claim_path or from_file
        api.put_warm_pool(args.name, args.size, template, claim_path=claim_path)
    elif args.action == "rm":
        api.delete_warm_pool(args.name)
        print(f"{args.name} removed")
        return 0
    pools = api.warm_pools()
    if args.json:
        _print_json({"warm_pools": [unstructure(p) for p in pools]})
        return 0
    rows = [[p.name, p.size, p.warm, p.starting, p.claim_path] for p in pools]
    print(render_table(["warm pool", "size", "warm", "starting", "claim path"], rows))
    return 0


def _find(exc: BaseException, kinds: tuple[type[Exception], ...]) -> Exception | None:
    """The first exception of ``kinds`` in ``exc`` or in the groups it nests."""
    if isinstance(exc, kinds):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find(inner, kinds)
            if found is not None:
                return found
    return None


def _bind_note(bind: str) -> str:
    host = split_host_port(bind, default_host="", allow_port_zero=True)[0]
    if host in ("0.0.0.0", "::", ""):
        return f"{bind} (every interface)"
    return bind


def cmd_backup(args: argparse.Namespace) -> int:
    from plane.events.backup import backup_log
    from plane.events.store import StoreError

    log = PlaneConfig(data_dir=Path(args.data_dir)).log_path
    try:
        written = backup_log(log, Path(args.dest))
    except (StoreError, ValueError, OSError) as exc:
        raise CliError(f"backup failed: {exc}", 2) from None
    for path in written:
        print(path)
    return 0


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of days, not {text!r}") from None
    if not (days >= 0 and days != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a number of days >= 0, not {text!r}")
    return days


async def _serve_until_signal(config: PlaneConfig) -> None:
    shutdown = trio.Event()
    serving: Serving | None = None
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        if serving is None:
                            logging.getLogger("plane").info("SIGHUP: still starting; ignored")
                        else:
                            logging.getLogger("plane").info("SIGHUP: re-reading API key files")
                            serving.reload_keys()
                        continue
                    logging.getLogger("plane").info(
                        "%s: shutting down", signal.Signals(signum).name
                    )
                    shutdown.set()
                    return

            nursery.start_soon(watch_signals)
            serving = await nursery.start(_serve, config, shutdown)
            report = serving.recovered
            print(
                f"plane {__version__} serving\n"
                f"  api:       {serving.api_url}   (OpenAPI: {serving.api_url}/openapi.json)\n"
                f"  proxy:     {serving.proxy_url}\n"
                f"  dashboard: {serving.api_url}/ui/\n"
                f"  listening: api on {_bind_note(serving.api_bind)}, "
                f"proxy on {_bind_note(serving.proxy_bind)}\n"
                f"  api auth:  {serving.auth}\n"
                f"  limits:    {serving.limits}\n"
                f"  executor:  {serving.executor}\n"
                f"  event log: {serving.log_path}\n"
                f"  recovered: {len(report['adopted'])} adopted, {len(report['lost'])} lost, "
                f"{len(report['orphans'])} orphans removed\n"
                "Ctrl-C stops plane; backends keep running and are adopted at the next start.",
                flush=True,
            )
            await shutdown.wait()
            nursery.cancel_scope.deadline = trio.current_time() + 90


async def _serve(
    config: PlaneConfig, shutdown: trio.Event, *, task_status: trio.TaskStatus[Any]
) -> None:
    from plane.serve import serve_plane

    await serve_plane(config, shutdown=shutdown, task_status=task_status)


# ------------------------------------------------------------------ proxy


def cmd_proxy(args: argparse.Namespace) -> int:
    from plane.proxy.standalone import ProxyOptions

    options = ProxyOptions(
        controller=args.controller,
        key_file=Path(args.proxy_key_file),
        listen=args.listen,
        workers=args.workers,
        stale_after=args.stale_after,
        ca_file=args.ca_file,
        max_connections=args.proxy_max_connections,
        cluster_host=args.cluster_host,
        trust_forwarded_from=tuple(args.trust_forwarded_from),
        root_redirect=args.root_redirect,
        listen_fd=args.listen_fd,
        proxy_id=args.proxy_id,
    )
    try:
        options.check()
        from plane.proxy.standalone import read_proxy_key

        read_proxy_key(options.key_file)
    except ConfigError as exc:
        raise CliError(str(exc), 2) from None
    _setup_logging(args.log_format)
    try:
        trio.run(_proxy_until_signal, options)
    except ConfigError as exc:
        raise CliError(str(exc), 2) from None
    except OSError as exc:
        raise CliError(f"cannot listen on {args.listen}: {exc}") from None
    return 0


async def _proxy_until_signal(options: Any) -> None:
    from plane.proxy.standalone import run_proxy

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def proxy(*, task_status: trio.TaskStatus[int]) -> None:
                await run_proxy(options, task_status=task_status)
                nursery.cancel_scope.cancel()  # it stopped by itself (a worker orphaned)

            async def watch_signals() -> None:
                async for signum in signals:
                    logging.getLogger("plane").info(
                        "%s: shutting down", signal.Signals(signum).name
                    )
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch_signals)
            port = await nursery.start(proxy)
            if options.listen_fd is None:
                host = parse_listen(options.listen, "--listen")[0]
                print(
                    f"plane {__version__} proxy on {join_host_port(host, port)}, "
                    f"fed by {options.controller}",
                    flush=True,
                )


# ----------------------------------------------------------------- client


def _api(args: argparse.Namespace) -> Client:
    key = args.api_key
    if key is None and args.api_key_file:
        from plane.api.keys import read_key_file

        try:
            key = read_key_file(Path(args.api_key_file), "--api-key-file")
        except ConfigError as exc:
            raise CliError(str(exc), 2) from None
    return Client(args.api, key)


def _cli_error(error: PlaneError) -> CliError:
    """A client error as one line for people, with the exit code."""
    if isinstance(error, PlaneConnectionError):
        return CliError(f"{error.message}; is `plane serve` running?", 2)
    if isinstance(error, Unauthorized):
        return CliError(
            f"the API refused the key ({error.message}); check --api-key / PLANE_API_KEY"
        )
    return CliError(str(error))


def _print_json(value: Any) -> None:
    print(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def _parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise CliError(f"--env takes NAME=VALUE, not {pair!r}", 2)
        env[name] = value
    return env


def _spawn_config(args: argparse.Namespace) -> SpawnConfig | None:
    """The spawn config ``plane connect``'s options describe; None (join the key's
    live backend only) when no --image or --command is given."""
    if not args.image and not args.command:
        if not args.key:
            raise CliError(
                "connect needs --key KEY (join its live backend) and/or --image IMAGE "
                "(docker) or --command 'CMD ARGS' (process) to spawn one",
                2,
            )
        spawn_only = {
            "--env": args.env,
            "--cwd": args.cwd,
            "--port": args.port,
            "--pull-policy": args.pull_policy != "IfNotPresent",
            "--memory": args.memory,
            "--cpu-percent": args.cpu_percent,
            "--idle": args.idle,
            "--lifetime": args.lifetime,
        }
        given = [flag for flag, value in spawn_only.items() if value]
        if given:
            raise CliError(
                f"{', '.join(given)} describe a backend to spawn: give --image or --command too",
                2,
            )
        return None
    limits = ResourceLimits(memory_limit_bytes=args.memory, cpu_period_percent=args.cpu_percent)
    executable = Executable(
        image=args.image,
        command=tuple(shlex.split(args.command)) if args.command else None,
        cwd=args.cwd,
        env=_parse_env(args.env),
        pull_policy=args.pull_policy,
        resource_limits=limits,
        **({"port": args.port} if args.port is not None else {}),
    )
    return SpawnConfig(executable, max_idle_seconds=args.idle, lifetime_limit_seconds=args.lifetime)


def cmd_connect(args: argparse.Namespace) -> int:
    spawn = _spawn_config(args)
    key = BackendKey(args.key, args.namespace, args.tag) if args.key else None
    api = _api(args)
    connection = api.connect(key, spawn_config=spawn, user=args.user)
    status = connection.status
    ended: BackendTerminated | None = None
    if not args.no_wait and status is not Status.READY:
        status, ended = _wait_ready(api, connection.backend_id, quiet=args.json)
    if args.json:
        _print_json({**unstructure(connection), "status": status.value})
        return 3 if ended is not None else 0
    if ended is not None:
        raise CliError(f"{ended}; see `plane logs {connection.backend_id}`", 3)
    verb = "spawned" if connection.spawned else "joined"
    print(f"{verb} backend {connection.backend_id} ({status})")
    print(connection.url)
    return 0


def _wait_ready(
    api: Client, backend_id: str, *, quiet: bool
) -> tuple[Status, BackendTerminated | None]:
    """Follow the status stream, showing progress, until ready or ending."""
    frames = "|/-\\"
    started = time.monotonic()
    show = not quiet and sys.stderr.isatty()
    status = Status.SCHEDULED
    ended: BackendTerminated | None = None
    for i, entry in enumerate(api.status_stream(backend_id)):
        status = entry.status
        if show:
            elapsed = time.monotonic() - started
            print(f"\r{frames[i % 4]} {status:<12} {elapsed:5.1f}s", end="", file=sys.stderr)
        elif not quiet:
            print(f"  {status}", file=sys.stderr)
        if status is Status.READY:
            break
        if status.ending:
            ended = BackendTerminated(backend_id, entry, _detail(api, backend_id))
            break
    if show:
        print(f"\r{status} after {time.monotonic() - started:.1f}s{' ' * 10}", file=sys.stderr)
    return status, ended


def _detail(api: Client, backend_id: str) -> Backend | None:
    try:
        return api.backend(backend_id)
    except PlaneError:
        return None


def cmd_ls(args: argparse.Namespace) -> int:
    found = _api(args).backends(
        live=not args.all, status=args.status, state=args.state, page_size=min(args.limit, 1000)
    )
    backends = list(itertools.islice(found, args.limit))
    if args.json:
        _print_json({"backends": [unstructure(b) for b in backends]})
        return 0
    rows = [
        [
            b.backend_id,
            b.state,
            b.status,
            b.reason,
            b.key.name if b.key else None,
            b.connections,
            b.address,
            b.engine,
            iso(b.requested_at / 1000) if b.requested_at is not None else None,
        ]
        for b in backends
    ]
    headers = ["backend", "state", "status", "reason", "key", "conns", "address", "engine"]
    print(render_table([*headers, "requested"], rows))
    return 0


def cmd_engines(args: argparse.Namespace) -> int:
    engines = _api(args).engines()
    if args.json:
        _print_json({"engines": [unstructure(e) for e in engines]})
        return 0
    rows = [
        [
            e.name,
            e.state,
            e.pool or '""',
            e.live_backends,
            e.max,
            e.url,
            e.publish,
            iso(e.last_answer / 1000) if e.last_answer is not None else None,
        ]
        for e in engines
    ]
    headers = ["engine", "state", "pool", "live", "max", "url", "publish", "last answer"]
    print(render_table(headers, rows))
    return 0


def cmd_drain(args: argparse.Namespace) -> int:
    api = _api(args)
    changed = api.drain(args.name) if args.draining else api.undrain(args.name)
    word = "drained" if args.draining else "undrained"
    print(f"{args.name} {word}" if changed else f"{args.name} was already {word}")
    return 0


def _status_line(backend_id: str, status: BackendStatus) -> str:
    """One line per status change: Plane's status, its time, reason, exit."""
    words = [backend_id, f"status={status.status}", iso(status.time / 1000)]
    if status.termination_reason:
        words.append(f"reason={status.termination_reason}")
    if status.exit_code is not None:
        words.append(f"exit={status.exit_code}")
    elif status.exit_error:
        words.append("exit_error")
    return "  ".join(words)


def _backend_line(backend: Backend) -> str:
    """One line for a backend: our state, Plane's status, reason, exit."""
    words = [backend.backend_id, f"state={backend.state}", f"status={backend.status}"]
    words.append(iso(backend.time / 1000))
    if backend.reason:
        words.append(f"reason={backend.reason}")
    if backend.exit_code is not None:
        words.append(f"exit={backend.exit_code}")
    return "  ".join(words)


def _show_backend(backend: Backend, as_json: bool) -> None:
    if as_json:
        print(orjson.dumps(unstructure(backend), option=orjson.OPT_INDENT_2).decode(), flush=True)
    else:
        print(_backend_line(backend), flush=True)


def cmd_status(args: argparse.Namespace) -> int:
    api = _api(args)
    if args.follow:
        for entry in api.status_stream(args.backend):
            if args.json:
                print(orjson.dumps(unstructure(entry)).decode(), flush=True)
            else:
                print(_status_line(args.backend, entry), flush=True)
        return 0
    _show_backend(api.backend(args.backend), args.json)
    return 0


def cmd_terminate(args: argparse.Namespace) -> int:
    api = _api(args)
    if args.hard:
        api.hard_terminate(args.backend)
    else:
        api.soft_terminate(args.backend)
    _show_backend(api.backend(args.backend), args.json)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    for line in _api(args).logs(args.backend, follow=args.follow):
        print(line, flush=True)
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    for event in _api(args).events(args.after, follow=args.follow):
        item = unstructure(event)
        print(orjson.dumps(item).decode() if args.json else _event_line(item), flush=True)
    return 0


def _event_line(event: dict[str, Any]) -> str:
    data = event.get("data", {})
    at = data.get("at")
    brief = {k: v for k, v in data.items() if k not in ("at", "spawn_config")}
    return (
        f"{event.get('seq', '-'):>6}  {iso(at) if at else '-'}  {event.get('stream', '-'):<16}  "
        f"{event.get('type', '-'):<32}  {orjson.dumps(brief).decode()}"
    )


# ------------------------------------------------------------------ parser


def _positive_int(option: str) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{option} must be at least 1, not {value}")
        return value

    parse.__name__ = option
    return parse


def env_option(
    parser: argparse.ArgumentParser,
    option: str,
    default: str | None = None,
    *,
    env: str | None = None,
    sep: str | None = None,
    **kwargs: Any,
) -> None:
    """Add ``option`` to ``parser``, its default read from ``PLANE_<OPTION>``
    (``--api-listen``: ``PLANE_API_LISTEN``; ``env`` names another) else ``default``.
    With ``sep`` the option is repeatable and the variable holds several values
    separated by ``sep``."""
    variable = env or option.removeprefix("--").upper().replace("-", "_")
    if sep is None:
        parser.add_argument(option, default=_env(variable, default), **kwargs)
    else:
        values = [v for v in (_env(variable) or "").split(sep) if v]
        parser.add_argument(option, action="append", default=values, **kwargs)


def add_proxy_limits(parser: argparse.ArgumentParser, option: str) -> None:
    """The proxy's connection cap, as ``option`` (``--proxy-max-connections`` in
    ``plane serve``; a stand-alone proxy command reuses it as ``--max-connections``);
    env ``PLANE_PROXY_MAX_CONNECTIONS`` either way."""
    env_option(
        parser,
        option,
        env="PROXY_MAX_CONNECTIONS",
        dest="proxy_max_connections",
        type=_positive_int(option),
        metavar="N",
        help="concurrent client connections per proxy process; past it 503 ProxyOverloaded "
        "(GET /ready is still answered). Default: from the file-descriptor limit "
        "(2 per connection, room kept for the API and the log)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plane", description="Session backends: spawn, proxy and reap per-session servers."
    )
    parser.add_argument("--version", action="version", version=f"plane {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run plane: event log, supervisor, API and proxy")
    opt = functools.partial(env_option, serve)
    opt("--data-dir", ".plane")
    opt("--api-listen", "127.0.0.1:8080")
    opt("--proxy-listen", "127.0.0.1:9090")
    opt("--public-url", help="the proxy's base URL handed out in url")
    opt(
        "--api-public-url",
        help="the API's base URL handed out in status_url (default: http://<api-listen>)",
    )
    opt(
        "--cluster",
        help="Plane's cluster name HOST[:PORT] (default: the proxy's public host and port)",
    )
    opt("--mount-base", help="directory under which Plane's spawn_config mount paths live")
    opt(
        "--trust-forwarded-from",
        sep=",",
        metavar="CIDR",
        help="keep X-Forwarded-For from front proxies in CIDR (repeatable)",
    )
    opt(
        "--proxy-root-redirect",
        metavar="URL",
        help="where GET / on the proxy redirects (default: 400)",
    )
    opt(
        "--engine",
        sep=" ",
        metavar="NAME=URL[,publish=ADDR][,pool=POOL][,max=N][,tls=DIR]",
        help="a Docker engine to place backends on (repeatable); URL unix://, tcp://, ssh://",
    )
    opt(
        "--engines-file",
        metavar="PATH",
        help="a TOML file of [[engine]] tables (name, url, publish, pool, max, tls)",
    )
    opt(
        "--engine-lost-after",
        "30",
        type=float,
        metavar="SECONDS",
        help="an engine silent this long is lost: its backends end as lost (default 30)",
    )
    opt(
        "--executor",
        "auto",
        help="docker, process, or auto (Docker if an engine answers, else local processes)",
    )
    opt(
        "--api-key",
        help="require Bearer KEY on /ctrl and /metrics (visible in ps: prefer --api-key-file)",
    )
    opt(
        "--api-key-file",
        metavar="PATH",
        help="read the API key from PATH (re-read on SIGHUP, so a key can be rotated)",
    )
    opt(
        "--read-key-file",
        metavar="PATH",
        help="a read-only API key in PATH: GETs and streams only (re-read on SIGHUP)",
    )
    opt(
        "--insecure-no-auth",
        action="store_true",
        help="serve the API on a non-loopback address without a key anyway",
    )
    opt("--max-backends", type=int, help="live backends cap (warm pools' backends count)")
    opt(
        "--warm",
        sep=" ",
        metavar="NAME=SIZE:TEMPLATE.json",
        help="keep SIZE backends of the template (a spawn_config) warm in pool NAME (repeatable)",
    )
    opt(
        "--token-lifetime",
        "3600",
        type=float,
        help="seconds a connection token is valid (default 3600)",
    )
    add_proxy_limits(serve, "--proxy-max-connections")
    opt(
        "--proxy-workers",
        "1",
        type=_positive_int("--proxy-workers"),
        metavar="N",
        help="1 (default): the proxy runs in this process; N > 1: N `plane proxy` processes "
        "share the proxy port, fed by /ctrl/proxy-feed and restarted if they die",
    )
    opt(
        "--proxy-key-file",
        metavar="PATH",
        help="the proxy key: only it opens /ctrl/proxy-feed (for `plane proxy`); "
        "with --proxy-workers and none given, one is made in the data directory",
    )
    opt(
        "--api-max-streams",
        type=_positive_int("--api-max-streams"),
        metavar="N",
        help="concurrent API streams (SSE, logs, the event feed), a cap apart from the "
        "proxy's; more are answered 503 (default: from the file-descriptor limit)",
    )
    opt("--log-format", "text", help="text or json")
    opt(
        "--retain",
        "30",
        type=_days,
        metavar="DAYS",
        help="move backends terminated more than DAYS ago (fractions allowed) to monthly"
        " archive files beside the log (default 30; 0 keeps everything in the log)",
    )
    opt(
        "--terminate-on-exit",
        action="store_true",
        help="terminate every backend on shutdown instead of leaving them for adoption",
    )
    serve.set_defaults(run=cmd_serve)

    proxy = sub.add_parser(
        "proxy",
        help="run a proxy fed by a plane controller (/ctrl/proxy-feed)",
        description="A proxy process: its routes come from the controller's log over an "
        "authenticated WebSocket, and its connection events go back over it.  Cut off from "
        "the controller it keeps serving the routes it knows for --stale-after seconds, "
        "then answers 503 until it is back.",
    )
    proxy.add_argument(
        "--controller",
        required=_env("CONTROLLER") is None,
        default=_env("CONTROLLER"),
        metavar="URL",
        help="the controller's API URL (http://... ; https://... through a TLS front proxy)",
    )
    env_option(proxy, "--listen", "127.0.0.1:9090", env="PROXY_LISTEN")
    proxy.add_argument(
        "--workers",
        type=_positive_int("--workers"),
        default=1,
        metavar="N",
        help="N proxy processes sharing the listening socket (default 1)",
    )
    proxy.add_argument(
        "--proxy-key-file",
        required=_env("PROXY_KEY_FILE") is None,
        default=_env("PROXY_KEY_FILE"),
        metavar="PATH",
        help="the proxy key (the controller's --proxy-key-file)",
    )
    proxy.add_argument(
        "--stale-after",
        type=float,
        default=30.0,
        metavar="S",
        help="cut off from the controller longer than S seconds: /ready 503 and requests "
        "refused 503 (default 30)",
    )
    proxy.add_argument(
        "--ca-file", metavar="PATH", help="CA certificates for an https controller URL"
    )
    proxy.add_argument(
        "--cluster-host",
        metavar="HOST",
        help="the host backends' subdomains hang under (the controller's cluster host)",
    )
    proxy.add_argument(
        "--trust-forwarded-from",
        action="append",
        default=[],
        metavar="CIDR",
        help="keep X-Forwarded-For from front proxies in CIDR (repeatable)",
    )
    proxy.add_argument("--root-redirect", metavar="URL", help="where GET / redirects")
    add_proxy_limits(proxy, "--max-connections")
    proxy.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)
    proxy.add_argument("--proxy-id", help=argparse.SUPPRESS)
    env_option(proxy, "--log-format", "text", help="text or json")
    proxy.set_defaults(run=cmd_proxy)

    backup = sub.add_parser(
        "backup",
        help="copy the event log, its archives and its snapshot to DEST (online)",
        description="Copy the event log, its archives and its snapshot into the directory"
        " DEST with SQLite's backup API; plane serve may keep running.  To restore, stop"
        " plane and copy the files back into an empty data directory.",
    )
    backup.add_argument("dest", metavar="DEST", help="the directory to write the copies to")
    env_option(backup, "--data-dir", ".plane")
    backup.set_defaults(run=cmd_backup)

    def client(name: str, helptext: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=helptext, description=helptext)
        env_option(p, "--api", DEFAULT_API, help="the plane API's URL")
        env_option(p, "--api-key", help="visible in ps")
        env_option(p, "--api-key-file", metavar="PATH", help="the key in PATH")
        p.add_argument("--json", action="store_true", help="JSON for scripts")
        return p

    p = client(
        "connect",
        "get or spawn a backend for a key, wait until ready, print its URL "
        "(without --image/--command: join the key's live backend only)",
    )
    p.add_argument("--key", help="session key (default: a random one)")
    p.add_argument("--namespace", default="")
    p.add_argument("--tag", default="")
    p.add_argument("--image", help="container image (docker executor)")
    p.add_argument("--command", help="command line (process executor), e.g. 'python app.py'")
    p.add_argument("--cwd", help="working directory (process executor)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--port", type=int, help="the port the backend listens on (docker)")
    p.add_argument(
        "--pull-policy", default="IfNotPresent", choices=["IfNotPresent", "Always", "Never"]
    )
    p.add_argument("--memory", type=int, help="memory limit in bytes")
    p.add_argument("--cpu-percent", type=int, help="CPU limit, percent of one core")
    p.add_argument("--idle", type=float, help="terminate after this many idle seconds")
    p.add_argument("--lifetime", type=float, help="terminate after this many seconds in all")
    p.add_argument("--user", help="user name handed to the backend")
    p.add_argument("--no-wait", action="store_true", help="do not wait until ready")
    p.set_defaults(run=cmd_connect)

    p = client("ls", "list backends (live ones unless --all)")
    p.add_argument("--all", action="store_true")
    p.add_argument("--state", help="only backends in this state (ours: requested ... terminated)")
    p.add_argument("--status", help="only backends in this status (Plane's: scheduled ...)")
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(run=cmd_ls)

    p = client("status", "a backend's status")
    p.add_argument("backend")
    p.add_argument("--follow", "-f", action="store_true", help="stream every change")
    p.set_defaults(run=cmd_status)

    p = client("terminate", "terminate a backend (soft unless --hard)")
    p.add_argument("backend")
    p.add_argument("--hard", action="store_true")
    p.set_defaults(run=cmd_terminate)

    p = client("engines", "the engines backends are placed on")
    p.set_defaults(run=cmd_engines)

    p = client("warm-pools", "warm pools: list, set NAME SIZE [--template F], rm NAME")
    p.add_argument("action", nargs="?", choices=("ls", "set", "rm"), default="ls")
    p.add_argument("name", nargs="?")
    p.add_argument("size", nargs="?", type=int)
    p.add_argument("--template", help="a JSON file holding the pool's spawn_config")
    p.add_argument("--claim-path", help="the path plane POSTs the claim to (e.g. /plane/claim)")
    p.set_defaults(run=cmd_warm_pools)

    p = client("drain", "place no new backend on an engine (its own keep running)")
    p.add_argument("name")
    p.set_defaults(run=cmd_drain, draining=True)

    p = client("undrain", "let an engine take new backends again")
    p.add_argument("name")
    p.set_defaults(run=cmd_drain, draining=False)

    p = client("logs", "a backend's stdout and stderr")
    p.add_argument("backend")
    p.add_argument("--follow", "-f", action="store_true")
    p.set_defaults(run=cmd_logs)

    p = client("events", "the event log")
    p.add_argument("--after", type=int, default=0, help="only events after this sequence number")
    p.add_argument("--follow", "-f", action="store_true")
    p.set_defaults(run=cmd_events)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except CliError as exc:
        print(f"plane: {exc}", file=sys.stderr)
        return exc.code
    except PlaneError as exc:
        error = _cli_error(exc)
        print(f"plane: {error}", file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
