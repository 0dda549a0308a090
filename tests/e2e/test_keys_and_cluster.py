"""Against a real ``plane serve --executor process``: Plane's static tokens, the cluster
name and subdomain URLs, the spawn fields refused by name, and a key that is never
held by two backends while connects race a terminate."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from plane.events.sqlite import SqliteLogReader
from plane.testing.serve_process import PlaneServe

from ..keyhold import overlaps

BACKEND_APP = Path(__file__).parent.parent / "executors" / "backend_app.py"
ENDED = {"terminating", "hard-terminating", "terminated"}


def body(name: str, *extra_args: str, **spawn: Any) -> dict[str, Any]:
    command = [sys.executable, str(BACKEND_APP), *extra_args]
    return {
        "key": {"name": name},
        "spawn_config": {"executable": {"command": command}, "max_idle_seconds": 600, **spawn},
    }


def refusal(response: httpx.Response) -> tuple[int, str, str]:
    """(status, kind, message) of an error answer, in either error body shape."""
    data = response.json()
    error = data.get("error", data)
    return response.status_code, error.get("kind", error.get("code")), error["message"]


def serve(tmp_path: Path, *extra: str) -> Iterator[PlaneServe]:
    plane = PlaneServe(tmp_path / "data", "process", "--terminate-on-exit", *extra)
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[PlaneServe]:
    yield from serve(tmp_path)


@pytest.fixture
def named_plane(tmp_path: Path) -> Iterator[PlaneServe]:
    yield from serve(tmp_path, "--cluster", "plane.test")


def backend_env(plane: PlaneServe, backend_id: str) -> dict[str, str | None]:
    address = plane.api.get(f"/ctrl/b/{backend_id}").json()["address"]
    env: dict[str, str | None] = httpx.get(f"http://{address}/", timeout=10).json()["env"]
    return env


def test_a_static_token_is_the_same_for_every_connect_and_given_to_the_backend(
    plane: PlaneServe,
) -> None:
    first = plane.connect(body("doc", use_static_token=True, pool="", auth={}))
    assert first["token"].startswith("s.") and len(first["token"]) == 45
    assert first["secret_token"] is None
    assert first["url"] == f"{plane.urls['proxy']}/{first['token']}/"
    again = plane.connect({"key": {"name": "doc"}, "auth": {}, "user": None})
    assert again["token"] == first["token"] and again["backend_id"] == first["backend_id"]
    assert again["spawned"] is False and again["secret_token"] is None
    plane.wait_status(first["backend_id"], "ready")
    assert (
        backend_env(plane, first["backend_id"])["SESSION_BACKEND_STATIC_TOKEN"] == (first["token"])
    )
    # user data cannot ride on a token everybody shares
    for field, value in (("auth", {"role": "admin"}), ("user", "ann")):
        answer = plane.api.post("/ctrl/connect", json={"key": {"name": "doc"}, field: value})
        status, kind, message = refusal(answer)
        assert (status, kind) == (400, "InvalidRequest") and f"$.{field}" in message
    # nor is it in any view of the log
    events = plane.api.get(f"/ctrl/b/{first['backend_id']}/events").text
    assert first["token"] not in events
    # an ordinary backend still gets its own tokens and a secret
    plain = plane.connect(body("plain"))
    assert not plain["token"].startswith("s.") and plain["secret_token"]


def test_the_default_cluster_is_the_proxys_host_and_port(plane: PlaneServe) -> None:
    ours = urlsplit(plane.urls["proxy"]).netloc
    accepted = plane.connect(body("c1", cluster=ours))
    assert accepted["spawned"] is True and accepted["subdomain"] is None
    answer = plane.api.post("/ctrl/connect", json=body("c2", cluster="elsewhere.test:1"))
    status, kind, message = refusal(answer)
    assert (status, kind) == (400, "InvalidClusterName") and "$.spawn_config.cluster" in message
    # the cluster host is an IP address: no subdomain can hang under it
    answer = plane.api.post("/ctrl/connect", json=body("c3", subdomain="doc"))
    status, kind, message = refusal(answer)
    assert status == 400 and "$.spawn_config.subdomain" in message


@pytest.mark.parametrize(
    ("spawn", "field"),
    [
        ({"subdomain": "-bad"}, "$.spawn_config.subdomain"),
        ({"subdomain": "Upper"}, "$.spawn_config.subdomain"),
        ({"subdomain": "x" * 64}, "$.spawn_config.subdomain"),
        ({"cluster": "not a cluster"}, "$.spawn_config.cluster"),
    ],
)
def test_what_cannot_be_honoured_is_refused_by_name(
    named_plane: PlaneServe, spawn: dict[str, Any], field: str
) -> None:
    answer = named_plane.api.post("/ctrl/connect", json=body("refused", **spawn))
    status, _kind, message = refusal(answer)
    assert status == 400 and field in message
    assert named_plane.backends() == []


def test_a_pool_no_engine_serves_is_503_no_drone_available(named_plane: PlaneServe) -> None:
    answer = named_plane.api.post("/ctrl/connect", json=body("pooled", pool="gpu"))
    status, kind, message = refusal(answer)
    assert (status, kind) == (503, "NoDroneAvailable") and "'gpu'" in message
    assert named_plane.backends() == []


def test_a_subdomain_hangs_under_the_cluster_host(named_plane: PlaneServe) -> None:
    plane = named_plane
    first = plane.connect(body("sub", subdomain="doc-1", cluster="plane.test"))
    assert first["subdomain"] == "doc-1"
    assert first["url"] == f"http://doc-1.plane.test/{first['token']}/"
    attached = plane.connect({"key": {"name": "sub"}})
    assert attached["subdomain"] == "doc-1"
    assert attached["url"] == f"http://doc-1.plane.test/{attached['token']}/"
    plane.wait_status(first["backend_id"], "ready")
    # the URL's host is a name this machine cannot resolve: reach the proxy by address
    proxy = plane.urls["proxy"]
    answer = httpx.get(
        f"{proxy}/{first['token']}/", headers={"Host": "doc-1.plane.test"}, timeout=10
    )
    assert answer.status_code == 200
    assert answer.json()["env"]["SESSION_BACKEND_ID"] == first["backend_id"]
    # without a subdomain the handed-out URL stays the proxy's public URL
    plain = plane.connect(body("no-sub"))
    assert plain["url"] == f"{proxy}/{plain['token']}/" and plain["subdomain"] is None


def test_connects_racing_a_terminate_never_get_an_ending_backend_nor_overlap(
    plane: PlaneServe,
) -> None:
    # the backend ignores SIGTERM: it terminates for its whole 1 s grace, then is killed
    spawn = body("race", "--ignore-term", stop_grace_seconds=1)
    first = plane.connect(spawn)
    plane.wait_status(first["backend_id"], "ready")
    answers: list[dict[str, Any]] = []
    lock = threading.Lock()
    terminated_at: list[float] = []

    def one(delay: float) -> None:
        time.sleep(delay)
        response = plane.api.post("/ctrl/connect", json=spawn)
        response.raise_for_status()
        with lock:
            answers.append(response.json())

    def terminate() -> None:
        time.sleep(0.5)
        plane.api.post(f"/ctrl/b/{first['backend_id']}/soft-terminate").raise_for_status()
        terminated_at.append(time.monotonic())

    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(terminate)]
        futures += [pool.submit(one, i * 0.05) for i in range(48)]
        for future in futures:
            future.result()
    assert len(answers) == 48
    assert not [a for a in answers if a["status"] in ENDED]
    ids = list(dict.fromkeys(a["backend_id"] for a in answers))
    assert ids[0] == first["backend_id"] and len(ids) == 2
    assert sum(a["spawned"] for a in answers) == 1
    plane.wait_status(first["backend_id"], "terminated")
    with SqliteLogReader(plane.data_dir / "events.db") as log:
        assert overlaps(log.iter_events()) == []
