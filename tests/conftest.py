"""Fixtures shared by every test package, and the Hypothesis profiles.

Hypothesis runs the ``dev`` profile by default and the ``ci`` profile (more
examples) under ``CI=true``; ``HYPOTHESIS_PROFILE`` picks one by name.  Neither
has a deadline: these machines are shared, and a slow example is not a bug.
A test that asks for a number of examples of its own scales it from
``settings().max_examples`` (the loaded profile's), so the ``ci`` profile raises it too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import settings

if TYPE_CHECKING:
    from plane.testing.registry import Registry

settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile("ci", max_examples=500, deadline=None, print_blob=True)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") == "true" else "dev")
)


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


@pytest.fixture(scope="session")
def registry() -> Registry:
    """The local htpasswd registry (``scripts/ensure-registry``), for the credentials
    tests; skipped without one, except under ``CI=true``, where that is a failure."""
    from plane.testing.registry import RegistryUnavailable, ensure_registry

    try:
        return ensure_registry()
    except RegistryUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"no registry for the credentials test, and CI=true: {exc}")
        pytest.skip(f"no registry for the credentials test: {exc}")
