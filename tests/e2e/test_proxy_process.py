"""Proxies as their own processes: a stand-alone ``plane proxy`` in front of a
real ``plane serve``, and ``plane serve --proxy-workers 2``.

Real processes, real sockets, the process executor with a small asyncio
WebSocket echo backend (bench/conn_echo_backend.py: a plain GET is 200, an
upgrade echoes frames).
"""

from __future__ import annotations

import os
import signal
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from plane.testing.proxy_process import PlaneProxy
from plane.testing.serve_process import PlaneServe
from tests.e2e.conftest import (
    PROXY_KEY,
    echo,
    free_port,
    kind_of,
    start_serve,
    via,
    wait_for,
    ws,
)

pytestmark = pytest.mark.slow


def proxies(serve: PlaneServe) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = serve.api.get("/ctrl/proxies").json()["proxies"]
    return found


def event_types(serve: PlaneServe, backend_id: str) -> list[str]:
    events = serve.api.get(f"/ctrl/b/{backend_id}/events").json()["events"]
    return [e["type"] for e in events]


async def echo_through(
    serve: PlaneServe, proxy_url: str, name: str, **spawn: Any
) -> tuple[dict[str, Any], str]:
    """Connect an echo backend, wait until it is ready and answers through the
    proxy at ``proxy_url``: the connect answer and the backend's URL there."""
    backend = serve.connect(echo(name, **spawn))
    serve.wait_status(backend["backend_id"], "ready")
    url = via(backend["url"], serve, proxy_url)
    async with httpx.AsyncClient(timeout=10) as http:

        async def answered() -> bool:
            return (await http.get(url)).status_code == 200

        await wait_for(answered, "the backend through the proxy")
    return backend, url


@contextmanager
def plane_and_proxy(tmp_path: Path, key_file: Path) -> Iterator[tuple[PlaneServe, PlaneProxy]]:
    """A ``plane serve --terminate-on-exit`` and a stand-alone proxy fed by it,
    both stopped on the way out."""
    serve = start_serve(tmp_path, key_file, "--terminate-on-exit")
    proxy = PlaneProxy(serve.urls["api"], key_file, log_path=tmp_path / "p.log")
    try:
        yield serve, proxy
    finally:
        proxy.stop()
        serve.stop()


async def test_a_standalone_proxy_serves_http_and_websockets_and_honours_revocation(
    tmp_path: Path, key_file: Path
) -> None:
    port = free_port()
    proxy = PlaneProxy(
        f"http://127.0.0.1:{port}", key_file, "--stale-after", "30", log_path=tmp_path / "p.log"
    )
    serve: PlaneServe | None = None
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            # never synced: /ready 503, requests refused 503
            ready = await http.get(proxy.url + "/ready")
            assert ready.status_code == 503
            refused = await http.get(proxy.url + "/some-token/")
            assert refused.status_code == 503 and kind_of(refused) == "ProxyNotReady"

            serve = start_serve(tmp_path, key_file, "--terminate-on-exit", api_port=port)

            async def is_ready() -> bool:
                return (await http.get(proxy.url + "/ready")).status_code == 200

            await wait_for(is_ready, "the proxy's first sync")

            # the proxy key opens the feed only; other keys never open it
            api = serve.api
            assert kind_of(api.get("/ctrl/proxy-feed")) == "ProxyKeyRequired"
            proxy_key = {"Authorization": f"Bearer {PROXY_KEY}"}
            refused = api.get("/ctrl/backends", headers=proxy_key)
            assert refused.status_code == 403 and kind_of(refused) == "ProxyKey"

            backend, url = await echo_through(serve, proxy.url, "a")
            backend_id = backend["backend_id"]

            async with open_websocket_url(ws(url)) as conn:
                await conn.send_message("hello")
                assert await conn.get_message() == "hello"
                await wait_for(
                    lambda: [p for p in proxies(serve) if p["open_connections"] == 1],
                    "the proxy's ConnectionOpened at the controller",
                )
            await wait_for(
                lambda: all(p["open_connections"] == 0 for p in proxies(serve)),
                "the proxy's ConnectionClosed at the controller",
            )
            types = event_types(serve, backend_id)
            assert types.count("proxy.connection_opened.v1") == 1
            assert types.count("proxy.connection_closed.v1") == 1
            assert "proxy.http_activity.v1" in types

            revoked = api.post(f"/ctrl/b/{backend_id}/revoke", json={})
            assert revoked.status_code == 200, revoked.text

            async def refused_revoked() -> bool:
                answer = await http.get(url)
                return answer.status_code == 410 and kind_of(answer) == "TokenRevoked"

            await wait_for(refused_revoked, "the revocation at the proxy", limit=5)
    finally:
        proxy.stop()
        if serve is not None:
            serve.stop()


