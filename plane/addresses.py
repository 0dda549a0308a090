"""``HOST:PORT`` addresses: the one parser and the one formatter plane uses.

This module owns the text form of a socket address: ``HOST:PORT``, with an
IPv6 host in brackets (``[::1]:8080``).  :func:`split_host_port` parses it
strictly (a host and a port 1 to 65535, else ``ValueError``);
:func:`join_host_port` writes it.  Callers that allow more (``plane serve
--api-listen :8080`` defaults the host, and may ask for port 0) say so with
the keyword arguments, not with a parser of their own.
"""

from __future__ import annotations

__all__ = ["join_host_port", "split_host_port"]


def split_host_port(
    value: str, *, default_host: str | None = None, allow_port_zero: bool = False
) -> tuple[str, int]:
    """``"HOST:PORT"`` -> ``(host, port)``; brackets around an IPv6 host are removed.

    With ``default_host``, ``":PORT"`` and a bare ``"PORT"`` take that host.
    Raises ``ValueError`` naming ``value`` if it is not an address.
    """
    host, sep, port_text = value.rpartition(":")
    if not sep and default_host is not None:
        host = ""
    elif not sep:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    host = host.strip("[]")
    if not host:
        if default_host is None:
            raise ValueError(f"expected HOST:PORT, got {value!r}")
        host = default_host
    if not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    port = int(port_text)
    if not (0 if allow_port_zero else 1) <= port <= 65535:
        raise ValueError(f"port out of range in {value!r}")
    return host, port


def join_host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
