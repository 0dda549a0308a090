"""The client's one core, shared by :class:`~plane.client.Client` and
:class:`~plane.client.AsyncClient` so the two cannot drift.

This module owns everything about the API except moving bytes: which request
each method makes, what its answer means, when a failure is retried and how
long to back off, how a stream resumes after a dropped connection, how
``wait_ready`` decides.  Each operation is a generator (sans-IO) that yields
*steps* and receives what they produced:

==========  ======================================================
yields      receives
==========  ======================================================
``Call``    ``Reply`` (the whole answer, or a stream's status line)
            or ``Failure`` (the transport failed)
``Read``    ``Chunk`` (text of the open stream, possibly empty),
            ``End`` (it ended), ``Failure`` or ``TimedOut``
``Sleep``   None, after sleeping
``Emit``    None; the driver hands ``item`` to the caller
==========  ======================================================

The drivers (:mod:`plane.client.sync`, :mod:`plane.client.aio`) perform the
steps with httpx; at most one stream is open at a time, and a new ``Call``
closes it.  Server-sent events are decoded here (:class:`SSEDecoder`).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import time
from collections.abc import Generator, Mapping, Sequence
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

import attrs
import orjson

from plane.client.errors import (
    BackendTerminated,
    InvalidResponse,
    PlaneConnectionError,
    PlaneError,
    WaitTimeout,
    error_from_response,
)
from plane.client.models import (
    Backend,
    BackendPage,
    BackendStatus,
    Connection,
    Engine,
    Event,
    Status,
    WarmPool,
    structure,
    unstructure,
)
from plane.events.spec import BackendKey, Executable, ResourceLimits, SpawnConfig

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_API = "http://127.0.0.1:8080"
"""The API ``plane serve`` listens on by default."""


# ------------------------------------------------------------------ settings


@attrs.frozen
class Settings:
    """How a client talks to the API (the constructor arguments, resolved)."""

    base_url: str
    api_key: str | None
    timeout: float | None
    """Seconds for connecting and for each read of an ordinary request (None: no limit)."""
    retries: int
    """How many times a failure that is safe to retry is retried."""
    backoff: float
    """The first pause between attempts, in seconds; it doubles each time, up to 5 s."""
    stream_idle_timeout: float
    """A stream silent this long (the server sends keep-alives every 15 s) is
    taken as dropped, and resumed."""

    @classmethod
    def resolve(
        cls,
        base_url: str | None,
        api_key: str | None,
        timeout: float | None,
        retries: int,
        backoff: float,
        stream_idle_timeout: float,
    ) -> Settings:
        """Fill ``base_url`` and ``api_key`` from ``PLANE_API`` / ``PLANE_API_KEY``."""
        if retries < 0 or backoff < 0 or stream_idle_timeout <= 0:
            raise ValueError("retries and backoff must be >= 0, stream_idle_timeout > 0")
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be more than 0 (or None: no limit)")
        url = base_url or os.environ.get("PLANE_API") or DEFAULT_API
        key = api_key if api_key is not None else os.environ.get("PLANE_API_KEY")
        return cls(url.rstrip("/"), key or None, timeout, retries, backoff, stream_idle_timeout)

    def headers(self) -> dict[str, str]:
        """The headers every request carries."""
        headers = {"user-agent": "plane-client"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        return headers

    def pause(self, attempt: int) -> float:
        """The back-off before retry number ``attempt`` (0-based)."""
        return float(min(self.backoff * 2**attempt, 5.0))


# --------------------------------------------------------------------- steps


@attrs.frozen
class Call:
    """Send a request.  ``stream``: keep the answer open and read it with ``Read``."""

    method: str
    path: str
    params: tuple[tuple[str, str], ...] = ()
    json: Any = None
    """The JSON body, or None for no body."""
    headers: tuple[tuple[str, str], ...] = ()
    stream: bool = False
    deadline: float | None = None
    """``time.monotonic()`` by which a stream must have given what is wanted."""


@attrs.frozen
class Read:
    """Read the next chunk of the open stream (give up at ``deadline``)."""

    deadline: float | None = None


@attrs.frozen
class Sleep:
    """Pause ``seconds``."""

    seconds: float


@attrs.frozen
class Emit(Generic[T]):
    """Hand ``item`` to the caller."""

    item: T


@attrs.frozen
class Reply:
    """The answer's status and, unless it is an open stream, its body."""

    status_code: int
    content: bytes = b""


@attrs.frozen
class Failure:
    """The transport failed; ``sent`` is False when nothing reached the server."""

    error: Exception
    sent: bool


