"""An append that returned survives kill -9 of the process, and the log stays sound.

A child process (``appender_child.py``) appends in a loop and prints ``acked
<stream> <version>`` after each append returns; we SIGKILL it at a random
moment, then check the file: ``PRAGMA integrity_check`` is ok, every
acknowledged event is there, seq is gap-free and every stream's versions are
contiguous.  The next round's child reopens the same log and carries on.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import trio

from plane.events.sqlite import SqliteLogReader, open_sqlite_store

from ..sqlite_files import integrity_ok

CHILD = Path(__file__).with_name("appender_child.py")
REPO = Path(__file__).resolve().parents[2]
ROUNDS = 5


def spawn(log: Path, round_: int) -> subprocess.Popen[str]:
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(log), str(round_)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def kill_and_collect(child: subprocess.Popen[str]) -> tuple[list[str], str]:
    child.send_signal(signal.SIGKILL)
    out, err = child.communicate(timeout=10)
    assert child.returncode == -signal.SIGKILL, (child.returncode, err)
    return out.splitlines(keepends=True), err


def acked_versions(lines: list[str]) -> dict[str, int]:
    acked: dict[str, int] = {}
    for line in lines:
        if line.startswith("acked ") and line.endswith("\n"):  # a torn last line is no ack
            _, stream, version = line.split()
            acked[stream] = max(acked.get(stream, 0), int(version))
    return acked


def check_log(log: Path, acked: dict[str, int]) -> int:
    """Assert the log is sound and holds every acknowledged event; returns its size."""
    assert integrity_ok(log)
    with SqliteLogReader(log) as reader:
        events = list(reader.iter_events())
        assert reader.last_seq() == len(events)
    assert [r.seq for r in events] == list(range(1, len(events) + 1))
    versions: defaultdict[str, list[int]] = defaultdict(list)
    for recorded in events:
        versions[recorded.stream].append(recorded.version)
    for stream, seen in versions.items():
        assert seen == list(range(1, len(seen) + 1)), stream
    for stream, version in acked.items():
        assert len(versions[stream]) >= version, (
            f"{stream}: acknowledged up to version {version}, log has {len(versions[stream])}"
        )
    return len(events)


def test_acknowledged_appends_survive_kill_9(tmp_path: Path) -> None:
    log = tmp_path / "events.sqlite"
    rng = random.Random()
    acked: dict[str, int] = {}
    deadline = time.monotonic() + 60
    sizes = []
    for round_ in range(ROUNDS):
        child = spawn(log, round_)
        if round_ == 0:
            # Round 0 may die anywhere, even while the log is being created.
            time.sleep(rng.uniform(0.0, 0.6))
        else:
            assert child.stdout is not None
            ready = child.stdout.readline()
            assert ready == "ready\n", (ready, child.stderr.read() if child.stderr else "")
            time.sleep(rng.uniform(0.05, 0.5))
        lines, err = kill_and_collect(child)
        new = acked_versions(lines)
        assert round_ == 0 or new, f"round {round_} acknowledged nothing: {err}"
        acked.update(new)
        if log.exists():
            sizes.append(check_log(log, acked))
        assert time.monotonic() < deadline
    assert sizes and sizes[-1] >= sum(acked.values()) > 0
    assert sizes == sorted(sizes)

    async def reopen() -> int:
        async with open_sqlite_store(log) as store:
            return await store.last_seq()

    assert trio.run(reopen) == sizes[-1]
