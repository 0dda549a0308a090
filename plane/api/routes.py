"""The endpoints: Plane's spawn, status, terminate and revoke API, plus our list,
inspect, events, logs, revoke, info and metrics endpoints.

This module owns what each path does; :func:`build_router` returns the route
table wired to an :class:`~plane.api.context.ApiContext`.  Bodies are parsed
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

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio
import trio_websocket

from plane import __version__, cluster, tokens
from plane.actors import lifecycle
from plane.actors.lifecycle import BackendState
from plane.actors.supervisor import ConnectRefused, UnknownBackend, UnknownEngine
from plane.api import body, feeds, proxies, sse
from plane.api.context import ApiContext
from plane.api.errors import ApiError, invalid, not_found
from plane.api.http import Request, Response, Send
from plane.api.keys import Access
from plane.api.openapi import document
from plane.api.router import Params, Route, Router, json_response
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
TEXT_PLAIN = "text/plain; charset=utf-8"
FLAG_VALUES = ("1", "0", "true", "false")
_DIGITS = re.compile(r"[0-9]{1,19}")

log = logging.getLogger(__name__)


# ----------------------------------------------------------- query parsing


def _flag(request: Request, name: str) -> bool:
    value = request.param(name)
    if value is None:
        return False
    if value in FLAG_VALUES:
        return value in ("1", "true")
    raise invalid(f"{name} must be one of {', '.join(FLAG_VALUES)}, not {value[:40]!r}")


def _integer(value: str | None, name: str, *, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    if not _DIGITS.fullmatch(value):
        raise invalid(f"{name} must be an integer, not {value[:40]!r}")
    number = int(value)
    if not low <= number <= high:
        raise invalid(f"{name} must be between {low} and {high}")
    return number


MAX_ID = 2**63 - 1


def _last_event_id(request: Request) -> int | None:
    value = request.header("last-event-id")
    if value is None or not value:
        return None
    return _integer(value, "Last-Event-ID", default=0, low=0, high=10**19 - 1)


_PLANE_STATUSES = {s.value: s for s in PlaneStatus}


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


def _choice(request: Request, name: str, choices: tuple[str, ...]) -> str | None:
    value = request.param(name)
    if value is not None and value not in choices:
        raise invalid(f"{name} must be one of {', '.join(choices)}, not {value[:40]!r}")
    return value


def _terminated_may_match(state_filter: str | None, status_filter: str | None) -> bool:
    """Whether a terminated backend can pass the list's state/status filters."""
    terminated = state_status(attrs.evolve(lifecycle.initial, status=Status.TERMINATED))
    return state_filter in (None, Status.TERMINATED.value) and status_filter in (
        None,
        terminated.value if terminated else None,
    )


# ------------------------------------------------------------------ the API