@attrs.frozen
class Chunk:
    """Text read from the open stream."""

    text: str


@attrs.frozen
class End:
    """The open stream ended."""


@attrs.frozen
class TimedOut:
    """The ``Read``'s deadline passed."""


Step = Call | Read | Sleep | Emit[Any]
Feed = Reply | Failure | Chunk | End | TimedOut | None
Op = Generator[Step, Feed, R]
"""An operation: yields steps, receives what they produced, returns its result."""


# ----------------------------------------------------------------------- SSE


@attrs.frozen
class SSEEvent:
    """One server-sent event: its ``data`` and the last ``id`` seen on the stream."""

    data: str
    id: str
    event: str = ""


class SSEDecoder:
    """Server-sent events out of text chunks, as the HTML standard reads them
    (https://html.spec.whatwg.org/multipage/server-sent-events.html).

    Lines end in CRLF, LF or CR; ``field: value`` lines build an event and a
    blank line dispatches it; comments (``:``) are skipped; the id persists
    from event to event; an event with no data is not dispatched.
    """

    def __init__(self) -> None:
        self._buffer = ""
        self._data: list[str] = []
        self._event = ""
        self.last_id = ""

    def feed(self, text: str) -> list[SSEEvent]:
        """The events completed by ``text``."""
        self._buffer += text
        events: list[SSEEvent] = []
        while True:
            cut = min(
                (i for i in (self._buffer.find("\n"), self._buffer.find("\r")) if i >= 0),
                default=-1,
            )
            if cut < 0 or (cut == len(self._buffer) - 1 and self._buffer[cut] == "\r"):
                return events  # wait: a CR may be the first half of a CRLF
            line = self._buffer[:cut]
            skip = 2 if self._buffer.startswith("\r\n", cut) else 1
            self._buffer = self._buffer[cut + skip :]
            event = self._line(line)
            if event is not None:
                events.append(event)

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            if not self._data:
                self._event = ""
                return None
            event = SSEEvent("\n".join(self._data), self.last_id, self._event)
            self._data, self._event = [], ""
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "id" and "\x00" not in value:
            self.last_id = value
        elif name == "event":
            self._event = value
        return None


# ------------------------------------------------------------------ requests


def _json(reply: Reply) -> Any:
    try:
        return orjson.loads(reply.content)
    except ValueError:
        raise InvalidResponse(
            f"the API answered something that is not JSON: {reply.content[:80]!r}",
            status_code=reply.status_code,
        ) from None


def _give_up(settings: Settings, failure: Failure) -> PlaneConnectionError:
    return PlaneConnectionError(
        f"cannot reach the plane API at {settings.base_url} ({failure.error or 'no answer'})"
    )


def request(settings: Settings, call: Call, *, safe: bool) -> Op[Reply]:
    """Send ``call`` (retrying failures if ``safe``, or if nothing was sent); an
    error status raises the API's error."""
    attempt = 0
    while True:
        feed = yield call
        if isinstance(feed, Reply):
            if feed.status_code >= 400:
                raise error_from_response(feed.status_code, feed.content)
            return feed
        assert isinstance(feed, Failure), feed
        if attempt >= settings.retries or (feed.sent and not safe):
            raise _give_up(settings, feed) from feed.error
        yield Sleep(settings.pause(attempt))
        attempt += 1


def get_json(settings: Settings, call: Call, cls: type[T]) -> Op[T]:
    """GET-like ``call`` (retried), answer read as ``cls``."""
    reply = yield from request(settings, call, safe=True)
    return structure(_json(reply), cls)


def _path(*parts: str) -> str:
    return "/" + "/".join(quote(p, safe="") for p in parts)


# ------------------------------------------------------------------- connect


def key_of(key: str | BackendKey | None) -> BackendKey | None:
    """A key given as its name, or as a :class:`BackendKey`."""
    return BackendKey(key) if isinstance(key, str) else key


