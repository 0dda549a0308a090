"""``plane serve --retain DAYS`` on a real process: terminated backends move to the
archives, the history still reads as one, fencing and ids survive a restart, and
the snapshot written on the way out verifies."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from plane.events.archive import archive_paths, read_history
from plane.events.snapshot import snapshot_path
from plane.events.types import BackendRequested, HistoryArchived
from plane.testing.serve_process import PlaneServe
from replay.cli import main as replay_main
from replay.verify import verify_log

BACKEND_APP = Path(__file__).parent.parent / "executors" / "backend_app.py"
RETAIN = str(1.5 / 86_400)  # a second and a half, in days


def body(key: str) -> dict[str, object]:
    command = [sys.executable, str(BACKEND_APP)]
    return {"key": {"name": key}, "spawn_config": {"executable": {"command": command}}}


def wait_for(predicate: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_serve_archives_terminated_backends_and_keeps_one_history(tmp_path: Path) -> None:
    data = tmp_path / "data"
    log = data / "events.db"
    serve = PlaneServe(data, "process", "--retain", RETAIN)
    try:
        first = serve.connect(body("room"))
        backend = first["backend_id"]
        serve.wait_status(backend, "ready")
        serve.api.post(f"/ctrl/b/{backend}/hard-terminate").raise_for_status()
        serve.wait_status(backend, "terminated")
        wait_for(lambda: archive_paths(log) and not _in_live_log(log, backend))
        # the store still reads the archived stream for the API
        events = serve.api.get(f"/ctrl/b/{backend}/events")
        assert events.status_code == 200
        assert events.json()["events"][0]["type"] == "backend.requested.v1"
        assert serve.status(backend)["status"] == "terminated"
    finally:
        assert serve.stop() == 0
    assert snapshot_path(log).exists()
    report = verify_log(log, jobs=1)
    assert report.ok and report.archives == 1, report
    assert report.snapshot.startswith("matches")
    assert replay_main(["summary", str(log)]) == 0
    # after a restart the key's fencing token keeps increasing
    serve = PlaneServe(data, "process", "--retain", "0", "--terminate-on-exit")
    try:
        second = serve.connect(body("room"))
        serve.wait_status(second["backend_id"], "ready")
    finally:
        serve.stop()
    history = list(read_history(log))
    assert any(isinstance(r.event, HistoryArchived) for r in history)
    tokens = [
        r.event.fencing_token
        for r in history
        if isinstance(r.event, BackendRequested) and r.event.key.name == "room"
    ]
    assert tokens == [1, 2]
    assert verify_log(log, jobs=1).ok


def _in_live_log(log: Path, backend: str) -> bool:
    import sqlite3

    conn = sqlite3.connect(f"file:{log}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT 1 FROM events WHERE stream = ? LIMIT 1", (backend,))
        return row.fetchone() is not None
    finally:
        conn.close()
