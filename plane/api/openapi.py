"""The OpenAPI 3.1 document of the API, generated: never written by hand.

This module owns how the API's description is derived.  Nothing here names
an endpoint: :func:`document` reads

* the route table (:func:`plane.api.routes.route_table`): paths, methods,
  summaries, query and header parameters, which answers and which error
  kinds each route gives, whether it needs the API key;
* the request wire models (:mod:`plane.api.body`): each body's JSON Schema,
  with the constraints their fields declare (:class:`~plane.api.body.Check`,
  :class:`~plane.api.body.Rule`), the very declarations the server checks;
* the answer models (:mod:`plane.api.answers`): each response's JSON Schema.
  A ``text/event-stream`` answer's schema is that of each event (OpenAPI
  before 3.2 reads it so): an ``id`` and a ``data`` whose ``contentSchema``
  is the model's.

Routes declared ``documented=False`` are left out: the dashboard's static
files (``/ui``, ``/ui/``, ``/ui/{name}``: HTML, scripts, style sheets, an icon;
not JSON API), and ``/ctrl/proxy-feed``, the proxies' WebSocket channel (the
proxy key only; its messages are :mod:`plane.api.proxies`'s).  The
dashboard's JSON routes (``/ui/settings.json``, ``/ctrl/state``,
``/ctrl/event-types``) are in the document.

The generator adds what the router answers for every route it applies to (401 and 403
``ReadOnlyKey`` on protected routes, 413 and the body's 400 where a body is
read, 431 ``HeadersTooLarge``, 500 ``InternalError``, 503 ``LogUnavailable``).  Every error body is
Plane's ``ApiError``, its ``kind`` narrowed to the kinds that route can give.

``GET /openapi.json`` serves it; the committed ``openapi.json`` at the
repository root is its output, regenerated with::

    python -m plane.api.openapi > openapi.json

and ``tests/api/test_openapi.py`` checks that the two agree and runs
schemathesis (stateful, positive and negative data) against a live server.

Adding a route with its schema is one change, in
:func:`plane.api.routes.route_table`: a :class:`~plane.api.router.Route` with
its handler, ``summary``, ``params``, ``body`` (a wire model in
:mod:`plane.api.body`), ``answers`` (models in :mod:`plane.api.answers`) and
``errors``; then regenerate ``openapi.json``.
"""

from __future__ import annotations

import enum
import inspect
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import orjson

from plane import __version__
from plane.api import answers
from plane.api.body import Check, Rule, check_of
from plane.api.router import JSON_TYPE, Answer, Route

_ERROR_TEXT = {
    400: "Malformed JSON, a field of the wrong type or out of range (the message "
    "names the field by its JSON path), or a bad query parameter or header.",
    401: "Missing or wrong `Authorization: Bearer <key>` (only when an API key is set).",
    403: "The read-only key allows GET only; this request changes state.",
    404: "No such backend.",
    409: "The key or backend id is taken.",
    413: "Request body over the size limit.",
    431: "Request head (request line and headers) over the size limit.",
    500: "Unexpected failure; details are in the server log, never in the body.",
    503: "Plane cannot take this now (capacity, no engine, the stream limit, or the "
    "event log refused a write).",
}


# ------------------------------------------------------ attrs -> JSON Schema


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _describe(cls: type) -> str | None:
    doc = inspect.getdoc(cls)
    if not doc or cls.__doc__ is None:
        return None
    return " ".join(doc.split("\n\n")[0].split()).replace("``", "`")


