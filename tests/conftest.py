"""Fixtures shared by every test package."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Any]:
    """A client of the real Docker engine.

    Without an engine the test is skipped, except under ``CI=true``, where a
    missing engine is a failure: CI must run the Docker tests, never skip them.
    """
    import docker

    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as exc:
        message = f"no Docker engine answers: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    yield client
    client.close()


@pytest.fixture(scope="session")
def busybox_image(docker_engine: Any) -> str:
    """The busybox test image, built locally from scratch (no registry)."""
    from plane.testing.images import build_test_image

    return build_test_image(docker_engine)


#: The second engine's socket and publish address (scripts/ensure-docker2).
DOCKER2_URL = "unix:///var/run/plane-docker2.sock"
DOCKER2_PUBLISH = "127.0.0.2"


@pytest.fixture(scope="session")
def docker_engine2() -> Iterator[Any]:
    """A client of the second Docker engine on this machine (``scripts/ensure-docker2
    start``; ``.ci/run`` starts it).  Skipped when it does not answer, except
    under ``CI=true``, where that is a failure."""
    import docker

    try:
        client = docker.DockerClient(base_url=DOCKER2_URL, timeout=30)
        client.ping()
    except Exception as exc:
        message = (
            f"no second Docker engine answers on {DOCKER2_URL} "
            f"(start it with `scripts/ensure-docker2 start`): {exc}"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    yield client
    client.close()


@pytest.fixture(scope="session")
def busybox_image2(docker_engine: Any, busybox_image: str, docker_engine2: Any) -> str:
    """The busybox test image on the second engine too (copied from the first
    with ``docker save | docker load`` through a file)."""
    from plane.testing.images import copy_image

    return copy_image(docker_engine, docker_engine2, busybox_image)
