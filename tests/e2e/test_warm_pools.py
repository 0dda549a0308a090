"""Warm pools end to end: a real ``plane serve`` (process executor and the real
Docker engine), real sockets, a real SQLite log.

The scenario (both executors): ``--warm web=3:template.json``; the pool fills
to 3; three connects are answered ``ready`` at once (``spawned``, ``drone``
set) and their first proxied request succeeds without waiting; the pool refills
to 3; with the pool emptied, the next connect spawns cold from the template;
``kill -9`` with warm and claimed backends: after a restart the claimed ones
are adopted with their keys and addresses, the warm ones adopted as warm (no
new start), the pool's size restored; ``plane-replay verify`` is OK.

The process executor's app (``warm_app.py``) also shows the claim hook and
``x-verified-key``: a refused claim discards the backend and the next is tried.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from plane.testing.serve_process import PlaneServe
from replay.cli import main as replay_main
from tests.e2e.test_crash_recovery import labelled_pids

WARM_APP = Path(__file__).with_name("warm_app.py")
RUN = uuid.uuid4().hex[:8]


def pools(plane: PlaneServe) -> dict[str, dict[str, Any]]:
    found = plane.client.request("GET", "/ctrl/warm-pools")["warm_pools"]
    return {p["name"]: p for p in found}


def wait_warm(plane: PlaneServe, name: str, count: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        pool = pools(plane).get(name)
        if pool is not None and pool["warm"] == count and pool["starting"] == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"pool {name} is {pool} after {timeout}s, not {count} warm")
        time.sleep(0.05)


def warm_ids(plane: PlaneServe) -> set[str]:
    found = plane.client.request("GET", "/ctrl/backends", params={"state": "warm"})
    return {b["backend_id"] for b in found["backends"]}


def connect(plane: PlaneServe, name: str, pool: str = "web") -> dict[str, Any]:
    return plane.connect(
        {"key": {"name": name}, "spawn_config": {"warm_pool": pool}, "user": "ann"}
    )


def put_size(plane: PlaneServe, name: str, size: int) -> None:
    plane.client.request("PUT", f"/ctrl/warm-pools/{name}", json={"size": size})


def scenario(plane_factory: Any, data_dir: Path, template: Path) -> dict[str, Any]:
    """The shared scenario; returns what the executor-specific checks need."""
    plane: PlaneServe = plane_factory(data_dir, "--warm", f"web=3:{template}")
    try:
        wait_warm(plane, "web", 3)
        before = warm_ids(plane)
        assert len(before) == 3
        for backend_id in before:  # Plane's endpoints never show an unclaimed one
            assert plane.api.get(f"/pub/b/{backend_id}/status").status_code == 404
        claimed = [connect(plane, f"wp-{RUN}-{i}") for i in range(3)]
        for result in claimed:
            assert result["status"] == "ready"
            assert result["spawned"] is True
            assert result["drone"]
            first = httpx.get(result["url"], timeout=10)  # no waiting: it is ready
            assert first.status_code == 200
        assert {r["backend_id"] for r in claimed} == before
        wait_warm(plane, "web", 3)  # refilled
        refills = warm_ids(plane)
        assert not refills & before
        put_size(plane, "web", 0)
        wait_warm(plane, "web", 0)
        cold = connect(plane, f"wp-{RUN}-cold")
        assert cold["spawned"] is True
        detail = plane.client.request("GET", f"/ctrl/b/{cold['backend_id']}")
        assert detail["warm_pool"] is None and detail["claimed_at"] is None
        plane.wait_status(cold["backend_id"], "ready")
        put_size(plane, "web", 3)
        wait_warm(plane, "web", 3)
        waiting = warm_ids(plane)
        addresses = {
            r["backend_id"]: plane.client.request("GET", f"/ctrl/b/{r['backend_id']}")["address"]
            for r in claimed
        }
    finally:
        plane.kill9()

    plane = plane_factory(data_dir, "--warm", f"web=3:{template}")
    try:
        assert warm_ids(plane) == waiting, "warm ones are adopted as warm, none started anew"
        assert pools(plane)["web"]["size"] == 3
        wait_warm(plane, "web", 3)
        assert warm_ids(plane) == waiting
        for i, result in enumerate(claimed):
            detail = plane.client.request("GET", f"/ctrl/b/{result['backend_id']}")
            assert detail["key"]["name"] == f"wp-{RUN}-{i}"
            assert detail["state"] in ("ready", "idle")
            assert detail["address"] == addresses[result["backend_id"]]
            again = connect(plane, f"wp-{RUN}-{i}")
            assert again["backend_id"] == result["backend_id"] and again["spawned"] is False
            assert httpx.get(again["url"], timeout=10).status_code == 200
        events = plane.api.get("/ctrl/events", params={"follow": 0}).text
        assert "warm_pool.defined.v1" in events and "backend.claimed.v1" in events
    finally:
        assert plane.stop() == 0
    assert replay_main(["verify", str(data_dir / "events.db")]) == 0
    return {"claimed": claimed, "waiting": waiting}


# ------------------------------------------------------------------ process


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "data"
    yield path
    scope = str((path / "logs").resolve())
    for pid in labelled_pids(scope).values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def process_template(tmp_path: Path, claim_path: str | None = "/plane/claim") -> Path:
    template = tmp_path / "warm.json"
    spawn = {"executable": {"command": [sys.executable, str(WARM_APP)]}, "max_idle_seconds": 600}
    body: dict[str, Any] = {"spawn_config": spawn}
    if claim_path is not None:
        body["claim_path"] = claim_path
    template.write_bytes(orjson.dumps(body))
    return template


def test_warm_pool_on_the_process_executor(tmp_path: Path, data_dir: Path) -> None:
    def factory(path: Path, *extra: str) -> PlaneServe:
        return PlaneServe(path, "process", *extra)

    outcome = scenario(factory, data_dir, process_template(tmp_path))
    assert len(outcome["claimed"]) == 3


def test_claim_hook_and_verified_key_on_the_process_executor(
    tmp_path: Path, data_dir: Path
) -> None:
    plane = PlaneServe(data_dir, "process", "--warm", f"hooked=2:{process_template(tmp_path)}")
    try:
        wait_warm(plane, "hooked", 2)
        result = connect(plane, f"kh-{RUN}", pool="hooked")
        seen = httpx.get(result["url"], timeout=10).json()
        assert seen["headers"]["x-verified-key"] == f"kh-{RUN}"
        assert seen["headers"]["x-verified-username"] == "ann"
        (hook,) = seen["claims"]
        assert hook["key"] == {"name": f"kh-{RUN}", "namespace": "", "tag": ""}
        assert hook["user"] == "ann" and hook["fencing_token"] == 1
        # the env was fixed before the claim: the key is not in it
        assert seen["backend"] == result["backend_id"]

        wait_warm(plane, "hooked", 2)
        pool_before = warm_ids(plane)
        refused = connect(plane, f"refuse-{RUN}", pool="hooked")
        # every warm one refused the claim: each was discarded, and the connect spawned cold
        assert refused["backend_id"] not in pool_before
        for backend_id in pool_before:
            detail = plane.client.request("GET", f"/ctrl/b/{backend_id}")
            assert detail["state"] in ("terminating", "terminated")
            assert detail["key"] is None
        wait_warm(plane, "hooked", 2)  # and the pool refilled
    finally:
        assert plane.stop() == 0
    assert replay_main(["verify", str(data_dir / "events.db")]) == 0


def test_bad_warm_pools_are_refused_with_400(tmp_path: Path, data_dir: Path) -> None:
    plane = PlaneServe(data_dir, "process")
    try:
        spawn = {"executable": {"command": [sys.executable, str(WARM_APP)]}}
        bad = [
            {"size": 1, "spawn_config": {**spawn, "use_static_token": True}},
            {"size": 1, "spawn_config": {**spawn, "subdomain": "abc"}},
            {
                "size": 1,
                "spawn_config": {
                    "executable": {**spawn["executable"], "env": {"SESSION_BACKEND_KEY": "x"}}
                },
            },
            {"size": -1, "spawn_config": spawn},
            {"size": 1, "spawn_config": {**spawn, "id": "fixed"}},
        ]
        for body in bad:
            answer = plane.api.put("/ctrl/warm-pools/web", json=body)
            assert answer.status_code == 400, (body, answer.text)
            assert answer.json()["kind"] == "InvalidRequest"
        # a resize (no template) of a pool that does not exist: there is nothing to resize
        answer = plane.api.put("/ctrl/warm-pools/web", json={"size": 1})
        assert answer.status_code == 404, answer.text
        assert answer.json()["kind"] == "NotFound"
        mixed = {"key": {"name": "x"}, "spawn_config": {"warm_pool": "web", "max_idle_seconds": 5}}
        answer = plane.api.post("/ctrl/connect", json=mixed)
        assert answer.status_code == 400 and "max_idle_seconds" in answer.text
        unknown = {"key": {"name": "x"}, "spawn_config": {"warm_pool": "nope"}}
        assert plane.api.post("/ctrl/connect", json=unknown).status_code == 400
        assert plane.api.delete("/ctrl/warm-pools/nope").status_code == 404
        assert pools(plane) == {}
    finally:
        assert plane.stop() == 0


# ------------------------------------------------------------------- docker


@pytest.mark.docker
def test_warm_pool_on_the_docker_engine(
    tmp_path: Path, data_dir: Path, docker_engine: Any, busybox_image: str
) -> None:
    template = tmp_path / "warm.json"
    spawn = {
        "executable": {"image": busybox_image, "pull_policy": "Never"},
        "max_idle_seconds": 600,
    }
    template.write_bytes(orjson.dumps(spawn))
    planes: list[PlaneServe] = []

    def factory(path: Path, *extra: str) -> PlaneServe:
        plane = PlaneServe(path, "docker", *extra)
        planes.append(plane)
        return plane

    try:
        scenario(factory, data_dir, template)
    finally:
        for plane in planes:
            if plane.process.poll() is None:
                plane.stop()
        with contextlib.closing(sqlite3.connect(data_dir / "events.db")) as db:
            made = {row[0] for row in db.execute("SELECT DISTINCT stream FROM events")}
        for summary in docker_engine.api.containers(
            all=True, filters={"label": "dev.plane.managed=true"}
        ):
            if (summary.get("Labels") or {}).get("dev.plane.backend") in made:
                with contextlib.suppress(Exception):
                    docker_engine.api.remove_container(summary["Id"], force=True, v=True)


def test_plane_warm_pools_cli(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from plane.cli import main as cli

    template = tmp_path / "spawn.json"
    template.write_bytes(orjson.dumps({"executable": {"command": [sys.executable, str(WARM_APP)]}}))
    plane = PlaneServe(data_dir, "process")
    api = ["--api", plane.urls["api"]]
    try:
        assert cli(["warm-pools", "set", "web", "1", "--template", str(template), *api]) == 0
        wait_warm(plane, "web", 1)
    except BaseException:
        plane.stop()
        raise
    try:
        capsys.readouterr()
        assert cli(["warm-pools", "--json", *api]) == 0
        shown = orjson.loads(capsys.readouterr().out)
        assert shown["warm_pools"][0]["name"] == "web" and shown["warm_pools"][0]["warm"] == 1
        assert cli(["warm-pools", "set", "web", "2", *api]) == 0  # resize: keeps the template
        wait_warm(plane, "web", 2)
        assert cli(["warm-pools", "rm", "web", *api]) == 0
        assert "web removed" in capsys.readouterr().out
        assert cli(["warm-pools", "rm", "web", *api]) != 0  # no such pool: a message
        assert "no warm pool" in capsys.readouterr().err
        assert cli(["warm-pools", "set", *api]) == 2
    finally:
        assert plane.stop() == 0
