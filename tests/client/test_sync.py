"""plane.client.Client against a real ``plane serve --executor process``."""

from __future__ import annotations

import sys
import time
import uuid
from urllib.parse import urlsplit

import httpx
import pytest

from plane.client import (
    BackendKey,
    BackendTerminated,
    Client,
    Executable,
    InvalidRequest,
    KeyHeld,
    KeyUnheldNoSpawnConfig,
    NotFound,
    PlaneConnectionError,
    SpawnConfig,
    Status,
    TerminationReason,
    Unauthorized,
)
from plane.testing.serve_process import PlaneServe
from tests.client.conftest import API_KEY, COMMAND
from tests.client.relay import Relay

FORWARD = list(Status)


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def client(plane: PlaneServe, **kwargs: object) -> Client:
    return Client(plane.urls["api"], API_KEY, **kwargs)  # type: ignore[arg-type]


def test_connect_wait_status_backends_events_logs_revoke_terminate(plane: PlaneServe) -> None:
    key = unique("room")
    with client(plane) as api:
        conn = api.connect(key, command=COMMAND, env={"GREETING": "hi"}, max_idle=300, wait=True)
        assert conn.spawned and conn.status is Status.READY
        assert conn.url.startswith(plane.urls["proxy"]) and conn.token in conn.url
        assert httpx.get(conn.url, timeout=10).json()["env"]["GREETING"] == "hi"

        again = api.connect(key)
        assert again.backend_id == conn.backend_id and not again.spawned
        assert again.token != conn.token

        assert api.wait_ready(conn.backend_id, timeout=30).status is Status.READY
        assert api.status(conn.backend_id).status is Status.READY

        detail = api.backend(conn.backend_id)
        assert detail.key is not None and detail.key.name == key
        assert detail.status is Status.READY and detail.state in ("ready", "idle")

        listed = [b.backend_id for b in api.backends(live=True, key=key)]
        assert listed == [conn.backend_id]

        assert any(line.strip() for line in api.logs(conn.backend_id))

        events = list(api.events())
        mine = [e for e in events if e.stream == conn.backend_id]
        assert mine[0].type == "backend.requested.v1"
        assert [e.seq for e in api.events(after=events[-2].seq)] == [events[-1].seq]

        api.revoke(conn.backend_id, token=conn.token)
        assert _eventually_status(conn.url, 410)
        assert httpx.get(again.url, timeout=10).status_code == 200

        api.hard_terminate(conn.backend_id)
        seen = [s.status for s in api.status_stream(conn.backend_id)]
        assert seen[-1] is Status.TERMINATED
        assert seen == sorted(seen, key=FORWARD.index) and len(set(seen)) == len(seen)
        final = api.status(conn.backend_id)
        assert final.termination_reason is TerminationReason.EXTERNAL
        assert all(b.backend_id != conn.backend_id for b in api.backends(live=True))


def _eventually_status(url: str, code: int, limit: float = 10) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if httpx.get(url, timeout=10).status_code == code:
            return True
        time.sleep(0.05)
    return False


def test_soft_terminate_and_paging_through_every_page(plane: PlaneServe) -> None:
    namespace = unique("ns")
    with client(plane) as api:
        ids = [
            api.connect(BackendKey(f"p{i}", namespace), command=COMMAND).backend_id
            for i in range(3)
        ]
        paged = [b.backend_id for b in api.backends(namespace=namespace, page_size=1)]
        assert paged == ids
        for backend_id in ids:
            api.wait_ready(backend_id, timeout=30)
            api.soft_terminate(backend_id)
        for backend_id in ids:
            assert list(api.status_stream(backend_id))[-1].status is Status.TERMINATED
        assert list(api.backends(namespace=namespace, live=True)) == []
        done = list(api.backends(namespace=namespace, status=Status.TERMINATED))
        assert [b.backend_id for b in done] == ids


def test_the_status_stream_survives_a_dropped_connection(plane: PlaneServe) -> None:
    api_address = urlsplit(plane.urls["api"])
    relay = Relay((api_address.hostname or "127.0.0.1", api_address.port or 80))
    try:
        with client(plane) as direct, Client(relay.url, API_KEY, backoff=0.05) as through:
            conn = direct.connect(unique("drop"), command=COMMAND)
            stream = through.status_stream(conn.backend_id)
            seen = []
            for entry in stream:
                seen.append(entry.status)
                if entry.status is Status.READY:
                    break
            assert relay.accepted == 1
            relay.cut()
            direct.hard_terminate(conn.backend_id)
            seen += [entry.status for entry in stream]
            assert relay.accepted >= 2, "the stream was reopened"
            assert seen[-1] is Status.TERMINATED
            assert seen == sorted(seen, key=FORWARD.index) and len(set(seen)) == len(seen)
            assert Status.READY in seen
    finally:
        relay.close()


def test_a_backend_that_exits_before_ready_raises_with_the_reason(plane: PlaneServe) -> None:
    with client(plane) as api:
        with pytest.raises(BackendTerminated) as caught:
            api.connect(unique("doomed"), command=[*COMMAND, "--exit", "4"], wait=True, timeout=60)
        error = caught.value
        assert error.exit_error and error.reason is None  # Plane has no reason for it
        assert error.detail is not None and error.detail.reason == "exited"
        assert "ended before it was ready: exited" in str(error)


def test_a_backend_that_never_listens_raises_startup_timeout(plane: PlaneServe) -> None:
    never = [sys.executable, "-c", "import time; time.sleep(60)"]
    spawn = SpawnConfig(Executable(command=tuple(never)), start_timeout_seconds=1)
    with client(plane) as api:
        conn = api.connect(unique("slow"), spawn_config=spawn)
        with pytest.raises(BackendTerminated) as caught:
            api.wait_ready(conn.backend_id, timeout=60)
        assert caught.value.reason is TerminationReason.STARTUP_TIMEOUT


def test_wait_ready_times_out(plane: PlaneServe) -> None:
    never = [sys.executable, "-c", "import time; time.sleep(60)"]
    spawn = SpawnConfig(Executable(command=tuple(never)), start_timeout_seconds=30)
    with client(plane) as api:
        conn = api.connect(unique("wait"), spawn_config=spawn)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            api.wait_ready(conn.backend_id, timeout=0.5)
        assert time.monotonic() - started >= 0.5
        api.hard_terminate(conn.backend_id)


def test_each_error_kind_is_its_own_exception_with_an_id(plane: PlaneServe) -> None:
    key = unique("held")
    with client(plane) as api:
        api.connect(key, command=COMMAND)
        with pytest.raises(KeyHeld) as held:
            api.connect(BackendKey(key, tag="other"), command=COMMAND)
        assert held.value.status_code == 409 and held.value.kind == "KeyHeld"
        with pytest.raises(KeyUnheldNoSpawnConfig):
            api.connect(unique("nobody"))
        with pytest.raises(NotFound) as missing:
            api.status("no-such-backend")
        assert missing.value.status_code == 404
        with pytest.raises(InvalidRequest) as bad:
            api.connect(unique("img"), image="busybox:latest")
        assert bad.value.status_code == 400 and bad.value.message
    with Client(plane.urls["api"], "wrong-key-000000") as wrong, pytest.raises(Unauthorized):
        list(wrong.backends())


def test_an_unreachable_api_is_a_connection_error_after_retries() -> None:
    with Client("http://127.0.0.1:9", retries=2, backoff=0.01) as api:
        with pytest.raises(PlaneConnectionError) as caught:
            api.status("x")
        assert "cannot reach the plane API at http://127.0.0.1:9" in str(caught.value)
