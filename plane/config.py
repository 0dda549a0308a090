"""The configuration of one ``plane serve``: every option, its default, its check.

This module owns the settings and their validation, so that bad values are
refused with a message naming the option before anything starts.  Every
option of ``plane serve`` is also read from an environment variable
``PLANE_<OPTION>`` (``--api-listen``: ``PLANE_API_LISTEN``; a repeatable
option's variable holds several values: space-separated for ``--engine`` and
``--warm``, comma-separated for ``--trust-forwarded-from``), read by
:mod:`plane.cli`; ``tests/unit/test_cli_env.py`` checks each one.  (``plane
proxy``, whose options are :class:`plane.proxy.standalone.ProxyOptions`, reads
only ``PLANE_CONTROLLER``, ``PLANE_PROXY_LISTEN``, ``PLANE_PROXY_KEY_FILE``,
``PLANE_PROXY_MAX_CONNECTIONS`` and ``PLANE_LOG_FORMAT``; that test checks
this list too.)
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import attrs

if TYPE_CHECKING:
    from plane.engines.config import EngineSpec
    from plane.events.spec import SpawnConfig

from plane.addresses import split_host_port
from plane.cluster import ClusterNameError, parse_cluster


class ConfigError(ValueError):
    """A setting is invalid; the message names it."""


MIN_KEY_LENGTH = 8


def check_key(key: str, option: str) -> str:
    """``key`` if usable as a bearer credential, else :class:`ConfigError` naming ``option``."""
    if len(key) < MIN_KEY_LENGTH:
        raise ConfigError(f"{option}: use at least {MIN_KEY_LENGTH} characters")
    if not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
        raise ConfigError(f"{option}: a key is printable ASCII without spaces")
    return key


def parse_listen(value: str, option: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``:PORT``, or ``PORT``; host 127.0.0.1, port 0 allowed) -> (host, port)."""
    try:
        return split_host_port(value, default_host="127.0.0.1", allow_port_zero=True)
    except ValueError as exc:
        raise ConfigError(f"{option}: {exc}") from None


@attrs.frozen
class WarmPoolOption:
    """One ``--warm``: a warm pool to define (or redefine) at start."""

    name: str
    spawn_config: SpawnConfig
    size: int
    claim_path: str | None = None


