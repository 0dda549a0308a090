"""The proxy inside a real ``plane serve`` (process executor): its options
(--proxy-root-redirect, --trust-forwarded-from), /ready, CORS, and a revoked
token refused within a few seconds."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from plane import __version__
from plane.testing.serve_process import PlaneServe, serve_command

BACKEND_APP = Path(__file__).parent.parent / "executors" / "backend_app.py"


def test_the_proxy_in_plane_serve(tmp_path: Path) -> None:
    serving = PlaneServe(
        tmp_path / "data",
        "process",
        "--proxy-root-redirect",
        "https://plane.example/start",
        "--trust-forwarded-from",
        "127.0.0.0/8",
        "--terminate-on-exit",
    )
    try:
        proxy = serving.urls["proxy"]
        with httpx.Client(timeout=30) as client:
            ready = client.get(f"{proxy}/ready")
            assert ready.status_code == 200
            assert ready.headers["server"] == f"plane/{__version__}"
            root = client.get(f"{proxy}/")
            assert root.status_code == 302
            assert root.headers["location"] == "https://plane.example/start"

            command = [sys.executable, str(BACKEND_APP)]
            body = {"key": {"name": "k"}, "spawn_config": {"executable": {"command": command}}}
            result = serving.connect(body)
            serving.wait_status(result["backend_id"], "ready")
            url = result["url"]
            page = client.get(url)
            assert page.status_code == 200
            assert page.headers["access-control-allow-origin"] == "*"

            token = url.rstrip("/").rsplit("/", 1)[-1]
            revoked = serving.api.post(
                f"/ctrl/b/{result['backend_id']}/revoke", json={"token": token}
            )
            assert revoked.status_code == 200, revoked.text
            # Refused as soon as the proxy's table has the event: a bound of seconds.
            deadline = time.monotonic() + 5
            while (answer := client.get(url)).status_code == 200:
                assert time.monotonic() < deadline, "the revoked token still routes"
                time.sleep(0.02)
            assert answer.status_code == 410
            assert answer.json()["kind"] == "TokenRevoked"
    finally:
        assert serving.stop() == 0


def test_a_bad_proxy_option_is_refused_by_name(tmp_path: Path) -> None:
    for option, value in [
        ("--trust-forwarded-from", "10.0.0.0/99"),
        ("--proxy-root-redirect", "not a url"),
    ]:
        done = subprocess.run(
            serve_command(tmp_path / "data", "--executor", "process", option, value),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert option in done.stderr
        assert "Traceback" not in done.stderr
