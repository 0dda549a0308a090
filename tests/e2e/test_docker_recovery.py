"""Crash recovery with the Docker executor: ``plane serve --executor docker`` killed
with SIGKILL while backends run and spawns are in flight.  While plane is down one
ready backend's container is removed and a plane-labelled container plane never
started appears.  After a restart on the same data directory every acknowledged
request is in the log, the surviving backends are adopted (same address, the old
token still routes), the removed one is recorded lost, the stranger is removed and
recorded, and no plane-labelled container runs that the API does not hold live.

Uses the busybox image built by ``plane.testing.images`` (no registry).  When no
engine answers, the tests are skipped, or fail under ``CI=true``.  Every container
a test creates (plane's and the strangers) is removed by the fixtures' finalizers.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest

from plane.testing.serve_process import PlaneServe
from replay.cli import main as replay_main

pytestmark = pytest.mark.docker

RUN = uuid.uuid4().hex[:8]
MANAGED = "dev.plane.managed"
BACKEND = "dev.plane.backend"


@pytest.fixture(scope="module")
def docker_client(docker_engine: Any) -> Any:
    return docker_engine


@pytest.fixture(scope="module")
def image(busybox_image: str) -> str:
    return busybox_image


class Cleanup:
    """The backend ids a test made containers for, and the plane processes it started."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.planes: list[PlaneServe] = []

    def serve(self, data_dir: Path) -> PlaneServe:
        plane = PlaneServe(data_dir, "docker")
        self.planes.append(plane)
        return plane


@pytest.fixture
def cleanup(docker_client: Any) -> Iterator[Cleanup]:
    mine = Cleanup()
    yield mine
    for plane in mine.planes:
        if plane.process.poll() is None:
            plane.stop()
    for summary in docker_client.api.containers(all=True, filters={"label": f"{MANAGED}=true"}):
        if (summary.get("Labels") or {}).get(BACKEND) in mine.ids:
            with contextlib.suppress(docker.errors.NotFound):
                docker_client.api.remove_container(summary["Id"], force=True, v=True)


def docker_body(name: str, image: str) -> dict[str, Any]:
    return {
        "key": {"name": f"dr-{RUN}-{name}"},
        "spawn_config": {
            "executable": {"image": image, "pull_policy": "Never"},
            "max_idle_seconds": 600,
        },
    }


def running_labelled(client: Any, ids: set[str]) -> set[str]:
    """Backend ids among ``ids`` with a running container labelled managed by plane."""
    # the low-level list: containers.list() inspects each one and fails on one being removed
    summaries = client.api.containers(filters={"label": f"{MANAGED}=true", "status": "running"})
    labelled = {(s.get("Labels") or {}).get(BACKEND) for s in summaries}
    return {bid for bid in labelled if bid in ids}


def containers_of(client: Any, backend_id: str) -> list[str]:
    """Ids of every container (any state) labelled with ``backend_id``."""
    summaries = client.api.containers(all=True, filters={"label": f"{BACKEND}={backend_id}"})
    return [str(s["Id"]) for s in summaries]


def start_stranger(
    client: Any, image: str, backend_id: str, name: str | None, data_dir: Path
) -> Any:
    """A running container with plane's labels (this plane's scope: its data directory)
    for an id that no log knows."""
    scope = str(data_dir.resolve())
    return client.containers.run(
        image,
        detach=True,
        name=name,
        labels={MANAGED: "true", BACKEND: backend_id, "dev.plane.scope": scope},
        ports={"8080/tcp": ("127.0.0.1", None)},
        environment={"PORT": "8080"},
    )


