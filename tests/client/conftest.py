"""A real ``plane serve --executor process`` for the client tests (one per module)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from plane.testing.serve_process import PlaneServe

BACKEND_APP = Path(__file__).parent.parent / "executors" / "backend_app.py"
API_KEY = "client-test-key-0123456789"
COMMAND = [sys.executable, str(BACKEND_APP)]


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlaneServe]:
    serving = PlaneServe(
        tmp_path_factory.mktemp("plane"), "process", "--api-key", API_KEY, "--terminate-on-exit"
    )
    yield serving
    serving.stop()
