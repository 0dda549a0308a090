"""plane-replay on real log files written by a real supervisor (fake executor, MockClock)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest
import trio
import trio.testing

from plane.actors.supervisor import ConnectRequest
from plane.events.spec import BackendKey, Executable, RegistryCredentials, SpawnConfig
from plane.events.sqlite import open_sqlite_store
from plane.events.types import ConnectionClosed, ConnectionOpened, Status, TerminationKind
from plane.text_tables import iso
from replay.cli import main
from tests.shell.conftest import EPOCH, open_harness, request


async def write_log(path: Path) -> dict[str, str]:
    """A log with three lifecycles: idle reaped, exited with a code, hard-terminated."""
    async with open_sqlite_store(path) as store, open_harness(store=store) as h:
        idle = await h.supervisor.connect(request("idle-room", max_idle_seconds=30))
        exited = await h.supervisor.connect(request("exit-room"))
        killed = await h.supervisor.connect(request("kill-room"))
        for r in (idle, exited, killed):
            await h.wait_status(r.backend_id, Status.READY)
        h.supervisor.tell(idle.backend_id, ConnectionOpened(h.supervisor.clock.now(), "c1"))
        await trio.sleep(5)
        h.supervisor.tell(idle.backend_id, ConnectionClosed(h.supervisor.clock.now(), "c1"))
        h.executor.exit(exited.backend_id, 7)
        await h.supervisor.terminate(killed.backend_id, TerminationKind.HARD)
        for r in (idle, exited, killed):
            await h.wait_status(r.backend_id, Status.TERMINATED)
    return {"idle": idle.backend_id, "exited": exited.backend_id, "killed": killed.backend_id}


@pytest.fixture
def slow_autojump_clock() -> trio.testing.MockClock:
    """Jumps only after 0.2 s of real quiet, so SQLite's worker threads are waited for."""
    return trio.testing.MockClock(autojump_threshold=0.2)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_summary_lists_every_backend_with_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], slow_autojump_clock: trio.testing.MockClock
) -> None:
    log = tmp_path / "events.db"
    ids = await write_log(log)
    code, out, _ = run(capsys, "summary", str(log), "--json")
    assert code == 0
    backends = {b["backend_id"]: b for b in orjson.loads(out)["backends"]}
    assert backends[ids["idle"]]["reason"] == "idle"
    assert backends[ids["idle"]]["termination_reason"] == "swept"
    assert backends[ids["exited"]]["reason"] == "exited"
    assert backends[ids["exited"]]["termination_reason"] is None
    assert backends[ids["exited"]]["exit_code"] == 7
    assert backends[ids["exited"]]["exit_error"] is True
    assert backends[ids["killed"]]["reason"] == "external"
    assert backends[ids["killed"]]["termination_kind"] == "hard"
    assert all(b["state"] == "terminated" for b in backends.values())
    assert all(b["status"] == "terminated" for b in backends.values())
    code, out, _ = run(capsys, "summary", str(log))
    assert code == 0
    assert out.splitlines()[0].split()[:4] == ["BACKEND", "STATE", "STATUS", "REASON"]
    assert ids["idle"] in out and "idle-room" in out


async def test_timeline_shows_each_event_and_the_state_after_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], slow_autojump_clock: trio.testing.MockClock
) -> None:
    log = tmp_path / "events.db"
    ids = await write_log(log)
    code, out, _ = run(capsys, "timeline", str(log), ids["idle"], "--json")
    assert code == 0
    events = orjson.loads(out)["events"]
    states = [e["state_after"] for e in events]
    statuses = [e["status_after"] for e in events]
    types = [e["type"] for e in events]
    assert types[0] == "backend.requested.v1"
    assert states[0] == "requested" and states[-1] == "terminated"
    assert statuses[0] == "scheduled" and statuses[-1] == "terminated"
    assert "idle" in states and "idle" not in statuses
    assert "backend.idle.v1" in types and "proxy.connection_opened.v1" in types
    assert [e["version"] for e in events] == list(range(1, len(events) + 1))
    code, _, err = run(capsys, "timeline", str(log), "no-such-backend")
    assert code == 2 and "no-such-backend" in err


async def test_state_at_a_sequence_number_and_at_a_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], slow_autojump_clock: trio.testing.MockClock
) -> None:
    log = tmp_path / "events.db"
    ids = await write_log(log)
    code, out, _ = run(capsys, "state", str(log), "--at", "1", "--json")
    assert code == 0
    (only,) = orjson.loads(out)["backends"]
    assert only["state"] == "requested" and only["status"] == "scheduled"
    code, out, _ = run(capsys, "state", str(log), "--at", iso(EPOCH + 1), "--json")
    assert code == 0
    states = {b["backend_id"]: b["state"] for b in orjson.loads(out)["backends"]}
    assert states == {ids["idle"]: "ready", ids["exited"]: "ready", ids["killed"]: "ready"}
    code, _, err = run(capsys, "state", str(log), "--at", "yesterday")
    assert code == 2 and "ISO-8601" in err