async def test_idle_timeout_is_driven_by_the_standalone_proxys_events(
    tmp_path: Path, key_file: Path
) -> None:
    with plane_and_proxy(tmp_path, key_file) as (serve, proxy):
        backend, url = await echo_through(serve, proxy.url, "idle", max_idle_seconds=2)
        backend_id = backend["backend_id"]
        async with open_websocket_url(ws(url)) as conn:
            await trio.sleep(4)  # twice the idle timeout, held by one WebSocket
            assert serve.status(backend_id)["status"] == "ready"
            await conn.send_message("still here")
            assert await conn.get_message() == "still here"
        serve.wait_status(backend_id, "terminating", "terminated", timeout=20)


async def test_the_controller_restarted_under_a_standalone_proxy(
    tmp_path: Path, key_file: Path
) -> None:
    port = free_port()
    serve = start_serve(tmp_path, key_file, api_port=port)
    proxy = PlaneProxy(
        serve.urls["api"], key_file, "--stale-after", "3", log_path=tmp_path / "p.log"
    )
    try:
        _, url = await echo_through(serve, proxy.url, "kept")
        async with httpx.AsyncClient(timeout=10) as http:

            async def status_of(target: str) -> int:
                return (await http.get(target)).status_code

            serve.stop()  # the backend keeps running (no --terminate-on-exit)
            assert await status_of(url) == 200  # known routes keep working
            assert await status_of(proxy.url + "/ready") == 200
            await trio.sleep(3.5)  # past --stale-after
            assert await status_of(proxy.url + "/ready") == 503
            stale = await http.get(url)
            assert stale.status_code == 503 and kind_of(stale) == "ProxyNotReady"

            serve = start_serve(tmp_path, key_file, "--terminate-on-exit", api_port=port)

            async def ready() -> bool:
                return await status_of(proxy.url + "/ready") == 200

            await wait_for(ready, "the proxy's resync", limit=20)
            assert await status_of(url) == 200
            await echo_through(serve, proxy.url, "new")  # a new backend: resynced
    finally:
        proxy.stop()
        serve.stop()


@pytest.fixture
def workers_serve(tmp_path: Path, key_file: Path) -> Iterator[PlaneServe]:
    serve = start_serve(tmp_path, key_file, "--proxy-workers", "2", "--terminate-on-exit")
    try:
        yield serve
    finally:
        serve.stop()


async def test_proxy_workers_share_the_port_and_a_killed_one_loses_nothing(
    workers_serve: PlaneServe,
) -> None:
    serve = workers_serve
    found = proxies(serve)
    assert len(found) == 2 and all(p["connected"] and p["synced"] for p in found), found
    backend = serve.connect(echo("shared", max_idle_seconds=3))
    backend_id = backend["backend_id"]
    serve.wait_status(backend_id, "ready")
    url = backend["url"]

    async def both_served() -> bool:
        async with trio.open_nursery() as nursery:
            for _ in range(8):  # new connections, at once: both workers accept
                nursery.start_soon(partial_get, url)
        counts = [p["stats"].get("requests", 0) for p in proxies(serve)]
        return len(counts) == 2 and all(counts)

    await wait_for(both_served, "traffic on both workers", limit=30)

    async with open_websocket_url(ws(url)) as conn:
        await conn.send_message("hi")
        assert await conn.get_message() == "hi"
        holder = await wait_for(
            lambda: [p for p in proxies(serve) if p["open_connections"] == 1],
            "the WebSocket's worker",
        )
        killed = holder[0]
        os.kill(killed["stats"]["pid"], signal.SIGKILL)
        with pytest.raises(ConnectionClosed):
            with trio.fail_after(10):
                await conn.get_message()

    def restarted() -> bool:
        now = proxies(serve)
        ids = {p["id"] for p in now}
        return len(now) == 2 and killed["id"] not in ids and all(p["synced"] for p in now)

    await wait_for(restarted, "the worker restarted", limit=30)
    types = event_types(serve, backend_id)
    assert types.count("proxy.connection_opened.v1") == 1
    assert types.count("proxy.connection_closed.v1") == 1
    # the connection closed, the backend goes idle as it should
    serve.wait_status(backend_id, "terminating", "terminated", timeout=30)


async def partial_get(url: str) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.get(url, headers={"connection": "close"})
        assert answer.status_code == 200


def connections(serve: PlaneServe, backend_id: str) -> int:
    count: int = serve.api.get(f"/ctrl/b/{backend_id}").json()["connections"]
    return count


async def test_a_cleanly_stopped_proxy_hands_its_open_connections_back(
    tmp_path: Path, key_file: Path
) -> None:
    with plane_and_proxy(tmp_path, key_file) as (serve, proxy):
        backend, url = await echo_through(serve, proxy.url, "stopped", max_idle_seconds=2)
        backend_id = backend["backend_id"]
        async with open_websocket_url(ws(url)) as conn:
            await conn.send_message("hi")
            assert await conn.get_message() == "hi"
            await wait_for(lambda: connections(serve, backend_id) == 1, "the open connection")
            assert await trio.to_thread.run_sync(proxy.stop) == 0  # SIGTERM: a clean stop
            with pytest.raises(ConnectionClosed):
                with trio.fail_after(10):
                    await conn.get_message()
        # handed back before the proxy exited, not 60 s later when taken for gone
        await wait_for(lambda: connections(serve, backend_id) == 0, "the connection closed")
        assert proxies(serve) == []  # it said bye: forgotten at once
        assert event_types(serve, backend_id).count("proxy.connection_closed.v1") == 1
        serve.wait_status(backend_id, "terminating", "terminated", timeout=30)  # idle
        assert serve.api.get(f"/ctrl/b/{backend_id}").json()["reason"] == "idle"