def connect_body(
    key: str | BackendKey | None,
    *,
    spawn_config: SpawnConfig | None,
    image: str | None,
    command: Sequence[str] | str | None,
    cwd: str | None,
    env: Mapping[str, str] | None,
    port: int | None,
    pull_policy: str | None,
    max_idle: float | None,
    lifetime: float | None,
    backend_id: str | None,
    user: str | None,
    auth: Any,
    warm_pool: str | None = None,
) -> dict[str, Any]:
    """Plane's connect body.  ``spawn_config`` is the whole thing; ``image`` or
    ``command`` (a list, or a string split as a shell would) with the other
    keywords build one; ``warm_pool`` (ours) claims a backend of that warm pool
    instead (and excludes the others); an option that would be ignored is refused."""
    if warm_pool is not None:
        given_with_pool = [
            name
            for name, value in (
                ("spawn_config", spawn_config), ("image", image), ("command", command),
                ("cwd", cwd), ("env", env), ("port", port), ("pull_policy", pull_policy),
                ("max_idle", max_idle), ("lifetime", lifetime), ("backend_id", backend_id),
            )
            if value is not None
        ]  # fmt: skip
        if given_with_pool:
            raise ValueError(
                f"warm_pool takes the pool's template: give no {', '.join(given_with_pool)}"
            )
    shortcuts = {
        "image": image, "command": command, "cwd": cwd, "env": env, "port": port,
        "pull_policy": pull_policy, "max_idle": max_idle, "lifetime": lifetime,
    }  # fmt: skip
    given = [name for name, value in shortcuts.items() if value is not None]
    if spawn_config is not None and given:
        raise ValueError(f"give spawn_config or {', '.join(given)}, not both")
    if spawn_config is None and given and image is None and command is None:
        raise ValueError(f"{', '.join(given)} need image= or command= (what to spawn)")
    if spawn_config is None and (image is not None or command is not None):
        argv = shlex.split(command) if isinstance(command, str) else command
        port_given: dict[str, Any] = {"port": port} if port is not None else {}
        spawn_config = SpawnConfig(
            Executable(
                image=image,
                command=tuple(argv) if argv is not None else None,
                cwd=cwd,
                env=dict(env or {}),
                pull_policy=pull_policy or "IfNotPresent",
                resource_limits=ResourceLimits(),
                **port_given,
            ),
            max_idle_seconds=max_idle,
            lifetime_limit_seconds=lifetime,
        )
    body: dict[str, Any] = {}
    parsed_key = key_of(key)
    if parsed_key is not None:
        body["key"] = unstructure(parsed_key)
    if warm_pool is not None:
        body["spawn_config"] = {"warm_pool": warm_pool}
    elif spawn_config is not None:
        body["spawn_config"] = {**unstructure(spawn_config), "id": backend_id}
    elif backend_id is not None:
        raise ValueError("backend_id names the backend to spawn: it needs something to spawn")
    if user is not None:
        body["user"] = user
    if auth is not None:
        body["auth"] = auth
    return body


def connect(
    settings: Settings, body: dict[str, Any], *, wait: bool, timeout: float | None
) -> Op[Connection]:
    """``POST /ctrl/connect``, retried on failure only with a key (a retry then
    finds the same backend); with ``wait``, until the backend is ready."""
    call = Call("POST", "/ctrl/connect", json=body)
    reply = yield from request(settings, call, safe="key" in body)
    connection = structure(_json(reply), Connection)
    if wait and connection.status is not Status.READY:
        ready = yield from wait_ready(settings, connection.backend_id, timeout)
        connection = attrs.evolve(connection, status=ready.status)
    return connection


# -------------------------------------------------------------------- status


def status(settings: Settings, backend_id: str) -> Op[BackendStatus]:
    """``GET /pub/b/{id}/status``."""
    return get_json(settings, Call("GET", _path("pub", "b", backend_id, "status")), BackendStatus)


def status_stream(settings: Settings, backend_id: str, deadline: float | None = None) -> Op[None]:
    """Emit each status (Plane's) from ``/pub/b/{id}/status-stream``: history first,
    then live, until terminated.  A dropped, failed or silent connection is
    reopened with ``Last-Event-ID`` (the last id the server sent), so nothing is
    missed or repeated; a status equal to the one before is not emitted again."""
    last: Status | None = None
    attempt = 0
    decoder = SSEDecoder()
    while True:
        headers = (("last-event-id", decoder.last_id),) if decoder.last_id else ()
        call = Call(
            "GET",
            _path("pub", "b", backend_id, "status-stream"),
            headers=(("accept", "text/event-stream"), *headers),
            stream=True,
            deadline=deadline,
        )
        feed = yield call
        if isinstance(feed, Reply):
            if feed.status_code == 204:  # ended, nothing more to send
                return
            if feed.status_code >= 400:
                raise error_from_response(feed.status_code, feed.content)
            decoder = _fresh(decoder)
            while True:
                feed = yield Read(deadline)
                if not isinstance(feed, Chunk):
                    break
                for event in decoder.feed(feed.text):
                    attempt = 0
                    entry = structure(_json(Reply(200, event.data.encode())), BackendStatus)
                    if entry.status != last:
                        last = entry.status
                        yield Emit(entry)
                    if entry.status is Status.TERMINATED:
                        return
                _check(deadline)
        if isinstance(feed, TimedOut):
            raise WaitTimeout(f"backend {backend_id}: not ready in time")
        _check(deadline)
        if attempt >= settings.retries:
            failure = feed if isinstance(feed, Failure) else Failure(EOFError("stream ended"), True)
            raise _give_up(settings, failure)
        yield Sleep(settings.pause(attempt))
        attempt += 1


