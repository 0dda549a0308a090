"""The dashboard's share of the API: its static files, the state at any point of
the log, and the event vocabulary.

This module owns three things:

* **the static files** of :mod:`plane.ui` (HTML, CSS, JavaScript modules, an
  icon), served under ``/ui/`` from memory (read once, when the routes are
  built; only the files the package holds, by exact name).  They hold no data,
  so they need no key; every one carries a strict Content-Security-Policy (no
  inline script or style, nothing from another origin) and ``nosniff``.
  ``GET /ui/settings.json`` tells the page whether the API wants a key and
  which optional panels exist (``/ctrl/engines``, ``/ctrl/proxies``), so the
  page never asks for what is not there.
* ``GET /ctrl/state?at=SEQ|TIME``: every backend's state at that point of the
  log, folded by :class:`replay.fold.FoldUntil`, the fold ``plane-replay state
  --at`` uses (``SEQ`` a sequence number, ``TIME`` ISO-8601, UTC when it has no
  zone); without ``at``, the state now, as ``/ctrl/backends`` pages it (live
  backends from the supervisor, terminated ones from the backends index, each
  ``backend`` asked for looked up).  Paged like
  ``/ctrl/backends`` (``limit``, the same opaque ``cursor``), filtered by ``status``, ``key``
  and ``backend`` (repeatable: those ids only).  Each backend is its
  :func:`~plane.views.detail_view` plus ``idle_deadline`` and
  ``next_deadline`` (milliseconds; from :func:`plane.actors.lifecycle.next_deadline`).
* ``GET /ctrl/event-types``: which event tags are inputs and which are the
  decider's decisions (and the tags of connections opened and closed and of
  terminated), so a client marks them apart without a list of its own.

Resource handling
-----------------
A fold reads the log in batches and folds each batch in a worker thread, so a
long log never stalls the server; the last fold is kept (keyed by the point and
the log's last sequence number), so paging through it folds once.
"""

from __future__ import annotations

import contextlib
import importlib.resources
from collections.abc import Awaitable, Callable
from pathlib import PurePosixPath
from typing import Any

import attrs
import trio

from plane.actors import lifecycle
from plane.actors.lifecycle import BackendState
from plane.actors.supervisor import UnknownBackend
from plane.api import answers
from plane.api.context import ApiContext
from plane.api.errors import ApiError, invalid
from plane.api.http import Request, Response
from plane.api.router import Answer, Param, Params, Route, UnboundHandler, json_response
from plane.api.routes import (
    CURSOR,
    DEFAULT_PAGE,
    KEY,
    LIMIT,
    MAX_PAGE,
    _choice,
    _cursor,
    _cursor_of,
    _integer,
    backends_page,
)
from plane.events.backend_index import Order
from plane.events.types import (
    DECISION_TYPES,
    INPUT_TYPES,
    BackendTerminated,
    ConnectionClosed,
    ConnectionOpened,
    Status,
)
from plane.events.wire import TAGS
from plane.text_tables import parse_iso
from plane.views import detail_view, millis
from replay.fold import FoldUntil

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("cache-control", "no-cache"),
)
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
OPTIONAL_PANELS = {"engines": "/ctrl/engines", "proxies": "/ctrl/proxies"}
"""Panels the page shows when the API has the route (other branches add them)."""
FOLD_BATCH = 5000

AT = Param(
    "at",
    {
        "anyOf": [
            {"type": "string", "pattern": "^[0-9]{1,19}$"},
            {"type": "string", "format": "date-time"},
        ]
    },
    "A sequence number, or an ISO-8601 time (UTC when it has no zone); absent: now.",
)
STATE_STATUS = Param(
    "status",
    {"type": "string", "enum": [s.value for s in Status]},
    "Only backends in this state (ours).",
)
BACKEND = Param(
    "backend",
    {"type": "array", "items": {"type": "string"}, "maxItems": MAX_PAGE},
    "Only these backends (repeatable).",
)


def static_files() -> dict[str, tuple[str, bytes]]:
    """The files of :mod:`plane.ui` by name: (content type, bytes)."""
    files: dict[str, tuple[str, bytes]] = {}
    for entry in importlib.resources.files("plane.ui").iterdir():
        kind = CONTENT_TYPES.get(PurePosixPath(entry.name).suffix)
        if kind is not None and entry.is_file():
            files[entry.name] = (kind, entry.read_bytes())
    return files


