"""The ``plane`` command: ``serve`` runs plane; the rest talk to a running plane's API.

This module owns the command line: options (each also read from ``PLANE_*``
environment variables), what is printed for people (tables, a progress line)
and for scripts (``--json``), and turning every failure into one clear line on
stderr with a non-zero exit code, never a traceback.

Exit codes: 0 success; 1 the API refused (404, 409, 503...); 2 usage error or
the API is unreachable; 3 the backend ended before it was ready (``connect``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import httpx
import trio

from plane import __version__
from plane.config import ConfigError, PlaneConfig
from plane.tables import iso, render_table

DEFAULT_API = "http://127.0.0.1:8080"


class CliError(Exception):
    """A failure to report in one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"PLANE_{name}", default)


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
        return json.dumps(entry)


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
            max_backends=args.max_backends,
            token_lifetime_seconds=args.token_lifetime,
            log_format=args.log_format,
            terminate_on_exit=args.terminate_on_exit,
            api_public_url=args.api_public_url,
            cluster=args.cluster,
            mount_base=Path(args.mount_base) if args.mount_base else None,
            trust_forwarded_from=tuple(args.trust_forwarded_from),
            retain_days=args.retain,
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
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for signum in signals:
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


# ----------------------------------------------------------------- client


class Api:
    """A small client of the plane HTTP API with friendly errors."""

    def __init__(self, base: str, key: str | None, timeout: float = 30.0) -> None:
        self.base = base.rstrip("/")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(base_url=self.base, headers=headers, timeout=timeout)

    def _fail(self, response: httpx.Response) -> NoReturn:
        try:
            error = response.json()["error"]
            message, code = error["message"], error["code"]
        except (ValueError, KeyError, TypeError):
            message, code = response.text.strip()[:200], "HttpError"
        if response.status_code == 401:
            raise CliError(f"the API refused the key ({message}); check --api-key / PLANE_API_KEY")
        raise CliError(f"{message} ({code}, HTTP {response.status_code})")

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise CliError(
                f"cannot reach the plane API at {self.base} ({exc}); is `plane serve` running?",
                2,
            ) from None
        if response.status_code >= 400:
            self._fail(response)
        return response.json()

    def stream_lines(self, path: str, params: dict[str, Any] | None = None) -> Iterator[str]:
        try:
            with self.client.stream("GET", path, params=params, timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    self._fail(response)
                yield from response.iter_lines()
        except httpx.TransportError as exc:
            raise CliError(f"lost the plane API at {self.base} ({exc})", 2) from None

    def sse(self, path: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Server-sent events' JSON data, in order (comments skipped)."""
        data: list[str] = []
        for line in self.stream_lines(path, params):
            if line.startswith(":"):
                continue
            if line == "":
                if data:
                    yield json.loads("\n".join(data))
                    data = []
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" "))


def _api(args: argparse.Namespace) -> Api:
    return Api(args.api, args.api_key)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise CliError(f"--env takes NAME=VALUE, not {pair!r}", 2)
        env[name] = value
    return env


