"""The configuration of one ``plane serve``: every option, its default, its check.

This module owns the settings and their validation, so that bad values are
refused with a message naming the option before anything starts.  Each option
is also read from an environment variable ``PLANE_<NAME>`` (see
:mod:`plane.cli`).
"""

from __future__ import annotations

from pathlib import Path

import attrs


class ConfigError(ValueError):
    """A setting is invalid; the message names it."""


def parse_listen(value: str, option: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``:PORT``, or ``PORT``) -> (host, port)."""
    host, sep, port_text = value.rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", value
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{option}: {value!r} is not HOST:PORT") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{option}: port {port} is out of range")
    return host, port


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
    api_key_file: Path | None = None
    read_key_file: Path | None = None
    insecure_no_auth: bool = False
    retain_days: float = 30.0

    def __attrs_post_init__(self) -> None:
        parse_listen(self.api_listen, "--api-listen")
        parse_listen(self.proxy_listen, "--proxy-listen")
        if self.executor not in ("auto", "docker", "process"):
            raise ConfigError(f"--executor: {self.executor!r} is not auto, docker or process")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"--log-format: {self.log_format!r} is not text or json")
        if self.max_backends is not None and self.max_backends < 1:
            raise ConfigError("--max-backends: must be at least 1")
        if self.token_lifetime_seconds <= 0:
            raise ConfigError("--token-lifetime: must be positive")
        if not (self.retain_days >= 0 and self.retain_days != float("inf")):
            raise ConfigError(f"--retain: {self.retain_days} is not a number of days >= 0")
        if self.api_key is not None and len(self.api_key) < 8:
            raise ConfigError("--api-key: use at least 8 characters")

    @property
    def api_address(self) -> tuple[str, int]:
        return parse_listen(self.api_listen, "--api-listen")

    @property
    def proxy_address(self) -> tuple[str, int]:
        return parse_listen(self.proxy_listen, "--proxy-listen")

    @property
    def log_path(self) -> Path:
        return self.data_dir / "events.db"


def base_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        shown = "127.0.0.1"
    return f"http://{shown}:{port}"
