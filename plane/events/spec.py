"""Value types a backend is requested with: its key and its spawn configuration.

This module owns the shape of what a client asks for (Plane's ``key`` and
``spawn_config`` objects).  They travel inside ``BackendRequested`` events, so
their field names are part of the log's wire format: add fields with defaults,
never rename one.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class BackendKey:
    """Identifies a session: at most one live backend per (namespace, name)."""

    name: str
    namespace: str = ""
    tag: str = ""

    def slot(self) -> tuple[str, str]:
        """The part of the key that must be unique among live backends."""
        return (self.namespace, self.name)

    def display(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


@attrs.frozen
class ResourceLimits:
    """Plane's resource limits; every field optional."""

    cpu_period: int | None = None
    cpu_period_percent: int | None = None
    cpu_time_limit: int | None = None
    memory_limit_bytes: int | None = None
    disk_limit_bytes: int | None = None
    pids_limit: int | None = None


@attrs.frozen
class RegistryCredentials:
    """Plane's registry auth for pulling ``image``.  A secret: kept in the log
    (recovery needs it) and redacted in every view of it."""

    username: str
    password: str


@attrs.frozen
class Executable:
    """What to run: a container image (Docker) or a command (local process)."""

    image: str | None = None
    command: tuple[str, ...] | None = None
    cwd: str | None = None
    env: dict[str, str] = attrs.field(factory=dict)
    pull_policy: str = "IfNotPresent"
    resource_limits: ResourceLimits = attrs.field(factory=ResourceLimits)
    port: int = 8080
    credentials: RegistryCredentials | None = None
    mount: bool | str = False
    """Plane's ``mount``: False (none), True (``MOUNT_BASE/<key name>``) or a
    path relative to the mount base; mounted at ``/plane-data``."""
    network_name: str | None = None


@attrs.frozen
class SpawnConfig:
    """How to start a backend and when to reap it."""

    executable: Executable
    max_idle_seconds: float | None = None
    lifetime_limit_seconds: float | None = None
    start_timeout_seconds: float = 120.0
    stop_grace_seconds: float = 30.0
    use_static_token: bool = False
    subdomain: str | None = None
    pool: str = ""
    """Plane's drone pool: here the engines' pool (``""`` is the default pool)."""