def eventually(check: Callable[[], bool], timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def with_proxy(url: str, plane: PlaneServe) -> str:
    """The URL ``url`` (token path included) on this plane's proxy host:port."""
    return url.replace(url.split("/")[2], plane.urls["proxy"].split("/")[2], 1)


def test_sigkill_with_running_and_starting_containers_then_adopt(
    docker_client: Any, image: str, cleanup: Cleanup, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    plane = cleanup.serve(data_dir)
    try:
        ready = [plane.connect(docker_body(f"ready-{i}", image)) for i in range(3)]
        cleanup.ids |= {r["backend_id"] for r in ready}
        for r in ready:
            plane.wait_status(r["backend_id"], "ready", timeout=30)
        for r in ready:
            assert httpx.get(r["url"], timeout=10).status_code == 200
        addresses = {
            r["backend_id"]: plane.api.get(f"/ctrl/b/{r['backend_id']}").json()["address"]
            for r in ready
        }
        # spawns in flight: acknowledged (Requested recorded) but not yet ready
        in_flight = [plane.connect(docker_body(f"flight-{i}", image)) for i in range(2)]
        cleanup.ids |= {r["backend_id"] for r in in_flight}
    finally:
        plane.kill9()
    acknowledged = {r["backend_id"] for r in ready + in_flight}

    # while plane is down: one ready backend's container vanishes ...
    victim = ready[0]["backend_id"]
    victim_containers = containers_of(docker_client, victim)
    assert victim_containers, "the ready victim has a container"
    for container_id in victim_containers:
        docker_client.api.remove_container(container_id, force=True, v=True)
    # ... and a plane-labelled container appears for an id the log does not know
    # (named as plane names its own containers: e.g. left by a plane whose log was lost)
    stranger = f"stranger-{uuid.uuid4().hex[:12]}"
    cleanup.ids.add(stranger)
    start_stranger(docker_client, image, stranger, f"plane-{stranger}", data_dir)

    plane = cleanup.serve(data_dir)
    try:
        known = {b["backend_id"]: b for b in plane.backends()}
        assert acknowledged <= set(known), "every acknowledged request is in the log"

        victim_status = plane.wait_status(victim, "terminated", timeout=15)
        assert victim_status["termination_reason"] == "lost"

        for r in ready[1:]:
            bid = r["backend_id"]
            status = plane.wait_status(bid, "ready", "idle", "terminated", timeout=15)
            assert status["status"] in ("ready", "idle"), f"{bid} adopted, not {status}"
            assert plane.api.get(f"/ctrl/b/{bid}").json()["address"] == addresses[bid]
            # the proxy port changed with the restart; the token issued before still routes
            response = httpx.get(with_proxy(r["url"], plane), timeout=10)
            assert response.status_code == 200, response.text

        for r in in_flight:
            final = plane.wait_status(r["backend_id"], "ready", "terminated", timeout=30)
            if final["status"] == "terminated":
                assert final["termination_reason"] == "lost", final
            else:
                assert httpx.get(with_proxy(r["url"], plane), timeout=10).status_code == 200

        events = plane.api.get("/ctrl/events", params={"follow": 0}).text
        assert "plane.orphan_removed.v1" in events and stranger in events

        def nothing_unknown_runs() -> bool:
            live = {b["backend_id"] for b in plane.backends(live=True)}
            return running_labelled(docker_client, cleanup.ids) <= live

        assert eventually(nothing_unknown_runs), (
            "a plane-labelled container runs that the API does not hold live: "
            f"{running_labelled(docker_client, cleanup.ids)} vs "
            f"{ {b['backend_id'] for b in plane.backends(live=True)} }"
        )
        live = {b["backend_id"] for b in plane.backends(live=True)}
        assert victim not in live and stranger not in live
        assert not containers_of(docker_client, stranger), "the orphan container is removed"
    finally:
        assert plane.stop() == 0
    assert replay_main(["verify", str(data_dir / "events.db")]) == 0


def test_orphan_container_under_another_name_is_removed(
    docker_client: Any, image: str, cleanup: Cleanup, tmp_path: Path
) -> None:
    """Orphans are found by label; removing one must not depend on its name."""
    data_dir = tmp_path / "data"
    cleanup.serve(data_dir).kill9()
    stranger = f"stranger-{uuid.uuid4().hex[:12]}"
    cleanup.ids.add(stranger)
    start_stranger(docker_client, image, stranger, None, data_dir)  # the engine names it

    plane = cleanup.serve(data_dir)
    try:
        events = plane.api.get("/ctrl/events", params={"follow": 0}).text
        assert "plane.orphan_removed.v1" in events and stranger in events
        left = containers_of(docker_client, stranger)
        assert not left, f"orphan recorded as removed but still there: {left}"
    finally:
        assert plane.stop() == 0


def test_another_planes_containers_are_left_alone(
    docker_client: Any, image: str, cleanup: Cleanup, tmp_path: Path
) -> None:
    """Two planes on one engine (different data directories) never touch each other's."""
    first = cleanup.serve(tmp_path / "a")
    result = first.connect(
        {
            "key": {"name": "mine"},
            "spawn_config": {"executable": {"image": image, "pull_policy": "Never"}},
        }
    )
    cleanup.ids.add(result["backend_id"])
    first.wait_status(result["backend_id"], "ready")
    second = cleanup.serve(tmp_path / "b")
    try:
        assert second.backends() == []
        assert first.status(result["backend_id"])["status"] in ("ready", "idle")
    finally:
        assert second.stop() == 0
        assert first.stop() == 0


def test_terminated_backends_leave_no_container_when_serve_stops_at_once(
    docker_client: Any, image: str, cleanup: Cleanup, tmp_path: Path
) -> None:
    """Terminate 10, stop plane right away (removals in flight), start again: every
    container of those backends is gone soon after, whatever state it was left in."""
    data_dir = tmp_path / "data"
    plane = cleanup.serve(data_dir)
    results = [plane.connect(docker_body(f"leak-{i}", image)) for i in range(10)]
    ids = [r["backend_id"] for r in results]
    cleanup.ids |= set(ids)
    for bid in ids:
        plane.wait_status(bid, "ready", timeout=60)
    for i, bid in enumerate(ids):
        kind = "hard-terminate" if i % 2 else "soft-terminate"
        assert plane.api.post(f"/ctrl/b/{bid}/{kind}").status_code == 200
    assert plane.stop() == 0  # SIGTERM right after the terminate calls returned

    plane = cleanup.serve(data_dir)
    try:

        def none_left() -> bool:
            return not any(containers_of(docker_client, bid) for bid in ids)

        assert eventually(none_left, timeout=10), {
            bid: containers_of(docker_client, bid)
            for bid in ids
            if containers_of(docker_client, bid)
        }
        for bid in ids:
            assert plane.wait_status(bid, "terminated", timeout=10)["status"] == "terminated"
    finally:
        assert plane.stop() == 0


def test_created_and_exited_leftovers_are_removed_and_recorded(
    docker_client: Any, image: str, cleanup: Cleanup, tmp_path: Path
) -> None:
    """Leftovers that do not run (never started, exited) are removed too."""
    data_dir = tmp_path / "data"
    cleanup.serve(data_dir).kill9()
    scope = str(data_dir.resolve())
    created, exited = (f"left-{kind}-{uuid.uuid4().hex[:8]}" for kind in ("created", "exited"))
    cleanup.ids |= {created, exited}
    for bid in (created, exited):
        labels = {MANAGED: "true", BACKEND: bid, "dev.plane.scope": scope}
        container = docker_client.containers.create(image, ["true"], labels=labels)
        if bid == exited:
            container.start()
            container.wait(timeout=30)
    plane = cleanup.serve(data_dir)
    try:
        events = plane.api.get("/ctrl/events", params={"follow": 0}).text
        assert created in events and exited in events, "each removal is recorded"
        assert not containers_of(docker_client, created)
        assert not containers_of(docker_client, exited)
    finally:
        assert plane.stop() == 0
