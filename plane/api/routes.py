"""The endpoints: Plane's spawn, status, terminate and revoke API, plus our list,
inspect, events, logs, revoke, info and metrics endpoints.

This module owns what each path does.  :func:`route_table` declares every
route once: method, pattern, handler, and what the OpenAPI document says of
it (summary, parameters, body model, answer models, error kinds);
:func:`api_document` generates the document from it (:mod:`plane.api.openapi`)
and :func:`build_router` binds it to an :class:`~plane.api.context.ApiContext`.
Query parameters and headers are declared once too (:class:`Param`): the
parsers read their choices and bounds from the schema the document publishes.  Bodies are parsed
in :mod:`plane.api.body`, streams are framed in :mod:`plane.api.sse` and fed
from :mod:`plane.api.feeds`, views come from :mod:`plane.views`.

Plane's endpoints answer Plane's fields, enums and shapes exactly (our
lifecycle said in Plane's words by :mod:`plane.plane_words`):

* ``POST /ctrl/connect`` (``ConnectResponse``); ``POST
  /ctrl/b/{id}/soft-terminate`` and ``hard-terminate`` (``null``);
  ``POST /ctrl/b/revoke`` (``{"backend_id", "user"}``: that user's tokens;
  ``null``)
* ``GET /pub/b/{id}/status`` (``BackendStatusStreamEntry``),
  ``GET /pub/b/{id}/status-stream`` (SSE), ``GET /pub/health``
* ``GET /ctrl/status`` (``{"status": "ok", "version", "hash"}``)

Ours, in both vocabularies (``state``/``reason`` ours, ``status`` Plane's):

* ``GET /ctrl/info``, ``GET /ctrl/backends`` (``?state=`` filters on ours,
  ``?status=`` on Plane's), ``GET /ctrl/b/{id}``, ``GET /ctrl/b/{id}/events``,
  ``GET /ctrl/events`` (SSE, or a WebSocket feed on an upgrade request),
  ``GET /ctrl/b/{id}/logs``, ``POST /ctrl/b/{id}/revoke``
* warm pools: ``GET /ctrl/warm-pools`` (each with ``name``, ``size``,
  ``warm``, ``starting``, ``claim_path``), ``GET``/``PUT``/``DELETE
  /ctrl/warm-pools/{name}`` (``PUT`` body: ``{"spawn_config", "size",
  "claim_path"}``; without ``spawn_config`` it resizes an existing pool)
* ``GET /metrics``, ``GET /openapi.json``
* the dashboard's: ``GET /ctrl/state``, ``GET /ctrl/event-types``, ``/ui/``
  (:mod:`plane.api.ui`)

A status stream sends an event only when Plane's status changes; its SSE
``id`` is that status, and ``Last-Event-ID: <status>`` skips every status up
to and including it, as Plane does; a numeric ``Last-Event-ID`` is read as a
stream **version** (ours) and resumes after it.  Global event ids are
**sequence numbers**.  A status stream of a terminated backend with nothing
left to send is answered 204, which tells ``EventSource`` to stop
reconnecting.
"""

from __future__ import annotations

import copy
import functools
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import orjson
import trio
import trio_websocket

from plane import __version__, cluster, tokens
from plane.actors import lifecycle
from plane.actors.lifecycle import BackendState
from plane.actors.supervisor import (
    ConnectRefused,
    UnknownBackend,
    UnknownEngine,
    UnknownWarmPool,
)
from plane.api import answers, body, feeds, openapi, proxies, sse
from plane.api.context import ApiContext
from plane.api.errors import ApiError, invalid, not_found
from plane.api.http import Request, Response, Send
from plane.api.keys import Access
from plane.api.router import (
    Answer,
    Param,
    Params,
    Route,
    Router,
    UnboundHandler,
    json_response,
)
from plane.build import build_hash
from plane.events.backend_index import Order
from plane.events.store import RecordedEvent, StoreFullError
from plane.events.types import (
    SYSTEM_STREAM,
    Status,
    TerminationKind,
    TokenIssued,
    TokenRevoked,
)
from plane.plane_words import PlaneStatus, state_status
from plane.views import detail_view, status_view

DEFAULT_PAGE = 100
MAX_PAGE = 1000
MAX_ID = 2**63 - 1
TEXT_PLAIN = "text/plain; charset=utf-8"
SSE_TYPE = "text/event-stream"
FLAG_VALUES = ("1", "0", "true", "false")
_DIGITS = re.compile(r"[0-9]{1,19}")
_PLANE_STATUSES = {s.value: s for s in PlaneStatus}
CURSOR_PATTERN = rf"^(?:(-?[0-9]+(\.[0-9]+)?(e[-+]?[0-9]+)?)~({tokens.BACKEND_ID}))?$"
"""A list cursor: the last listed backend's request time (seconds) and id, so a
cursor stays valid whatever happens to that backend; empty: the first page."""
_CURSOR = re.compile(CURSOR_PATTERN)

log = logging.getLogger(__name__)


