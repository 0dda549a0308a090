"""The example app server (examples/appserver) for real: a Flask process that
uses plane.client against a real ``plane serve``, opening notepads."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from plane.testing.serve_process import PlaneServe, end_process
from tests.client.conftest import API_KEY

APP = Path(__file__).resolve().parents[2] / "examples" / "appserver" / "app.py"


@pytest.fixture
def appserver(plane: PlaneServe) -> Iterator[str]:
    env = {**os.environ, "PLANE_API": plane.urls["api"], "PLANE_API_KEY": API_KEY,
           "APPSERVER_PORT": "0", "PYTHONUNBUFFERED": "1"}  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, str(APP)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
        text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("appserver listening on "), line
        yield line.split()[-1]
    finally:
        end_process(process, 30)


def test_opening_a_document_redirects_to_its_one_notepad(plane: PlaneServe, appserver: str) -> None:
    doc = f"doc-{uuid.uuid4().hex[:8]}"
    with httpx.Client(timeout=60) as browser:
        assert "open" in browser.get(appserver + "/").text
        first = browser.get(appserver + "/open", params={"doc": doc})
        assert first.status_code == 303, first.text
        url = first.headers["location"]
        assert url.startswith(plane.urls["proxy"])
        state = browser.get(url + "state").json()
        assert state["key"] == doc

        second = browser.get(appserver + "/open", params={"doc": doc})
        assert second.status_code == 303 and second.headers["location"] != url  # a fresh token
        assert browser.get(second.headers["location"] + "state").json() == state

        other = browser.get(appserver + "/open", params={"doc": doc + "-b"}).headers["location"]
        assert browser.get(other + "state").json()["backend_id"] != state["backend_id"]
        assert browser.get(appserver + "/open").status_code == 400