@attrs.frozen
class PlaneConfig:
    data_dir: Path = Path(".plane")
    api_listen: str = "127.0.0.1:8080"
    proxy_listen: str = "127.0.0.1:9090"
    public_url: str | None = None
    api_public_url: str | None = None
    executor: str = "auto"
    api_key: str | None = None
    max_backends: int | None = None
    log_format: str = "text"
    token_lifetime_seconds: float = 3600.0
    terminate_on_exit: bool = False
    cluster: str | None = None
    """Plane's cluster name, ``HOST[:PORT]``: what ``spawn_config.cluster`` must
    equal and the host that subdomains hang under (default: the proxy's public
    host and port)."""
    mount_base: Path | None = None
    """The directory Plane's ``mount`` paths live under (none: ``mount`` is refused)."""
    trust_forwarded_from: tuple[str, ...] = ()
    """CIDRs of front proxies whose ``X-Forwarded-For`` the proxy keeps."""
    proxy_root_redirect: str | None = None
    """Where ``GET /`` on the proxy redirects (none: 400)."""
    api_key_file: Path | None = None
    """A file holding the full API key, re-read on SIGHUP (unlike ``api_key``, it
    does not show in ``ps``)."""
    read_key_file: Path | None = None
    """A file holding a read-only API key (GETs and streams), re-read on SIGHUP."""
    insecure_no_auth: bool = False
    """Serve the API on a non-loopback address without a key (refused otherwise)."""
    retain_days: float = 30.0
    engines: tuple[EngineSpec, ...] = ()
    """The Docker engines to drive (``--engine``, ``--engines-file``); none: one
    engine, ``local``, chosen by ``executor`` as before."""
    engine_lost_after: float = 30.0
    """How long an engine may not answer before it is recorded lost."""
    proxy_max_connections: int | None = None
    """Concurrent client connections per proxy process (None: derived from the
    file-descriptor limit, :mod:`plane.limits`)."""
    warm_pools: tuple[WarmPoolOption, ...] = ()
    """Warm pools defined at start (``--warm NAME=SIZE:TEMPLATE.json``)."""
    api_max_streams: int | None = None
    """Concurrent streamed API responses (SSE, logs, the event feed), a cap of
    their own so that proxy connections and streams do not starve each other
    (None: derived from the file-descriptor limit)."""
    proxy_key_file: Path | None = None
    """The proxy key (``--proxy-key-file``): the credential that opens
    ``/ctrl/proxy-feed`` for ``plane proxy`` processes (:mod:`plane.api.proxies`)."""
    proxy_workers: int = 1
    """1: the proxy runs inside ``plane serve``; N > 1: N ``plane proxy``
    processes sharing the proxy's socket, supervised (:mod:`plane.proxy.workers`)."""

    def __attrs_post_init__(self) -> None:
        if self.proxy_workers < 1:
            raise ConfigError("--proxy-workers: must be at least 1")
        if self.engines and self.executor == "process":
            raise ConfigError("--engine: engines are Docker engines; not with --executor process")
        if self.engine_lost_after <= 0:
            raise ConfigError("--engine-lost-after: must be positive")
        parse_listen(self.api_listen, "--api-listen")
        parse_listen(self.proxy_listen, "--proxy-listen")
        if self.executor not in ("auto", "docker", "process"):
            raise ConfigError(f"--executor: {self.executor!r} is not auto, docker or process")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"--log-format: {self.log_format!r} is not text or json")
        if self.max_backends is not None and self.max_backends < 1:
            raise ConfigError("--max-backends: must be at least 1")
        if self.proxy_max_connections is not None and self.proxy_max_connections < 1:
            raise ConfigError("--proxy-max-connections: must be at least 1")
        if self.api_max_streams is not None and self.api_max_streams < 1:
            raise ConfigError("--api-max-streams: must be at least 1")
        if self.token_lifetime_seconds <= 0:
            raise ConfigError("--token-lifetime: must be positive")
        if not (self.retain_days >= 0 and self.retain_days != float("inf")):
            raise ConfigError(f"--retain: {self.retain_days} is not a number of days >= 0")
        if self.cluster is not None:
            try:
                parse_cluster(self.cluster)
            except ClusterNameError as exc:
                raise ConfigError(f"--cluster: {exc}") from None
        if self.api_key is not None:
            check_key(self.api_key, "--api-key")
        if self.api_key is not None and self.api_key_file is not None:
            raise ConfigError("--api-key and --api-key-file: give one, not both")
        if self.read_key_file is not None and not self.has_api_key:
            raise ConfigError(
                "--read-key-file needs a full key (--api-key-file or --api-key): "
                "without one the API is open to everyone anyway"
            )
        host, _ = self.api_address
        if not self.has_api_key and not self.insecure_no_auth and not is_loopback(host):
            raise ConfigError(
                f"--api-listen {self.api_listen}: the API would be reachable from other "
                "machines without an API key, and whoever reaches it can start backends. "
                "Set a key with --api-key-file PATH (a file holding the key; "
                "env PLANE_API_KEY_FILE) or PLANE_API_KEY, listen on 127.0.0.1, or pass "
                "--insecure-no-auth to serve without a key anyway"
            )
        for cidr in self.trust_forwarded_from:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(
                    f"--trust-forwarded-from: {cidr!r} is not a CIDR (e.g. 10.0.0.0/8)"
                ) from None
        redirect = self.proxy_root_redirect
        if redirect is not None and (
            urlsplit(redirect).scheme not in ("http", "https")
            or not urlsplit(redirect).netloc
            or any(c in redirect for c in "\r\n\x00 ")
        ):
            raise ConfigError(f"--proxy-root-redirect: {redirect!r} is not an http(s) URL")

    @property
    def has_api_key(self) -> bool:
        return self.api_key is not None or self.api_key_file is not None

    @property
    def exposed_without_auth(self) -> bool:
        """The API listens beyond loopback with no key (only with ``insecure_no_auth``)."""
        return not self.has_api_key and not is_loopback(self.api_address[0])

    @property
    def api_address(self) -> tuple[str, int]:
        return parse_listen(self.api_listen, "--api-listen")

    @property
    def proxy_address(self) -> tuple[str, int]:
        return parse_listen(self.proxy_listen, "--proxy-listen")

    @property
    def log_path(self) -> Path:
        return self.data_dir / "events.db"


def is_loopback(host: str) -> bool:
    """True when ``host`` (an address or ``localhost``) is reachable only from this machine.

    A name other than ``localhost`` counts as not loopback: it may resolve anywhere.
    """
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def base_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        shown = "127.0.0.1"
    return f"http://{shown}:{port}"