# ---------------------------------------------- query parameters and headers
# Declared once: the route table publishes these, and the parsers below read
# their choices and bounds from the same schema.


def _flag_param(name: str, description: str) -> Param:
    return Param(name, {"type": "string", "enum": list(FLAG_VALUES)}, description)


STATE = Param(
    "state", {"type": "string", "enum": [s.value for s in Status]}, "Only this state (ours)."
)
STATUS = Param(
    "status", {"type": "string", "enum": list(_PLANE_STATUSES)}, "Only this status (Plane's)."
)
KEY = Param("key", {"type": "string"}, "Only backends whose key name is this.")
NAMESPACE = Param("namespace", {"type": "string"}, "Only this key namespace.")
LIVE = _flag_param("live", "1: only live backends (holding their key).")
LIMIT = Param(
    "limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}, "Page size (default 100)."
)
CURSOR = Param(
    "cursor", {"type": "string", "pattern": CURSOR_PATTERN}, "`next` of the previous page."
)
LOGS_FOLLOW = _flag_param("follow", "1: keep streaming until the backend exits.")
AFTER = Param(
    "after", {"type": "integer", "minimum": 0, "maximum": MAX_ID}, "Start after this seq."
)
EVENTS_FOLLOW = _flag_param("follow", "0: end after the events present now.")
LAST_SEQ = Param(
    "Last-Event-ID",
    {"type": "string", "pattern": "^[0-9]{0,19}$"},
    "Resume after this seq.",
    where="header",
)
CLUSTER = Param(
    "cluster",
    {"type": "string", "pattern": cluster.CLUSTER_PATTERN},
    "This plane's cluster name, HOST[:PORT] (another well-formed one: 404).",
    where="path",
)
POOL_NAME = Param(
    "name",
    {"type": "string", "pattern": body.WARM_POOL_NAME_PATTERN},
    "The warm pool's name.",
    where="path",
)
LAST_STATUS = Param(
    "Last-Event-ID",
    {"type": "string", "pattern": "^([0-9]{0,19}|" + "|".join(_PLANE_STATUSES) + ")$"},
    "A status: skip up to and including it; a number: resume after that stream version.",
    where="header",
)


def _flag(request: Request, param: Param) -> bool | None:
    value = request.param(param.name)
    if value is None:
        return None
    if value in param.schema["enum"]:
        return value in ("1", "true")
    choices = ", ".join(param.schema["enum"])
    raise invalid(f"{param.name} must be one of {choices}, not {value[:40]!r}")


def _integer(value: str | None, param: Param, *, default: int) -> int:
    if value is None:
        return default
    if not _DIGITS.fullmatch(value):
        raise invalid(f"{param.name} must be an integer, not {value[:40]!r}")
    number = int(value)
    low, high = param.schema.get("minimum", 0), param.schema.get("maximum", MAX_ID)
    if not low <= number <= high:
        raise invalid(f"{param.name} must be between {low} and {high}")
    return number


def _last_event_id(request: Request) -> int | None:
    value = request.header("last-event-id")
    if value is None or not value:
        return None
    return _integer(value, LAST_SEQ, default=0)


def _status_resume(request: Request) -> feeds.Resume:
    """A status stream's ``Last-Event-ID``: a Plane status, or a stream version (ours)."""
    value = request.header("last-event-id")
    if not value:
        return feeds.Resume()
    status = _PLANE_STATUSES.get(value.strip())
    if status is not None:
        return feeds.Resume(status=status)
    if not _DIGITS.fullmatch(value):
        choices = ", ".join(_PLANE_STATUSES)
        raise invalid(
            f"Last-Event-ID must be a status ({choices}) or a stream version, not {value[:40]!r}"
        )
    return feeds.Resume(version=int(value))


def _choice(request: Request, param: Param) -> str | None:
    value = request.param(param.name)
    choices: list[str] = param.schema["enum"]
    if value is not None and value not in choices:
        raise invalid(f"{param.name} must be one of {', '.join(choices)}, not {value[:40]!r}")
    return value


def _terminated_may_match(state_filter: str | None, status_filter: str | None) -> bool:
    """Whether a terminated backend can pass the list's state/status filters."""
    terminated = state_status(attrs.evolve(lifecycle.initial, status=Status.TERMINATED))
    return state_filter in (None, Status.TERMINATED.value) and status_filter in (
        None,
        terminated.value if terminated else None,
    )


def _cursor(request: Request) -> Order | None:
    value = request.param(CURSOR.name)
    if not value:
        return None
    match = _CURSOR.fullmatch(value)
    if match is None:
        raise invalid(f"cursor must be the `next` of a page, not {value[:40]!r}")
    return float(match.group(1)), match.group(4)


def _cursor_of(order: Order) -> str:
    """The cursor after a backend at ``order``: (requested_at, backend_id)."""
    return f"{order[0]!r}~{order[1]}"


# ------------------------------------------------------------------ paging