def event_types() -> dict[str, Any]:
    """The wire tags of inputs and of decisions, and the few tags a client draws
    from (connections opened and closed, terminated)."""
    return {
        "inputs": sorted(TAGS[t] for t in INPUT_TYPES),
        "decisions": sorted(TAGS[t] for t in DECISION_TYPES),
        "connection_opened": TAGS[ConnectionOpened],
        "connection_closed": TAGS[ConnectionClosed],
        "terminated": TAGS[BackendTerminated],
    }


def dashboard_view(state: BackendState) -> dict[str, Any]:
    """:func:`detail_view` plus the backend's timers (milliseconds, or None)."""
    idle: float | None = None
    cfg = state.spawn_config
    if (
        state.status in (Status.READY, Status.IDLE)
        and cfg is not None
        and cfg.max_idle_seconds is not None
        and state.quiet_since is not None
    ):
        idle = state.quiet_since + cfg.max_idle_seconds
    deadline = lifecycle.next_deadline(state)
    return {
        **detail_view(state),
        "idle_deadline": millis(idle) if idle is not None else None,
        "next_deadline": millis(deadline) if deadline is not None else None,
    }


def parse_point(text: str) -> tuple[int | None, float | None]:
    """``at`` as (seq, None) or (None, time), as ``plane-replay state --at`` reads it."""
    if text.isdigit():
        return _integer(text, AT, default=0), None
    try:
        return None, parse_iso(text.upper())  # RFC 3339 allows a lowercase t and z
    except ValueError as exc:
        raise invalid(f"at takes a sequence number or an ISO-8601 time; {exc}") from None


@attrs.frozen
class Snapshot:
    """The backends at one point, and where that point is."""

    states: dict[str, BackendState]
    seq: int
    time: float | None


class UiEndpoints:
    """The dashboard's handlers, bound to one :class:`ApiContext`."""

    def __init__(self, ctx: ApiContext, panels: dict[str, bool]) -> None:
        self.ctx = ctx
        self.panels = panels
        self.files = static_files()
        self._cached: tuple[tuple[str, int], Snapshot] | None = None

    # ----------------------------------------------------------- static files

    def _file(self, name: str) -> Response:
        found = self.files.get(name)
        if found is None:
            raise ApiError(404, "NoSuchRoute", f"no dashboard file {name[:80]!r}")
        kind, data = found
        return Response(200, (("content-type", kind), *SECURITY_HEADERS), data)

    async def root(self, request: Request, params: Params) -> Response:
        return Response(308, (("location", "/ui/"), *SECURITY_HEADERS), b"")

    async def index(self, request: Request, params: Params) -> Response:
        return self._file("index.html")

    async def static(self, request: Request, params: Params) -> Response:
        return self._file(params["name"])

    async def settings(self, request: Request, params: Params) -> Response:
        body = {"auth": self.ctx.keys.full is not None, "panels": self.panels}
        return json_response(body, headers=SECURITY_HEADERS)

    # ------------------------------------------------------------------- data

    async def event_types(self, request: Request, params: Params) -> Response:
        return json_response(event_types())

    async def _time_of(self, after_seq: int) -> float | None:
        records = await self.ctx.store.read_all(after_seq, 1)
        return records[0].event.at if records else None

    async def _fold(self, point: str, last_seq: int) -> Snapshot:
        if self._cached is not None and self._cached[0] == (point, last_seq):
            return self._cached[1]
        seq, at = parse_point(point)
        until = FoldUntil(seq, at)
        after = 0
        store = self.ctx.store
        while after < last_seq:
            records = await store.read_all(after, FOLD_BATCH)
            if not records:
                break
            records = [r for r in records if r.seq <= last_seq]
            if not records or not await trio.to_thread.run_sync(until.feed, records):
                break
            after = records[-1].seq
        fold = until.fold
        snapshot = Snapshot(dict(fold.backends), fold.last_seq, until.last_at)
        self._cached = ((point, last_seq), snapshot)
        return snapshot

    def _view(self, state: BackendState) -> dict[str, Any]:
        view = dashboard_view(state)
        view.setdefault("engine", self.ctx.executor_name)  # one engine: this plane's executor
        return view

    async def state(self, request: Request, params: Params) -> Response:
        status_filter = _choice(request, STATE_STATUS)
        name = request.param(KEY.name)
        given = request.query.get(BACKEND.name, [])
        if len(given) > MAX_PAGE:
            raise invalid(f"at most {MAX_PAGE} backend parameters")
        wanted = set(given)
        limit = _integer(request.param(LIMIT.name), LIMIT, default=DEFAULT_PAGE)
        after = _cursor(request)
        point = request.param(AT.name)
        last_seq = await self.ctx.store.last_seq()

        def order(state: BackendState) -> Order:
            return (state.requested_at, state.backend_id)

        def keep(state: BackendState) -> bool:
            if wanted and state.backend_id not in wanted:
                return False
            if status_filter is not None and (
                state.status is None or state.status.value != status_filter
            ):
                return False
            return name is None or (state.key is not None and state.key.name == name)

        if point is None and not wanted:
            # now: live backends from memory, terminated ones from the backends index
            snapshot = Snapshot({}, last_seq, await self._time_of(last_seq - 1))
            page, following = await backends_page(
                self.ctx,
                keep,
                after,
                limit,
                with_terminated=status_filter in (None, Status.TERMINATED.value),
                name=name,
            )
        else:
            if point is None:  # now, for these backends only: each looked up
                states = {}
                for backend_id in wanted:
                    with contextlib.suppress(UnknownBackend):  # none such: not shown
                        states[backend_id] = await self.ctx.supervisor.lookup(backend_id)
                snapshot = Snapshot(states, last_seq, await self._time_of(last_seq - 1))
            else:
                snapshot = await self._fold(point, last_seq)
            chosen = sorted(
                (
                    s
                    for s in snapshot.states.values()
                    if keep(s) and (after is None or order(s) > after)
                ),
                key=order,
            )
            page = chosen[:limit]
            following = _cursor_of(order(page[-1])) if len(chosen) > limit else None
        first_time = await self._time_of(0)
        last_time = await self._time_of(last_seq - 1) if last_seq else None
        return json_response(
            {
                "at": point,
                "seq": snapshot.seq,
                "time": millis(snapshot.time) if snapshot.time is not None else None,
                "last_seq": last_seq,
                "first_time": millis(first_time) if first_time is not None else None,
                "last_time": millis(last_time) if last_time is not None else None,
                "backends": [self._view(s) for s in page],
                "next": following,
            }
        )


