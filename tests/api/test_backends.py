"""Status, terminate, list, inspect, events, revoke, logs, metrics, plane status."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import Any

import pytest
import trio

from plane import __version__, tokens
from plane.events.types import ConnectionClosed, ConnectionOpened, Status, TokenRevoked
from plane.testing.fake_executor import FakeExecutor
from tests.api.conftest import Api, api_error, open_api, spawn_body


async def test_status_is_plane_status_json(api: Api) -> None:
    backend_id = (await api.connect())["backend_id"]
    await api.wait_status(backend_id, Status.READY)
    response = await api.client.get(f"/pub/b/{backend_id}/status")
    assert response.status_code == 200
    data = response.json()
    assert set(data) == {"status", "time"}  # Plane omits the absent optional fields
    assert data["status"] == "ready"
    assert isinstance(data["time"], int) and data["time"] > 1_600_000_000_000


@pytest.mark.parametrize(("path", "kind"), [("soft-terminate", "soft"), ("hard-terminate", "hard")])
async def test_terminate_answers_null(api: Api, path: str, kind: str) -> None:
    backend_id = (await api.connect())["backend_id"]
    await api.wait_status(backend_id, Status.READY)
    response = await api.client.post(f"/ctrl/b/{backend_id}/{path}")
    assert response.status_code == 200
    assert response.content == b"null"
    await api.wait_status(backend_id, Status.TERMINATED)
    final = (await api.client.get(f"/pub/b/{backend_id}/status")).json()
    assert final["status"] == "terminated"
    assert final["termination_reason"] == "external"
    assert final["termination_kind"] == kind
    assert isinstance(final["exit_error"], bool)
    # terminating again is harmless
    again = await api.client.post(f"/ctrl/b/{backend_id}/{path}")
    assert again.status_code == 200 and again.json() is None


async def test_detail_hides_env_values_and_credentials(api: Api) -> None:
    body = spawn_body("room")
    body["spawn_config"]["executable"]["credentials"] = {"username": "u", "password": "pw-99"}
    connected = await api.client.post("/ctrl/connect", json=body)
    if connected.status_code == 400:  # the fake executor may refuse credentials by name
        assert "credentials" in connected.json()["message"]
        connected = await api.client.post("/ctrl/connect", json=spawn_body("room"))
    backend_id = connected.json()["backend_id"]
    response = await api.client.get(f"/ctrl/b/{backend_id}")
    assert response.status_code == 200
    data = response.json()
    assert data["backend_id"] == backend_id
    assert data["key"] == {"name": "room", "namespace": "", "tag": ""}
    assert data["spawn_config"]["executable"]["env"] == {"SECRET": "<redacted>"}
    assert "hunter2" not in response.text and "pw-99" not in response.text
    # both vocabularies: ours and Plane's
    assert data["state"] in ("requested", "starting", "ready")
    assert data["status"] in ("scheduled", "loading", "waiting", "ready")


async def test_events_of_a_backend(api: Api) -> None:
    backend_id = (await api.connect())["backend_id"]
    await api.wait_status(backend_id, Status.READY)
    response = await api.client.get(f"/ctrl/b/{backend_id}/events")
    events = response.json()["events"]
    assert [e["version"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "backend.requested.v1"
    assert {"seq", "version", "type", "data"} <= set(events[0])
    assert "backend.ready.v1" in [e["type"] for e in events]
    assert events[0]["data"]["spawn_config"]["executable"]["env"] == {"SECRET": "<redacted>"}
    issued = next(e for e in events if e["type"] == "token.issued.v1")
    assert issued["data"]["secret_token"] == "<redacted>"
    assert "hunter2" not in response.text


# ---------------------------------------------------------------- list


async def _ids(api: Api, query: str) -> list[str]:
    response = await api.client.get(f"/ctrl/backends{query}")
    assert response.status_code == 200, response.text
    return [b["backend_id"] for b in response.json()["backends"]]


async def test_list_filters(api: Api) -> None:
    a = (await api.connect("alpha"))["backend_id"]
    b = (
        await api.client.post(
            "/ctrl/connect",
            json={**spawn_body("beta"), "key": {"name": "beta", "namespace": "ns1"}},
        )
    ).json()["backend_id"]
    c = (await api.connect("gamma"))["backend_id"]
    for backend_id in (a, b, c):
        await api.wait_status(backend_id, Status.READY)
    await api.client.post(f"/ctrl/b/{c}/hard-terminate")
    await api.wait_status(c, Status.TERMINATED)

    assert await _ids(api, "") == [a, b, c]
    assert await _ids(api, "?status=ready") == [a, b]
    assert await _ids(api, "?status=terminated") == [c]
    assert await _ids(api, "?live=1") == [a, b]
    assert await _ids(api, "?live=0") == [a, b, c]
    assert await _ids(api, "?key=alpha") == [a]
    assert await _ids(api, "?namespace=ns1") == [b]
    assert await _ids(api, "?namespace=") == [a, c]
    assert await _ids(api, "?key=beta&namespace=") == []
    detail = (await api.client.get("/ctrl/backends?key=alpha")).json()["backends"][0]
    assert detail == (await api.client.get(f"/ctrl/b/{a}")).json()


async def test_list_paginates_with_a_cursor(api: Api) -> None:
    created = [(await api.connect(f"k{i:02}"))["backend_id"] for i in range(7)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = "?limit=3" + (f"&cursor={cursor}" if cursor else "")
        data = (await api.client.get(f"/ctrl/backends{query}")).json()
        seen += [b["backend_id"] for b in data["backends"]]
        pages += 1
        cursor = data["next"]
        if cursor is None:
            break
    assert seen == created
    assert pages == 3
    # a page that ends exactly at the last item says so
    data = (await api.client.get("/ctrl/backends?limit=7")).json()
    assert data["next"] is None and len(data["backends"]) == 7


@pytest.mark.parametrize(
    "query",
    [
        "?limit=0",
        "?limit=1001",
        "?limit=ten",
        "?limit=-1",
        "?status=running",
        "?status=idle",  # ours, not Plane's
        "?state=waiting",  # Plane's, not ours
        "?live=yes",
        "?cursor=unknown",
    ],
)
async def test_list_rejects_bad_parameters(api: Api, query: str) -> None:
    response = await api.client.get(f"/ctrl/backends{query}")
    assert response.status_code == 400
    assert response.json()["kind"] == "InvalidRequest"


async def test_list_limit_defaults_to_100() -> None:
    async with open_api() as api:
        for i in range(105):
            await api.connect(f"n{i}")
        data = (await api.client.get("/ctrl/backends")).json()
        assert len(data["backends"]) == 100
        assert data["next"] is not None
        rest = (await api.client.get(f"/ctrl/backends?cursor={data['next']}")).json()
        assert len(rest["backends"]) == 5


# --------------------------------------------------------------- revoke


async def _revocations(api: Api, backend_id: str) -> list[str | None]:
    return [
        r.event.token_hash
        for r in await api.store.read_stream(backend_id)
        if isinstance(r.event, TokenRevoked)
    ]


async def test_revoke_one_token(api: Api) -> None:
    data = await api.connect()
    backend_id = data["backend_id"]
    response = await api.client.post(f"/ctrl/b/{backend_id}/revoke", json={"token": data["token"]})
    assert response.status_code == 200
    body = response.json()
    assert body["backend_id"] == backend_id and body["revoked"] == "token"
    assert await _revocations(api, backend_id) == [tokens.digest(data["token"])]


@pytest.mark.parametrize("content", [b"", b"{}", b'{"token": null}'])
async def test_revoke_all_tokens(api: Api, content: bytes) -> None:
    backend_id = (await api.connect())["backend_id"]
    response = await api.client.post(f"/ctrl/b/{backend_id}/revoke", content=content)
    assert response.status_code == 200
    assert response.json()["revoked"] == "all"
    assert await _revocations(api, backend_id) == [None]


@pytest.mark.parametrize("content", [b'{"token": 5}', b"[", b'{"token": ""}', b'"tok"'])
async def test_revoke_rejects_bad_bodies(api: Api, content: bytes) -> None:
    backend_id = (await api.connect())["backend_id"]
    response = await api.client.post(f"/ctrl/b/{backend_id}/revoke", content=content)
    assert response.status_code == 400
    assert await _revocations(api, backend_id) == []


async def test_revoke_refuses_an_unknown_field_instead_of_revoking_all(api: Api) -> None:
    data = await api.connect()
    backend_id = data["backend_id"]
    response = await api.client.post(f"/ctrl/b/{backend_id}/revoke", json={"tokn": data["token"]})
    assert response.status_code == 400
    error = api_error(response)
    assert error["kind"] == "InvalidRequest" and "tokn" in error["message"]
    assert await _revocations(api, backend_id) == []


async def test_plane_revoke_revokes_every_live_token_of_that_user(api: Api) -> None:
    def body(user: str) -> dict[str, Any]:
        return {**spawn_body("room"), "user": user}

    alice_1 = (await api.client.post("/ctrl/connect", json=body("alice"))).json()
    alice_2 = (await api.client.post("/ctrl/connect", json=body("alice"))).json()
    bob = (await api.client.post("/ctrl/connect", json=body("bob"))).json()
    backend_id = alice_1["backend_id"]
    assert alice_2["backend_id"] == bob["backend_id"] == backend_id
    response = await api.client.post(
        "/ctrl/b/revoke", json={"backend_id": backend_id, "user": "alice"}
    )
    assert response.status_code == 200 and response.json() is None
    revoked = await _revocations(api, backend_id)
    assert sorted(h or "" for h in revoked) == sorted(
        tokens.digest(d["token"]) for d in (alice_1, alice_2)
    )
    assert tokens.digest(bob["token"]) not in revoked
    # again: nothing left of alice's to revoke
    await api.client.post("/ctrl/b/revoke", json={"backend_id": backend_id, "user": "alice"})
    assert len(await _revocations(api, backend_id)) == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user": "alice"}, "backend_id"),
        ({"backend_id": "x"}, "user"),
        ({"backend_id": 5, "user": "alice"}, "backend_id"),
        ({"backend_id": "x", "user": ""}, "user"),
    ],
)
async def test_plane_revoke_names_a_bad_field(api: Api, body: dict[str, Any], field: str) -> None:
    response = await api.client.post("/ctrl/b/revoke", json=body)
    assert response.status_code == 400
    assert field in api_error(response)["message"]


async def test_plane_revoke_of_an_unknown_backend_is_404(api: Api) -> None:
    response = await api.client.post("/ctrl/b/revoke", json={"backend_id": "nope", "user": "a"})
    assert response.status_code == 404 and api_error(response)["kind"] == "NotFound"


async def test_list_filters_on_our_state_and_on_plane_s_status(api: Api) -> None:
    backend_id = (await api.connect())["backend_id"]
    await api.wait_status(backend_id, Status.READY)
    api.supervisor.tell(backend_id, ConnectionOpened(api.supervisor.clock.now(), "c"))
    api.supervisor.tell(backend_id, ConnectionClosed(api.supervisor.clock.now(), "c"))
    await api.wait_status(backend_id, Status.IDLE)

    async def ids(query: str) -> list[str]:
        response = await api.client.get(f"/ctrl/backends?{query}")
        assert response.status_code == 200, response.text
        return [b["backend_id"] for b in response.json()["backends"]]

    assert await ids("state=idle") == [backend_id]
    assert await ids("state=ready") == []
    assert await ids("status=ready") == [backend_id]  # idle is ready in Plane's words
    assert await ids("status=scheduled") == []
    (view,) = (await api.client.get("/ctrl/backends")).json()["backends"]
    assert (view["state"], view["status"]) == ("idle", "ready")


# ----------------------------------------------------------------- logs


class LoggingExecutor(FakeExecutor):
    """Logs that arrive when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.lines_send, self.lines_receive = trio.open_memory_channel[bytes](10)

    async def logs(self, backend_id: str, *, follow: bool = False) -> AsyncGenerator[bytes, None]:
        yield b"first line\n"
        if follow:
            async for line in self.lines_receive:
                yield line


