"""JSON views of a backend's state, shared by the API, the CLI and plane-replay.

This module owns how a :class:`~plane.actors.lifecycle.BackendState` is shown
to machines:

* :func:`status_view`: Plane's ``BackendStatusStreamEntry`` exactly (through
  :mod:`plane.plane_words`), for Plane's endpoints;
* :func:`detail_view`: our fuller detail for our own endpoints, in both
  vocabularies: ``state`` and ``reason`` are ours, ``status``,
  ``termination_reason``, ``termination_kind`` and ``exit_error`` Plane's
  (null when Plane would omit them), ``time`` when Plane's status began and
  ``state_at`` when ours did (milliseconds since the epoch).

Secrets never leave through a view: env values and registry credentials are
redacted by :func:`plane.redact.redact_executable`.
"""

from __future__ import annotations

from typing import Any

import attrs

from plane.actors.lifecycle import BackendState
from plane.plane_words import millis, status_entry
from plane.redact import redact_executable

__all__ = ["detail_view", "millis", "status_view"]

_PLANE_OPTIONAL = ("termination_reason", "termination_kind", "exit_error")


def status_view(state: BackendState) -> dict[str, Any]:
    """Plane's status JSON (``BackendStatusStreamEntry``)."""
    return status_entry(state)


def _spawn_view(state: BackendState, show_secrets: bool) -> dict[str, Any] | None:
    cfg = state.spawn_config
    if cfg is None:
        return None
    exe = cfg.executable
    executable: dict[str, Any] = {
        "image": exe.image,
        "command": list(exe.command) if exe.command is not None else None,
        "cwd": exe.cwd,
        "env": dict(exe.env),
        "pull_policy": exe.pull_policy,
        "port": exe.port,
        "resource_limits": {
            k: v for k, v in attrs.asdict(exe.resource_limits).items() if v is not None
        },
        "credentials": attrs.asdict(exe.credentials) if exe.credentials else None,
        "mount": exe.mount,
        "network_name": exe.network_name,
    }
    if not show_secrets:
        redact_executable(executable)
    return {
        "executable": executable,
        "max_idle_seconds": cfg.max_idle_seconds,
        "lifetime_limit_seconds": cfg.lifetime_limit_seconds,
        "start_timeout_seconds": cfg.start_timeout_seconds,
        "stop_grace_seconds": cfg.stop_grace_seconds,
        "use_static_token": cfg.use_static_token,
        "subdomain": cfg.subdomain,
        "pool": cfg.pool,
    }


def detail_view(state: BackendState, *, show_secrets: bool = False) -> dict[str, Any]:
    """Everything we know about a backend, in both vocabularies, without secrets
    (``show_secrets``: with them; only ``plane-replay --show-secrets`` asks)."""
    key = state.key
    # a warm pool's unclaimed backend has no Plane status (Plane never sees it)
    plane = {"status": None, "time": None} if state.unclaimed else status_entry(state)
    for name in _PLANE_OPTIONAL:
        plane.setdefault(name, None)
    return {
        "backend_id": state.backend_id,
        "key": {"name": key.name, "namespace": key.namespace, "tag": key.tag} if key else None,
        "state": state.status.value if state.status else None,
        "reason": state.termination_reason.value if state.termination_reason else None,
        "state_at": millis(state.status_at),
        **plane,
        "exit_code": state.exit_code,
        "requested_at": millis(state.requested_at),
        "address": state.address,
        "fencing_token": state.fencing_token,
        "connections": len(state.connections),
        "last_activity_at": millis(state.last_activity_at) if state.last_activity_at else None,
        "message": state.message or None,
        "version": state.version,
        "spawn_config": _spawn_view(state, show_secrets),
        "engine": state.engine,
        "warm_pool": state.warm_pool,
        "claimed_at": millis(state.claimed_at) if state.claimed_at is not None else None,
    }
