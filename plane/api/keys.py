"""API keys: the full key, the optional read-only key, and what a request's key grants.

This module owns the API's credentials: where they come from (a value given
on the command line or in ``PLANE_API_KEY``, or a file re-read on demand so a
key can be rotated without a restart), their checks, and :meth:`ApiKeys.access`,
which turns an ``Authorization`` header into an :class:`Access`:

* no full key configured: every request gets :attr:`Access.FULL` (the API is
  open; ``plane serve`` allows that only on a loopback address or with
  ``--insecure-no-auth``);
* ``Bearer <full key>``: :attr:`Access.FULL`;
* ``Bearer <read key>``: :attr:`Access.READ`, GETs and streams only (the
  router answers anything else 403 ``ReadOnlyKey``);
* ``Bearer <proxy key>``: :attr:`Access.PROXY`, only ``/ctrl/proxy-feed``
  (:mod:`plane.api.proxies`), which only it opens (checked first: the proxy
  key is honoured even when the API is open);
* anything else: :attr:`Access.NONE` (401).

Keys are compared in constant time (:func:`plane.tokens.same`).

Error handling
--------------
A key that cannot be read or is unusable raises
:class:`~plane.config.ConfigError` naming the option and the file.
:meth:`ApiKeys.reload` reads every file before changing anything: when one
fails, the keys in use stay as they were (a bad rotation never opens the API
nor locks everyone out).
"""

from __future__ import annotations

import enum
import os
from pathlib import Path

import attrs

from plane import tokens
from plane.config import ConfigError, check_key


class Access(enum.Enum):
    """What a request's key grants."""

    NONE = "none"
    READ = "read"
    FULL = "full"
    PROXY = "proxy"
    """The proxy key: opens ``/ctrl/proxy-feed`` and nothing else."""


def read_key_file(path: Path, option: str) -> str:
    """The key in ``path`` (surrounding whitespace, e.g. a final newline, ignored)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{option}: cannot read {str(path)!r}: {reason}") from None
    return check_key(text.strip(), f"{option} {str(path)!r}")


def file_is_shared(path: Path) -> bool:
    """True when users other than the owner may read ``path``."""
    try:
        return bool(os.stat(path).st_mode & 0o077)
    except OSError:
        return False


@attrs.define
class ApiKeys:
    """The keys in use; ``full`` None means the API is open."""

    full: str | None = None
    read: str | None = None
    full_file: Path | None = None
    read_file: Path | None = None
    proxy: str | None = None
    proxy_file: Path | None = None

    @classmethod
    def load(
        cls,
        *,
        key: str | None = None,
        key_file: Path | None = None,
        read_key_file: Path | None = None,
        proxy_key_file: Path | None = None,
    ) -> ApiKeys:
        """Keys from a value and/or files (:class:`~plane.config.PlaneConfig` has
        checked that they go together); :class:`ConfigError` if one is unusable."""
        keys = cls(
            full=check_key(key, "--api-key") if key is not None else None,
            full_file=key_file,
            read_file=read_key_file,
            proxy_file=proxy_key_file,
        )
        keys.reload()
        return keys

    @property
    def files(self) -> tuple[Path, ...]:
        files = (self.full_file, self.read_file, self.proxy_file)
        return tuple(p for p in files if p is not None)

    def reload(self) -> None:
        """Re-read the key files (all or nothing); :class:`ConfigError` keeps the old keys."""
        full = read_key_file(self.full_file, "--api-key-file") if self.full_file else self.full
        read = read_key_file(self.read_file, "--read-key-file") if self.read_file else self.read
        proxy = (
            read_key_file(self.proxy_file, "--proxy-key-file") if self.proxy_file else self.proxy
        )
        if full is not None and read is not None and tokens.same(full, read):
            raise ConfigError("--read-key-file: the read-only key must differ from the full key")
        if proxy is not None and any(k is not None and tokens.same(proxy, k) for k in (full, read)):
            raise ConfigError("--proxy-key-file: the proxy key must differ from the API keys")
        self.full, self.read, self.proxy = full, read, proxy

    def access(self, authorization: str | None) -> Access:
        """What a request with this ``Authorization`` header may do."""
        scheme, _, credential = (authorization or "").partition(" ")
        credential = credential.strip()
        bearer = scheme.lower() == "bearer"
        if bearer and self.proxy is not None and tokens.same(credential, self.proxy):
            return Access.PROXY
        if not self.full:
            return Access.FULL
        if not bearer:
            return Access.NONE
        if tokens.same(credential, self.full):
            return Access.FULL
        if self.read is not None and tokens.same(credential, self.read):
            return Access.READ
        return Access.NONE
