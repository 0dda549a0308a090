"""One plane on two real Docker engines: placement, draining, losing one, its return.

A real ``plane serve`` drives engine ``a`` (the machine's engine) and engine ``b``
(the second engine of ``scripts/ensure-docker2``: its own socket and bridge,
containers published on 127.0.0.2) with a short ``--engine-lost-after``:

* 20 connects spread over both (each gets at least 5), and what ``docker ps``
  shows on each engine (through the SDK) agrees with ``/ctrl/engines``; a
  backend on ``b`` answers through the proxy (plane dials 127.0.0.2, never a
  bridge IP);
* ``b`` drained: every new backend goes to ``a``, ``b``'s own keep running until
  they end; undrained again;
* ``b``'s dockerd killed with SIGKILL: within ``--engine-lost-after`` + 5 s its
  backends are terminated ``lost``, new connects land on ``a``, nothing hangs;
* ``b`` started again: ``engine.returned`` is recorded and the containers left of
  its lost backends are removed (they may be stopped, not running, after the
  SIGKILL); ``plane-replay verify`` accepts the whole log.

The second engine is restarted by the test when it killed it, whatever happens;
every container the test's plane made is removed on both engines at the end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker.errors
import httpx
import orjson
import pytest

from plane.testing.serve_process import PlaneServe
from replay.cli import main as replay_main
from tests.conftest import DOCKER2_PUBLISH, DOCKER2_URL

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
PIDFILE = Path("/var/run/plane-docker2.pid")
LOST_AFTER = 3.0


def body(key: str, image: str) -> dict[str, Any]:
    return {
        "key": {"name": key},
        "spawn_config": {
            "executable": {"image": image, "pull_policy": "Never"},
            "max_idle_seconds": 600,
        },
    }


def ours(client: Any, scope: str, *, running: bool) -> set[str]:
    """Backend ids of the containers of this plane (its scope) on an engine."""
    filters: dict[str, Any] = {"label": ["dev.plane.managed=true", f"dev.plane.scope={scope}"]}
    if running:
        filters["status"] = "running"
    summaries = client.api.containers(all=not running, filters=filters)
    return {str((s.get("Labels") or {}).get("dev.plane.backend")) for s in summaries}


def eventually(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def engines(plane: PlaneServe) -> dict[str, Any]:
    return {e.name: e for e in plane.client.engines()}


def start_engine2() -> None:
    done = subprocess.run(
        [str(REPO / "scripts" / "ensure-docker2"), "start"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def plane(
    tmp_path: Path, docker_engine: Any, docker_engine2: Any, busybox_image2: str
) -> Iterator[PlaneServe]:
    serve = PlaneServe(
        tmp_path / "data",
        "docker",
        "--engine",
        "a=unix:///var/run/docker.sock",
        "--engine",
        f"b={DOCKER2_URL},publish={DOCKER2_PUBLISH}",
        "--engine-lost-after",
        str(LOST_AFTER),
    )
    try:
        yield serve
    finally:
        if serve.process.poll() is None:
            serve.stop()
        if not eventually(lambda: _answers(docker_engine2), 0):
            start_engine2()
        scope = str(serve.data_dir.resolve())
        for client in (docker_engine, docker.DockerClient(base_url=DOCKER2_URL, timeout=30)):
            for summary in client.api.containers(
                all=True, filters={"label": f"dev.plane.scope={scope}"}
            ):
                with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                    client.api.remove_container(summary["Id"], force=True, v=True)


def _answers(client: Any) -> bool:
    try:
        client.ping()
    except Exception:
        return False
    return True


def test_two_engines_place_drain_lose_and_return(
    plane: PlaneServe, docker_engine: Any, busybox_image: str
) -> None:
    image = busybox_image
    scope = str(plane.data_dir.resolve())
    engine_b = docker.DockerClient(base_url=DOCKER2_URL, timeout=30)
    on: dict[str, str] = {}  # backend id -> engine (the connect's drone)

    # --- 20 connects spread over both engines
    for i in range(20):
        connected = plane.connect(body(f"two-{i}", image))
        on[connected["backend_id"]] = connected["drone"]
    assert set(on.values()) == {"a", "b"}
    counts = {name: list(on.values()).count(name) for name in ("a", "b")}
    assert counts["a"] >= 5 and counts["b"] >= 5, counts
    for backend_id in on:
        plane.wait_status(backend_id, "ready", timeout=60)
    for backend_id, name in on.items():
        assert plane.client.backend(backend_id).engine == name
    listed = engines(plane)
    assert listed["a"].live_backends == counts["a"] and listed["b"].live_backends == counts["b"]
    assert {e.state for e in listed.values()} == {"healthy"}
    assert ours(docker_engine, scope, running=True) == {b for b, n in on.items() if n == "a"}
    on_b = {b for b, n in on.items() if n == "b"}
    assert ours(engine_b, scope, running=True) == on_b
    # a backend on b answers through the proxy: plane dials 127.0.0.2
    one_b = sorted(on_b)[0]
    assert plane.client.backend(one_b).address.startswith(f"{DOCKER2_PUBLISH}:")  # type: ignore[union-attr]
    again = plane.connect(body(f"two-{list(on).index(one_b)}", image))
    assert again["backend_id"] == one_b and again["spawned"] is False
    assert httpx.get(again["url"], timeout=30).text.startswith("<!doctype html>")

    # --- drain b: new backends go to a, b's own keep running
    assert plane.client.drain("b") is True
    assert engines(plane)["b"].state == "draining"
    drained = [plane.connect(body(f"drained-{i}", image)) for i in range(4)]
    assert [c["drone"] for c in drained] == ["a"] * 4
    for c in drained:
        plane.wait_status(c["backend_id"], "ready", timeout=60)
    assert {plane.status(b)["status"] for b in on_b} == {"ready"}
    assert ours(engine_b, scope, running=True) == on_b
    # ... until they end
    ended = sorted(on_b)[-1]
    plane.client.soft_terminate(ended)
    plane.wait_status(ended, "terminated", timeout=60)
    assert eventually(lambda: ended not in ours(engine_b, scope, running=False), 30)
    on_b.discard(ended)
    assert plane.client.undrain("b") is True
    assert engines(plane)["b"].state == "healthy"

    # --- SIGKILL b's dockerd: its backends end lost, new connects land on a
    pid = int(PIDFILE.read_text().strip())
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    for backend_id in on_b:
        plane.wait_status(backend_id, "terminated", timeout=LOST_AFTER + 5)
    within = time.monotonic() - killed_at
    for backend_id in on_b:
        assert plane.client.backend(backend_id).reason == "lost"
    assert engines(plane)["b"].state == "lost"
    after = [plane.connect(body(f"after-loss-{i}", image)) for i in range(3)]
    assert [c["drone"] for c in after] == ["a"] * 3
    for c in after:
        plane.wait_status(c["backend_id"], "ready", timeout=60)
    # the key of a lost backend is free again: the next holder is on a
    lost_key = f"two-{list(on).index(sorted(on_b)[0])}"
    taken = plane.connect(body(lost_key, image))
    assert taken["spawned"] is True and taken["drone"] == "a"

    # --- b starts again: engine.returned, its leftovers removed
    start_engine2()
    assert eventually(lambda: engines(plane)["b"].state == "healthy", 60)
    assert eventually(lambda: not ours(engine_b, scope, running=False), 60), ours(
        engine_b, scope, running=False
    )
    log = plane.data_dir / "events.db"
    # removed, then recorded (together, after a listing shows them gone)
    assert eventually(lambda: _orphans(log) == on_b, 30), (_orphans(log), on_b)
    assert plane.stop() == 0
    assert replay_main(["verify", str(log)]) == 0
    kinds = _system_kinds(log)
    for kind in ("engine.drained", "engine.undrained", "engine.lost", "engine.returned"):
        assert kinds.count(f"{kind}.v1") == 1, (kind, kinds)
    # what b still held of its lost backends was removed by plane, and recorded
    assert _orphans(log) == on_b
    print(f"b's backends were lost {within:.1f} s after its dockerd was killed")


def _orphans(log: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(log)) as db:
        rows = db.execute("SELECT data FROM events WHERE type = 'plane.orphan_removed.v1'")
        return {str(orjson.loads(row[0])["backend_id"]) for row in rows}


def _system_kinds(log: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(log)) as db:
        return [str(row[0]) for row in db.execute("SELECT type FROM events ORDER BY seq")]
