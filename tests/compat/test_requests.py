"""Request bodies exactly as Plane's Rust client serializes them are accepted:
every optional field present (null when unset), ``pool: ""``,
``use_static_token: false``, ``auth: {}``."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.api.conftest import Api
from tests.compat.plane_types import BackendStatus, ConnectResponse, parse, parse_error


def rust_client_body(name: str | None = "room") -> dict[str, Any]:
    """``ConnectRequest`` as Plane's client sends it, with every default."""
    return {
        "key": None if name is None else {"name": name, "namespace": "", "tag": ""},
        "spawn_config": {
            "id": None,
            "cluster": None,
            "pool": "",
            "executable": {
                "image": "app:1",
                "pull_policy": None,
                "credentials": None,
                "env": {},
                "resource_limits": {
                    "cpu_period": None,
                    "cpu_period_percent": None,
                    "cpu_time_limit": None,
                    "memory_limit_bytes": None,
                    "disk_limit_bytes": None,
                },
                "mount": None,
                "network_name": None,
            },
            "lifetime_limit_seconds": None,
            "max_idle_seconds": None,
            "use_static_token": False,
            "subdomain": None,
        },
        "user": None,
        "auth": {},
    }


async def test_the_rust_client_s_connect_body_is_accepted(api: Api) -> None:
    response = await api.client.post("/ctrl/connect", json=rust_client_body())
    assert response.status_code == 200, response.text
    first = parse(ConnectResponse, response.json())
    assert first.spawned and first.status is BackendStatus.SCHEDULED
    # no key: a random one; attach-only: spawn_config null
    keyless = await api.client.post("/ctrl/connect", json=rust_client_body(None))
    assert keyless.status_code == 200, keyless.text
    assert parse(ConnectResponse, keyless.json()).backend_id != first.backend_id
    attach = rust_client_body()
    attach["spawn_config"] = None
    joined = await api.client.post("/ctrl/connect", json=attach)
    assert joined.status_code == 200, joined.text
    again = parse(ConnectResponse, joined.json())
    assert again.backend_id == first.backend_id and not again.spawned


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spawn_config", "executable", "pull_policy"), "IfNotPresent"),
        (("spawn_config", "executable", "mount"), False),
        (("spawn_config", "max_idle_seconds"), 60),
        (("spawn_config", "lifetime_limit_seconds"), 3600),
        (("user"), "user-123"),
        (("auth"), {"role": "editor"}),
        (("spawn_config", "executable", "resource_limits", "cpu_period_percent"), 50),
        (("spawn_config", "executable", "resource_limits", "memory_limit_bytes"), 1 << 29),
    ],
)
async def test_plane_s_everyday_values_are_accepted(
    api: Api, path: tuple[str, ...] | str, value: Any
) -> None:
    body = copy.deepcopy(rust_client_body())
    keys = (path,) if isinstance(path, str) else path
    target = body
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
    response = await api.client.post("/ctrl/connect", json=body)
    assert response.status_code == 200, response.text
    parse(ConnectResponse, response.json())


async def test_plane_s_revoke_and_terminate_requests(api: Api) -> None:
    body = rust_client_body()
    body["user"] = "alice"
    connected = parse(ConnectResponse, (await api.client.post("/ctrl/connect", json=body)).json())
    revoke = {"backend_id": connected.backend_id, "user": "alice"}
    response = await api.client.post("/ctrl/b/revoke", json=revoke)
    assert response.status_code == 200 and response.json() is None
    # Plane's client posts terminate with no body
    response = await api.client.post(f"/ctrl/b/{connected.backend_id}/hard-terminate")
    assert response.status_code == 200 and response.json() is None


async def test_a_refused_body_is_plane_s_api_error_naming_the_field(api: Api) -> None:
    body = rust_client_body()
    body["spawn_config"]["executable"]["pull_policy"] = "Sometimes"
    response = await api.client.post("/ctrl/connect", json=body)
    assert response.status_code == 400
    error = parse_error(response)
    assert error.kind == "InvalidRequest" and "pull_policy" in error.message
