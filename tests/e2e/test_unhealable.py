"""Errors that cannot heal fail at once, through a real ``plane serve``.

What can be checked before anything is recorded is refused with 400 at connect
(an invalid image reference, a command that does not exist); what only the
engine can tell (an image that is not there, with ``pull_policy: Never``) ends
the backend ``terminated`` (``spawnfailed``) within seconds, without retrying,
and its slot is free again at once.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from plane.testing.serve_process import PlaneServe

RUN = uuid.uuid4().hex[:8]


def refused_naming(response: Any, field: str) -> None:
    """A 400 whose body names *field* of the spawn config."""
    assert response.status_code == 400, response.text
    assert f"$.spawn_config.executable.{field}" in response.text, response.text


@pytest.fixture
def docker_plane(docker_engine: Any, tmp_path: Path) -> Iterator[PlaneServe]:
    plane = PlaneServe(tmp_path / "data", "docker", "--max-backends", "1")
    try:
        yield plane
    finally:
        plane.stop()
        label = f"dev.plane.scope={(tmp_path / 'data').resolve()}"
        for summary in docker_engine.api.containers(all=True, filters={"label": label}):
            with contextlib.suppress(docker.errors.NotFound):
                docker_engine.api.remove_container(summary["Id"], force=True, v=True)


@pytest.mark.docker
def test_docker_bad_reference_is_400_and_a_missing_image_fails_at_once(
    docker_plane: PlaneServe, busybox_image: str
) -> None:
    plane = docker_plane

    def body(name: str, image: str) -> dict[str, Any]:
        return {
            "key": {"name": f"unheal-{RUN}-{name}"},
            "spawn_config": {"executable": {"image": image, "pull_policy": "Never"}},
        }

    refused_naming(plane.api.post("/ctrl/connect", json=body("bad", "Bad/Image:Name")), "image")
    assert plane.backends() == [], "nothing recorded for a refused connect"

    began = time.monotonic()
    answer = plane.connect(body("missing", f"plane-no-such-image-{RUN}:1"))
    plane.wait_status(answer["backend_id"], "terminated", timeout=5)  # not retried
    assert time.monotonic() - began < 5
    detail = plane.api.get(f"/ctrl/b/{answer['backend_id']}").json()
    assert detail.get("reason", detail.get("termination_reason")) == "spawnfailed"
    assert f"plane-no-such-image-{RUN}:1" in detail["message"]
    assert "pull_policy is Never" in detail["message"]

    # --max-backends 1: the failed one holds no slot
    good = plane.connect(body("good", busybox_image))
    assert plane.wait_status(good["backend_id"], "ready", timeout=30)["status"] == "ready"


def test_process_missing_command_is_400(tmp_path: Path) -> None:
    plane = PlaneServe(tmp_path / "data", "process")
    try:
        for name, executable in [
            ("path", {"command": [f"plane-no-such-command-{RUN}"]}),
            ("abs", {"command": [f"/nonexistent/plane-{RUN}"]}),
            ("rel", {"command": ["./not-here"], "cwd": str(tmp_path)}),
        ]:
            body = {"key": {"name": f"unheal-{name}"}, "spawn_config": {"executable": executable}}
            refused_naming(plane.api.post("/ctrl/connect", json=body), "command")
        no_dir = {"command": ["true"], "cwd": str(tmp_path / "no-dir")}
        body = {"key": {"name": "unheal-cwd"}, "spawn_config": {"executable": no_dir}}
        refused_naming(plane.api.post("/ctrl/connect", json=body), "cwd")
        assert plane.backends() == []
    finally:
        assert plane.stop() == 0