def cmd_connect(args: argparse.Namespace) -> int:
    if not args.image and not args.command:
        raise CliError("connect needs --image IMAGE (docker) or --command 'CMD ARGS' (process)", 2)
    executable: dict[str, Any] = {"env": _parse_env(args.env), "pull_policy": args.pull_policy}
    if args.image:
        executable["image"] = args.image
    if args.command:
        executable["command"] = shlex.split(args.command)
    if args.cwd:
        executable["cwd"] = args.cwd
    if args.port is not None:
        executable["port"] = args.port
    limits = {
        k: v
        for k, v in {
            "memory_limit_bytes": args.memory,
            "cpu_period_percent": args.cpu_percent,
        }.items()
        if v is not None
    }
    if limits:
        executable["resource_limits"] = limits
    spawn: dict[str, Any] = {"executable": executable}
    if args.idle is not None:
        spawn["max_idle_seconds"] = args.idle
    if args.lifetime is not None:
        spawn["lifetime_limit_seconds"] = args.lifetime
    body: dict[str, Any] = {"spawn_config": spawn}
    if args.key:
        body["key"] = {"name": args.key, "namespace": args.namespace, "tag": args.tag}
    if args.user:
        body["user"] = args.user
    api = _api(args)
    result = api.request("POST", "/ctrl/connect", json=body)
    status = result["status"]
    if not args.no_wait and status not in ("ready", "idle"):
        status = _wait_ready(api, result["backend_id"], quiet=args.json)
    result["status"] = status
    if args.json:
        _print_json(result)
        return 3 if status == "terminated" else 0
    if status == "terminated":
        detail = api.request("GET", f"/ctrl/b/{result['backend_id']}")
        why = detail.get("termination_reason")
        message = detail.get("message")
        raise CliError(
            f"backend {result['backend_id']} ended before it was ready: {why}"
            + (f" ({message})" if message else "")
            + f"; see `plane logs {result['backend_id']}`",
            3,
        )
    verb = "spawned" if result["spawned"] else "joined"
    print(f"{verb} backend {result['backend_id']} ({status})")
    print(result["url"])
    return 0


def _wait_ready(api: Api, backend_id: str, *, quiet: bool) -> str:
    frames = "|/-\\"
    started = time.monotonic()
    show = not quiet and sys.stderr.isatty()
    status = "requested"
    for i, event in enumerate(api.sse(f"/pub/b/{backend_id}/status-stream")):
        status = str(event.get("status", status))
        if show:
            elapsed = time.monotonic() - started
            print(f"\r{frames[i % 4]} {status:<12} {elapsed:5.1f}s", end="", file=sys.stderr)
        elif not quiet:
            print(f"  {status}", file=sys.stderr)
        if status in ("ready", "idle"):
            break
        if status == "terminated":
            if show:
                print(file=sys.stderr)
            return status
    if show:
        print(f"\r{status} after {time.monotonic() - started:.1f}s{' ' * 10}", file=sys.stderr)
    return status


