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
