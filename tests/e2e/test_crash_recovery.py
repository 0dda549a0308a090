"""Crash recovery: ``plane serve`` killed with SIGKILL while backends run and spawns are
in flight; after a restart every live backend is adopted or recorded lost, nothing
labelled by plane is left that the log does not hold as live, and every acknowledged
request is in the log."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from plane.testing.serve_process import PlaneServe, serve_command
from replay.cli import main as replay_main

BACKEND_APP = Path(__file__).parent.parent / "executors" / "backend_app.py"
SLOW_START = (
    "import time, runpy, sys; time.sleep(1.5); sys.argv = [sys.argv[1]]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


def labelled_pids(scope: str) -> dict[str, int]:
    """backend id -> pid of every process-group leader plane labelled within ``scope``."""
    found: dict[str, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/environ").read_bytes()
            pgid = os.getpgid(int(entry))
        except (OSError, ProcessLookupError):
            continue
        env = dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
        if env.get(b"PLANE_BACKEND_SCOPE") == scope.encode() and pgid == int(entry):
            found[env[b"PLANE_BACKEND_ID"].decode()] = int(entry)
    return found


def process_body(name: str, *, slow: bool = False) -> dict[str, Any]:
    command = [sys.executable, str(BACKEND_APP)]
    if slow:
        command = [sys.executable, "-c", SLOW_START, str(BACKEND_APP)]
    return {
        "key": {"name": name},
        "spawn_config": {"executable": {"command": command}, "max_idle_seconds": 600},
    }


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "data"
    yield path
    scope = str((path / "logs").resolve())
    for pid in labelled_pids(scope).values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, 9)


def test_sigkill_with_running_and_starting_backends_then_adopt(data_dir: Path) -> None:
    plane = PlaneServe(data_dir, "process")
    try:
        ready = [plane.connect(process_body(f"ready-{i}")) for i in range(3)]
        for r in ready:
            plane.wait_status(r["backend_id"], "ready")
        # the first one's process dies while plane is down: it must be recorded lost
        victim = ready[0]["backend_id"]
        in_flight = [plane.connect(process_body(f"slow-{i}", slow=True)) for i in range(3)]
        acknowledged = {r["backend_id"] for r in ready + in_flight}
        before = httpx.get(ready[1]["url"], timeout=10)
        assert before.status_code == 200
    finally:
        plane.kill9()
    scope = str((data_dir / "logs").resolve())
    os.killpg(labelled_pids(scope)[victim], 9)

    plane = PlaneServe(data_dir, "process")
    try:
        known = {b["backend_id"]: b for b in plane.backends()}
        assert acknowledged <= set(known), "every acknowledged request is in the log"
        assert plane.wait_status(victim, "terminated")["termination_reason"] == "lost"
        for r in ready[1:]:
            status = plane.wait_status(r["backend_id"], "ready", "idle")
            assert status["status"] in ("ready", "idle")
            # adopted: same address, and the token issued before the crash still routes
            assert (
                plane.api.get(f"/ctrl/b/{r['backend_id']}").json()["address"]
                == (known[r["backend_id"]]["address"])
            )
            old_url = r["url"].replace(r["url"].split("/")[2], plane.urls["proxy"].split("/")[2])
            assert httpx.get(old_url, timeout=10).status_code == 200
        for r in in_flight:
            final = plane.wait_status(r["backend_id"], "ready", "terminated")
            if final["status"] == "terminated":
                assert final["termination_reason"] == "lost"
        live = {b["backend_id"] for b in plane.backends(live=True)}
        assert set(labelled_pids(scope)) <= live, "no labelled process the log does not hold live"
        assert victim not in live
    finally:
        assert plane.stop() == 0
    assert replay_main(["verify", str(data_dir / "events.db")]) == 0


def test_orphan_process_is_removed_and_recorded(data_dir: Path) -> None:
    plane = PlaneServe(data_dir, "process")
    try:
        first = plane.connect(process_body("soon-forgotten"))
        plane.wait_status(first["backend_id"], "ready")
    finally:
        plane.kill9()
    # a labelled process the log does not hold as live: same scope, unknown id
    scope = str((data_dir / "logs").resolve())
    env = {
        **os.environ,
        "PORT": "0",
        "PLANE_BACKEND_ID": "stranger",
        "PLANE_BACKEND_KEY": "x",
        "PLANE_BACKEND_SCOPE": scope,
    }
    stranger = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], env=env, start_new_session=True
    )
    try:
        plane = PlaneServe(data_dir, "process")
        try:
            assert stranger.wait(timeout=30) is not None
            events = plane.api.get("/ctrl/events", params={"follow": 0}).text
            assert "plane.orphan_removed.v1" in events and "stranger" in events
            assert "stranger" not in labelled_pids(scope)
            assert plane.status(first["backend_id"])["status"] in ("ready", "idle")
        finally:
            assert plane.stop() == 0
    finally:
        if stranger.poll() is None:
            stranger.kill()


def test_graceful_stop_leaves_backends_for_adoption_unless_asked(data_dir: Path) -> None:
    plane = PlaneServe(data_dir, "process")
    try:
        r = plane.connect(process_body("kept"))
        plane.wait_status(r["backend_id"], "ready")
    finally:
        assert plane.stop() == 0
    scope = str((data_dir / "logs").resolve())
    assert r["backend_id"] in labelled_pids(scope)
    plane = PlaneServe(data_dir, "process", "--terminate-on-exit")
    try:
        assert plane.status(r["backend_id"])["status"] in ("ready", "idle")
    finally:
        assert plane.stop() == 0
    assert r["backend_id"] not in labelled_pids(scope)
    assert replay_main(["verify", str(data_dir / "events.db")]) == 0


def test_second_serve_on_the_same_data_dir_is_refused(data_dir: Path) -> None:
    plane = PlaneServe(data_dir, "process")
    try:
        second = subprocess.run(
            serve_command(data_dir),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2
        assert "another plane serve" in second.stderr and "Traceback" not in second.stderr
    finally:
        assert plane.stop() == 0