class Endpoints:
    """The handlers, bound to one :class:`ApiContext`."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

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
        return json_response(
            {
                "backend_id": result.backend_id,
                "spawned": result.spawned,
                "status": status.value,
                "token": result.token,
                "url": url,
                "subdomain": result.subdomain,
                "secret_token": result.secret_token or None,
                "status_url": f"{api}/pub/b/{result.backend_id}/status",
                "drone": self.ctx.executor_name if result.spawned else None,
            }
        )

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
        return json_response(status_view(await self._state(params["id"])))

    async def status_stream(self, request: Request, params: Params) -> Response:
        backend_id = params["id"]
        resume = _status_resume(request)
        history = None
        if backend_id != SYSTEM_STREAM:
            history = await feeds.status_history(self.ctx.store, backend_id)
        if history is None:
            raise not_found(backend_id)
        if history.ended and not any(resume.wants(c) for c in history.changes):
            return Response(204, (("cache-control", "no-cache"),))
        store = self.ctx.store

        async def source(send: trio.MemorySendChannel[feeds.StatusChange]) -> None:
            await feeds.follow_status(store, history, resume, send)

        def render(change: feeds.StatusChange) -> bytes:
            return sse.frame(change.view, event_id=change.status.value)

        async def write(send: Send) -> None:
            await sse.relay(send, source, render, keepalive=self.ctx.keepalive_seconds)

        return Response(200, sse.HEADERS, stream=write)

    async def health(self, request: Request, params: Params) -> Response:
        return json_response({"status": "ok"})

    async def plane_status(self, request: Request, params: Params) -> Response:
        return json_response({"status": "ok", "version": __version__, "hash": build_hash()})

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
        return json_response(
            {
                "version": __version__,
                "hash": build_hash(),
                "executor": self.ctx.executor_name,
                "live_backends": supervisor.live_count(),
                "backends": supervisor.known_count(),
                "last_seq": await self.ctx.store.last_seq(),
            }
        )

    async def list_backends(self, request: Request, params: Params) -> Response:
        """Every backend the history holds, in (requested_at, backend_id) order,
        ``limit`` at a time; ``next`` is the cursor (a backend id) for the next
        page.  Backends held in memory (live, or just ended) come from the
        supervisor; terminated ones from the backends index
        (:mod:`plane.events.backend_index`), their views folded from their
        streams, one page at a time.  ``live`` lists only the former."""
        state_filter = _choice(request, "state", tuple(s.value for s in Status))
        status_filter = _choice(request, "status", tuple(_PLANE_STATUSES))
        name = request.param("key")
        namespace = request.param("namespace")
        live = _flag(request, "live")
        limit = _integer(
            request.param("limit"), "limit", default=DEFAULT_PAGE, low=1, high=MAX_PAGE
        )
        # memory first, then the index: a backend ending in between is in both
        # (kept from memory), never in neither
        held = dict(self.ctx.supervisor.states)
        index = self.ctx.index
        with_terminated = not live and _terminated_may_match(state_filter, status_filter)
        if with_terminated or request.param("cursor"):
            try:
                await index.catch_up()
            except StoreFullError:  # derived data: list from what it holds
                log.warning("the backends index is not caught up: the disk is full")

        def order(state: BackendState) -> Order:
            return (state.requested_at, state.backend_id)

        cursor = request.param("cursor")
        after: Order | None = None
        if cursor:
            cursor_state = held.get(cursor)
            after = order(cursor_state) if cursor_state else await index.order_of(cursor)
            if after is None:
                raise invalid(f"unknown cursor {cursor[:40]!r}")

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
        views = []
        for (_, backend_id), state in page:
            if state is None:
                try:
                    state = await self.ctx.supervisor.lookup(backend_id)
                except UnknownBackend:
                    continue  # the index knows more than the log: derived data, skip it
            views.append(detail_view(state))
        following = page[-1][0][1] if len(chosen) > limit else None
        return json_response({"backends": views, "next": following})

    async def detail(self, request: Request, params: Params) -> Response:
        return json_response(detail_view(await self._state(params["id"])))

    async def backend_events(self, request: Request, params: Params) -> Response:
        records = await self._stream(params["id"])
        return json_response({"events": [feeds.event_json(r) for r in records]})

    async def events(self, request: Request, params: Params) -> Response:
        after = _integer(request.param("after"), "after", default=0, low=0, high=MAX_ID)
        follow = True if request.param("follow") is None else _flag(request, "follow")
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
            await sse.relay(send, source, render, keepalive=self.ctx.keepalive_seconds)

        return Response(200, sse.HEADERS, stream=write)

    async def logs(self, request: Request, params: Params) -> Response:
        backend_id = params["id"]
        await self._state(backend_id)
        follow = _flag(request, "follow")
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
        after = _integer(request.param("after"), "after", default=0, low=0, high=MAX_ID)
        proxy_id = request.param("proxy") or ""
        if not (0 < len(proxy_id) <= 64 and proxy_id.replace("-", "").isalnum()):
            raise ApiError(400, "BadRequest", "proxy: an id of letters, digits and '-'")
        store, registry = self.ctx.store, self.ctx.proxies
        peer = request.peer

        async def session(ws: trio_websocket.WebSocketConnection) -> None:
            await proxies.serve_channel(ws, store, registry, proxy_id, str(peer), after)

        return Response(101, websocket=session)

    async def openapi(self, request: Request, params: Params) -> Response:
        return json_response(document())


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
                await ws.send_message(json.dumps(item, separators=(",", ":")))
        nursery.cancel_scope.cancel()


def _protected(path: str) -> bool:
    return path == "/ctrl" or path.startswith("/ctrl/") or path == "/metrics"


def build_router(ctx: ApiContext) -> Router:
    """The route table, bound to ``ctx``."""
    e = Endpoints(ctx)
    build_hash()  # read once now (it may run git), never inside a request
    routes = [
        Route("POST", "/ctrl/connect", e.connect),
        Route("POST", "/ctrl/b/{id}/soft-terminate", e.soft_terminate),
        Route("POST", "/ctrl/b/{id}/hard-terminate", e.hard_terminate),
        Route("POST", "/ctrl/b/{id}/revoke", e.revoke),
        Route("POST", "/ctrl/b/revoke", e.revoke_user),
        Route("GET", "/ctrl/status", e.plane_status),
        Route("GET", "/ctrl/info", e.info),
        Route("GET", "/ctrl/backends", e.list_backends),
        Route("GET", "/ctrl/b/{id}", e.detail),
        Route("GET", "/ctrl/b/{id}/events", e.backend_events),
        Route("GET", "/ctrl/b/{id}/logs", e.logs),
        Route("GET", "/ctrl/events", e.events),
        Route("GET", "/pub/b/{id}/status", e.status),
        Route("GET", "/pub/b/{id}/status-stream", e.status_stream),
        Route("GET", "/pub/health", e.health),
        Route("GET", "/ctrl/engines", e.engines),
        Route("GET", "/ctrl/proxies", e.list_proxies),
        Route("GET", "/ctrl/proxy-feed", e.proxy_feed),
        Route("POST", "/ctrl/engines/{name}/drain", e.drain_engine),
        Route("POST", "/ctrl/engines/{name}/undrain", e.undrain_engine),
        Route("POST", "/ctrl/c/{cluster}/d/{drone}/drain", e.drain_drone),
        Route("GET", "/ctrl/c/{cluster}/state", e.cluster_state),
        Route("GET", "/metrics", e.metrics),
        Route("GET", "/openapi.json", e.openapi),
    ]
    from plane.api.ui import ui_routes  # the dashboard's routes (its module imports this one)

    routes += ui_routes(ctx, routes)

    def access(request: Request) -> Access:
        return ctx.keys.access(request.header("authorization"))

    def observe(route: str, status: int) -> None:
        ctx.metrics.api_requests.labels(route, str(status)).inc()

    return Router(routes, is_protected=_protected, access=access, observe=observe)
