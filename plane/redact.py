"""Redaction: the one function that hides secrets before anything is shown.

This module owns what counts as a secret in an event and how it is hidden.
The log keeps secrets (they must be handed out again, and recovery needs
them); every view of the log hides them: the API's event feeds
(``/ctrl/events``, ``/ctrl/b/{id}/events``), its views, server log lines and
``plane-replay`` output (unless ``--show-secrets``).

Secrets, as wire paths of an event's JSON (:func:`plane.events.wire.unstructure`):

* ``secret_token`` of ``TokenIssued`` (the value the client was handed);
* ``static_token`` of ``BackendRequested``: Plane's static token;
* ``spawn_config.executable.env`` values (names stay visible);
* ``spawn_config.executable.credentials`` (registry username and password).

Token *hashes* are not secrets (a hash cannot be used at the proxy) and stay;
so do ``user`` and ``auth`` (who the token is for, which an operator needs).
"""

from __future__ import annotations

import copy
from typing import Any

REDACTED = "<redacted>"

_TOP_LEVEL_SECRETS = ("secret_token", "static_token")


def redact(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of an event's (or a spawn config's holder's) JSON with every secret hidden.

    Works on any event's JSON: only the keys listed in the module docstring
    are touched, and only when they hold a value (an empty or null one is
    shown as it is, so "no secret" stays visible).
    """
    out = copy.deepcopy(data)
    for name in _TOP_LEVEL_SECRETS:
        if out.get(name):
            out[name] = REDACTED
    spawn = out.get("spawn_config")
    if isinstance(spawn, dict):
        exe = spawn.get("executable")
        if isinstance(exe, dict):
            redact_executable(exe)
    return out


def redact_executable(exe: dict[str, Any]) -> None:
    """Hide, in place, the secrets of an executable's JSON: env values, credentials."""
    env = exe.get("env")
    if isinstance(env, dict):
        exe["env"] = {name: REDACTED for name in env}
    credentials = exe.get("credentials")
    if isinstance(credentials, dict):
        exe["credentials"] = {name: REDACTED for name in credentials}
