"""Plane's cluster name, subdomains, and the backend URLs handed out under them.

This module owns the one cluster name of a plane (Plane's ``ClusterName``,
``HOST[:PORT]``): parsing it (``plane serve --cluster``), its default (the
host and port of the proxy's public URL), whether a connect's
``spawn_config.cluster`` names this plane, which subdomains are valid, and the
URL a connect answers: ``<scheme>://[<subdomain>.]<host>[:<port>]<base>/<token>/``
where the scheme and the base path come from the proxy's public URL and, with
a subdomain, the host and port from the cluster name.

Pure: no I/O, no clock.

Error handling
--------------
:class:`ClusterNameError` (a ``ValueError``) for a cluster name that is not
``HOST[:PORT]``; :func:`refusal` returns Plane's error kind and a message
naming the offending field instead of raising, so the API turns it into its
own 400.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit, urlunsplit

import attrs

MAX_SUBDOMAIN_CHARS = 63
"""A DNS label's limit."""
SUBDOMAIN_PATTERN = r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$"
_SUBDOMAIN = re.compile(SUBDOMAIN_PATTERN)
_HOSTNAME = re.compile(r"^[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?$")
_PORT = r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
CLUSTER_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::" + _PORT + r")?$"
"""A cluster name as the OpenAPI document declares it: a host name or IPv4
address and an optional port (what :func:`parse_cluster` accepts, but for IPv6)."""


class ClusterNameError(ValueError):
    """A cluster name that is not ``HOST[:PORT]``."""


@attrs.frozen
class ClusterName:
    """``host`` (lowercase; an IPv6 address without brackets) and an optional port."""

    host: str
    port: int | None = None

    @property
    def is_ip(self) -> bool:
        """True when the host is an IP address (no subdomain can hang under it)."""
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


def parse_cluster(text: str) -> ClusterName:
    """``HOST[:PORT]`` -> :class:`ClusterName`; :class:`ClusterNameError` otherwise."""
    value = text.strip().lower()
    problem = f"cluster name {text[:80]!r} is not HOST[:PORT]"
    if not value or any(c in value for c in "/?#@ \\"):
        raise ClusterNameError(problem)
    try:
        parts = urlsplit(f"//{value}")
        host, port = parts.hostname, parts.port
    except ValueError:
        raise ClusterNameError(problem) from None
    if not host:
        raise ClusterNameError(problem)
    cluster = ClusterName(host, port)
    if not cluster.is_ip and not _HOSTNAME.fullmatch(host):
        raise ClusterNameError(problem)
    if port == 0:
        raise ClusterNameError(f"{problem}: port 0")
    return cluster


def cluster_of_url(url: str) -> ClusterName:
    """The default cluster name: the host and (explicit) port of the proxy's public URL."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise ClusterNameError(f"URL {url[:80]!r} has no host")
    return ClusterName(parts.hostname.lower(), parts.port)


def subdomain_problem(subdomain: str) -> str | None:
    """Why ``subdomain`` is not a valid subdomain (a DNS label), or None if it is."""
    if len(subdomain) > MAX_SUBDOMAIN_CHARS:
        return f"must be at most {MAX_SUBDOMAIN_CHARS} characters"
    if not _SUBDOMAIN.fullmatch(subdomain):
        return "must be lowercase letters, digits and '-', not starting or ending with '-'"
    return None


def refusal(
    cluster: ClusterName, requested: str | None, subdomain: str | None
) -> tuple[str, str] | None:
    """Why a connect's ``spawn_config`` does not fit this plane's cluster, as
    (Plane's error kind, message naming the field), or None when it fits."""
    if requested is not None:
        try:
            named = parse_cluster(requested)
        except ClusterNameError as exc:
            return "InvalidClusterName", f"{exc} @ $.spawn_config.cluster"
        if named != cluster:
            return (
                "InvalidClusterName",
                f"this plane's cluster is {str(cluster)!r}, not {requested[:80]!r}"
                " @ $.spawn_config.cluster",
            )
    if subdomain is not None and cluster.is_ip:
        return (
            "InvalidRequest",
            f"the cluster host {cluster.host!r} is an IP address: no subdomain can hang"
            " under it (run plane serve --cluster with a DNS name) @ $.spawn_config.subdomain",
        )
    return None


def backend_url(public_url: str, token: str, *, subdomain: str | None, cluster: ClusterName) -> str:
    """The URL a connect hands out for ``token``.

    Without a subdomain: ``<public_url>/<token>/``.  With one: the public URL's
    scheme and base path, on ``<subdomain>.<cluster host>[:<cluster port>]``.
    """
    if subdomain is None:
        return f"{public_url.rstrip('/')}/{token}/"
    parts = urlsplit(public_url)
    netloc = f"{subdomain}.{cluster}"
    return urlunsplit((parts.scheme, netloc, f"{parts.path.rstrip('/')}/{token}/", "", ""))
