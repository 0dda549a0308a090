"""The proxy inside a real ``plane serve`` (process executor): its options
(--proxy-root-redirect, --trust-forwarded-from), /ready, CORS, and a revoked
token refused within a few seconds."""

from __future__ import annotations

import contextlib
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


def test_the_caps_in_plane_serve(tmp_path: Path) -> None:
    """``PLANE_PROXY_MAX_CONNECTIONS`` and ``--api-max-streams``: at the caps the
    proxy answers 503 ProxyOverloaded and the API 503 TooManyStreams, while
    ``/ready`` and the API's other endpoints keep answering."""
    serving = PlaneServe(
        tmp_path / "data",
        "process",
        "--api-max-streams",
        "2",
        env={"PLANE_PROXY_MAX_CONNECTIONS": "3"},
    )
    held: list[httpx.Client] = []
    try:
        limits = next(line for line in serving.banner if "limits:" in line)
        assert "proxy 3 connections" in limits and "API 2 streams" in limits, limits
        proxy = serving.urls["proxy"]
        api = serving.urls["api"]
        for _ in range(3):  # three keep-alive connections: the proxy is at its cap
            client = httpx.Client(timeout=30)
            held.append(client)
            assert client.get(f"{proxy}/ready").status_code == 200
        with httpx.Client(timeout=30) as fresh:
            over = fresh.get(f"{proxy}/some-token/")
            assert over.status_code == 503
            assert over.json()["kind"] == "ProxyOverloaded"
            assert set(over.json()) == {"id", "kind", "message"}
            assert fresh.get(f"{proxy}/ready").status_code == 200  # at the cap
        for client in held:  # the held ones still answer
            assert client.get(f"{proxy}/ready").status_code == 200

        with contextlib.ExitStack() as stack:
            for _ in range(2):  # two event streams: the API is at its stream cap
                client = stack.enter_context(httpx.Client(timeout=30))
                stream = stack.enter_context(client.stream("GET", f"{api}/ctrl/events?follow=1"))
                assert stream.status_code == 200
            refused = serving.api.get("/ctrl/events", params={"follow": 1})
            assert refused.status_code == 503
            assert "TooManyStreams" in refused.text
            # The API's other endpoints answer at the stream cap (and the proxy's cap).
            assert serving.api.get("/pub/health").status_code == 200
            assert serving.api.get("/ctrl/backends").status_code == 200
        # A stream closed frees its slot.
        deadline = time.monotonic() + 10
        while True:
            with (
                httpx.Client(timeout=30) as client,
                client.stream("GET", f"{api}/ctrl/events?follow=1") as again,
            ):
                if again.status_code == 200:
                    break
            assert time.monotonic() < deadline, "the stream slots were not given back"
            time.sleep(0.05)
    finally:
        for client in held:
            client.close()
        assert serving.stop() == 0


def test_bad_caps_are_refused_by_name(tmp_path: Path) -> None:
    for option, value in [
        ("--proxy-max-connections", "0"),
        ("--proxy-max-connections", "lots"),
        ("--api-max-streams", "-1"),
        ("--proxy-max-connections", "100000000"),  # more than any fd limit here holds
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