UiHandler = Callable[["UiEndpoints", Request, Params], Awaitable[Response]]


def _on_ui(method: UiHandler) -> UnboundHandler:
    """A handler of :class:`UiEndpoints` as the route table takes it: called with
    the API's endpoints, whose ``ui`` is this module's (see :func:`route_table`)."""

    async def handler(owner: Any, request: Request, params: Params) -> Response:
        return await method(owner.ui, request, params)

    handler.__name__ = method.__name__
    return handler


def panels_of(routes: list[Route]) -> dict[str, bool]:
    """Which optional panels the API has a route for."""
    paths = {(r.method, r.pattern) for r in routes}
    return {name: ("GET", path) in paths for name, path in OPTIONAL_PANELS.items()}


def route_table() -> list[Route]:
    """The dashboard's routes, declared as :func:`plane.api.routes.route_table`
    declares the others (it includes these).  The static files are public and
    not JSON API: left out of the OpenAPI document."""
    e = UiEndpoints
    page = Answer(200, "A dashboard file.", media="text/html", schema={"type": "string"})
    return [
        Route(
            "GET",
            "/ctrl/state",
            _on_ui(e.state),
            "Every backend's state at a point of the log (the fold `plane-replay state "
            "--at` uses), or now; paged like /ctrl/backends",
            operation_id="stateAt",
            params=(AT, STATE_STATUS, KEY, BACKEND, LIMIT, CURSOR),
            answers=(Answer(200, "One page.", answers.StatePage),),
        ),
        Route(
            "GET",
            "/ctrl/event-types",
            _on_ui(e.event_types),
            "Which event tags are inputs and which are the decider's decisions",
            operation_id="eventTypes",
            answers=(Answer(200, "The tags.", answers.EventTypes),),
        ),
        Route(
            "GET",
            "/ui",
            _on_ui(e.root),
            "The dashboard (redirects to /ui/)",
            answers=(Answer(308, "To /ui/.", media=None),),
            documented=False,
        ),
        Route(
            "GET",
            "/ui/",
            _on_ui(e.index),
            "The dashboard's page",
            answers=(page,),
            documented=False,
        ),
        Route(
            "GET",
            "/ui/settings.json",
            _on_ui(e.settings),
            "Whether the API wants a key, and which optional panels exist",
            operation_id="dashboardSettings",
            answers=(Answer(200, "The settings.", answers.DashboardSettings),),
        ),
        Route(
            "GET",
            "/ui/{name}",
            _on_ui(e.static),
            "A dashboard file (script, style sheet, icon)",
            answers=(page,),
            errors={404: ("NoSuchRoute",)},
            documented=False,
        ),
    ]
