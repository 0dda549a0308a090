"""The file-descriptor budget of one plane process, and the caps drawn from it.

This module owns three rules:

* at start plane raises its soft ``RLIMIT_NOFILE`` to the hard limit
  (:func:`raise_fd_limit`): the soft default (often 1024) is far below what a
  proxy holding tens of thousands of WebSockets needs;
* the default caps come from that limit (:func:`budget`): each proxied
  connection holds two descriptors (the client's and the backend's), the
  API's streams (SSE, the event feed) one each, the proxy reads up to
  :data:`~plane.proxy.server.MAX_REJECTING` over-cap connections at once, and
  :data:`RESERVED_FDS` are kept for everything else (the log and its SQLite
  files, the Docker client, API requests, executor pipes, backend logs);
* a cap given explicitly that the limit cannot hold is refused by name
  (:class:`~plane.config.ConfigError`), rather than failing later with EMFILE.

The same budget serves ``plane serve`` and ``plane proxy``
(:mod:`plane.proxy.standalone`).
"""

from __future__ import annotations

import logging
import resource

import attrs

from plane.config import ConfigError

log = logging.getLogger("plane.limits")

RESERVED_FDS = 256
"""Descriptors kept for the log, the executor, API requests and the like."""

FDS_PER_PROXY_CONNECTION = 2
"""A proxied connection: the client's socket and the backend's."""

OVERCAP_FDS = 64
"""Over-cap connections the proxy reads at once (``plane.proxy.server.MAX_REJECTING``)."""

MIN_API_STREAMS = 16
MAX_DEFAULT_API_STREAMS = 4096

LOW_PROXY_CONNECTIONS = 10_000
"""Below this many proxy connections the limit is called low (banner and log)."""

_NR_OPEN = "/proc/sys/fs/nr_open"


@attrs.frozen
class FdLimit:
    """``RLIMIT_NOFILE`` after :func:`raise_fd_limit`: ``soft`` is in force;
    ``before`` is the soft limit found at start."""

    soft: int
    hard: int
    before: int


@attrs.frozen
class Budget:
    """The caps in force and the limit they come from."""

    proxy_max_connections: int
    api_max_streams: int
    fds: FdLimit

    @property
    def low(self) -> bool:
        return self.proxy_max_connections < LOW_PROXY_CONNECTIONS

    def summary(self) -> str:
        """One line for the banner."""
        text = (
            f"proxy {self.proxy_max_connections:,} connections, "
            f"API {self.api_max_streams:,} streams "
            f"(file descriptors: {self.fds.soft:,}"
        )
        if self.fds.before != self.fds.soft:
            text += f", raised from {self.fds.before:,}"
        text += ")"
        if self.low:
            text += "  LOW: raise the hard limit (ulimit -Hn, systemd LimitNOFILE=)"
        return text


def raise_fd_limit() -> FdLimit:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (an unlimited hard
    limit: to the kernel's ``nr_open``); returns what is in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinity = resource.RLIM_INFINITY
    ceiling = _nr_open() if hard == infinity else hard
    before = ceiling if soft == infinity else soft
    if before >= ceiling:
        return FdLimit(soft=before, hard=ceiling, before=before)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
    except (OSError, ValueError) as exc:
        log.warning("could not raise the file-descriptor limit to %d: %s", ceiling, exc)
        return FdLimit(soft=before, hard=ceiling, before=before)
    return FdLimit(soft=ceiling, hard=ceiling, before=before)


def _nr_open() -> int:
    try:
        with open(_NR_OPEN) as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return 1 << 20


def budget(
    fds: FdLimit, *, proxy_max_connections: int | None, api_max_streams: int | None
) -> Budget:
    """The caps in force: the ones given, the rest derived from ``fds.soft``.

    :class:`ConfigError` naming the option when the caps given need more
    descriptors than the limit allows."""
    limit = fds.soft
    spare = limit - RESERVED_FDS - OVERCAP_FDS
    streams = api_max_streams
    if streams is None:
        streams = min(MAX_DEFAULT_API_STREAMS, max(MIN_API_STREAMS, limit // 16))
        if proxy_max_connections is not None:  # what the proxy leaves, within reason
            left = spare - proxy_max_connections * FDS_PER_PROXY_CONNECTION
            streams = max(MIN_API_STREAMS, min(streams, left))
    proxy = proxy_max_connections
    if proxy is None:
        proxy = max(1, (spare - streams) // FDS_PER_PROXY_CONNECTION)
    needed = proxy * FDS_PER_PROXY_CONNECTION + streams
    if needed > spare:
        given = []
        if proxy_max_connections is not None:
            given.append(f"--proxy-max-connections {proxy_max_connections}")
        if api_max_streams is not None:
            given.append(f"--api-max-streams {api_max_streams}")
        raise ConfigError(
            f"{' and '.join(given) or 'the caps'}: need about "
            f"{needed + RESERVED_FDS + OVERCAP_FDS:,} file descriptors "
            f"({FDS_PER_PROXY_CONNECTION} per proxy connection, 1 per API stream, "
            f"{RESERVED_FDS + OVERCAP_FDS} reserved), but the limit is {limit:,} "
            f"(hard {fds.hard:,}): raise it (ulimit -n, systemd LimitNOFILE=) or lower the cap"
        )
    return Budget(proxy_max_connections=proxy, api_max_streams=streams, fds=fds)
