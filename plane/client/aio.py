"""The asynchronous client: :class:`AsyncClient`, for trio and asyncio apps alike.

This module owns only the non-blocking IO: it performs the steps of the
operations in :mod:`plane.client.core` with an :class:`httpx.AsyncClient`,
sleeping and bounding reads with anyio, so it runs under trio and asyncio.

Its methods mirror :mod:`plane.client.sync`'s line for line, on purpose: each
is the same few steps of :mod:`plane.client.core` around an ``await`` where
that one blocks.  The logic (requests, answers, errors) lives once in ``core``;
what repeats is only the IO shape, which Python cannot share between a
blocking and an async function without hiding one behind the other.

Resource handling: close with :meth:`AsyncClient.aclose` or use ``async
with``.  A stream (an async iterator from ``status_stream``, ``events``,
``logs``) holds a connection until it is exhausted or closed (``aclose()``
on the iterator; leaving ``async for`` early does not close it at once, so
prefer ``contextlib.aclosing``).

Timeouts: ``timeout`` bounds connecting and each read of an ordinary request;
``wait_ready``'s timeout is exact.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import Any, TypeVar

import anyio
import httpx

from plane.client import _transport, core
from plane.client.models import Backend, BackendStatus, Connection, Engine, Event, Status, WarmPool
from plane.events.spec import BackendKey, SpawnConfig

R = TypeVar("R")


class AsyncClient:
    """A non-blocking client of plane's HTTP API (trio or asyncio).

    The same constructor and methods as :class:`~plane.client.Client`, awaited.
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
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = core.Settings.resolve(
            base_url, api_key, timeout, retries, backoff, stream_idle_timeout
        )
        self.http = httpx.AsyncClient(
            base_url=self.settings.base_url,
            headers=self.settings.headers(),
            timeout=self.settings.timeout,
            transport=transport,
        )
        """The underlying :class:`httpx.AsyncClient`, for endpoints without a method here."""

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------- the driver

    async def _run(self, op: core.Op[R]) -> R:
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
                feed = await steps.perform(step)
        finally:
            await steps.aclose()
            op.close()

    async def _iterate(self, op: core.Op[None]) -> AsyncGenerator[Any, None]:
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
                    feed = await steps.perform(step)
        finally:
            with anyio.CancelScope(shield=True):
                await steps.aclose()
            op.close()

    # ---------------------------------------------------------------- the API

    async def connect(
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
        timeout: float | None = None,  # noqa: ASYNC109 - the same API as Client's
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
        return await self._run(core.connect(self.settings, body, wait=wait, timeout=timeout))

    async def wait_ready(
        self,
        backend_id: str,
        timeout: float | None = None,  # noqa: ASYNC109 - the same API as Client's
    ) -> BackendStatus:
        """Wait on the status stream until the backend is ready; raises
        :class:`~plane.client.BackendTerminated` (with the reason) if it ends
        first, :class:`~plane.client.WaitTimeout` after ``timeout`` seconds."""
        return await self._run(core.wait_ready(self.settings, backend_id, timeout))

    async def status(self, backend_id: str) -> BackendStatus:
        """The backend's current status (Plane's)."""
        return await self._run(core.status(self.settings, backend_id))

    def status_stream(self, backend_id: str) -> AsyncGenerator[BackendStatus, None]:
        """Each status of the backend, history first, until terminated; resumes
        after a dropped connection without losing or repeating one."""
        return self._iterate(core.status_stream(self.settings, backend_id))

    async def soft_terminate(self, backend_id: str) -> None:
        """Ask the backend to stop (SIGTERM, then SIGKILL after its grace period)."""
        await self._run(core.terminate(self.settings, backend_id, "soft"))

    async def hard_terminate(self, backend_id: str) -> None:
        """Stop the backend now (SIGKILL)."""
        await self._run(core.terminate(self.settings, backend_id, "hard"))

    async def revoke(
        self, backend_id: str, *, token: str | None = None, user: str | None = None
    ) -> None:
        """Revoke the backend's tokens: one ``token``, a ``user``'s (Plane's
        endpoint), or all of them."""
        await self._run(core.revoke(self.settings, backend_id, token=token, user=user))

    async def warm_pools(self) -> list[WarmPool]:
        """Every warm pool: its size and how many backends are warm."""
        return await self._run(core.warm_pools(self.settings))

    async def put_warm_pool(
        self,
        name: str,
        size: int,
        spawn_config: SpawnConfig | None = None,
        *,
        claim_path: str | None = None,
    ) -> WarmPool:
        """Define (or redefine) warm pool ``name``; without ``spawn_config``, resize it."""
        return await self._run(
            core.put_warm_pool(self.settings, name, size, spawn_config, claim_path)
        )

    async def delete_warm_pool(self, name: str) -> None:
        """Remove warm pool ``name``; its unclaimed backends are terminated."""
        await self._run(core.delete_warm_pool(self.settings, name))

    async def engines(self) -> list[Engine]:
        """Every engine plane places backends on, with its state and load."""
        return await self._run(core.engines(self.settings))

    async def drain(self, name: str) -> bool:
        """No new backend goes to engine ``name``; True if it was not draining."""
        return await self._run(core.drain(self.settings, name, draining=True))

    async def undrain(self, name: str) -> bool:
        """Engine ``name`` takes new backends again; True if it was draining."""
        return await self._run(core.drain(self.settings, name, draining=False))

    async def backend(self, backend_id: str) -> Backend:
        """Everything the API tells about one backend."""
        return await self._run(core.backend(self.settings, backend_id))

    def backends(
        self,
        *,
        live: bool = False,
        status: Status | str | None = None,
        state: str | None = None,
        key: str | None = None,
        namespace: str | None = None,
        page_size: int = 100,
    ) -> AsyncGenerator[Backend, None]:
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

    def events(self, after: int = 0, *, follow: bool = False) -> AsyncGenerator[Event, None]:
        """The global event log after sequence number ``after``; with ``follow``,
        forever (resuming after a dropped connection)."""
        return self._iterate(core.events(self.settings, after=after, follow=follow))

    def logs(self, backend_id: str, *, follow: bool = False) -> AsyncGenerator[str, None]:
        """The backend's output, line by line; with ``follow``, until it ends."""
        return self._iterate(core.logs(self.settings, backend_id, follow=follow))

    async def request(
        self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None
    ) -> Any:
        """Any endpoint; its JSON answer as is.  Errors raise as for the other methods."""
        return await self._run(core.raw(self.settings, method, path, json_body=json, params=params))


class _Steps:
    """Performs one operation's steps; holds its open stream, if any."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.response: httpx.Response | None = None
        self.chunks: AsyncIterator[str] | None = None

    async def aclose(self) -> None:
        response, chunks = self.response, self.chunks
        self.response = self.chunks = None
        if response is not None:
            await _transport.close_stream(response, chunks)

    async def perform(self, step: core.Step) -> core.Feed:
        if isinstance(step, core.Sleep):
            await anyio.sleep(step.seconds)
            return None
        if isinstance(step, core.Call):
            return await self.call(step)
        if isinstance(step, core.Read):
            return await self.read(step)
        raise AssertionError(step)

    async def call(self, call: core.Call) -> core.Feed:
        await self.aclose()
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
            response = await http.send(request, stream=call.stream)
        except httpx.TransportError as exc:
            return core.Failure(exc, sent=not _transport.unsent(exc))
        if _transport.streams(call, response.status_code):
            self.response, self.chunks = response, response.aiter_text()
            return core.Reply(response.status_code)
        try:
            content = await response.aread()
        except httpx.TransportError as exc:
            return core.Failure(exc, sent=True)
        finally:
            await response.aclose()
        return core.Reply(response.status_code, content)

    async def read(self, read: core.Read) -> core.Feed:
        assert self.chunks is not None, "Read without an open stream"
        limit = float("inf") if read.deadline is None else read.deadline - time.monotonic()
        with anyio.move_on_after(limit):
            try:
                return core.Chunk(await self.chunks.__anext__())
            except StopAsyncIteration:
                return core.End()
            except httpx.TransportError as exc:
                return core.Failure(exc, sent=True)
        return core.TimedOut()
