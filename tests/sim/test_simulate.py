"""The simulator in the suite: regression seeds, new histories every day, determinism,
SQLite histories, and the command that re-runs a history."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path

import pytest

from plane.actors.supervisor import Supervisor
from plane.events.sqlite import read_log
from plane.testing import simulate
from plane.testing.sim.history import Outcome, run_history
from replay.verify import verify_log

from .regressions import REGRESSIONS

DAILY = int(os.environ.get("PLANE_SIM_HISTORIES", "150"))
STEPS = 200


def _failures(outcomes: list[Outcome]) -> str:
    return "\n".join(simulate.report(o) for o in outcomes if not o.ok)


@pytest.mark.parametrize(("seed", "steps", "bug"), REGRESSIONS)
def test_regression_seed(seed: int, steps: int, bug: str) -> None:
    outcome = run_history(seed, steps)
    assert outcome.ok, f"{bug}\n{simulate.report(outcome)}"


def test_histories_seeded_from_today() -> None:
    """A few hundred histories a run, new ones every day (the seed is the date)."""
    start = datetime.date.today().toordinal() * 10_000
    summary = simulate.explore(range(start, start + DAILY), STEPS)
    print(summary.line())
    assert summary.histories == DAILY
    assert not summary.failures, _failures(summary.failures)
    # the faults are still injected and seen (the pings are sparser than plane serve's)
    for what in ("outage", "engine-lost", "engine-returned", "crash", "disk-full"):
        assert summary.stats[what] > 0, (what, summary.stats)


def test_a_seed_fixes_the_whole_history() -> None:
    for seed in (11, 12):
        first = run_history(seed, STEPS)
        second = run_history(seed, STEPS)
        assert first.ok and second.ok
        assert len(first.events) > 50
        assert first.events == second.events
        assert first.stats == second.stats
    assert run_history(11, STEPS).events != run_history(12, STEPS).events


def test_a_seed_replays_bit_for_bit_in_another_process() -> None:
    """The re-run command gives the same log whatever the process (its hash seed,
    so its memory layout, differs): equal timers fire in the order they were set."""
    outputs = set()
    for hash_seed in ("1", "2"):
        done = subprocess.run(
            [sys.executable, "-m", "plane.testing.simulate", "--seed", "1002"],
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            capture_output=True,
            text=True,
            check=True,
        )
        first = done.stdout.splitlines()[0]
        assert first.startswith("ok seed=1002 steps=200:") and "log digest" in first
        outputs.add(done.stdout)
    assert len(outputs) == 1, outputs
    assert run_history(1002, STEPS).digest in outputs.pop()


def test_histories_on_a_real_sqlite_file(tmp_path: Path) -> None:
    """Fewer, on a real SQLite log with its writer thread: the invariants only."""
    for seed in range(3):
        path = tmp_path / f"events-{seed}.db"
        outcome = run_history(seed, 120, sqlite_path=path)
        assert outcome.ok, simulate.report(outcome)
        assert outcome.store == "sqlite"
        assert [r.seq for r in read_log(path)] == [r.seq for r in outcome.events]
        assert len(outcome.events) > 20


def test_the_command_reruns_one_history(capsys: pytest.CaptureFixture[str]) -> None:
    assert simulate.main(["--seed", "5", "--steps", "40"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok seed=5 steps=40:")
    assert simulate.main(["--histories", "3", "--steps", "20", "--start-seed", "9"]) == 0
    assert "3 histories" in capsys.readouterr().out


def test_the_command_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        simulate.main(["--seed", "1", "--histories", "2"])
    assert exited.value.code == 2
    assert "one of --seed" in capsys.readouterr().err


def test_a_kept_log_is_a_plane_log_that_verifies(tmp_path: Path) -> None:
    outcome = run_history(21, 120)
    path = simulate.keep_log(outcome.events, tmp_path / "kept.db")
    assert list(read_log(path)) == outcome.events
    report = verify_log(path)
    assert report.ok and report.events == len(outcome.events) > 20


def test_a_failing_history_is_reported_with_its_command_and_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    recover = Supervisor._recover

    async def forgetful(self: Supervisor) -> None:
        await recover(self)
        self._fencing.clear()

    monkeypatch.setattr(Supervisor, "_recover", forgetful)
    failing = next(s for s in range(500, 560) if not simulate.run(s, 200).ok)
    code = simulate.main(
        ["--histories", "1", "--start-seed", str(failing), "--keep-dir", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert f"FAILED seed={failing} steps=200 store=memory: fencing:" in out
    assert "shrunk to" in out and "1 failed" in out
    (kept,) = tmp_path.glob(f"sim-{failing}-*.db")
    assert f"plane-replay timeline {kept}" in out
    assert len(list(read_log(kept))) > 0
