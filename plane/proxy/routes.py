"""The routing table: token hash -> backend -> address, a pure projection of the log.

This module owns the proxy's view of the world.  :class:`RouteTable` folds
recorded events (:meth:`RouteTable.apply`) and answers
:meth:`RouteTable.lookup` with either a :class:`Route` or a :class:`Refusal`.
It does no I/O and reads no clock: ``now`` is passed in, and the shell that
feeds it (:mod:`plane.proxy.table_feed`) tails the store.

What it folds (every other event is ignored):

* ``BackendRequested``/``BackendStarting``: the backend exists, not routable
  yet (lookups return a :class:`Route` whose ``address`` is None: wait, for
  at most the spawn config's ``start_timeout_seconds``).  From
  ``BackendRequested`` also the backend's ``subdomain`` and its static token:
  a ``static_token`` (Plane's ``use_static_token``) routes by its hash to the
  backend until the backend ends (no expiry), with no user, user data or
  secret, and the path is forwarded with the token in it (``Route.static``).
* ``BackendReady(address)``: routable at ``address``; ``BackendIdle`` and
  ``BackendActive`` change nothing for routing.
* ``BackendTerminating``/``BackendTerminated``: refused (410
  ``BackendTerminated``).
* ``TokenIssued``: the token (by hash) routes to the event's stream (the
  backend id) until ``expires_at`` (a ``TokenIssued`` for the backend's own
  static token changes nothing: it stays static).
* ``BackendClaimed`` (a warm pool's backend claimed): its token, as a
  ``TokenIssued``, and the key's name, sent as ``x-verified-key`` with every
  request to the backend from then on (``BackendReady`` follows it).
* ``TokenRevoked``: that token, or (``token_hash`` None) every token the
  backend had so far, is refused from now on (410 ``TokenRevoked``); tokens
  issued later are not affected.

Lookup order: unknown token, revoked, expired (``now >= expires_at``), backend
terminating/terminated, else the route.

A table can also be rebuilt from a set of records and swapped in whole
(:meth:`RouteTable.replace`): a proxy process resynced from the
controller's current routes.

Resource handling: tokens of ended backends are kept (so their lookups say
*why* they are refused) until :meth:`RouteTable.forget_before` drops the
expired ones (and the static tokens of backends that ended before then).
"""

from __future__ import annotations

import math

import attrs

from plane import tokens
from plane.events.spec import SpawnConfig
from plane.events.store import RecordedEvent
from plane.events.types import (
    SYSTEM_STREAM,
    BackendClaimed,
    BackendReady,
    BackendRequested,
    BackendStarting,
    BackendTerminated,
    BackendTerminating,
    Event,
    TokenIssued,
    TokenRevoked,
)
from plane.proxy.headers import render_backend_id, render_verified

KEPT_TYPES: tuple[type[Event], ...] = (
    BackendRequested,
    BackendStarting,
    BackendReady,
    BackendClaimed,
    TokenIssued,
    TokenRevoked,
)
"""The events kept per unfinished backend to rebuild a table from (the
startup fold's ``routes``, :class:`plane.api.live_routes.LiveRoutes`)."""

ENDING_TYPES: tuple[type[Event], ...] = (BackendTerminating, BackendTerminated)
"""The events after which a backend is refused (its kept records can go)."""

ROUTING_TYPES: tuple[type[Event], ...] = KEPT_TYPES + ENDING_TYPES
"""Every event type :meth:`RouteTable.apply` folds (it ignores the others)."""

_start_timeout_default = attrs.fields(SpawnConfig).start_timeout_seconds.default
assert isinstance(_start_timeout_default, float)
DEFAULT_START_TIMEOUT: float = _start_timeout_default
"""The start timeout of a backend whose ``BackendRequested`` was not seen."""


@attrs.frozen
class Route:
    """Where a token's requests go.  ``address`` is None while the backend is
    still requested or starting (the request should wait, at most
    ``start_timeout`` seconds)."""

    backend_id: str
    address: str | None
    user: str | None
    auth: str | None
    secret_token: str | None
    """None for a static token."""
    verified_headers: bytes
    """The rendered ``x-verified-*`` lines for this token (all but ``-path``)."""
    backend_header: bytes
    """The rendered ``x-plane-backend-id`` line for responses."""
    static: bool = False
    """A static token: the path reaches the backend with the token in it."""
    subdomain: bytes | None = None
    """The backend's subdomain (lowercase): the Host must be under it."""
    start_timeout: float = DEFAULT_START_TIMEOUT


@attrs.frozen
class Refusal:
    """Why a token is not routed: an HTTP status and a Plane-style error kind."""

    status: int
    kind: str
    message: str


TOKEN_UNKNOWN = Refusal(410, "TokenUnknown", "no backend is known for this token")
TOKEN_EXPIRED = Refusal(410, "TokenExpired", "the token has expired")
TOKEN_REVOKED = Refusal(410, "TokenRevoked", "the token was revoked")
BACKEND_TERMINATED = Refusal(410, "BackendTerminated", "the backend is terminating or terminated")