def _fresh(decoder: SSEDecoder) -> SSEDecoder:
    """A decoder for a new connection that remembers the last id."""
    fresh = SSEDecoder()
    fresh.last_id = decoder.last_id
    return fresh


def _check(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise WaitTimeout("not ready in time")


def wait_ready(settings: Settings, backend_id: str, timeout: float | None) -> Op[BackendStatus]:
    """Follow the status stream until ``ready``; :class:`BackendTerminated` as soon
    as the backend is terminating or terminated instead (with our detail, when
    the key may read it); :class:`WaitTimeout` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout if timeout is not None else None
    stream = status_stream(settings, backend_id, deadline)
    feed: Feed = None
    try:
        while True:
            try:
                step = stream.send(feed)
            except StopIteration:
                raise InvalidResponse(f"the status stream of {backend_id} ended early") from None
            if not isinstance(step, Emit):
                feed = yield step
                continue
            feed = None
            entry: BackendStatus = step.item
            if entry.status is Status.READY:
                return entry
            if entry.status.ending:
                detail: Backend | None = None
                with contextlib.suppress(PlaneError):  # a bonus: a read-only key may not
                    detail = yield from backend(settings, backend_id)
                raise BackendTerminated(backend_id, entry, detail)
    finally:
        stream.close()


# ------------------------------------------------------------------ control


def terminate(settings: Settings, backend_id: str, kind: Literal["soft", "hard"]) -> Op[None]:
    """``POST /ctrl/b/{id}/{kind}-terminate`` (retried: terminating twice is harmless)."""
    call = Call("POST", _path("ctrl", "b", backend_id, f"{kind}-terminate"))
    yield from request(settings, call, safe=True)


def revoke(settings: Settings, backend_id: str, *, token: str | None, user: str | None) -> Op[None]:
    """Revoke tokens: ``user``'s (Plane's ``POST /ctrl/b/revoke``), one ``token``,
    or, with neither, every token of the backend (ours)."""
    if user is not None and token is not None:
        raise ValueError("revoke takes token= or user=, not both")
    if user is not None:
        call = Call("POST", "/ctrl/b/revoke", json={"backend_id": backend_id, "user": user})
    else:
        body = {"token": token} if token is not None else {}
        call = Call("POST", _path("ctrl", "b", backend_id, "revoke"), json=body)
    yield from request(settings, call, safe=True)


def engines(settings: Settings) -> Op[list[Engine]]:
    """``GET /ctrl/engines``."""
    reply = yield from request(settings, Call("GET", "/ctrl/engines"), safe=True)
    return [structure(item, Engine) for item in _json(reply)["engines"]]


def drain(settings: Settings, name: str, *, draining: bool) -> Op[bool]:
    """``POST /ctrl/engines/{name}/drain`` (or ``undrain``): True if that changed it."""
    call = Call("POST", _path("ctrl", "engines", name, "drain" if draining else "undrain"))
    reply = yield from request(settings, call, safe=True)
    return bool(_json(reply)["updated"])


def warm_pools(settings: Settings) -> Op[list[WarmPool]]:
    """``GET /ctrl/warm-pools``."""
    reply = yield from request(settings, Call("GET", "/ctrl/warm-pools"), safe=True)
    return [structure(item, WarmPool) for item in _json(reply)["warm_pools"]]


def put_warm_pool(
    settings: Settings,
    name: str,
    size: int,
    spawn_config: SpawnConfig | None,
    claim_path: str | None,
) -> Op[WarmPool]:
    """``PUT /ctrl/warm-pools/{name}`` (without ``spawn_config``: resize it)."""
    body: dict[str, Any] = {"size": size}
    if spawn_config is not None:
        body["spawn_config"] = unstructure(spawn_config)
    if claim_path is not None:
        body["claim_path"] = claim_path
    call = Call("PUT", _path("ctrl", "warm-pools", name), json=body)
    reply = yield from request(settings, call, safe=True)
    data = _json(reply)
    data.pop("updated", None)
    return structure(data, WarmPool)


def delete_warm_pool(settings: Settings, name: str) -> Op[None]:
    """``DELETE /ctrl/warm-pools/{name}``."""
    yield from request(settings, Call("DELETE", _path("ctrl", "warm-pools", name)), safe=True)


def backend(settings: Settings, backend_id: str) -> Op[Backend]:
    """``GET /ctrl/b/{id}``."""
    return get_json(settings, Call("GET", _path("ctrl", "b", backend_id)), Backend)


def backends(
    settings: Settings,
    *,
    live: bool,
    status: Status | str | None,
    state: str | None,
    key: str | None,
    namespace: str | None,
    page_size: int,
) -> Op[None]:
    """Emit every backend of ``/ctrl/backends`` that matches, page after page.

    Each filter is sent to the server and also checked here, so an older
    server that does not know one still gives only what was asked for.
    """
    if not 1 <= page_size <= 1000:
        raise ValueError("page_size must be between 1 and 1000")
    wanted_status = Status(status) if status is not None else None
    filters = {"live": "1" if live else None, "status": wanted_status, "state": state,
               "key": key, "namespace": namespace}  # fmt: skip
    params = tuple((k, str(v)) for k, v in filters.items() if v is not None)
    cursor: str | None = None
    while True:
        page_params = (*params, ("limit", str(page_size)))
        if cursor is not None:
            page_params += (("cursor", cursor),)
        call = Call("GET", "/ctrl/backends", params=page_params)
        page = yield from get_json(settings, call, BackendPage)
        for item in page.backends:
            if (wanted_status is None or item.status is wanted_status) and (
                state is None or item.state == state
            ):
                yield Emit(item)
        if not page.next:
            return
        cursor = page.next


def events(settings: Settings, *, after: int, follow: bool) -> Op[None]:
    """Emit the global log's events after sequence number ``after``; with
    ``follow``, forever; a dropped connection resumes after the last one seen."""
    last = after
    attempt = 0
    while True:
        params = (("after", str(last)), ("follow", "1" if follow else "0"))
        feed = yield Call("GET", "/ctrl/events", params=params, stream=True)
        if isinstance(feed, Reply):
            if feed.status_code >= 400:
                raise error_from_response(feed.status_code, feed.content)
            decoder = SSEDecoder()
            while True:
                feed = yield Read()
                if not isinstance(feed, Chunk):
                    break
                for sse in decoder.feed(feed.text):
                    attempt = 0
                    item = structure(_json(Reply(200, sse.data.encode())), Event)
                    last = item.seq
                    yield Emit(item)
            if isinstance(feed, End) and not follow:
                return
        if attempt >= settings.retries:
            failure = feed if isinstance(feed, Failure) else Failure(EOFError("stream ended"), True)
            raise _give_up(settings, failure)
        yield Sleep(settings.pause(attempt))
        attempt += 1


def logs(settings: Settings, backend_id: str, *, follow: bool) -> Op[None]:
    """Emit the backend's output line by line (``GET /ctrl/b/{id}/logs``).  Logs
    have no position to resume from: a dropped connection raises."""
    params = (("follow", "1"),) if follow else ()
    call = Call("GET", _path("ctrl", "b", backend_id, "logs"), params=params, stream=True)
    attempt = 0
    while True:
        feed = yield call
        if isinstance(feed, Reply):
            break
        assert isinstance(feed, Failure), feed
        if feed.sent or attempt >= settings.retries:
            raise _give_up(settings, feed)
        yield Sleep(settings.pause(attempt))
        attempt += 1
    if feed.status_code >= 400:
        raise error_from_response(feed.status_code, feed.content)
    pending = ""
    while True:
        feed = yield Read()
        if isinstance(feed, Chunk):
            *lines, pending = (pending + feed.text).split("\n")
            for line in lines:
                yield Emit(line.removesuffix("\r"))
        elif isinstance(feed, End):
            if pending:
                yield Emit(pending)
            return
        else:
            failure = feed if isinstance(feed, Failure) else Failure(TimeoutError(), True)
            raise PlaneConnectionError(f"lost the logs of {backend_id} ({failure.error})")


def raw(settings: Settings, method: str, path: str, *, json_body: Any, params: Any) -> Op[Any]:
    """Any endpoint, its JSON answer as is (GETs retried)."""
    pairs = tuple((str(k), str(v)) for k, v in dict(params or {}).items())
    call = Call(method.upper(), path, params=pairs, json=json_body)
    reply = yield from request(settings, call, safe=call.method == "GET")
    return _json(reply) if reply.content else None
