"""Routing: path patterns to handlers, authentication, error bodies, request metrics.

This module owns the step between a parsed :class:`~plane.api.http.Request`
and an endpoint: it matches the path against a table of :class:`Route`
patterns (``/ctrl/b/{id}/status``; a ``{name}`` segment matches one
percent-decoded, non-empty path segment), checks the bearer key for protected
paths, calls the handler, and turns refusals and failures into the JSON error
body of :mod:`plane.api.errors`.  It counts every answer by route pattern and
status (``unmatched`` for paths no route knows).

Order of checks: a protected path without the right key is 401 before
anything else (so an unauthenticated caller learns nothing about which
routes exist); with the read-only key, a method other than GET is 403
``ReadOnlyKey`` (whatever the path: it changes state or does not exist);
then 404 ``NoSuchRoute`` for an unknown path, then 405 ``MethodNotAllowed``
(with ``Allow``) for a known path and a wrong method.

Each :class:`Route` also carries what the OpenAPI document says about it
(summary, query and header :class:`Param`\\ s, request body model,
:class:`Answer`\\ s, the error kinds it can answer): the route table is the one
place a route is declared, and :mod:`plane.api.openapi` generates the
document from it.  Errors the router itself answers (401, 403 ``ReadOnlyKey``,
500, 503 ``LogUnavailable``) are added there for every route they apply to.

Error handling
--------------
:class:`~plane.api.errors.ApiError` becomes its status and body.  Any other
exception from a handler is logged with its traceback and answered 500
``InternalError`` with a fixed message: a traceback never reaches a client.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import unquote

import attrs
import orjson

from plane.api.errors import ApiError, error_json
from plane.api.http import Request, Response
from plane.api.keys import Access
from plane.events.store import StoreError

log = logging.getLogger("plane.api")

Params = dict[str, str]
RouteHandler = Callable[[Request, Params], Awaitable[Response]]
UnboundHandler = Callable[[Any, Request, Params], Awaitable[Response]]
"""A handler method taken from its class (``Endpoints.connect``): the route
table is declared once, without an API context; the router binds it."""
JSON_TYPE = "application/json"
READ_METHODS = frozenset({"GET", "HEAD"})
PROXY_ROUTES = frozenset({"/ctrl/proxy-feed"})
"""The routes the proxy key opens (and only it: :mod:`plane.api.proxies`)."""


def json_response(
    data: Any, status: int = 200, headers: tuple[tuple[str, str], ...] = ()
) -> Response:
    body = orjson.dumps(data)
    return Response(status, (("content-type", JSON_TYPE), *headers), body)


def error_response(error: ApiError) -> Response:
    headers = (("content-type", JSON_TYPE), *error.headers)
    return Response(error.status, headers, error_json(error.kind, error.message, error.status))


@attrs.frozen
class Param:
    """A query parameter or request header a route reads; ``schema`` is its JSON
    Schema, and the handler's parsing reads its bounds and choices from it."""

    name: str
    schema: dict[str, Any]
    description: str = ""
    where: str = "query"


@attrs.frozen
class Answer:
    """One documented successful answer.  ``model``: the attrs class of the JSON
    (:mod:`plane.api.answers`), or of each event's ``data`` for
    ``text/event-stream``; ``schema``: a literal schema instead (``null``, text)."""

    status: int
    description: str
    model: type | None = None
    media: str | None = JSON_TYPE
    schema: dict[str, Any] | None = None


@attrs.frozen
class Route:
    """A path pattern and method, its handler, and what the document says of it."""

    method: str
    pattern: str
    handler: UnboundHandler
    summary: str = ""
    operation_id: str = ""
    body: type | None = None
    """The request body's wire model (:mod:`plane.api.body`), if it takes one."""
    body_required: bool = True
    params: tuple[Param, ...] = ()
    answers: tuple[Answer, ...] = ()
    errors: Mapping[int, tuple[str, ...]] = attrs.field(factory=dict)
    """The error kinds, by status, the handler can answer (the router's own are added)."""
    notes: Mapping[int, str] = attrs.field(factory=dict)
    """What the document adds, by status, to the description of an error answer."""
    documented: bool = True
    """False for the dashboard's static files (not JSON API): left out of the document."""

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.pattern.split("/"))


def _match(parts: tuple[str, ...], segments: list[str]) -> Params | None:
    if len(parts) != len(segments):
        return None
    params: Params = {}
    for part, segment in zip(parts, segments, strict=True):
        if part.startswith("{") and part.endswith("}"):
            if not segment:
                return None
            params[part[1:-1]] = segment
        elif part != segment:
            return None
    return params


class Router:
    """Dispatches requests to routes; see the module docstring."""

    def __init__(
        self,
        routes: list[Route],
        owner: object,
        *,
        is_protected: Callable[[str], bool],
        access: Callable[[Request], Access],
        observe: Callable[[str, int], None],
    ) -> None:
        self.routes = routes
        self.owner = owner
        self.is_protected = is_protected
        self.access = access
        self.observe = observe

    async def __call__(self, request: Request) -> Response:
        label, response = await self._dispatch(request)
        self.observe(label, response.status)
        return response

    async def _dispatch(self, request: Request) -> tuple[str, Response]:
        segments = [unquote(s) for s in request.path.split("/")]
        found = [
            (route, params)
            for route in self.routes
            if (params := _match(route.parts, segments)) is not None
        ]
        label = found[0][0].pattern if found else "unmatched"
        # protection is decided on the decoded path, the one routes match against
        # (so "/%63trl/status" is as protected as "/ctrl/status")
        protected = self.is_protected("/".join(segments)) or any(
            self.is_protected(route.pattern) for route, _ in found
        )
        access = self.access(request) if protected else Access.FULL
        if access is Access.NONE:
            return label, error_response(
                ApiError(
                    401,
                    "Unauthorized",
                    "missing or wrong API key (send Authorization: Bearer <key>)",
                    [("www-authenticate", "Bearer")],
                )
            )
        if access is Access.PROXY and label not in PROXY_ROUTES:
            return label, error_response(
                ApiError(403, "ProxyKey", "the proxy key opens /ctrl/proxy-feed only")
            )
        if access is Access.READ and request.method not in READ_METHODS:
            return label, error_response(
                ApiError(
                    403,
                    "ReadOnlyKey",
                    f"the read-only API key allows GET (reads and streams) only; "
                    f"{request.method} changes state and needs the full API key",
                )
            )
        if not found:
            return label, error_response(
                ApiError(404, "NoSuchRoute", f"no route for {request.path[:200]!r}")
            )
        for route, params in found:
            if route.method == request.method:
                try:
                    return label, await route.handler(self.owner, request, params)
                except ApiError as error:
                    return label, error_response(error)
                except StoreError as exc:  # the log refused (disk full, closed): nothing done
                    log.error("%s %s: the event log refused: %s", request.method, request.path, exc)
                    return label, error_response(ApiError(503, "LogUnavailable", str(exc)))
                except Exception:
                    log.exception("%s %s failed", request.method, request.path)
                    return label, error_response(
                        ApiError(500, "InternalError", "internal error; see the server log")
                    )
        allowed = ", ".join(sorted({route.method for route, _ in found}))
        return label, error_response(
            ApiError(
                405,
                "MethodNotAllowed",
                f"{request.method} is not allowed on {label}; allowed: {allowed}",
                [("allow", allowed)],
            )
        )