async def test_logs(api: Api) -> None:
    backend_id = (await api.connect())["backend_id"]
    await api.wait_status(backend_id, Status.READY)  # started: the executor has its output
    response = await api.client.get(f"/ctrl/b/{backend_id}/logs")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == f"fake log of {backend_id}\n"


async def test_logs_follow_streams() -> None:
    executor = LoggingExecutor()
    async with open_api(executor=executor) as api:
        backend_id = (await api.connect())["backend_id"]
        async with api.client.stream("GET", f"/ctrl/b/{backend_id}/logs?follow=1") as response:
            assert response.headers["transfer-encoding"] == "chunked"
            chunks = response.aiter_bytes()
            assert await chunks.__anext__() == b"first line\n"
            await executor.lines_send.send(b"second\n")
            assert await chunks.__anext__() == b"second\n"
            await executor.lines_send.send(b"third\n")
            assert await chunks.__anext__() == b"third\n"
            await executor.lines_send.aclose()
            assert [c async for c in chunks] == []


# -------------------------------------------------------------- metrics


async def test_metrics_count_requests_by_route_and_code(api: Api) -> None:
    backend_id = (await api.connect())["backend_id"]
    await api.client.get(f"/pub/b/{backend_id}/status")
    await api.client.get("/pub/b/nope/status")
    await api.client.get("/nowhere")
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'plane_api_requests_total{code="200",route="/ctrl/connect"} 1.0' in text
    assert 'plane_api_requests_total{code="200",route="/pub/b/{id}/status"} 1.0' in text
    assert 'plane_api_requests_total{code="404",route="/pub/b/{id}/status"} 1.0' in text
    assert 'plane_api_requests_total{code="404",route="unmatched"} 1.0' in text
    assert "plane_backends{" in text