async def test_a_restarted_controller_keeps_the_connections_a_proxy_process_still_holds(
    tmp_path: Path, key_file: Path
) -> None:
    port = free_port()
    serve = start_serve(tmp_path, key_file, api_port=port)
    proxy = PlaneProxy(serve.urls["api"], key_file, log_path=tmp_path / "p.log")
    try:
        backend, url = await echo_through(serve, proxy.url, "held", max_idle_seconds=2)
        backend_id = backend["backend_id"]
        async with open_websocket_url(ws(url)) as held:
            async with open_websocket_url(ws(backend["url"])) as in_process:
                for conn in (held, in_process):
                    await conn.send_message("hi")
                    assert await conn.get_message() == "hi"
                await wait_for(lambda: connections(serve, backend_id) == 2, "two connections")
                await trio.to_thread.run_sync(serve.stop)  # the backend keeps running
                with pytest.raises(ConnectionClosed):  # it died with the old plane
                    with trio.fail_after(10):
                        await in_process.get_message()
            serve = start_serve(tmp_path, key_file, api_port=port)
            # the proxy process survived and holds its connection: it stays open
            await wait_for(
                lambda: [p for p in proxies(serve) if p["synced"] and p["open_connections"]],
                "the proxy back, with its connection",
                limit=30,
            )
            assert connections(serve, backend_id) == 1
            await trio.sleep(4)  # twice the idle timeout: held by the proxy's WebSocket
            assert serve.status(backend_id)["status"] == "ready"
            assert connections(serve, backend_id) == 1
            await held.send_message("still here")
            assert await held.get_message() == "still here"
        await wait_for(lambda: connections(serve, backend_id) == 0, "the connection closed")
        serve.wait_status(backend_id, "terminating", "terminated", timeout=30)
    finally:
        proxy.stop()
        serve.stop()


def metric_values(serve: PlaneServe) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = serve.api.get("/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_the_workers_proxy_metrics_are_in_serves_metrics(
    workers_serve: PlaneServe,
) -> None:
    serve = workers_serve
    backend = serve.connect(echo("counted"))
    serve.wait_status(backend["backend_id"], "ready")
    url = backend["url"]
    async with trio.open_nursery() as nursery:
        for _ in range(10):  # new connections: spread over both workers
            nursery.start_soon(partial_get, url)
    async with open_websocket_url(ws(url)) as conn:
        await conn.send_message("hi")
        assert await conn.get_message() == "hi"

        def open_counted() -> bool:
            return metric_values(serve).get(("plane_proxy_open_connections", ()), 0) >= 1

        await wait_for(open_counted, "the open WebSocket in plane_proxy_open_connections")

    def counted() -> bool:
        values = metric_values(serve)
        return (
            values.get(("plane_proxy_requests_total", (("code", "200"),)), 0) >= 10
            and values.get(("plane_proxy_connections_total", ()), 0) >= 11
            and values.get(("plane_proxy_upgrades_total", ()), 0) >= 1
        )

    await wait_for(counted, "the workers' counters in serve's /metrics")
    per_worker = [p["stats"]["counters"]["requests"].get("200", 0) for p in proxies(serve)]
    total = metric_values(serve)[("plane_proxy_requests_total", (("code", "200"),))]
    assert sum(per_worker) == total  # summed over the workers, nothing counted twice


async def test_serve_stops_its_workers_first_so_their_connections_are_recorded_closed(
    tmp_path: Path, key_file: Path
) -> None:
    serve = start_serve(tmp_path, key_file, "--proxy-workers", "2", "--terminate-on-exit")
    try:
        backend = serve.connect(echo("shutdown"))
        backend_id = backend["backend_id"]
        serve.wait_status(backend_id, "ready")
        async with open_websocket_url(ws(backend["url"])) as conn:
            await conn.send_message("hi")
            assert await conn.get_message() == "hi"
            await wait_for(lambda: connections(serve, backend_id) == 1, "the open connection")
            assert await trio.to_thread.run_sync(serve.stop) == 0
    finally:
        serve.stop()
    with sqlite3.connect(f"file:{serve.data_dir / 'events.db'}?mode=ro", uri=True) as db:
        types = [
            row[0]
            for row in db.execute(
                "SELECT type FROM events WHERE stream = ? ORDER BY seq", (backend_id,)
            )
        ]
    # the worker's close reached the log before the termination at exit
    closed = types.index("proxy.connection_closed.v1")
    assert closed < types.index("backend.terminating.v1"), types