@attrs.define
class _Backend:
    backend_id: str
    address: str | None = None
    ended: bool = False
    ended_at: float = math.inf
    generation: int = 0  # bumped whenever a route's content changes
    tokens: list[str] = attrs.field(factory=list)
    subdomain: bytes | None = None
    start_timeout: float = DEFAULT_START_TIMEOUT
    key: str | None = None  # a claimed warm backend's key name: x-verified-key


@attrs.define
class _Token:
    backend: _Backend
    issued: TokenIssued
    static: bool = False
    revoked: bool = False
    route: Route | None = None
    route_generation: int = -1


class RouteTable:
    """The projection; feed it every recorded event in order."""

    def __init__(self) -> None:
        self._tokens: dict[str, _Token] = {}
        self._backends: dict[str, _Backend] = {}
        self.seq = 0
        """The ``seq`` of the last event applied."""

    # ------------------------------------------------------------------ fold

    def apply(self, recorded: RecordedEvent) -> None:
        """Fold one recorded event into the table."""
        if recorded.seq > self.seq:
            self.seq = recorded.seq
        stream = recorded.stream
        if stream == SYSTEM_STREAM:
            return
        event = recorded.event
        match event:
            case TokenIssued():
                self._issued(stream, event)
            case BackendClaimed():
                backend = self._backend(stream)
                backend.key = event.key.name
                backend.generation += 1
                self._issued(stream, event.issued())
            case TokenRevoked(token_hash=None):
                backend = self._backend(stream)
                for token_hash in backend.tokens:
                    token = self._tokens.get(token_hash)
                    if token is not None and token.backend is backend:
                        token.revoked = True
            case TokenRevoked(token_hash=token_hash):
                token = self._tokens.get(token_hash)
                if token is not None and token.backend.backend_id == stream:
                    token.revoked = True
            case BackendReady(address=address):
                backend = self._backend(stream)
                backend.address = address
                backend.generation += 1
            case BackendTerminating() | BackendTerminated():
                backend = self._backend(stream)
                if not backend.ended:
                    backend.ended = True
                    backend.ended_at = event.at
            case BackendRequested():
                self._requested(stream, event)
            case BackendStarting():
                self._backend(stream)

    def replace(self, other: RouteTable) -> None:
        """Take ``other``'s content (a table rebuilt from the controller's
        current routes, :mod:`plane.proxy.remote`): what this table held and
        ``other`` does not is forgotten, in one step."""
        self._tokens, self._backends, self.seq = other._tokens, other._backends, other.seq

    def _issued(self, stream: str, event: TokenIssued) -> None:
        backend = self._backend(stream)
        known = self._tokens.get(event.token_hash)
        if known is not None and known.static and known.backend is backend:
            return
        self._tokens[event.token_hash] = _Token(backend, event)
        backend.tokens.append(event.token_hash)

    def _requested(self, stream: str, event: BackendRequested) -> None:
        backend = self._backend(stream)
        spawn = event.spawn_config
        backend.start_timeout = spawn.start_timeout_seconds
        backend.subdomain = spawn.subdomain.lower().encode() if spawn.subdomain else None
        backend.generation += 1
        if event.static_token is not None:
            token_hash = tokens.digest(event.static_token)
            issued = TokenIssued(event.at, token_hash, math.inf, "", None, None)
            self._tokens[token_hash] = _Token(backend, issued, static=True)
            backend.tokens.append(token_hash)

    def _backend(self, backend_id: str) -> _Backend:
        backend = self._backends.get(backend_id)
        if backend is None:
            backend = self._backends[backend_id] = _Backend(backend_id)
        return backend

    def forget_before(self, now: float) -> int:
        """Drop tokens that expired before ``now`` (they would look unknown from
        then on, not expired), static tokens of backends that ended before
        ``now``, and backends left with no token; returns how many tokens were
        dropped."""
        gone = [
            h
            for h, t in self._tokens.items()
            if t.issued.expires_at < now or (t.static and t.backend.ended_at < now)
        ]
        for token_hash in gone:
            token = self._tokens.pop(token_hash)
            token.backend.tokens.remove(token_hash)
        for backend_id in [b for b, x in self._backends.items() if x.ended and not x.tokens]:
            del self._backends[backend_id]
        return len(gone)

    # ---------------------------------------------------------------- lookup

    def lookup(self, token_hash: str, now: float) -> Route | Refusal:
        """Where the token with this hash routes at ``now``, or why it does not."""
        token = self._tokens.get(token_hash)
        if token is None:
            return TOKEN_UNKNOWN
        if token.revoked:
            return TOKEN_REVOKED
        if now >= token.issued.expires_at:
            return TOKEN_EXPIRED
        backend = token.backend
        if backend.ended:
            return BACKEND_TERMINATED
        route = token.route
        if route is None or token.route_generation != backend.generation:
            issued = token.issued
            secret = None if token.static else issued.secret_token
            route = Route(
                backend.backend_id,
                backend.address,
                issued.user,
                issued.auth,
                secret,
                render_verified(
                    backend.backend_id, issued.user, issued.auth, secret, backend.key
                ),
                render_backend_id(backend.backend_id),
                token.static,
                backend.subdomain,
                backend.start_timeout,
            )
            token.route = route
            token.route_generation = backend.generation
        return route

    def __len__(self) -> int:
        return len(self._tokens)
