"""Plane's strict types against a real ``plane serve --executor process``: real
sockets, real subprocess backends, the SQLite log; ``status_url`` built from
``PLANE_API_PUBLIC_URL``."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from plane.cli import build_parser
from plane.testing.serve_process import PlaneServe
from tests.compat.plane_types import (
    STATUS_ORDER,
    BackendStatus,
    BackendStatusStreamEntry,
    ConnectResponse,
    Health,
    StatusResponse,
    TerminationKind,
    TerminationReason,
    parse,
    parse_error,
)

BACKEND_APP = Path(__file__).parent.parent / "executors" / "backend_app.py"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def plane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PlaneServe]:
    # The public URL names the API differently from where it listens (as behind a
    # load balancer); the test reaches it at the listening address.
    port = _free_port()
    monkeypatch.setenv("PLANE_API_PUBLIC_URL", f"http://localhost:{port}")
    serving = PlaneServe(
        tmp_path / "data", "process", "--terminate-on-exit", "--api-listen", f"127.0.0.1:{port}"
    )
    assert serving.urls["api"] == f"http://localhost:{port}"
    serving.api.base_url = httpx.URL(f"http://127.0.0.1:{port}")
    yield serving
    serving.stop()


def _body(name: str, *args: str) -> dict[str, Any]:
    return {
        "key": {"name": name, "namespace": "", "tag": ""},
        "spawn_config": {
            "id": None,
            "cluster": None,
            "pool": "",
            "executable": {
                "command": [sys.executable, str(BACKEND_APP), *args],
                "pull_policy": None,
                "credentials": None,
                "env": {"GREETING": "hi"},
                "resource_limits": {},
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


def _stream(plane: PlaneServe, backend_id: str) -> list[BackendStatusStreamEntry]:
    entries: list[BackendStatusStreamEntry] = []
    event_id = None
    url = f"/pub/b/{backend_id}/status-stream"
    with plane.api.stream("GET", url, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("id:"):
                event_id = line[3:].strip()
            elif line.startswith("data:"):
                entry = parse(BackendStatusStreamEntry, orjson.loads(line[5:]))
                assert entry.status.value == event_id
                entries.append(entry)
    order = [STATUS_ORDER.index(e.status) for e in entries]
    assert order == sorted(set(order))
    return entries


def test_a_whole_lifecycle_on_a_real_plane(plane: PlaneServe) -> None:
    response = plane.api.post("/ctrl/connect", json=_body("real"))
    assert response.status_code == 200, response.text
    connected = parse(ConnectResponse, response.json())
    public_api = plane.urls["api"]
    assert connected.status_url == f"{public_api}/pub/b/{connected.backend_id}/status"
    assert connected.url.startswith(plane.urls["proxy"]) and connected.drone
    plane.wait_status(connected.backend_id, "ready")
    parse(BackendStatusStreamEntry, plane.status(connected.backend_id))
    terminate = plane.api.post(f"/ctrl/b/{connected.backend_id}/soft-terminate")
    assert terminate.status_code == 200 and terminate.json() is None
    entries = _stream(plane, connected.backend_id)
    assert entries[0].status is BackendStatus.SCHEDULED
    assert BackendStatus.READY in [e.status for e in entries]
    end = entries[-1]
    assert end.status is BackendStatus.TERMINATED
    assert end.termination_reason is TerminationReason.EXTERNAL
    assert end.termination_kind is TerminationKind.SOFT
    assert end.exit_error is not None
    # resuming at "ready" (Plane's Last-Event-ID) gives only what came after
    with plane.api.stream(
        "GET", f"/pub/b/{connected.backend_id}/status-stream", headers={"last-event-id": "ready"}
    ) as resumed:
        rest = [
            orjson.loads(x[5:])["status"] for x in resumed.iter_lines() if x.startswith("data:")
        ]
    assert rest == [e.status.value for e in entries if e.status.value in ("terminating",)] + [
        "terminated"
    ]

    failing = parse(
        ConnectResponse, plane.api.post("/ctrl/connect", json=_body("bad", "--exit", "3")).json()
    )
    plane.wait_status(failing.backend_id, "terminated")
    end = parse(BackendStatusStreamEntry, plane.status(failing.backend_id))
    assert end.termination_reason is None and end.exit_error is True

    missing = plane.api.get("/pub/b/nope/status")
    assert missing.status_code == 404 and parse_error(missing).kind == "NotFound"
    parse(StatusResponse, plane.api.get("/ctrl/status").json())
    parse(Health, plane.api.get("/pub/health").json())
    # our own view says both: our state and reason, Plane's status
    detail = plane.api.get(f"/ctrl/b/{failing.backend_id}").json()
    assert (detail["state"], detail["reason"], detail["status"]) == (
        "terminated",
        "exited",
        "terminated",
    )
    assert (
        detail["exit_code"] == 3
        and "hi" not in orjson.dumps(detail["spawn_config"]["executable"]["env"]).decode()
    )


def test_api_public_url_flag_and_env_reach_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(["serve", "--api-public-url", "https://a.example"])
    assert args.api_public_url == "https://a.example"
    monkeypatch.setenv("PLANE_API_PUBLIC_URL", "https://b.example")
    assert build_parser().parse_args(["serve"]).api_public_url == "https://b.example"
