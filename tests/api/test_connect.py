"""POST /ctrl/connect: Plane's fields, get-or-create, refusals, body validation."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import trio

from plane import tokens
from plane.events.types import TokenIssued
from tests.api.conftest import API_URL, PROXY_URL, Api, api_error, open_api, spawn_body

PLANE_FIELDS = {
    "backend_id",
    "spawned",
    "status",
    "token",
    "url",
    "subdomain",
    "secret_token",
    "status_url",
    "drone",
}


async def test_connect_answers_with_plane_fields(api: Api) -> None:
    response = await api.client.post("/ctrl/connect", json=spawn_body("room-1"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    data = response.json()
    assert set(data) == PLANE_FIELDS
    assert data["spawned"] is True
    assert data["status"] == "scheduled"
    assert data["subdomain"] is None
    assert data["drone"] == "local"  # the engine (Plane's drone) it was placed on
    assert len(data["token"]) == 43
    assert data["url"] == f"{PROXY_URL}/{data['token']}/"
    assert data["status_url"] == f"{API_URL}/pub/b/{data['backend_id']}/status"
    assert data["secret_token"] and data["secret_token"] != data["token"]


async def test_connect_gets_the_live_backend_with_a_new_token(api: Api) -> None:
    first = await api.connect("room")
    second = await api.connect("room")
    assert second["backend_id"] == first["backend_id"]
    assert second["spawned"] is False
    assert second["drone"] is None
    assert second["token"] != first["token"]
    # attaching needs no spawn_config
    response = await api.client.post("/ctrl/connect", json={"key": {"name": "room"}})
    assert response.status_code == 200
    assert response.json()["backend_id"] == first["backend_id"]


async def test_connect_without_key_spawns_under_a_random_key(api: Api) -> None:
    body = spawn_body()
    del body["key"]
    one = (await api.client.post("/ctrl/connect", json=body)).json()
    two = (await api.client.post("/ctrl/connect", json=body)).json()
    assert one["spawned"] and two["spawned"]
    assert one["backend_id"] != two["backend_id"]


async def test_connect_passes_user_and_auth_as_compact_json(api: Api) -> None:
    body = {**spawn_body("room"), "user": "alice", "auth": {"role": "admin", "n": [1, 2]}}
    data = (await api.client.post("/ctrl/connect", json=body)).json()
    issued = [
        r.event
        for r in await api.store.read_stream(data["backend_id"])
        if isinstance(r.event, TokenIssued)
    ]
    assert len(issued) == 1
    assert issued[0].user == "alice"
    assert issued[0].auth == '{"role":"admin","n":[1,2]}'
    assert issued[0].token_hash == tokens.digest(data["token"])


async def test_connect_ignores_unknown_fields_and_accepts_plane_defaults(api: Api) -> None:
    body = spawn_body("room", pool="", use_static_token=False, subdomain=None, cluster=None)
    body["require_bearer_token"] = False
    body["spawn_config"]["executable"].update(mount=None, network_name=None, credentials=None)
    response = await api.client.post("/ctrl/connect", json=body)
    assert response.status_code == 200


async def test_connect_never_ignores_a_plane_field_it_cannot_honour(api: Api) -> None:
    body = spawn_body("room")
    body["spawn_config"]["executable"]["mount"] = 7
    response = await api.client.post("/ctrl/connect", json=body)
    assert response.status_code == 400
    assert "spawn_config.executable.mount" in response.text


async def test_connect_maps_the_spawn_config(api: Api) -> None:
    body = spawn_body(
        "room",
        id="my-backend-1",
        max_idle_seconds=30,
        lifetime_limit_seconds=600.5,
        executable={
            "port": 9000,
            "pull_policy": "Never",
            "command": ["python", "app.py"],
            "cwd": "/srv",
            "resource_limits": {"cpu_period": 100000, "memory_limit_bytes": 1 << 29},
        },
    )
    data = (await api.client.post("/ctrl/connect", json=body)).json()
    assert data["backend_id"] == "my-backend-1"
    cfg = api.supervisor.states["my-backend-1"].config
    assert cfg.max_idle_seconds == 30.0
    assert cfg.lifetime_limit_seconds == 600.5
    exe = cfg.executable
    assert (exe.image, exe.port, exe.pull_policy, exe.cwd) == ("app:1", 9000, "Never", "/srv")
    assert exe.command == ("python", "app.py")
    assert exe.env == {"SECRET": "hunter2"}
    assert exe.resource_limits.cpu_period == 100000
    assert exe.resource_limits.memory_limit_bytes == 1 << 29


async def test_tag_mismatch_is_409_key_held(api: Api) -> None:
    await api.connect(
        "room",
    )
    response = await api.client.post("/ctrl/connect", json=spawn_body("room", tag="v2"))
    assert response.status_code == 409
    assert response.json()["kind"] == "KeyHeld"


async def test_no_live_backend_and_no_spawn_config_is_409(api: Api) -> None:
    response = await api.client.post("/ctrl/connect", json={"key": {"name": "nobody"}})
    assert response.status_code == 409
    assert api_error(response)["kind"] == "KeyUnheldNoSpawnConfig"


async def test_taken_backend_id_is_409(api: Api) -> None:
    await api.client.post("/ctrl/connect", json=spawn_body("a", id="fixed"))
    response = await api.client.post("/ctrl/connect", json=spawn_body("b", id="fixed"))
    assert response.status_code == 409
    assert response.json()["kind"] == "BackendIdTaken"


async def test_capacity_is_503() -> None:
    async with open_api(max_backends=2) as api:
        await api.connect("a")
        await api.connect("b")
        response = await api.client.post("/ctrl/connect", json=spawn_body("c"))
        assert response.status_code == 503
        assert response.json()["kind"] == "CapacityExceeded"
        # attaching to a live key still works at capacity
        assert (await api.connect("a"))["spawned"] is False


async def test_fifty_concurrent_connects_for_one_key_make_one_backend(api: Api) -> None:
    results: list[dict[str, Any]] = []

    async def one() -> None:
        results.append(await api.connect("shared"))

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(one)
    assert len(results) == 50
    assert len({r["backend_id"] for r in results}) == 1
    assert sum(r["spawned"] for r in results) == 1
    assert len({r["token"] for r in results}) == 50
    assert api.executor.starts == 1


def _set(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    target = body
    parts = path.split(".")
    for part in parts[:-1]:
        target = target[part]
    target[parts[-1]] = value
    return body


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("key", "room", "expected an object, got a string @ $.key"),
        ("key.name", 5, "expected a string, got a number @ $.key.name"),
        ("key.name", "", "must not be empty @ $.key.name"),
        ("key.name", "x" * 257, "at most 256 characters @ $.key.name"),
        ("key.tag", ["v1"], "expected a string, got an array @ $.key.tag"),
        ("user", 7, "expected a string, got a number @ $.user"),
        ("spawn_config.executable.port", "8080", "expected an integer, got a string"),
        ("spawn_config.executable.port", 0, "between 1 and 65535 @ $.spawn_config.executable.port"),
        ("spawn_config.executable.port", 65536, "between 1 and 65535"),
        ("spawn_config.executable.port", True, "expected an integer, got a boolean"),
        ("spawn_config.executable.port", 80.5, "expected an integer, got a number"),
        (
            "spawn_config.executable.env",
            {"A": 1},
            "expected a string, got a number @ $.spawn_config.executable.env['A']",
        ),
        ("spawn_config.executable.env", ["A=1"], "expected an object, got an array"),
        ("spawn_config.executable.pull_policy", "Sometimes", "must be one of IfNotPresent"),
        ("spawn_config.executable.command", "python app.py", "expected an array, got a string"),
        ("spawn_config.executable.command", ["a", 1], "@ $.spawn_config.executable.command[1]"),
        ("spawn_config.executable.command", [], "must not be empty"),
        ("spawn_config.executable.image", None, "needs an image or a command"),
        (
            "spawn_config.executable.resource_limits",
            {"cpu_period": "1"},
            "@ $.spawn_config.executable.resource_limits.cpu_period",
        ),
        ("spawn_config.max_idle_seconds", 0, "more than 0 @ $.spawn_config.max_idle_seconds"),
        ("spawn_config.lifetime_limit_seconds", -5, "more than 0"),
        ("spawn_config.lifetime_limit_seconds", "60", "expected a number, got a string"),
        ("spawn_config.max_idle_seconds", 1e300, "at most 1000000000"),
        ("spawn_config.id", "has space", "@ $.spawn_config.id"),
        ("spawn_config.id", "a" * 65, "@ $.spawn_config.id"),  # tokens.BACKEND_ID_PATTERN's limit
        ("spawn_config.executable", None, "needs an executable (or a warm_pool) @ $.spawn_config"),
        ("spawn_config", [], "expected an object, got an array @ $.spawn_config"),
    ],
)
async def test_bad_fields_are_400_naming_the_field(
    api: Api, path: str, value: Any, expected: str
) -> None:
    body = _set(spawn_body("room"), path, value)
    if value is None and path == "spawn_config.executable":
        del body["spawn_config"]["executable"]
    response = await api.client.post("/ctrl/connect", json=body)
    assert response.status_code == 400, response.text
    error = api_error(response)
    assert error["kind"] == "InvalidRequest"
    assert expected in error["message"]
    assert api.supervisor.states == {}


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"not json", b'{"key": NaN}', b"\xff\xfe{}", b"[" * 5000 + b"]" * 5000],
)
async def test_malformed_json_is_400(api: Api, raw: bytes) -> None:
    response = await api.client.post(
        "/ctrl/connect", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["kind"] == "InvalidJson"


async def test_top_level_must_be_an_object(api: Api) -> None:
    response = await api.client.post("/ctrl/connect", content=orjson.dumps([1, 2]))
    assert response.status_code == 400
    assert response.json()["message"] == "expected an object, got an array @ $"


async def test_several_problems_are_all_named(api: Api) -> None:
    body = spawn_body("room", max_idle_seconds=-1, executable={"port": 70000})
    response = await api.client.post("/ctrl/connect", json=body)
    message = response.json()["message"]
    assert "$.spawn_config.max_idle_seconds" in message
    assert "$.spawn_config.executable.port" in message