def cmd_ls(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if not args.all:
        params["live"] = 1
    if args.status:
        params["status"] = args.status
    result = _api(args).request("GET", "/ctrl/backends", params=params)
    if args.json:
        _print_json(result)
        return 0
    rows = [
        [
            b["backend_id"],
            b["status"],
            b.get("termination_reason"),
            (b.get("key") or {}).get("name"),
            b.get("connections"),
            b.get("address"),
            iso(b["requested_at"] / 1000),
        ]
        for b in result["backends"]
    ]
    print(
        render_table(["backend", "status", "reason", "key", "conns", "address", "requested"], rows)
    )
    return 0


def _status_line(backend_id: str, status: dict[str, Any]) -> str:
    line = f"{backend_id}  {status['status']}  {iso(status['time'] / 1000)}"
    if status.get("termination_reason"):
        line += f"  reason={status['termination_reason']}"
    if status.get("exit_code") is not None:
        line += f"  exit={status['exit_code']}"
    return line


def cmd_status(args: argparse.Namespace) -> int:
    api = _api(args)
    if args.follow:
        for event in api.sse(f"/pub/b/{args.backend}/status-stream"):
            print(json.dumps(event) if args.json else _status_line(args.backend, event), flush=True)
        return 0
    status = api.request("GET", f"/pub/b/{args.backend}/status")
    print(json.dumps(status, indent=2) if args.json else _status_line(args.backend, status))
    return 0


def cmd_terminate(args: argparse.Namespace) -> int:
    kind = "hard" if args.hard else "soft"
    status = _api(args).request("POST", f"/ctrl/b/{args.backend}/{kind}-terminate")
    print(json.dumps(status, indent=2) if args.json else _status_line(args.backend, status))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    api = _api(args)
    params = {"follow": 1} if args.follow else {}
    for line in api.stream_lines(f"/ctrl/b/{args.backend}/logs", params):
        print(line, flush=True)
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    api = _api(args)
    params = {"after": args.after, "follow": 1 if args.follow else 0}
    for event in api.sse("/ctrl/events", params):
        print(json.dumps(event) if args.json else _event_line(event), flush=True)
    return 0


def _event_line(event: dict[str, Any]) -> str:
    data = event.get("data", {})
    at = data.get("at")
    brief = {k: v for k, v in data.items() if k not in ("at", "spawn_config")}
    return (
        f"{event.get('seq', '-'):>6}  {iso(at) if at else '-'}  {event.get('stream', '-'):<16}  "
        f"{event.get('type', '-'):<32}  {json.dumps(brief, separators=(',', ':'))}"
    )


# ------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plane", description="Session backends: spawn, proxy and reap per-session servers."
    )
    parser.add_argument("--version", action="version", version=f"plane {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run plane: event log, supervisor, API and proxy")
    serve.add_argument("--data-dir", default=_env("DATA_DIR", ".plane"))
    serve.add_argument("--api-listen", default=_env("API_LISTEN", "127.0.0.1:8080"))
    serve.add_argument("--proxy-listen", default=_env("PROXY_LISTEN", "127.0.0.1:9090"))
    serve.add_argument(
        "--public-url", default=_env("PUBLIC_URL"), help="the proxy's base URL handed out in url"
    )
    serve.add_argument(
        "--api-public-url",
        default=_env("API_PUBLIC_URL"),
        help="the API's base URL handed out in status_url (default: http://<api-listen>)",
    )
    serve.add_argument(
        "--cluster",
        default=_env("CLUSTER"),
        help="Plane's cluster name HOST[:PORT] (default: the proxy's public host and port)",
    )
    serve.add_argument(
        "--mount-base",
        default=_env("MOUNT_BASE"),
        help="directory under which Plane's spawn_config mount paths live",
    )
    serve.add_argument(
        "--trust-forwarded-from",
        action="append",
        default=[v for v in (_env("TRUST_FORWARDED_FROM") or "").split(",") if v],
        metavar="CIDR",
        help="keep X-Forwarded-For from front proxies in CIDR (repeatable)",
    )
    serve.add_argument(
        "--executor",
        default=_env("EXECUTOR", "auto"),
        help="docker, process, or auto (Docker if an engine answers, else local processes)",
    )
    serve.add_argument("--api-key", default=_env("API_KEY"), help="require Bearer KEY on /ctrl")
    serve.add_argument(
        "--max-backends", type=int, default=_env("MAX_BACKENDS"), help="live backends cap"
    )
    serve.add_argument(
        "--token-lifetime",
        type=float,
        default=_env("TOKEN_LIFETIME", "3600"),
        help="seconds a connection token is valid (default 3600)",
    )
    serve.add_argument("--log-format", default=_env("LOG_FORMAT", "text"), help="text or json")
    serve.add_argument(
        "--retain",
        type=_days,
        default=_env("RETAIN", "30"),
        metavar="DAYS",
        help="move backends terminated more than DAYS ago (fractions allowed) to monthly"
        " archive files beside the log (default 30; 0 keeps everything in the log)",
    )
    serve.add_argument(
        "--terminate-on-exit",
        action="store_true",
        default=_env("TERMINATE_ON_EXIT") in ("1", "true"),
        help="terminate every backend on shutdown instead of leaving them for adoption",
    )
    serve.set_defaults(run=cmd_serve)

    backup = sub.add_parser(
        "backup",
        help="copy the event log, its archives and its snapshot to DEST (online)",
        description="Copy the event log, its archives and its snapshot into the directory"
        " DEST with SQLite's backup API; plane serve may keep running.  To restore, stop"
        " plane and copy the files back into an empty data directory.",
    )
    backup.add_argument("dest", metavar="DEST", help="the directory to write the copies to")
    backup.add_argument("--data-dir", default=_env("DATA_DIR", ".plane"))
    backup.set_defaults(run=cmd_backup)

    def client(name: str, helptext: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.add_argument("--api", default=_env("API", DEFAULT_API), help="the plane API's URL")
        p.add_argument("--api-key", default=_env("API_KEY"))
        p.add_argument("--json", action="store_true", help="JSON for scripts")
        return p

    p = client("connect", "get or spawn a backend for a key, wait until ready, print its URL")
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
    p.add_argument("--status")
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
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
