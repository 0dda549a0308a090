"""JSON views of a backend's state, shared by the API, the CLI and plane-replay.

This module owns how a :class:`~plane.actors.lifecycle.BackendState` is shown
to machines: Plane's status object (``status``, ``time`` in milliseconds,
``termination_reason``, ``termination_kind``, ``exit_error``) and our fuller
detail.  Secrets (the spawn's ``env`` values) are never part of a view.
"""

from __future__ import annotations

from typing import Any

import attrs

from plane.actors.lifecycle import BackendState
from plane.events.types import Status


def millis(seconds: float) -> int:
    return round(seconds * 1000)


def status_view(state: BackendState) -> dict[str, Any]:
    """Plane's status JSON (plus ``exit_code``, ours)."""
    terminated = state.status is Status.TERMINATED
    reason = state.termination_reason.value if state.termination_reason else None
    kind = state.termination_kind.value if state.termination_kind else None
    # An error exit is one plane did not ask for: a non-zero code of its own, or a
    # failed spawn.  The 137/143 of a kill that plane decided on is not an error.
    exit_error = terminated and (
        reason == "spawnfailed"
        or (reason == "exited" and state.exit_code is not None and state.exit_code != 0)
    )
    return {
        "status": state.status.value if state.status else None,
        "time": millis(state.status_at),
        "termination_reason": reason,
        "termination_kind": kind,
        "exit_error": bool(exit_error),
        "exit_code": state.exit_code,
    }


def detail_view(state: BackendState) -> dict[str, Any]:
    """Everything we know about a backend, without secrets."""
    cfg = state.spawn_config
    spawn: dict[str, Any] | None = None
    if cfg is not None:
        exe = cfg.executable
        spawn = {
            "executable": {
                "image": exe.image,
                "command": list(exe.command) if exe.command is not None else None,
                "cwd": exe.cwd,
                "env_keys": sorted(exe.env),
                "pull_policy": exe.pull_policy,
                "port": exe.port,
                "resource_limits": {
                    k: v for k, v in attrs.asdict(exe.resource_limits).items() if v is not None
                },
            },
            "max_idle_seconds": cfg.max_idle_seconds,
            "lifetime_limit_seconds": cfg.lifetime_limit_seconds,
            "start_timeout_seconds": cfg.start_timeout_seconds,
            "stop_grace_seconds": cfg.stop_grace_seconds,
        }
    key = state.key
    return {
        "backend_id": state.backend_id,
        "key": {"name": key.name, "namespace": key.namespace, "tag": key.tag} if key else None,
        **status_view(state),
        "requested_at": millis(state.requested_at),
        "address": state.address,
        "fencing_token": state.fencing_token,
        "connections": len(state.connections),
        "last_activity_at": millis(state.last_activity_at) if state.last_activity_at else None,
        "message": state.message or None,
        "version": state.version,
        "spawn_config": spawn,
        "engine": state.engine,
    }
