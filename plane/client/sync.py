"""The synchronous client: :class:`Client`, for Flask, Django, scripts and the CLI.

This module owns only the blocking IO: it performs the steps of the
operations in :mod:`plane.client.core` with an :class:`httpx.Client`.  Its
methods mirror :mod:`plane.client.aio`'s on purpose (see there why): a change
to one is made to the other.

Resource handling: a :class:`Client` holds a connection pool; close it with
:meth:`Client.close` or use it as a context manager.  A stream (an iterator
from ``status_stream``, ``events``, ``logs``) holds a connection until it is
exhausted or closed (``close()`` on the iterator, or leaving the ``for``).

Timeouts: ``timeout`` bounds connecting and each read of an ordinary request;
``wait_ready``'s own timeout is checked whenever the stream delivers something,
and the server sends a keep-alive at least every 15 s, so it may be overrun by
up to that much (:class:`~plane.client.AsyncClient` is exact).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar

import httpx

from plane.client import _transport, core
from plane.client.models import Backend, BackendStatus, Connection, Engine, Event, Status, WarmPool
from plane.events.spec import BackendKey, SpawnConfig

R = TypeVar("R")


class Client:
    """A blocking client of plane's HTTP API.

    ``base_url`` defaults to ``$PLANE_API`` (else ``http://127.0.0.1:8080``),
    ``api_key`` to ``$PLANE_API_KEY``.  ``timeout`` (seconds, None for none)
    bounds connecting and each read; failures safe to retry are retried
    ``retries`` times, pausing ``backoff`` seconds, doubling.  ``transport`` is
    handed to httpx (tests, custom TLS).
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | None = 30.0,
        retries: int = 3,
        backoff: float = 0.2,
        stream_idle_timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings = core.Settings.resolve(
            base_url, api_key, timeout, retries, backoff, stream_idle_timeout
        )
        self.http = httpx.Client(
            base_url=self.settings.base_url,
            headers=self.settings.headers(),
            timeout=self.settings.timeout,
            transport=transport,
        )
        """The underlying :class:`httpx.Client`, for endpoints without a method here."""

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- the driver

    def _run(self, op: core.Op[R]) -> R:
        steps = _Steps(self)
        try:
            feed: core.Feed = None
            while True:
                try:
                    step = op.send(feed)
                except StopIteration as stop:
                    result: R = stop.value
                    return result
                if isinstance(step, core.Emit):
                    raise AssertionError("an operation that emits must be iterated")
                feed = steps.perform(step)
        finally:
            steps.close()
            op.close()

    def _iterate(self, op: core.Op[None]) -> Iterator[Any]:
        steps = _Steps(self)
        try:
            feed: core.Feed = None
            while True:
                try:
                    step = op.send(feed)
                except StopIteration:
                    return
                if isinstance(step, core.Emit):
                    feed = None
                    yield step.item
                else:
                    feed = steps.perform(step)
        finally:
            steps.close()
            op.close()

    # ---------------------------------------------------------------- the API

    def connect(
        self,
        key: str | BackendKey | None = None,
        *,
        spawn_config: SpawnConfig | None = None,
        image: str | None = None,
        command: Sequence[str] | str | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        pull_policy: str | None = None,
        max_idle: float | None = None,
        lifetime: float | None = None,
        backend_id: str | None = None,
        user: str | None = None,
        auth: Any = None,
        warm_pool: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> Connection:
        """The backend for ``key``: the live one, or a new one spawned from
        ``spawn_config`` (or from ``image``/``command`` and the other keywords),
        with a fresh token; with ``warm_pool`` (instead of a spawn config) a
        backend claimed from that warm pool.  With ``wait``, returns once it is ready (see
        :meth:`wait_ready`).  Retried on connection failures only when a key is
        given (a retry then finds the same backend)."""
        body = core.connect_body(
            key, spawn_config=spawn_config, image=image, command=command, cwd=cwd, env=env,
            port=port, pull_policy=pull_policy, max_idle=max_idle, lifetime=lifetime,
            backend_id=backend_id, user=user, auth=auth, warm_pool=warm_pool,
        )  # fmt: skip
        return self._run(core.connect(self.settings, body, wait=wait, timeout=timeout))

    def wait_ready(self, backend_id: str, timeout: float | None = None) -> BackendStatus:
        """Wait on the status stream until the backend is ready; raises
        :class:`~plane.client.BackendTerminated` (with the reason) if it ends
        first, :class:`~plane.client.WaitTimeout` after ``timeout`` seconds."""
        return self._run(core.wait_ready(self.settings, backend_id, timeout))

    def status(self, backend_id: str) -> BackendStatus:
        """The backend's current status (Plane's)."""
        return self._run(core.status(self.settings, backend_id))

    def status_stream(self, backend_id: str) -> Iterator[BackendStatus]:
        """Each status of the backend, history first, until terminated; resumes
        after a dropped connection without losing or repeating one."""
        return self._iterate(core.status_stream(self.settings, backend_id))

    def soft_terminate(self, backend_id: str) -> None:
        """Ask the backend to stop (SIGTERM, then SIGKILL after its grace period)."""
        self._run(core.terminate(self.settings, backend_id, "soft"))

    def hard_terminate(self, backend_id: str) -> None:
        """Stop the backend now (SIGKILL)."""
        self._run(core.terminate(self.settings, backend_id, "hard"))

    def revoke(self, backend_id: str, *, token: str | None = None, user: str | None = None) -> None:
        """Revoke the backend's tokens: one ``token``, a ``user``'s (Plane's
        endpoint), or all of them."""
        self._run(core.revoke(self.settings, backend_id, token=token, user=user))

    def warm_pools(self) -> list[WarmPool]:
        """Every warm pool: its size and how many backends are warm."""
        return self._run(core.warm_pools(self.settings))

    def put_warm_pool(
        self,
        name: str,
        size: int,
        spawn_config: SpawnConfig | None = None,
        *,
        claim_path: str | None = None,
    ) -> WarmPool:
        """Define (or redefine) warm pool ``name``; without ``spawn_config``, resize it."""
        return self._run(core.put_warm_pool(self.settings, name, size, spawn_config, claim_path))

    def delete_warm_pool(self, name: str) -> None:
        """Remove warm pool ``name``; its unclaimed backends are terminated."""
        self._run(core.delete_warm_pool(self.settings, name))

    def engines(self) -> list[Engine]:
        """Every engine plane places backends on, with its state and load."""
        return self._run(core.engines(self.settings))

    def drain(self, name: str) -> bool:
        """No new backend goes to engine ``name``; True if it was not draining."""
        return self._run(core.drain(self.settings, name, draining=True))

    def undrain(self, name: str) -> bool:
        """Engine ``name`` takes new backends again; True if it was draining."""
        return self._run(core.drain(self.settings, name, draining=False))

    def backend(self, backend_id: str) -> Backend:
        """Everything the API tells about one backend."""
        return self._run(core.backend(self.settings, backend_id))

    def backends(
        self,
        *,
        live: bool = False,
        status: Status | str | None = None,
        state: str | None = None,
        key: str | None = None,
        namespace: str | None = None,
        page_size: int = 100,
    ) -> Iterator[Backend]:
        """Every backend that matches (``live`` ones, Plane's ``status``, our
        ``state``, a key name, a namespace), oldest first, fetching page after
        page as the iteration goes."""
        return self._iterate(
            core.backends(
                self.settings,
                live=live,
                status=status,
                state=state,
                key=key,
                namespace=namespace,
                page_size=page_size,
            )
        )

    def events(self, after: int = 0, *, follow: bool = False) -> Iterator[Event]:
        """The global event log after sequence number ``after``; with ``follow``,
        forever (resuming after a dropped connection)."""
        return self._iterate(core.events(self.settings, after=after, follow=follow))

    def logs(self, backend_id: str, *, follow: bool = False) -> Iterator[str]:
        """The backend's output, line by line; with ``follow``, until it ends."""
        return self._iterate(core.logs(self.settings, backend_id, follow=follow))

    def request(
        self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None
    ) -> Any:
        """Any endpoint; its JSON answer as is.  Errors raise as for the other methods."""
        return self._run(core.raw(self.settings, method, path, json_body=json, params=params))


class _Steps:
    """Performs one operation's steps; holds its open stream, if any."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.response: httpx.Response | None = None
        self.chunks: Iterator[str] | None = None

    def close(self) -> None:
        if self.response is not None:
            self.response.close()
        self.response = self.chunks = None

    def perform(self, step: core.Step) -> core.Feed:
        if isinstance(step, core.Sleep):
            time.sleep(step.seconds)
            return None
        if isinstance(step, core.Call):
            return self.call(step)
        if isinstance(step, core.Read):
            return self.read()
        raise AssertionError(step)

    def call(self, call: core.Call) -> core.Feed:
        self.close()
        http = self.client.http
        timeout: Any = httpx.USE_CLIENT_DEFAULT
        if call.stream:
            timeout = _transport.stream_timeout(self.client.settings, call)
        request = http.build_request(
            call.method,
            call.path,
            params=call.params,
            headers=dict(call.headers),
            json=call.json,
            timeout=timeout,
        )
        try:
            response = http.send(request, stream=call.stream)
        except httpx.TransportError as exc:
            return core.Failure(exc, sent=not _transport.unsent(exc))
        if _transport.streams(call, response.status_code):
            self.response, self.chunks = response, response.iter_text()
            return core.Reply(response.status_code)
        try:
            content = response.read()
        except httpx.TransportError as exc:
            return core.Failure(exc, sent=True)
        finally:
            response.close()
        return core.Reply(response.status_code, content)

    def read(self) -> core.Feed:
        assert self.chunks is not None, "Read without an open stream"
        try:
            return core.Chunk(next(self.chunks))
        except StopIteration:
            return core.End()
        except httpx.TransportError as exc:
            return core.Failure(exc, sent=True)