class Schemas:
    """JSON Schemas of Python types; each attrs class becomes a component."""

    def __init__(self) -> None:
        self.components: dict[str, dict[str, Any]] = {}

    def of(self, tp: Any) -> dict[str, Any]:
        if tp is Any:
            return {}
        if tp is type(None):
            return {"type": "null"}
        simple = {str: "string", bool: "boolean", int: "integer", float: "number"}
        if tp in simple:
            return {"type": simple[tp]}
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return {"type": "string", "enum": [m.value for m in tp]}
        if isinstance(tp, type) and attrs.has(tp):
            return self.of_class(tp)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin in (types.UnionType, typing.Union):
            return {"anyOf": [self.of(arg) for arg in args]}
        if origin in (list, tuple):
            return {"type": "array", "items": self.of(args[0])}
        if origin is dict:
            value = self.of(args[1])
            return {"type": "object", **({"additionalProperties": value} if value else {})}
        raise TypeError(f"no JSON Schema for {tp!r}")

    def of_class(self, cls: type) -> dict[str, Any]:
        name = cls.__name__
        if name not in self.components:
            self.components[name] = {}  # placeholder: recursion ends here
            self.components[name] = self._object(cls)
        return _ref(name)

    def _object(self, cls: type) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        properties: dict[str, Any] = {}
        required: list[str] = []
        for field in attrs.fields(cls):
            schema = self.of(hints[field.name])
            if field.metadata.get(answers.OMIT):
                schema = _without_null(schema)
            check = check_of(field)
            if check is not None:
                schema = _constrained(schema, check)
            properties[field.name] = schema
            if field.default is attrs.NOTHING:
                required.append(field.name)
        out: dict[str, Any] = {"type": "object", "required": required, "properties": properties}
        description = _describe(cls)
        if description:
            out["description"] = description
        rules: tuple[Rule, ...] = getattr(cls, "WIRE_RULES", ())
        for rule in rules:
            out.update(rule.schema)
        if getattr(cls, "WIRE_CLOSED", False):
            out["additionalProperties"] = False
        return out


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    branches = [b for b in schema.get("anyOf", [schema]) if b != {"type": "null"}]
    return branches[0] if len(branches) == 1 else {"anyOf": branches}


def _constrain_value(schema: dict[str, Any], check: Check) -> dict[str, Any]:
    """``check`` applied to a non-null schema."""
    if "$ref" in schema or not schema:
        return {**schema, **{k: v for k, v in check.schema().items() if k != "description"}}
    out = {**schema, **{k: v for k, v in check.schema().items() if k != "description"}}
    kind = schema.get("type")
    low, high = ("minItems", "maxItems") if kind == "array" else ("minLength", "maxLength")
    if check.min_length is not None:
        out[low] = check.min_length
    if check.max_length is not None:
        out[high] = check.max_length
    if check.items is not None:
        out["items"] = _constrain_value(out.get("items", {}), check.items)
    if check.keys is not None:
        out["propertyNames"] = _constrain_value({}, check.keys)
        if check.keys.min_length is not None:
            out["propertyNames"]["minLength"] = check.keys.min_length
        if check.keys.max_length is not None:
            out["propertyNames"]["maxLength"] = check.keys.max_length
    if check.values is not None:
        out["additionalProperties"] = _constrain_value(
            out.get("additionalProperties", {}), check.values
        )
    return out


def _constrained(schema: dict[str, Any], check: Check) -> dict[str, Any]:
    if "anyOf" in schema:
        branches = [
            b if b == {"type": "null"} else _constrain_value(b, check) for b in schema["anyOf"]
        ]
        out: dict[str, Any] = {"anyOf": branches}
    else:
        out = _constrain_value(schema, check)
    if check.description is not None:
        out["description"] = check.description
    return out


# ------------------------------------------------------------ the document


def _errors(route: Route, protected: bool) -> dict[int, list[str]]:
    kinds: dict[int, list[str]] = {}

    def add(status: int, *names: str) -> None:
        listed = kinds.setdefault(status, [])
        listed.extend(n for n in names if n not in listed)

    if protected:
        add(401, "Unauthorized")
        if route.method != "GET":
            add(403, "ReadOnlyKey")
    if route.body is not None:
        add(400, "InvalidJson", "InvalidRequest")
        add(413, "PayloadTooLarge")
    if route.params:
        add(400, "InvalidRequest")
    for status, names in route.errors.items():
        add(status, *names)
    add(431, "HeadersTooLarge")
    add(500, "InternalError")
    add(503, "LogUnavailable")
    return dict(sorted(kinds.items()))


def _error_response(status: int, kinds: list[str], note: str | None) -> dict[str, Any]:
    extra = f" {note}" if note else ""
    return {
        "description": f"{_ERROR_TEXT[status]}{extra} Kinds: {', '.join(kinds)}.",
        "content": {
            JSON_TYPE: {
                "schema": {
                    "allOf": [
                        _ref("ApiErrorBody"),
                        {"properties": {"kind": {"type": "string", "enum": kinds}}},
                    ]
                }
            }
        },
    }


