"""The OpenAPI 3.1 document of the API, written by hand.

This module owns the published description of every endpoint, request body,
parameter and response (errors included).  ``GET /openapi.json`` serves
:func:`document`; the committed ``openapi.json`` at the repository root is
its output, regenerated with::

    python -m plane.api.openapi > openapi.json

and ``tests/api/test_openapi.py`` checks that the two agree and runs
schemathesis against a live server with it, so the document cannot drift
from what the server does.  The constraints here mirror the checks in
:mod:`plane.api.body` and :mod:`plane.api.routes` exactly (a value the
document calls invalid is refused with 400).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from plane import __version__
from plane.api.body import (
    BACKEND_ID_PATTERN,
    MAX_INT64,
    MAX_KEY_CHARS,
    MAX_SECONDS,
    MAX_TEXT_CHARS,
    PULL_POLICIES,
)
from plane.api.errors import ERROR_CODES
from plane.events.types import Status, TerminationKind, TerminationReason
from plane.plane_words import PlaneReason, PlaneStatus

JSON = "application/json"
NO_CONTROL = "^[^\\x00-\\x1f\\x7f]*$"
NO_NUL = "^[^\\x00]*$"
FLAG = {"type": "string", "enum": ["1", "0", "true", "false"]}
LAST_STATUS_ID = "^([0-9]{0,19}|" + "|".join(s.value for s in PlaneStatus) + ")$"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _text(limit: int, *, min_length: int = 0, pattern: str = NO_CONTROL) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "maxLength": limit, "pattern": pattern}
    if min_length:
        schema["minLength"] = min_length
    return schema


def _int_range(low: int, high: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": low, "maximum": high}


def _seconds(*, zero: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "number", "maximum": MAX_SECONDS}
    schema["minimum" if zero else "exclusiveMinimum"] = 0
    return _nullable(schema)


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "required": required or [], "properties": properties}


def _schemas() -> dict[str, Any]:
    statuses = [s.value for s in PlaneStatus]
    reasons = [r.value for r in PlaneReason]
    our_states = [s.value for s in Status]
    our_reasons = [r.value for r in TerminationReason]
    kinds = [k.value for k in TerminationKind]
    codes = sorted({code for group in ERROR_CODES.values() for code in group})
    status_props = {
        "status": {"type": "string", "enum": statuses},
        "time": {"type": "integer", "description": "When the status began, ms since the epoch."},
        "termination_reason": {"type": "string", "enum": reasons},
        "termination_kind": {"type": "string", "enum": kinds},
        "exit_error": {"type": "boolean"},
    }
    status_required = ["status", "time"]
    detail_status_props = {
        "state": {"type": "string", "enum": our_states},
        "reason": _nullable({"type": "string", "enum": our_reasons}),
        "state_at": {"type": "integer"},
        "status": {"type": "string", "enum": statuses},
        "time": {"type": "integer"},
        "termination_reason": _nullable({"type": "string", "enum": reasons}),
        "termination_kind": _nullable({"type": "string", "enum": kinds}),
        "exit_error": _nullable({"type": "boolean"}),
        "exit_code": _nullable({"type": "integer"}),
    }
    limit_props = {
        "cpu_period": _nullable(_int_range(1, MAX_INT64)),
        "cpu_period_percent": _nullable(_int_range(1, 100)),
        "cpu_time_limit": _nullable(_int_range(1, MAX_INT64)),
        "memory_limit_bytes": _nullable(_int_range(1, MAX_INT64)),
        "disk_limit_bytes": _nullable(_int_range(1, MAX_INT64)),
        "pids_limit": _nullable(_int_range(1, MAX_INT64)),
    }
    return {
        "Error": {
            **_obj(
                {
                    "id": {"type": "string", "description": "Random; also in the server log."},
                    "kind": {"type": "string", "enum": codes},
                    "message": {"type": "string"},
                },
                ["id", "kind", "message"],
            ),
            "description": "Plane's ApiError: every error's body.",
        },
        "Key": {
            **_obj(
                {
                    "name": _text(MAX_KEY_CHARS, min_length=1),
                    "namespace": _nullable(_text(MAX_KEY_CHARS)),
                    "tag": _nullable(_text(MAX_KEY_CHARS)),
                },
                ["name"],
            ),
            "description": "At most one live backend per (namespace, name).",
        },
        "ResourceLimits": _obj(limit_props),
        "Executable": {
            **_obj(
                {
                    "image": _nullable(_text(MAX_KEY_CHARS * 2, min_length=1)),
                    "env": _nullable(
                        {
                            "type": "object",
                            "propertyNames": {
                                "minLength": 1,
                                "maxLength": MAX_KEY_CHARS,
                                "pattern": "^[^=\\x00]*$",
                            },
                            "additionalProperties": {"type": "string", "pattern": NO_NUL},
                        }
                    ),
                    "pull_policy": _nullable({"type": "string", "enum": list(PULL_POLICIES)}),
                    "resource_limits": _nullable(_ref("ResourceLimits")),
                    "port": _nullable(_int_range(1, 65535)),
                    "command": _nullable(
                        {
                            "type": "array",
                            "minItems": 1,
                            "items": {"type": "string", "pattern": NO_NUL},
                        }
                    ),
                    "cwd": _nullable(_text(MAX_TEXT_CHARS, min_length=1)),
                }
            ),
            "description": "What to run: an image (Docker) and/or a command (local process).",
            "anyOf": [
                {"required": ["image"], "properties": {"image": {"type": "string"}}},
                {"required": ["command"], "properties": {"command": {"type": "array"}}},
            ],
        },
        "SpawnConfig": _obj(
            {
                "executable": _ref("Executable"),
                "id": _nullable({"type": "string", "pattern": BACKEND_ID_PATTERN}),
                "max_idle_seconds": _seconds(),
                "lifetime_limit_seconds": _seconds(),
                "start_timeout_seconds": _seconds(),
                "stop_grace_seconds": _seconds(zero=True),
            },
            ["executable"],
        ),
        "ConnectRequest": {
            **_obj(
                {
                    "key": _nullable(_ref("Key")),
                    "spawn_config": _nullable(_ref("SpawnConfig")),
                    "user": _nullable(_text(MAX_TEXT_CHARS)),
                    "auth": {"description": "Any JSON; sent to the backend as compact JSON."},
                }
            ),
            "description": "Plane's connect body; unknown fields are ignored.",
        },
        "ConnectResponse": _obj(
            {
                "backend_id": {"type": "string"},
                "spawned": {"type": "boolean"},
                "status": {"type": "string", "enum": statuses},
                "token": {"type": "string"},
                "url": {"type": "string"},
                "subdomain": _nullable({"type": "string"}),
                "secret_token": _nullable({"type": "string"}),
                "status_url": {"type": "string"},
                "drone": _nullable({"type": "string"}),
            },
            [
                "backend_id",
                "spawned",
                "status",
                "token",
                "url",
                "secret_token",
                "status_url",
            ],
        ),
        "BackendStatus": {
            **_obj(status_props, status_required),
            "description": "Plane's BackendStatusStreamEntry (absent fields omitted).",
        },
        "BackendDetail": _obj(
            {
                "backend_id": {"type": "string"},
                "key": _nullable(
                    _obj(
                        {
                            "name": {"type": "string"},
                            "namespace": {"type": "string"},
                            "tag": {"type": "string"},
                        },
                        ["name", "namespace", "tag"],
                    )
                ),
                **detail_status_props,
                "requested_at": {"type": "integer"},
                "address": _nullable({"type": "string"}),
                "fencing_token": {"type": "integer"},
                "connections": {"type": "integer"},
                "last_activity_at": _nullable({"type": "integer"}),
                "message": _nullable({"type": "string"}),
                "version": {"type": "integer"},
                "spawn_config": _nullable(
                    _obj(
                        {
                            "executable": _obj(
                                {
                                    "image": _nullable({"type": "string"}),
                                    "command": _nullable(
                                        {"type": "array", "items": {"type": "string"}}
                                    ),
                                    "cwd": _nullable({"type": "string"}),
                                    "env": {
                                        "type": "object",
                                        "additionalProperties": {"type": "string"},
                                    },
                                    "pull_policy": {"type": "string"},
                                    "port": {"type": "integer"},
                                    "resource_limits": {
                                        "type": "object",
                                        "additionalProperties": {"type": "integer"},
                                    },
                                },
                                ["env", "pull_policy", "port", "resource_limits"],
                            ),
                            "max_idle_seconds": _nullable({"type": "number"}),
                            "lifetime_limit_seconds": _nullable({"type": "number"}),
                            "start_timeout_seconds": {"type": "number"},
                            "stop_grace_seconds": {"type": "number"},
                        },
                        ["executable"],
                    )
                ),
            },
            [
                "backend_id",
                "key",
                *detail_status_props,
                "requested_at",
                "address",
                "fencing_token",
                "connections",
                "last_activity_at",
                "message",
                "version",
                "spawn_config",
            ],
        ),
        "BackendList": _obj(
            {
                "backends": {"type": "array", "items": _ref("BackendDetail")},
                "next": {
                    **_nullable({"type": "string"}),
                    "description": "Pass as `cursor` for the next page; null on the last.",
                },
            },
            ["backends", "next"],
        ),
        "Event": {
            **_obj(
                {
                    "seq": {"type": "integer", "minimum": 1},
                    "stream": {"type": "string"},
                    "version": {"type": "integer", "minimum": 1},
                    "type": {"type": "string", "description": "The wire tag."},
                    "data": {"type": "object"},
                },
                ["seq", "stream", "version", "type", "data"],
            ),
            "description": "A recorded event; env values and secret tokens are redacted.",
        },
        "EventList": _obj({"events": {"type": "array", "items": _ref("Event")}}, ["events"]),
        "PlaneStatus": _obj(
            {
                "status": {"type": "string", "enum": ["ok"]},
                "version": {"type": "string"},
                "hash": {"type": "string"},
            },
            ["status", "version", "hash"],
        ),
        "PlaneInfo": _obj(
            {
                "version": {"type": "string"},
                "hash": {"type": "string"},
                "executor": {"type": "string"},
                "live_backends": {"type": "integer", "minimum": 0},
                "backends": {"type": "integer", "minimum": 0},
                "last_seq": {"type": "integer", "minimum": 0},
            },
            ["version", "hash", "executor", "live_backends", "backends", "last_seq"],
        ),
        "Health": _obj({"status": {"type": "string", "enum": ["ok"]}}, ["status"]),
        "EngineList": _obj(
            {"engines": {"type": "array", "items": {"type": "object"}}}, ["engines"]
        ),
        "Updated": _obj({"updated": {"type": "boolean"}}, ["updated"]),
        "ProxyList": _obj({"proxies": {"type": "array", "items": {"type": "object"}}}, ["proxies"]),
        "ClusterState": _obj(
            {
                "drones": {"type": "array", "items": {"type": "object"}},
                "proxies": {"type": "array", "items": {"type": "object"}},
            },
            ["drones", "proxies"],
        ),
        "RevokeRequest": {
            **_obj({"token": _nullable({"type": "string", "minLength": 1})}),
            "additionalProperties": False,
        },
        "RevokeUserRequest": _obj(
            {
                "backend_id": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 64,
                    "pattern": NO_CONTROL,
                },
                "user": _text(MAX_TEXT_CHARS, min_length=1),
            },
            ["backend_id", "user"],
        ),
        "RevokeResponse": _obj(
            {
                "backend_id": {"type": "string"},
                "revoked": {"type": "string", "enum": ["all", "token"]},
                **detail_status_props,
            },
            ["backend_id", "revoked", *detail_status_props],
        ),
    }


_ERROR_TEXT = {
    400: "Malformed JSON, a field of the wrong type or out of range (the message "
    "names the field), or a bad query parameter.",
    401: "Missing or wrong `Authorization: Bearer <key>` (only when an API key is set).",
    403: "`ReadOnlyKey`: the read-only key allows GET only; this request changes state.",
    404: "No such backend (`NotFound`).",
    409: "`KeyHeld` (a live backend holds the key with another tag), "
    "`KeyUnheldNoSpawnConfig` or `BackendIdTaken`.",
    413: "Request body over the size limit.",
    500: "Unexpected failure; details are in the server log, never in the body.",
    503: "`CapacityExceeded`: plane is at its limit of live backends.",
}


def _error(status: int) -> dict[str, Any]:
    return {"description": _ERROR_TEXT[status], "content": {JSON: {"schema": _ref("Error")}}}


def _json(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref(schema)}}}


def _op(
    summary: str,
    responses: dict[str, Any],
    *,
    errors: tuple[int, ...] = (),
    protected: bool = True,
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    operation_id: str,
) -> dict[str, Any]:
    all_errors = {*errors, 500}
    if protected:
        all_errors.add(401)
    op: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "responses": {**responses, **{str(s): _error(s) for s in sorted(all_errors)}},
    }
    if not protected:
        op["security"] = []
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = body
    return op


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _dashboard_paths() -> dict[str, Any]:
    """The dashboard's routes (:mod:`plane.api.ui`): the state at a point of the log,
    the event vocabulary, and the static files (public: they hold no data)."""
    backend_detail = _ref("BackendDetail")
    state_page = _obj(
        {
            "at": _nullable({"type": "string"}),
            "seq": {"type": "integer", "description": "The last sequence number folded."},
            "time": _nullable({"type": "integer", "description": "Its event's time (ms)."}),
            "last_seq": {"type": "integer"},
            "first_time": _nullable({"type": "integer"}),
            "last_time": _nullable({"type": "integer"}),
            "backends": {
                "type": "array",
                "items": {
                    "allOf": [backend_detail],
                    "description": "BackendDetail plus `idle_deadline`, `next_deadline` "
                    "(ms or null) and `engine`.",
                },
            },
            "next": _nullable({"type": "string"}),
        },
        ["at", "seq", "time", "last_seq", "backends", "next"],
    )
    event_types = _obj(
        {
            "inputs": {"type": "array", "items": {"type": "string"}},
            "decisions": {"type": "array", "items": {"type": "string"}},
            "connection_opened": {"type": "string"},
            "connection_closed": {"type": "string"},
            "terminated": {"type": "string"},
        },
        ["inputs", "decisions"],
    )

    def page(kind: str) -> dict[str, Any]:
        return {
            "description": "A dashboard file.",
            "content": {kind: {"schema": {"type": "string"}}},
        }

    def public(summary: str, responses: dict[str, Any], op_id: str, **kw: Any) -> dict[str, Any]:
        return _op(summary, responses, protected=False, operation_id=op_id, **kw)

    return {
        "/ctrl/state": {
            "get": _op(
                "Every backend's state at a point of the log (the fold `plane-replay state "
                "--at` uses), or now; paged like /ctrl/backends",
                {"200": {"description": "One page.", "content": {JSON: {"schema": state_page}}}},
                errors=(400,),
                parameters=[
                    _query(
                        "at",
                        {"type": "string"},
                        "A sequence number or an ISO-8601 time (UTC without a zone); absent: now.",
                    ),
                    _query(
                        "status",
                        {"type": "string", "enum": [s.value for s in Status]},
                        "Only backends in this state.",
                    ),
                    _query("key", {"type": "string"}, "Only backends whose key name is this."),
                    {
                        "name": "backend",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "array", "items": {"type": "string"}},
                        "style": "form",
                        "explode": True,
                        "description": "Only these backends (repeatable).",
                    },
                    _query("limit", _int_range(1, 1000), "Page size (default 100)."),
                    _query("cursor", {"type": "string"}, "`next` of the previous page."),
                ],
                operation_id="stateAt",
            )
        },
        "/ctrl/event-types": {
            "get": _op(
                "Which event tags are inputs and which are the decider's decisions",
                {"200": {"description": "Tags.", "content": {JSON: {"schema": event_types}}}},
                operation_id="eventTypes",
            )
        },
        "/ui": {
            "get": public(
                "The dashboard (redirects to /ui/)",
                {"308": {"description": "To /ui/."}},
                "dashboardRedirect",
            )
        },
        "/ui/": {"get": public("The dashboard's page", {"200": page("text/html")}, "dashboard")},
        "/ui/settings.json": {
            "get": public(
                "Whether the API wants a key, and which optional panels exist",
                {
                    "200": {
                        "description": "Settings.",
                        "content": {
                            JSON: {
                                "schema": _obj(
                                    {
                                        "auth": {"type": "boolean"},
                                        "panels": {
                                            "type": "object",
                                            "additionalProperties": {"type": "boolean"},
                                        },
                                    },
                                    ["auth", "panels"],
                                )
                            }
                        },
                    }
                },
                "dashboardSettings",
            )
        },
        "/ui/{name}": {
            "get": public(
                "A dashboard file (script, style sheet, icon)",
                {
                    "200": {
                        "description": "The file.",
                        "content": {
                            k: {"schema": {"type": "string"}}
                            for k in ("text/javascript", "text/css", "text/html", "image/svg+xml")
                        },
                    }
                },
                "dashboardFile",
                errors=(404,),
                parameters=[
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
            )
        },
    }


BACKEND_ID = {"$ref": "#/components/parameters/BackendId"}


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


SSE = {"text/event-stream": {"schema": {"type": "string"}}}


def document() -> dict[str, Any]:
    """The OpenAPI document as a JSON-ready dict."""
    null = {
        "description": "`null`, as Plane answers.",
        "content": {JSON: {"schema": {"type": "null"}}},
    }
    terminate = {"200": null}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "plane",
            "version": __version__,
            "description": (
                "Session backends on trio. Plane-compatible spawn, status and terminate "
                "(paths and JSON field names as in jamsocket/plane 0.5), plus list, inspect, "
                "events, logs, revoke and metrics. Every error body is Plane's ApiError "
                '`{"id", "kind", "message"}`.'
            ),
        },
        "security": [{"bearer": []}],
        "paths": {
            "/ctrl/connect": {
                "post": _op(
                    "Get or create the backend for a key, and mint a connection token",
                    {"200": _json("The backend and a fresh token.", "ConnectResponse")},
                    errors=(400, 403, 409, 413, 503),
                    body={
                        "required": True,
                        "content": {JSON: {"schema": _ref("ConnectRequest")}},
                    },
                    operation_id="connect",
                )
            },
            "/ctrl/b/{id}/soft-terminate": {
                "post": _op(
                    "Stop a backend: stop signal, grace period, then kill",
                    terminate,
                    errors=(403, 404),
                    parameters=[BACKEND_ID],
                    operation_id="softTerminate",
                )
            },
            "/ctrl/b/{id}/hard-terminate": {
                "post": _op(
                    "Kill a backend now",
                    terminate,
                    errors=(403, 404),
                    parameters=[BACKEND_ID],
                    operation_id="hardTerminate",
                )
            },
            "/ctrl/b/{id}/revoke": {
                "post": _op(
                    "Revoke one connection token (by value) or, with no token, all of them",
                    {"200": _json("What was revoked, and the status.", "RevokeResponse")},
                    errors=(400, 403, 404, 413),
                    parameters=[BACKEND_ID],
                    body={
                        "required": False,
                        "content": {JSON: {"schema": _ref("RevokeRequest")}},
                    },
                    operation_id="revoke",
                )
            },
            "/ctrl/b/revoke": {
                "post": _op(
                    "Plane's revoke: every live connection token of a user on a backend",
                    {"200": null},
                    errors=(400, 404, 413),
                    body={
                        "required": True,
                        "content": {JSON: {"schema": _ref("RevokeUserRequest")}},
                    },
                    operation_id="revokeUser",
                )
            },
            "/ctrl/status": {
                "get": _op(
                    "Plane's status: ok, version and build hash",
                    {"200": _json("Plane's status.", "PlaneStatus")},
                    operation_id="planeStatus",
                )
            },
            "/ctrl/info": {
                "get": _op(
                    "This plane: version, hash, executor, backend counts",
                    {"200": _json("Our own detail.", "PlaneInfo")},
                    operation_id="planeInfo",
                )
            },
            "/ctrl/backends": {
                "get": _op(
                    "List backends, oldest request first, with filters and cursor pagination",
                    {"200": _json("One page of backends.", "BackendList")},
                    errors=(400,),
                    parameters=[
                        _query(
                            "state",
                            {"type": "string", "enum": [s.value for s in Status]},
                            "Only backends in this state (ours).",
                        ),
                        _query(
                            "status",
                            {"type": "string", "enum": [s.value for s in PlaneStatus]},
                            "Only backends in this status (Plane's).",
                        ),
                        _query("key", {"type": "string"}, "Only backends whose key name is this."),
                        _query("namespace", {"type": "string"}, "Only this key namespace."),
                        _query("live", FLAG, "1: only live backends (holding their key)."),
                        _query("limit", _int_range(1, 1000), "Page size (default 100)."),
                        _query("cursor", {"type": "string"}, "`next` of the previous page."),
                    ],
                    operation_id="listBackends",
                )
            },
            "/ctrl/b/{id}": {
                "get": _op(
                    "Everything known about a backend (env values never shown)",
                    {"200": _json("The backend.", "BackendDetail")},
                    errors=(404,),
                    parameters=[BACKEND_ID],
                    operation_id="backendDetail",
                )
            },
            "/ctrl/b/{id}/events": {
                "get": _op(
                    "A backend's events, in order",
                    {"200": _json("The backend's stream.", "EventList")},
                    errors=(404,),
                    parameters=[BACKEND_ID],
                    operation_id="backendEvents",
                )
            },
            "/ctrl/b/{id}/logs": {
                "get": _op(
                    "A backend's output (stdout and stderr); with follow=1, streamed live",
                    {
                        "200": {
                            "description": "The output, chunked.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                    errors=(400, 404),
                    parameters=[
                        BACKEND_ID,
                        _query("follow", FLAG, "1: keep streaming until the backend exits."),
                    ],
                    operation_id="backendLogs",
                )
            },
            "/ctrl/events": {
                "get": _op(
                    "The global event log after a sequence number, following live: SSE "
                    "(each event's `id` is its seq; `Last-Event-ID` resumes) or, on a "
                    "WebSocket upgrade, one JSON text message per event",
                    {
                        "200": {
                            "description": "SSE; each `data` is an Event.",
                            "content": SSE,
                        },
                        "101": {"description": "WebSocket feed of Event messages."},
                    },
                    errors=(400,),
                    parameters=[
                        _query("after", _int_range(0, MAX_INT64), "Start after this seq."),
                        _query("follow", FLAG, "0: end after the events present now."),
                        {
                            "name": "Last-Event-ID",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "pattern": "^[0-9]{0,19}$"},
                        },
                    ],
                    operation_id="events",
                )
            },
            "/pub/b/{id}/status": {
                "get": _op(
                    "A backend's status (Plane's status object)",
                    {"200": _json("The status.", "BackendStatus")},
                    errors=(404,),
                    protected=False,
                    parameters=[BACKEND_ID],
                    operation_id="status",
                )
            },
            "/pub/b/{id}/status-stream": {
                "get": _op(
                    "SSE of a backend's status changes: history, then live; ends after "
                    "terminated; an event only when Plane's status changes. Each `id` is the "
                    "status; `Last-Event-ID: <status>` skips up to and including it, a numeric "
                    "one resumes after that stream version; `: keep-alive` comments in between",
                    {
                        "200": {
                            "description": "SSE; each `data` is a BackendStatus.",
                            "content": SSE,
                        },
                        "204": {
                            "description": "Terminated and nothing left after Last-Event-ID "
                            "(tells EventSource to stop reconnecting)."
                        },
                    },
                    errors=(400, 404),
                    protected=False,
                    parameters=[
                        BACKEND_ID,
                        {
                            "name": "Last-Event-ID",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "pattern": LAST_STATUS_ID},
                        },
                    ],
                    operation_id="statusStream",
                )
            },
            "/ctrl/engines": {
                "get": _op(
                    "The engines (drones) backends are placed on: state, pool, load",
                    {"200": _json("Every engine.", "EngineList")},
                    operation_id="engines",
                )
            },
            "/ctrl/proxies": {
                "get": _op(
                    "The proxy processes fed by /ctrl/proxy-feed: id, connected, synced, "
                    "open connections, counters",
                    {"200": _json("Every proxy known.", "ProxyList")},
                    operation_id="proxies",
                )
            },
            "/ctrl/proxy-feed": {
                "get": _op(
                    "A proxy's channel (WebSocket; the proxy key only): the log's routing "
                    "events after `after`, unredacted, then live; the proxy's connection "
                    "events back",
                    {"101": {"description": "WebSocket channel."}},
                    errors=(400, 403),
                    parameters=[
                        _query("after", _int_range(0, MAX_INT64), "Start after this seq."),
                        _query("proxy", {"type": "string"}, "The proxy's id."),
                    ],
                    operation_id="proxyFeed",
                )
            },
            "/ctrl/engines/{name}/drain": {
                "post": _op(
                    "Place no new backend on the engine; its own keep running",
                    {"200": _json("Whether that changed the engine.", "Updated")},
                    errors=(404,),
                    parameters=[_path_param("name")],
                    operation_id="drainEngine",
                )
            },
            "/ctrl/engines/{name}/undrain": {
                "post": _op(
                    "Let the engine take new backends again",
                    {"200": _json("Whether that changed the engine.", "Updated")},
                    errors=(404,),
                    parameters=[_path_param("name")],
                    operation_id="undrainEngine",
                )
            },
            "/ctrl/c/{cluster}/d/{drone}/drain": {
                "post": _op(
                    "Plane's drain of a drone (an engine)",
                    {"200": _json("Whether that changed the drone.", "Updated")},
                    errors=(400, 404),
                    parameters=[_path_param("cluster"), _path_param("drone")],
                    operation_id="drainDrone",
                )
            },
            "/ctrl/c/{cluster}/state": {
                "get": _op(
                    "Plane's ClusterState: every drone (engine)",
                    {"200": _json("The cluster's drones.", "ClusterState")},
                    errors=(400, 404),
                    parameters=[_path_param("cluster")],
                    operation_id="clusterState",
                )
            },
            "/pub/health": {
                "get": _op(
                    "Liveness",
                    {"200": _json("Alive.", "Health")},
                    protected=False,
                    operation_id="health",
                )
            },
            "/metrics": {
                "get": _op(
                    "Prometheus metrics (needs the API key when one is set)",
                    {
                        "200": {
                            "description": "Prometheus text format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                    operation_id="metrics",
                )
            },
            "/openapi.json": {
                "get": _op(
                    "This document",
                    {
                        "200": {
                            "description": "The OpenAPI document.",
                            "content": {JSON: {"schema": {"type": "object"}}},
                        }
                    },
                    protected=False,
                    operation_id="openapi",
                )
            },
            **_dashboard_paths(),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "parameters": {
                "BackendId": {
                    "name": "id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "minLength": 1},
                }
            },
            "schemas": _schemas(),
        },
    }


def render() -> str:
    """The document as the committed ``openapi.json`` holds it."""
    return json.dumps(document(), indent=2) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