async def backends_page(
    ctx: ApiContext,
    keep: Callable[[BackendState], bool],
    after: Order | None,
    limit: int,
    *,
    with_terminated: bool,
    namespace: str | None = None,
    name: str | None = None,
) -> tuple[list[BackendState], str | None]:
    """One page of the backends the history holds that ``keep`` passes, in
    (requested_at, backend_id) order after ``after``, and the cursor of the next
    page (None on the last).  Backends held in memory (live, or just ended) come
    from the supervisor; with ``with_terminated``, terminated ones too, from the
    backends index (:mod:`plane.events.backend_index`; ``namespace`` and ``name``
    narrow its query), their states folded from their streams, one page at a time."""
    # memory first, then the index: a backend ending in between is in both
    # (kept from memory), never in neither
    held = dict(ctx.supervisor.held_states)
    index = ctx.index
    if with_terminated:
        try:
            await index.catch_up()
        except StoreFullError:  # derived data: list from what it holds
            log.warning("the backends index is not caught up: the disk is full")

    def order(state: BackendState) -> Order:
        return (state.requested_at, state.backend_id)

    chosen: list[tuple[Order, BackendState | None]] = [
        (order(s), s) for s in held.values() if keep(s) and (after is None or order(s) > after)
    ]
    if with_terminated:
        wanted = limit + 1
        while True:
            found = await index.terminated_page(after, wanted, namespace=namespace, name=name)
            fresh = [(o, None) for o in found if o[1] not in held]
            if len(fresh) >= limit + 1 or len(found) < wanted:
                break
            wanted *= 2  # some were also in memory: look further
        chosen += fresh
    chosen.sort(key=lambda item: item[0])
    page = chosen[:limit]
    states = []
    for (_, backend_id), state in page:
        if state is None:
            try:
                state = await ctx.supervisor.lookup(backend_id)
            except UnknownBackend:
                continue  # the index knows more than the log: derived data, skip it
            if not keep(state):
                continue
        states.append(state)
    following = _cursor_of(page[-1][0]) if len(chosen) > limit else None
    return states, following


# ------------------------------------------------------------------ the API