async def test_plane_status_and_health(api: Api) -> None:
    await api.connect("one")
    status: dict[str, Any] = (await api.client.get("/ctrl/status")).json()
    assert set(status) == {"status", "version", "hash"}
    assert status["status"] == "ok" and status["version"] == __version__
    assert isinstance(status["hash"], str) and status["hash"]
    data: dict[str, Any] = (await api.client.get("/ctrl/info")).json()
    assert data["version"] == __version__ and data["hash"] == status["hash"]
    assert data["executor"] == "fake"
    assert data["live_backends"] == 1
    assert data["backends"] == 1
    assert data["last_seq"] >= 2
    assert (await api.client.get("/pub/health")).json() == {"status": "ok"}


async def test_no_secret_reaches_the_server_log(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    body = spawn_body("secretive")
    body["user"] = "alice"
    connected = (await api.client.post("/ctrl/connect", json=body)).json()
    backend_id = connected["backend_id"]
    await api.wait_status(backend_id, Status.READY)
    for path in (f"/ctrl/b/{backend_id}", f"/ctrl/b/{backend_id}/events", "/ctrl/backends"):
        response = await api.client.get(path)
        assert "hunter2" not in response.text and connected["secret_token"] not in response.text
    await api.client.post(f"/ctrl/b/{backend_id}/revoke", json={"tokn": "x"})  # a logged 400
    await api.client.post(f"/ctrl/b/{backend_id}/hard-terminate")
    await api.wait_status(backend_id, Status.TERMINATED)
    assert caplog.records, "the API logged (its error ids at least)"
    for secret in ("hunter2", connected["secret_token"], connected["token"]):
        assert secret not in caplog.text
