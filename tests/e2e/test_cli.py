"""The ``plane`` CLI client against a real ``plane serve`` (process executor)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from plane.testing.serve_process import PlaneServe

BACKEND_APP = Path(__file__).parent.parent / "executors" / "backend_app.py"
API_KEY = "test-key-0123456789"


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[PlaneServe]:
    serving = PlaneServe(tmp_path / "data", "process", "--api-key", API_KEY, "--terminate-on-exit")
    serving.api.headers["Authorization"] = f"Bearer {API_KEY}"
    yield serving
    serving.stop()


def cli(plane: PlaneServe | None, *args: str, key: str | None = API_KEY) -> tuple[int, str, str]:
    api = plane.urls["api"] if plane else "http://127.0.0.1:9"
    argv = [sys.executable, "-m", "plane.cli", *args, "--api", api]
    if key:
        argv += ["--api-key", key]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout, done.stderr


def test_connect_ls_status_logs_events_terminate(plane: PlaneServe) -> None:
    command = f"{sys.executable} {BACKEND_APP}"
    code, out, err = cli(
        plane,
        "connect",
        "--key",
        "room-1",
        "--command",
        command,
        "--env",
        "GREETING=hi",
        "--idle",
        "300",
        "--json",
    )
    assert code == 0, err
    result = orjson.loads(out)
    backend = result["backend_id"]
    assert result["status"] == "ready" and result["spawned"] is True
    assert result["url"].startswith(plane.urls["proxy"])

    code, out, _ = cli(plane, "connect", "--key", "room-1", "--command", command)
    assert code == 0 and f"joined backend {backend} (ready)" in out
    # without a spawn config: join the live backend only (a fresh token)
    code, out, err = cli(plane, "connect", "--key", "room-1")
    assert code == 0, err
    assert f"joined backend {backend} (ready)" in out

    code, out, _ = cli(plane, "ls")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["BACKEND", "STATE", "STATUS"]
    assert any(backend in row and "ready" in row and "room-1" in row for row in rows)

    code, out, _ = cli(plane, "status", backend)
    assert code == 0 and backend in out and "state=ready" in out and "status=ready" in out

    code, out, _ = cli(plane, "ls", "--state", "ready")
    assert code == 0 and backend in out
    code, out, _ = cli(plane, "ls", "--status", "scheduled")
    assert code == 0 and backend not in out

    code, out, _ = cli(plane, "logs", backend)
    assert code == 0 and out.strip(), "the backend printed a line at start"

    code, out, _ = cli(plane, "terminate", backend, "--hard")
    assert code == 0
    plane.wait_status(backend, "terminated")
    code, out, _ = cli(plane, "status", backend, "--json")
    status = orjson.loads(out)
    assert status["state"] == "terminated" and status["status"] == "terminated"
    assert status["reason"] == "external" and status["termination_reason"] == "external"

    code, out, _ = cli(plane, "events", "--json")
    types = [orjson.loads(line)["type"] for line in out.splitlines()]
    assert types[0] == "backend.requested.v1" and "backend.terminated.v1" in types

    code, out, _ = cli(plane, "status", backend, "--follow")
    assert code == 0 and out.strip().splitlines()[-1].split()[1] == "status=terminated"


def test_clear_messages_for_bad_key_unknown_backend_and_no_server(plane: PlaneServe) -> None:
    code, _, err = cli(plane, "ls", key="wrong-key-0000")
    assert code == 1 and "refused the key" in err and "Traceback" not in err

    code, _, err = cli(plane, "status", "nosuchbackend")
    assert code == 1 and "nosuchbackend" in err and "404" in err

    code, _, err = cli(None, "ls")
    assert code == 2 and "cannot reach the plane API" in err and "Traceback" not in err

    code, _, err = cli(plane, "connect")
    assert code == 2 and "--key" in err and "--image" in err and "Traceback" not in err
    code, _, err = cli(plane, "connect", "--key", "x", "--env", "A=1", "--idle", "5")
    assert code == 2 and "--env, --idle" in err and "--command" in err
    # no live backend holds the key and nothing to spawn: Plane's answer, said plainly
    code, _, err = cli(plane, "connect", "--key", "x")
    assert code == 1 and "KeyUnheldNoSpawnConfig" in err and "Traceback" not in err

    code, _, err = cli(plane, "connect", "--command", "true", "--env", "NOEQUALS")
    assert code == 2 and "NAME=VALUE" in err


def test_serve_refuses_bad_options_in_one_line(tmp_path: Path) -> None:
    for args, needle in (
        (["--executor", "kubernetes"], "--executor"),
        (["--api-listen", "nonsense:port"], "--api-listen"),
        (["--max-backends", "0"], "--max-backends"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "plane.cli", "serve", "--data-dir", str(tmp_path), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert needle in done.stderr and "Traceback" not in done.stderr


def test_serve_logs_json_lines_when_asked(tmp_path: Path) -> None:
    serving = PlaneServe(tmp_path / "data", "process", "--log-format", "json")
    assert serving.stop() == 0
    lines = [line for line in serving.log_path.read_text().splitlines() if line.strip()]
    assert lines, "plane serve logged its shutdown"
    entries = [orjson.loads(line) for line in lines]
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    assert any("shutting down" in e["message"] for e in entries)


def test_connect_to_a_backend_that_dies_says_why_and_exits_3(plane: PlaneServe) -> None:
    command = f"{sys.executable} {BACKEND_APP} --exit 4"
    code, out, err = cli(plane, "connect", "--key", "doomed", "--command", command)
    assert code == 3, (out, err)
    assert "ended before it was ready: exited" in err and "plane logs" in err
    assert "http://" not in out


def test_connect_with_an_image_to_a_process_plane_is_refused(plane: PlaneServe) -> None:
    code, _, err = cli(plane, "connect", "--key", "img", "--image", "busybox:latest")
    assert code == 1 and "command" in err and "InvalidRequest" in err


def test_tokens_expire_at_the_proxy_after_the_configured_lifetime(tmp_path: Path) -> None:
    import time

    import httpx

    serving = PlaneServe(
        tmp_path / "data", "process", "--token-lifetime", "1.5", "--terminate-on-exit"
    )
    try:
        command = [sys.executable, str(BACKEND_APP)]
        body = {"key": {"name": "short"}, "spawn_config": {"executable": {"command": command}}}
        result = serving.connect(body)
        serving.wait_status(result["backend_id"], "ready")
        assert httpx.get(result["url"], timeout=10).status_code == 200
        time.sleep(2)
        expired = httpx.get(result["url"], timeout=10)
        assert expired.status_code == 410
        assert expired.json()["kind"] == "TokenExpired"
        fresh = serving.connect({"key": {"name": "short"}})  # a new token for the same backend
        assert httpx.get(fresh["url"], timeout=10).status_code == 200
    finally:
        assert serving.stop() == 0