class Endpoints:
    """The handlers, bound to one :class:`ApiContext`."""

    def __init__(self, ctx: ApiContext) -> None:
        from plane.api import ui  # the dashboard's handlers (its module imports this one)

        self.ctx = ctx
        self.ui = ui.UiEndpoints(ctx, ui.panels_of(route_table()))

    async def _state(self, backend_id: str) -> BackendState:
        """A backend's state: from memory while live, else from the log (or its
        archives); 404 if the history holds no such backend."""
        try:
            return await self.ctx.supervisor.lookup(backend_id)
        except UnknownBackend:
            raise not_found(backend_id) from None

    async def _stream(self, backend_id: str) -> list[RecordedEvent]:
        """A backend's recorded events (log or archives); 404 if it has none."""
        records = []
        if backend_id != SYSTEM_STREAM:
            records = await self.ctx.store.read_stream(backend_id)
        if not records:
            raise not_found(backend_id)
        return records

    # ------------------------------------------------------------- Plane's

    async def connect(self, request: Request, params: Params) -> Response:
        connect = body.parse_connect(request.body)
        ours = self.ctx.cluster_name
        subdomain = connect.spawn_config.subdomain if connect.spawn_config else None
        refused_by_cluster = cluster.refusal(ours, connect.cluster, subdomain)
        if refused_by_cluster is not None:
            raise ApiError(400, *refused_by_cluster)
        try:
            result = await self.ctx.supervisor.connect(connect)
        except ConnectRefused as refused:
            raise ApiError(refused.http_status, refused.code, str(refused)) from None
        api = self.ctx.public_api_url.rstrip("/")
        url = cluster.backend_url(
            self.ctx.public_proxy_url, result.token, subdomain=result.subdomain, cluster=ours
        )
        state = result.state
        status = state_status(state)
        assert status is not None
        answer = answers.ConnectResponse(
            backend_id=result.backend_id,
            spawned=result.spawned,
            status=status,
            token=result.token,
            url=url,
            subdomain=result.subdomain,
            secret_token=result.secret_token or None,
            status_url=f"{api}/pub/b/{result.backend_id}/status",
            drone=state.engine if result.spawned else None,
        )
        return json_response(answers.to_json(answer))

    async def _terminate(self, backend_id: str, kind: TerminationKind) -> Response:
        try:
            await self.ctx.supervisor.terminate(backend_id, kind)
        except UnknownBackend:
            raise not_found(backend_id) from None
        return json_response(None)

    async def soft_terminate(self, request: Request, params: Params) -> Response:
        return await self._terminate(params["id"], TerminationKind.SOFT)

    async def hard_terminate(self, request: Request, params: Params) -> Response:
        return await self._terminate(params["id"], TerminationKind.HARD)

    async def status(self, request: Request, params: Params) -> Response:
        state = await self._state(params["id"])
        if state.unclaimed:  # a warm pool's backend does not exist for Plane
            raise not_found(params["id"])
        return json_response(status_view(state))

    async def status_stream(self, request: Request, params: Params) -> Response:
        backend_id = params["id"]
        resume = _status_resume(request)
        history = None
        if backend_id != SYSTEM_STREAM:
            history = await feeds.status_history(self.ctx.store, backend_id)
        if history is None or history.state.unclaimed:
            raise not_found(backend_id)
        if history.ended and not any(resume.wants(c) for c in history.changes):
            return Response(204, (("cache-control", "no-cache"),))
        store = self.ctx.store

        async def source(send: trio.MemorySendChannel[feeds.StatusChange]) -> None:
            await feeds.follow_status(store, history, resume, send)

        def render(change: feeds.StatusChange) -> bytes:
            return sse.frame(change.view, event_id=change.status.value)

        async def write(send: Send) -> None:
            await sse.serve_events(send, source, render, keepalive=self.ctx.keepalive_seconds)

        return Response(200, sse.HEADERS, stream=write)

    async def health(self, request: Request, params: Params) -> Response:
        return json_response(answers.to_json(answers.Health("ok")))

    async def plane_status(self, request: Request, params: Params) -> Response:
        answer = answers.PlaneStatusAnswer("ok", __version__, build_hash())
        return json_response(answers.to_json(answer))

    async def revoke_user(self, request: Request, params: Params) -> Response:
        """Plane's revoke: every live token of ``user`` on ``backend_id``."""
        backend_id, user = body.parse_revoke_user(request.body)
        records = await self._stream(backend_id)
        now = self.ctx.supervisor.clock.now()
        live: dict[str, None] = {}
        for record in records:
            event = record.event
            if isinstance(event, TokenIssued) and event.user == user and event.expires_at > now:
                live[event.token_hash] = None
            elif isinstance(event, TokenRevoked):
                if event.token_hash is None:
                    live.clear()
                else:
                    live.pop(event.token_hash, None)
        for token_hash in live:
            try:
                await self.ctx.supervisor.revoke(backend_id, token_hash)
            except UnknownBackend:
                raise not_found(backend_id) from None
        return json_response(None)

    # ------------------------------------------------------------------ ours

    async def info(self, request: Request, params: Params) -> Response:
        supervisor = self.ctx.supervisor
        answer = answers.Info(
            version=__version__,
            hash=build_hash(),
            executor=self.ctx.executor_name,
            live_backends=supervisor.live_count(),
            backends=supervisor.known_count(),
            last_seq=await self.ctx.store.last_seq(),
        )
        return json_response(answers.to_json(answer))

    async def list_backends(self, request: Request, params: Params) -> Response:
        """Every backend the history holds, in (requested_at, backend_id) order,
        ``limit`` at a time; ``next`` is the cursor (that order of the page's last
        backend, opaque to clients) for the next page.  Backends held in memory
        (live, or just ended) come from the supervisor; terminated ones from the
        backends index (:mod:`plane.events.backend_index`), their views folded
        from their streams, one page at a time.  ``live`` lists only the former."""
        state_filter = _choice(request, STATE)
        status_filter = _choice(request, STATUS)
        name = request.param(KEY.name)
        namespace = request.param(NAMESPACE.name)
        live = _flag(request, LIVE)
        limit = _integer(request.param(LIMIT.name), LIMIT, default=DEFAULT_PAGE)
        after = _cursor(request)
        with_terminated = not live and _terminated_may_match(state_filter, status_filter)

        def keep(state: BackendState) -> bool:
            if state_filter is not None and (
                state.status is None or state.status.value != state_filter
            ):
                return False
            if status_filter is not None:
                status = state_status(state)
                if status is None or status.value != status_filter:
                    return False
            if live and not lifecycle.is_live(state):
                return False
            key = state.key
            if name is not None and (key is None or key.name != name):
                return False
            return namespace is None or (key is not None and key.namespace == namespace)

        page, following = await backends_page(
            self.ctx,
            keep,
            after,
            limit,
            with_terminated=with_terminated,
            namespace=namespace,
            name=name,
        )
        return json_response({"backends": [detail_view(s) for s in page], "next": following})

    async def detail(self, request: Request, params: Params) -> Response:
        return json_response(detail_view(await self._state(params["id"])))

    async def backend_events(self, request: Request, params: Params) -> Response:
        records = await self._stream(params["id"])
        return json_response({"events": [feeds.event_json(r) for r in records]})

    async def events(self, request: Request, params: Params) -> Response:
        after = _integer(request.param(AFTER.name), AFTER, default=0)
        follow = _flag(request, EVENTS_FOLLOW) is not False
        store = self.ctx.store

        async def source(send: trio.MemorySendChannel[dict[str, Any]]) -> None:
            await feeds.global_events(store, after, send, follow=follow)

        if request.is_websocket:

            async def session(ws: trio_websocket.WebSocketConnection) -> None:
                await _websocket_feed(ws, source)

            return Response(101, websocket=session)
        resume = _last_event_id(request)
        if resume is not None:
            after = resume

        def render(item: dict[str, Any]) -> bytes:
            return sse.frame(item, event_id=item["seq"])

        async def write(send: Send) -> None:
            await sse.serve_events(send, source, render, keepalive=self.ctx.keepalive_seconds)

        return Response(200, sse.HEADERS, stream=write)

    async def logs(self, request: Request, params: Params) -> Response:
        backend_id = params["id"]
        await self._state(backend_id)
        follow = bool(_flag(request, LOGS_FOLLOW))
        executor = self.ctx.executor

        async def write(send: Send) -> None:
            chunks = executor.logs(backend_id, follow=follow)
            try:
                async for chunk in chunks:
                    await send(chunk)
            finally:
                await feeds.aclose_iterator(chunks)

        headers = (("content-type", TEXT_PLAIN), ("cache-control", "no-cache"))
        return Response(200, headers, stream=write)

    async def revoke(self, request: Request, params: Params) -> Response:
        backend_id = params["id"]
        token = body.parse_revoke(request.body)
        token_hash = tokens.digest(token) if token is not None else None
        try:
            state = await self.ctx.supervisor.revoke(backend_id, token_hash)
        except UnknownBackend:
            raise not_found(backend_id) from None
        return json_response(
            {
                "backend_id": backend_id,
                "revoked": "all" if token is None else "token",
                **detail_view(state),
            }
        )

    async def metrics(self, request: Request, params: Params) -> Response:
        metrics = self.ctx.metrics
        return Response(200, (("content-type", metrics.content_type),), metrics.render())

    # ------------------------------------------------------------ engines

    async def engines(self, request: Request, params: Params) -> Response:
        return json_response({"engines": self.ctx.supervisor.engines_view()})

    async def _drain(self, name: str, draining: bool) -> bool:
        try:
            return await self.ctx.supervisor.drain(name, draining=draining)
        except UnknownEngine:
            raise ApiError(404, "NotFound", f"no engine {name!r}") from None

    async def drain_engine(self, request: Request, params: Params) -> Response:
        return json_response({"updated": await self._drain(params["name"], True)})

    async def undrain_engine(self, request: Request, params: Params) -> Response:
        return json_response({"updated": await self._drain(params["name"], False)})

    def _our_cluster(self, name: str) -> None:
        try:
            given = cluster.parse_cluster(name)
        except cluster.ClusterNameError as exc:
            raise ApiError(400, "InvalidClusterName", str(exc)) from None
        if given != self.ctx.cluster_name:
            raise ApiError(404, "NotFound", f"no cluster {name!r} here")

    async def drain_drone(self, request: Request, params: Params) -> Response:
        """Plane's ``POST /ctrl/c/{cluster}/d/{drone}/drain``."""
        self._our_cluster(params["cluster"])
        return json_response({"updated": await self._drain(params["drone"], True)})

    async def cluster_state(self, request: Request, params: Params) -> Response:
        """Plane's ``GET /ctrl/c/{cluster}/state`` (ClusterState)."""
        self._our_cluster(params["cluster"])
        now = self.ctx.supervisor.clock.now()
        drones = []
        for engine in self.ctx.supervisor.engines_view():
            answered = engine["last_answer"]
            age = max(0, round(now * 1000) - answered) if isinstance(answered, int) else None
            drones.append(
                {
                    "ready": engine["state"] == "healthy",
                    "draining": engine["state"] == "draining",
                    "last_heartbeat_age": age,
                    "backend_count": engine["live_backends"],
                    "node": {
                        "name": engine["name"],
                        "plane_version": __version__,
                        "plane_hash": "",
                        "controller": "plane",
                        "controller_heartbeat_age": 0,
                    },
                }
            )
        proxies = [
            {
                "name": view["id"],
                "plane_version": __version__,
                "plane_hash": "",
                "controller": "plane",
                "controller_heartbeat_age": view["last_seen_age"],
            }
            for view in self.ctx.proxies.views()
        ]
        return json_response({"drones": drones, "proxies": proxies})

    async def list_proxies(self, request: Request, params: Params) -> Response:
        """The proxy processes fed by ``/ctrl/proxy-feed`` (:mod:`plane.api.proxies`)."""
        return json_response({"proxies": self.ctx.proxies.views()})

    async def proxy_feed(self, request: Request, params: Params) -> Response:
        """A proxy's channel (:mod:`plane.api.proxies`); the proxy key only."""
        if self.ctx.keys.access(request.header("authorization")) is not Access.PROXY:
            raise ApiError(
                403,
                "ProxyKeyRequired",
                "only the proxy key opens the proxy feed (plane serve --proxy-key-file)",
            )
        if not request.is_websocket:
            raise ApiError(400, "WebSocketRequired", "the proxy feed is a WebSocket")
        after = _integer(request.param("after"), AFTER, default=0)
        proxy_id = request.param("proxy") or ""
        if not proxies.valid_proxy_name(proxy_id):
            raise ApiError(400, "BadRequest", "proxy: an id of letters, digits and '-'")
        store, registry = self.ctx.store, self.ctx.proxies
        peer = request.peer

        async def session(ws: trio_websocket.WebSocketConnection) -> None:
            await proxies.serve_channel(ws, store, registry, proxy_id, str(peer), after)

        return Response(101, websocket=session)

    # --------------------------------------------------------- warm pools

    def _warm_pool_view(self, name: str) -> dict[str, object]:
        for pool in self.ctx.supervisor.warm_pools.view():
            if pool["name"] == name:
                return pool
        raise ApiError(404, "NotFound", f"no warm pool {name!r}")

    async def warm_pools(self, request: Request, params: Params) -> Response:
        return json_response({"warm_pools": self.ctx.supervisor.warm_pools.view()})

    async def warm_pool(self, request: Request, params: Params) -> Response:
        return json_response(self._warm_pool_view(params["name"]))

    async def put_warm_pool(self, request: Request, params: Params) -> Response:
        """Define, redefine or resize a warm pool (``spawn_config`` may be left
        out to resize an existing pool)."""
        name = params["name"]
        body.check_warm_pool_name(name)
        template, size, claim_path = body.parse_warm_pool(request.body)
        supervisor = self.ctx.supervisor
        try:
            if template is None:
                known = supervisor.warm_pools.pools.get(name)
                if known is None:
                    raise ApiError(
                        404,
                        "NotFound",
                        f"no warm pool {name!r} to resize: give its spawn_config to define it",
                    )
                updated = await supervisor.define_warm_pool(
                    name, known.spawn_config, size, claim_path or known.claim_path
                )
            else:
                updated = await supervisor.define_warm_pool(name, template, size, claim_path)
        except ConnectRefused as refused:
            raise ApiError(refused.http_status, refused.code, str(refused)) from None
        return json_response({"updated": updated, **self._warm_pool_view(name)})

    async def delete_warm_pool(self, request: Request, params: Params) -> Response:
        try:
            await self.ctx.supervisor.remove_warm_pool(params["name"])
        except UnknownWarmPool:
            raise ApiError(404, "NotFound", f"no warm pool {params['name']!r}") from None
        return json_response(None)

    async def openapi(self, request: Request, params: Params) -> Response:
        return json_response(api_document())


