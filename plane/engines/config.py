"""Engine settings: ``--engine NAME=URL[,publish=ADDR][,pool=POOL][,max=N][,tls=DIR]``.

This module owns the parsing and checking of the engines plane drives, from the
command line and from a TOML file (``--engines-file``)::

    [[engine]]
    name = "b"
    url = "tcp://10.0.0.7:2376"
    tls = "/etc/plane/certs/b"     # ca.pem, cert.pem, key.pem, as docker --tlsverify
    publish = "10.0.0.7"           # where the engine publishes container ports
    pool = "gpu"
    max = 40

URLs: ``unix:///path``, ``tcp://host:port`` (with ``tls``: TLS with the client
certificates of that directory), ``ssh://user@host`` (the docker SDK's ssh
support, through the ``ssh`` command).  Without any engine, plane drives one
engine, ``local``, on the default socket.

Error handling: every problem is a :class:`~plane.config.ConfigError` naming
the option and the engine.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs

from plane.config import ConfigError

DEFAULT_ENGINE = "local"
DEFAULT_PUBLISH = "127.0.0.1"
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_SCHEMES = ("unix", "tcp", "ssh")
_OPTIONS = ("publish", "pool", "max", "tls")


@attrs.frozen
class EngineSpec:
    """One engine as configured.  ``url`` None: the default (``DOCKER_HOST`` or
    the default socket), only for the implicit ``local`` engine."""

    name: str
    url: str | None = None
    publish: str = DEFAULT_PUBLISH
    pool: str = ""
    max_backends: int | None = None
    tls: Path | None = None

    @property
    def shown_url(self) -> str:
        """The URL without credentials, as the API and the log show it."""
        return redact_url(self.url) if self.url else "default"


def redact_url(url: str) -> str:
    """``url`` without a password (``ssh://user:pw@host`` -> ``ssh://user@host``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _check(spec: EngineSpec, where: str) -> EngineSpec:
    if not _NAME.fullmatch(spec.name):
        raise ConfigError(
            f"{where}: engine name {spec.name!r} must be lowercase letters, digits, '_.-'"
        )
    if spec.url is not None:
        scheme = urlsplit(spec.url).scheme
        if scheme not in _SCHEMES:
            raise ConfigError(
                f"{where}: engine {spec.name}: URL {redact_url(spec.url)!r} is not "
                "unix:///path, tcp://host:port or ssh://user@host"
            )
        if spec.tls is not None and scheme != "tcp":
            raise ConfigError(f"{where}: engine {spec.name}: tls is for tcp:// URLs only")
    try:
        ipaddress.ip_address(spec.publish)
    except ValueError:
        raise ConfigError(
            f"{where}: engine {spec.name}: publish {spec.publish!r} is not an IP address"
        ) from None
    if spec.max_backends is not None and spec.max_backends < 1:
        raise ConfigError(f"{where}: engine {spec.name}: max must be at least 1")
    if spec.tls is not None:
        missing = [f for f in ("ca.pem", "cert.pem", "key.pem") if not (spec.tls / f).is_file()]
        if missing:
            raise ConfigError(
                f"{where}: engine {spec.name}: tls directory {spec.tls} lacks {', '.join(missing)}"
            )
    return spec


def parse_engine(text: str) -> EngineSpec:
    """One ``--engine`` value, checked."""
    name, sep, rest = text.partition("=")
    if not sep or not rest:
        raise ConfigError(f"--engine {text!r}: expected NAME=URL[,publish=ADDR][,pool=P][,max=N]")
    url, *options = rest.split(",")
    fields: dict[str, Any] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in _OPTIONS:
            raise ConfigError(
                f"--engine {name}: unknown option {option!r} (known: {', '.join(_OPTIONS)})"
            )
        fields[key] = value
    return _build(name, url, fields, f"--engine {name}")


def _build(name: str, url: Any, fields: dict[str, Any], where: str) -> EngineSpec:
    if not isinstance(url, str) or not url:
        raise ConfigError(f"{where}: engine {name}: url is required")
    max_text = fields.get("max")
    max_backends: int | None = None
    if max_text is not None:
        if isinstance(max_text, int) and not isinstance(max_text, bool):
            max_backends = max_text
        elif isinstance(max_text, str) and max_text.isdigit():
            max_backends = int(max_text)
        else:
            raise ConfigError(f"{where}: engine {name}: max {max_text!r} is not a number")
    for field in ("publish", "pool", "tls"):
        if field in fields and not isinstance(fields[field], str):
            raise ConfigError(f"{where}: engine {name}: {field} must be a string")
    tls = fields.get("tls")
    return _check(
        EngineSpec(
            name=name,
            url=url,
            publish=fields.get("publish") or DEFAULT_PUBLISH,
            pool=fields.get("pool", ""),
            max_backends=max_backends,
            tls=Path(tls) if tls else None,
        ),
        where,
    )


def load_engines_file(path: Path) -> list[EngineSpec]:
    """The ``[[engine]]`` tables of a TOML file, checked."""
    where = f"--engines-file {path}"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{where}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not TOML: {exc}") from None
    extra = set(data) - {"engine"}
    if extra:
        raise ConfigError(f"{where}: unknown table(s) {', '.join(sorted(extra))} (use [[engine]])")
    tables = data.get("engine", [])
    if not isinstance(tables, list):
        raise ConfigError(f"{where}: use [[engine]] tables")
    specs = []
    for table in tables:
        unknown = set(table) - {"name", "url", *_OPTIONS}
        name = table.get("name")
        if not isinstance(name, str):
            raise ConfigError(f"{where}: every [[engine]] needs a name")
        if unknown:
            shown = ", ".join(sorted(unknown))
            raise ConfigError(f"{where}: engine {name}: unknown key(s) {shown}")
        specs.append(_build(name, table.get("url"), table, where))
    return specs


def engine_specs(options: Iterable[str], file: Path | None) -> tuple[EngineSpec, ...]:
    """The engines from ``--engine`` values and ``--engines-file``; none given: ``()``
    (plane then drives its one default engine).  Names must be unique."""
    specs = [parse_engine(text) for text in options]
    if file is not None:
        specs += load_engines_file(file)
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ConfigError(f"--engine: engine {spec.name!r} is given twice")
        seen.add(spec.name)
    return tuple(specs)