async def test_verify_passes_on_a_real_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], slow_autojump_clock: trio.testing.MockClock
) -> None:
    log = tmp_path / "events.db"
    await write_log(log)
    code, out, _ = run(capsys, "verify", str(log), "--json")
    report = orjson.loads(out)
    assert code == 0, report
    assert report["ok"] and report["violations"] == [] and report["backends"] == 3


def tamper(log: Path, sql: str, *params: object) -> None:
    db = sqlite3.connect(log)
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        db.execute(f"DROP TRIGGER {name}")
    db.execute(sql, params)
    db.commit()
    db.close()


async def test_verify_names_the_first_altered_decision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], slow_autojump_clock: trio.testing.MockClock
) -> None:
    log = tmp_path / "events.db"
    ids = await write_log(log)
    db = sqlite3.connect(log)
    seq, data = db.execute(
        "SELECT seq, data FROM events WHERE stream=? AND type='backend.terminating.v1'",
        (ids["idle"],),
    ).fetchone()
    db.close()
    altered = orjson.loads(data)
    altered["reason"] = "lifetime"
    tamper(log, "UPDATE events SET data=? WHERE seq=?", orjson.dumps(altered).decode(), seq)
    code, out, _ = run(capsys, "verify", str(log), "--json")
    report = orjson.loads(out)
    assert code == 1
    first = report["violations"][0]
    assert first["seq"] == seq and first["kind"] == "divergence"
    assert first["stream"] == ids["idle"]
    code, out, _ = run(capsys, "verify", str(log))
    assert code == 1 and "FAILED" in out and str(seq) in out
    # Two processes, each folding a share of the backends, say the same.
    code, out, _ = run(capsys, "verify", str(log), "--json", "--jobs", "2")
    shared = orjson.loads(out)
    assert code == 1 and shared["processes"] == 2 and report["processes"] == 1
    assert shared["violations"] == report["violations"]
    with pytest.raises(SystemExit) as exited:
        main(["verify", str(log), "--jobs", "many"])
    assert exited.value.code == 2
    assert "--jobs: expected a whole number, not 'many'" in capsys.readouterr().err


async def test_verify_catches_a_removed_event(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], slow_autojump_clock: trio.testing.MockClock
) -> None:
    log = tmp_path / "events.db"
    ids = await write_log(log)
    tamper(
        log,
        "DELETE FROM events WHERE stream=? AND type='backend.starting.v1'",
        ids["exited"],
    )
    code, out, _ = run(capsys, "verify", str(log), "--json")
    kinds = {v["kind"] for v in orjson.loads(out)["violations"]}
    assert code == 1
    assert {"version", "illegal", "divergence"} <= kinds


def test_unreadable_logs_get_a_clear_message_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.db"
    code, _, err = run(capsys, "summary", str(missing))
    assert code == 2 and "nope.db" in err and "Traceback" not in err
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database at all" * 100)
    code, _, err = run(capsys, "verify", str(junk))
    assert code == 2 and err.startswith("plane-replay: ")
    other = tmp_path / "other.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE people (name TEXT)")
    db.commit()
    db.close()
    code, _, err = run(capsys, "summary", str(other))
    assert code == 2 and "not a plane" in err.lower()


async def test_replay_reads_a_log_that_plane_is_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "events.db"
    async with open_sqlite_store(log) as store, open_harness(store=store) as h:
        result = await h.supervisor.connect(request("live"))
        await h.wait_status(result.backend_id, Status.READY)
        code, out, _ = run(capsys, "summary", str(log), "--json")
        assert code == 0
        (backend,) = orjson.loads(out)["backends"]
        assert backend["status"] == "ready"
        code, _, _ = run(capsys, "verify", str(log))
        assert code == 0
        await h.supervisor.terminate(result.backend_id, TerminationKind.HARD)
        await h.wait_status(result.backend_id, Status.TERMINATED)


async def test_timeline_and_state_redact_secrets_unless_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], slow_autojump_clock: trio.testing.MockClock
) -> None:
    log = tmp_path / "events.db"
    executable = Executable(
        image="app:1",
        env={"SECRET": "hunter2"},
        credentials=RegistryCredentials("registry-user", "registry-pass"),
    )
    async with open_sqlite_store(log) as store, open_harness(store=store) as h:
        result = await h.supervisor.connect(
            ConnectRequest(key=BackendKey("secretive"), spawn_config=SpawnConfig(executable))
        )
        await h.wait_status(result.backend_id, Status.READY)
    assert result.secret_token is not None
    secrets = ("hunter2", "registry-pass", result.secret_token)
    for argv in (
        ("timeline", str(log), result.backend_id),
        ("timeline", str(log), result.backend_id, "--json"),
        ("state", str(log), "--at", "99", "--json"),
        ("summary", str(log), "--json"),
    ):
        code, out, _ = run(capsys, *argv)
        assert code == 0
        assert not [s for s in secrets if s in out], argv
    code, out, _ = run(capsys, "timeline", str(log), result.backend_id, "--json", "--show-secrets")
    assert code == 0 and all(s in out for s in secrets)
    code, out, _ = run(capsys, "state", str(log), "--at", "99", "--json", "--show-secrets")
    assert code == 0 and "hunter2" in out and "registry-pass" in out