async def _websocket_feed(
    ws: trio_websocket.WebSocketConnection,
    source: Callable[[trio.MemorySendChannel[dict[str, Any]]], Awaitable[None]],
) -> None:
    """One JSON text message per event; ends when the client closes (or, without
    ``follow``, when the events present at the start are sent)."""
    send_channel, receive_channel = trio.open_memory_channel[dict[str, Any]](64)
    async with trio.open_nursery() as nursery:

        async def drain_client() -> None:
            # the client sends nothing we need; reading notices its close at once
            try:
                while True:
                    await ws.get_message()
            except trio_websocket.ConnectionClosed:
                nursery.cancel_scope.cancel()

        nursery.start_soon(source, send_channel)
        nursery.start_soon(drain_client)
        async with receive_channel:
            async for item in receive_channel:
                await ws.send_message(orjson.dumps(item).decode())
        nursery.cancel_scope.cancel()


def is_protected(path: str) -> bool:
    return path == "/ctrl" or path.startswith("/ctrl/") or path == "/metrics"


def route_table() -> list[Route]:
    """Every route, with what the OpenAPI document says of it: the one place a
    route is declared (see :mod:`plane.api.openapi`); the dashboard's are
    declared in :mod:`plane.api.ui`."""
    from plane.api import ui  # the dashboard's routes (its module imports this one)

    e = Endpoints
    backend = {404: ("NotFound",)}
    streamed = {503: ("TooManyStreams",)}
    stream_note = {503: "`TooManyStreams`: the API is at `--api-max-streams` streamed answers."}
    engine = {404: ("NotFound",)}
    ours = {400: ("InvalidClusterName",), 404: ("NotFound",)}
    updated = Answer(200, "Whether that changed the engine.", answers.Updated)
    terminated = Answer(200, "`null`, as Plane answers.", schema={"type": "null"})

    def terminate(how: str, handler: UnboundHandler, summary: str) -> Route:
        path = f"/ctrl/b/{{id}}/{how}-terminate"
        return Route("POST", path, handler, summary, answers=(terminated,), errors=backend)

    def engine_action(action: str, handler: UnboundHandler, summary: str) -> Route:
        path = f"/ctrl/engines/{{name}}/{action}"
        return Route("POST", path, handler, summary, answers=(updated,), errors=engine)

    def plane_cluster(
        method: str, tail: str, handler: UnboundHandler, summary: str, answer: Answer
    ) -> Route:
        path = f"/ctrl/c/{{cluster}}/{tail}"
        return Route(
            method, path, handler, summary, params=(CLUSTER,), answers=(answer,), errors=ours
        )

    def warm_pool(
        method: str, handler: UnboundHandler, summary: str, answer: Answer, **more: Any
    ) -> Route:
        more.setdefault("errors", {404: ("NotFound",)})
        path = "/ctrl/warm-pools/{name}"
        return Route(method, path, handler, summary, params=(POOL_NAME,), answers=(answer,), **more)

    return [
        Route(
            "POST",
            "/ctrl/connect",
            e.connect,
            "Get or create the backend for a key, and mint a connection token",
            body=body.ConnectBody,
            answers=(Answer(200, "The backend and a fresh token.", answers.ConnectResponse),),
            errors={
                # besides the schema's: what this plane's executor or configuration
                # cannot honour (a schema-valid body can get these)
                400: ("InvalidRequest", "InvalidClusterName"),
                409: ("KeyHeld", "KeyUnheldNoSpawnConfig", "BackendIdTaken"),
                503: ("CapacityExceeded", "NoDroneAvailable"),
            },
            notes={
                400: "A schema-valid body is also refused when this plane cannot honour "
                "it (the message names the field): a field or limit its executor cannot "
                "apply (e.g. a command without an image on Docker, `mount` without a "
                "mount base, `disk_limit_bytes` without storage quotas), "
                "`spawn_config.cluster` not this plane's cluster (`InvalidClusterName`), "
                "a non-empty `pool`, `user` or `auth` for a static-token backend, a "
                "`subdomain` while the cluster host is an IP address, a `warm_pool` this plane "
                "does not define.",
                409: "`KeyHeld`: a live backend holds the key with another tag; "
                "`KeyUnheldNoSpawnConfig`: no backend holds it and no spawn_config was "
                "given; `BackendIdTaken`: `spawn_config.id` names an existing backend.",
                503: "`CapacityExceeded`: plane is at its limit of live backends; "
                "`NoDroneAvailable`: no engine can take it now (none serves the "
                "`spawn_config.pool`, or every one of it is draining, lost or full).",
            },
        ),
        terminate("soft", e.soft_terminate, "Stop a backend: stop signal, grace period, then kill"),
        terminate("hard", e.hard_terminate, "Kill a backend now"),
        Route(
            "POST",
            "/ctrl/b/{id}/revoke",
            e.revoke,
            "Revoke one connection token (by value) or, with no token, all of them",
            body=body.RevokeBody,
            body_required=False,
            answers=(Answer(200, "What was revoked, and the backend.", answers.RevokeAnswer),),
            errors=backend,
        ),
        Route(
            "POST",
            "/ctrl/b/revoke",
            e.revoke_user,
            "Plane's revoke: every live connection token of a user on a backend",
            body=body.RevokeUserBody,
            answers=(Answer(200, "`null`, as Plane answers.", schema={"type": "null"}),),
            errors=backend,
        ),
        Route(
            "GET",
            "/ctrl/status",
            e.plane_status,
            "Plane's status: ok, version and build hash",
            operation_id="planeStatus",
            answers=(Answer(200, "Plane's status.", answers.PlaneStatusAnswer),),
        ),
        Route(
            "GET",
            "/ctrl/info",
            e.info,
            "This plane: version, hash, executor, backend counts",
            operation_id="planeInfo",
            answers=(Answer(200, "Our own detail.", answers.Info),),
        ),
        Route(
            "GET",
            "/ctrl/backends",
            e.list_backends,
            "List backends, oldest request first, with filters and cursor pagination",
            operation_id="listBackends",
            params=(STATE, STATUS, KEY, NAMESPACE, LIVE, LIMIT, CURSOR),
            answers=(Answer(200, "One page of backends.", answers.BackendList),),
        ),
        Route(
            "GET",
            "/ctrl/b/{id}",
            e.detail,
            "Everything known about a backend (env values never shown)",
            operation_id="backendDetail",
            answers=(Answer(200, "The backend.", answers.BackendDetail),),
            errors=backend,
        ),
        Route(
            "GET",
            "/ctrl/b/{id}/events",
            e.backend_events,
            "A backend's events, in order",
            answers=(Answer(200, "The backend's stream.", answers.EventList),),
            errors=backend,
        ),
        Route(
            "GET",
            "/ctrl/b/{id}/logs",
            e.logs,
            "A backend's output (stdout and stderr); with follow=1, streamed live",
            operation_id="backendLogs",
            params=(LOGS_FOLLOW,),
            answers=(
                Answer(200, "The output, chunked.", media="text/plain", schema={"type": "string"}),
            ),
            errors={**backend, **streamed},
            notes=stream_note,
        ),
        Route(
            "GET",
            "/ctrl/events",
            e.events,
            "The global event log after a sequence number, following live: SSE "
            "(each event's `id` is its seq; `Last-Event-ID` resumes) or, on a "
            "WebSocket upgrade, one JSON text message per event",
            operation_id="events",
            params=(AFTER, EVENTS_FOLLOW, LAST_SEQ),
            answers=(
                Answer(200, "SSE; each `data` is an Event.", answers.Event, SSE_TYPE),
                Answer(101, "WebSocket feed of Event messages.", media=None),
            ),
            errors=streamed,
            notes=stream_note,
        ),
        Route(
            "GET",
            "/pub/b/{id}/status",
            e.status,
            "A backend's status (Plane's status object)",
            answers=(Answer(200, "The status.", answers.BackendStatus),),
            errors=backend,
        ),
        Route(
            "GET",
            "/pub/b/{id}/status-stream",
            e.status_stream,
            "SSE of a backend's status changes: history, then live; ends after "
            "terminated; an event only when Plane's status changes. Each `id` is the "
            "status; `Last-Event-ID: <status>` skips up to and including it, a numeric "
            "one resumes after that stream version; `: keep-alive` comments in between",
            params=(LAST_STATUS,),
            answers=(
                Answer(
                    200, "SSE; each `data` is a BackendStatus.", answers.BackendStatus, SSE_TYPE
                ),
                Answer(
                    204,
                    "Terminated and nothing left after Last-Event-ID "
                    "(tells EventSource to stop reconnecting).",
                    media=None,
                ),
            ),
            errors={**backend, **streamed},
            notes=stream_note,
        ),
        Route(
            "GET",
            "/pub/health",
            e.health,
            "Liveness",
            answers=(Answer(200, "Alive.", answers.Health),),
        ),
        Route(
            "GET",
            "/ctrl/engines",
            e.engines,
            "The engines (drones) backends are placed on: state, pool, load",
            answers=(Answer(200, "Every engine.", answers.EngineList),),
        ),
        engine_action(
            "drain", e.drain_engine, "Place no new backend on the engine; its own keep running"
        ),
        engine_action("undrain", e.undrain_engine, "Let the engine take new backends again"),
        plane_cluster(
            "POST",
            "d/{drone}/drain",
            e.drain_drone,
            "Plane's drain of a drone (here: an engine)",
            Answer(200, "Whether that changed the drone.", answers.Updated),
        ),
        plane_cluster(
            "GET",
            "state",
            e.cluster_state,
            "Plane's ClusterState: every drone (engine)",
            Answer(200, "The cluster's drones.", answers.ClusterState),
        ),
        Route(
            "GET",
            "/ctrl/proxies",
            e.list_proxies,
            "The proxies fed by this controller (standalone and --proxy-workers)",
            answers=(Answer(200, "Every proxy.", schema={"type": "object"}),),
        ),
        Route(
            "GET",
            "/ctrl/proxy-feed",
            e.proxy_feed,
            "The proxies' channel (WebSocket; the proxy key only)",
            documented=False,
        ),
        Route(
            "GET",
            "/ctrl/warm-pools",
            e.warm_pools,
            "Every warm pool: its name, size, how many are warm, its template",
            answers=(Answer(200, "The warm pools.", schema={"type": "object"}),),
        ),
        warm_pool(
            "GET",
            e.warm_pool,
            "One warm pool",
            Answer(200, "The warm pool.", schema={"type": "object"}),
        ),
        warm_pool(
            "PUT",
            e.put_warm_pool,
            "Define or resize a warm pool (without spawn_config: resize only)",
            Answer(200, "The warm pool, and whether that changed it.", schema={"type": "object"}),
            body=body.WarmPoolBody,
            errors={400: ("InvalidRequest",), 404: ("NotFound",)},
            notes={
                400: "Besides the schema's: a template this plane cannot run, or one that "
                "sets `SESSION_BACKEND_*` env, `use_static_token`, `subdomain` or "
                "`mount: true` (a warm backend has no key yet).",
                404: "A resize (no spawn_config) of a pool that does not exist.",
            },
        ),
        warm_pool(
            "DELETE",
            e.delete_warm_pool,
            "Remove a warm pool; its unclaimed backends are terminated",
            Answer(200, "`null`.", schema={"type": "null"}),
        ),
        Route(
            "GET",
            "/metrics",
            e.metrics,
            "Prometheus metrics (needs the API key when one is set)",
            answers=(
                Answer(
                    200, "Prometheus text format.", media="text/plain", schema={"type": "string"}
                ),
            ),
        ),
        Route(
            "GET",
            "/openapi.json",
            e.openapi,
            "This document",
            answers=(Answer(200, "The OpenAPI document.", schema={"type": "object"}),),
        ),
        *ui.route_table(),
    ]


@functools.cache
def _document() -> dict[str, Any]:
    return openapi.document(route_table(), is_protected)


def api_document() -> dict[str, Any]:
    """The OpenAPI document of :func:`route_table` (served at ``/openapi.json``);
    a fresh copy each time (generated once)."""
    return copy.deepcopy(_document())


def build_router(ctx: ApiContext) -> Router:
    """The route table, bound to ``ctx``."""
    build_hash()  # read once now (it may run git), never inside a request

    def access(request: Request) -> Access:
        return ctx.keys.access(request.header("authorization"))

    def observe(route: str, status: int) -> None:
        ctx.metrics.api_requests.labels(route, str(status)).inc()

    return Router(
        route_table(), Endpoints(ctx), is_protected=is_protected, access=access, observe=observe
    )