SSE_TYPE = "text/event-stream"


def _event(data: dict[str, Any]) -> dict[str, Any]:
    """One server-sent event (as OpenAPI 3.1 reads an SSE schema) whose ``data``
    is JSON of the schema ``data``."""
    return {
        "type": "object",
        "required": ["id", "data"],
        "properties": {
            "id": {"type": "string"},
            "data": {
                "type": "string",
                "contentMediaType": JSON_TYPE,
                "contentSchema": data,
            },
        },
    }


def _answer(answer: Answer, schemas: Schemas) -> dict[str, Any]:
    out: dict[str, Any] = {"description": answer.description}
    if answer.media is not None:
        schema = answer.schema if answer.model is None else schemas.of_class(answer.model)
        if answer.media == SSE_TYPE:
            schema = _event(schema or {})
        out["content"] = {answer.media: {"schema": schema or {}}}
    return out


def _operation_id(route: Route) -> str:
    if route.operation_id:
        return route.operation_id
    first, *rest = route.handler.__name__.split("_")
    return first + "".join(word.capitalize() for word in rest)


def _path_params(route: Route) -> list[dict[str, Any]]:
    """Each ``{name}`` of the pattern: a non-empty string, unless the route
    declares that parameter (``where="path"``) with a schema of its own."""
    declared = {p.name: p for p in route.params if p.where == "path"}
    out = []
    for part in route.parts:
        if not (part.startswith("{") and part.endswith("}")):
            continue
        name = part[1:-1]
        param = declared.get(name)
        out.append(
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": param.schema if param else {"type": "string", "minLength": 1},
                **({"description": param.description} if param and param.description else {}),
            }
        )
    return out


def _links(route: Route, routes: Sequence[Route], model: type | None) -> dict[str, Any]:
    """From an answer carrying ``backend_id`` to every operation on ``/{id}``."""
    if model is None or "backend_id" not in attrs.fields_dict(model):
        return {}
    return {
        _operation_id(other): {
            "operationId": _operation_id(other),
            "parameters": {"path.id": "$response.body#/backend_id"},
        }
        for other in routes
        if "{id}" in other.parts and other is not route
    }


def _operation(
    route: Route, routes: Sequence[Route], protected: bool, schemas: Schemas
) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for answer in route.answers:
        responses[str(answer.status)] = _answer(answer, schemas)
        links = _links(route, routes, answer.model) if answer.status == 200 else {}
        if links:
            responses[str(answer.status)]["links"] = links
    for status, kinds in _errors(route, protected).items():
        responses[str(status)] = _error_response(status, kinds, route.notes.get(status))
    op: dict[str, Any] = {
        "operationId": _operation_id(route),
        "summary": route.summary,
        "responses": responses,
    }
    if not protected:
        op["security"] = []
    parameters = _path_params(route) + [
        {
            "name": p.name,
            "in": p.where,
            "required": False,
            "schema": p.schema,
            **({"description": p.description} if p.description else {}),
        }
        for p in route.params
        if p.where != "path"
    ]
    if parameters:
        op["parameters"] = parameters
    if route.body is not None:
        op["requestBody"] = {
            "required": route.body_required,
            "content": {JSON_TYPE: {"schema": schemas.of_class(route.body)}},
        }
    return op


def document(routes: Sequence[Route], is_protected: Callable[[str], bool]) -> dict[str, Any]:
    """The OpenAPI document of ``routes`` as a JSON-ready dict."""
    schemas = Schemas()
    schemas.of_class(answers.ApiErrorBody)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not route.documented:
            continue
        op = _operation(route, routes, is_protected(route.pattern), schemas)
        paths.setdefault(route.pattern, {})[route.method.lower()] = op
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
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": dict(sorted(schemas.components.items())),
        },
    }


def render() -> str:
    """The document as the committed ``openapi.json`` holds it."""
    from plane.api.routes import api_document  # the route table imports this module

    return orjson.dumps(api_document(), option=orjson.OPT_INDENT_2).decode() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
