"""The whole plane under deterministic simulation: run, shrink and replay histories.

This module owns the simulator's front door (issue #17): :func:`explore` runs
many histories (:func:`plane.testing.sim.history.run_history`, one per seed),
:func:`shrink` cuts a failing history down (the same seed with fewer steps:
a history of ``k`` steps is the first ``k`` steps of a longer one, then its own
ending), :func:`keep_log` writes a history's log to a SQLite file for
``plane-replay timeline``, and :func:`report` says all of it in a few lines
with the one command that re-runs exactly that history.

Command line::

    python -m plane.testing.simulate --seed N --steps K    # one history, exactly
    python -m plane.testing.simulate --minutes 5           # a soak (or --hours 1)
    python -m plane.testing.simulate --histories 1000      # a bench: prints histories/min
    ... --sqlite                                           # on a real SQLite file

It exits 1 when a history failed (after printing its report), 0 otherwise,
2 for bad arguments.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import attrs
import trio

from plane.events.sqlite import open_sqlite_store
from plane.events.store import RecordedEvent
from plane.testing.sim.history import Outcome, run_history

DEFAULT_STEPS = 200


def run(seed: int, steps: int, *, sqlite: bool = False) -> Outcome:
    """One history, in memory or on a fresh SQLite file (removed afterwards)."""
    if not sqlite:
        return run_history(seed, steps)
    with tempfile.TemporaryDirectory(prefix="plane-sim-") as tmp:
        return run_history(seed, steps, sqlite_path=Path(tmp) / "events.db")


@attrs.define
class Summary:
    histories: int = 0
    steps: int = 0
    events: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    failures: list[Outcome] = attrs.field(factory=list)
    stats: collections.Counter[str] = attrs.field(factory=collections.Counter)
    """What the histories did, summed (faults injected, engines lost, crashes...)."""

    @property
    def per_minute(self) -> float:
        return self.histories * 60.0 / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        """The rate in wall time, and in this process's CPU time (what a shared
        machine's other work does not change much)."""
        cpu_rate = self.histories * 60.0 / self.cpu_seconds if self.cpu_seconds else 0.0
        return (
            f"{self.histories} histories ({self.steps} steps, {self.events} events) in "
            f"{self.seconds:.1f} s: {self.per_minute:.0f} histories/min "
            f"({cpu_rate:.0f} per CPU minute); {len(self.failures)} failed"
        )


def explore(
    seeds: Iterable[int],
    steps: int,
    *,
    sqlite: bool = False,
    until: float | None = None,
    stop_at_first: bool = False,
) -> Summary:
    """Run a history per seed (until ``until``, a ``time.monotonic()``, if given)."""
    summary = Summary()
    began, cpu_began = time.monotonic(), time.process_time()
    for seed in seeds:
        if until is not None and time.monotonic() >= until:
            break
        outcome = run(seed, steps, sqlite=sqlite)
        summary.histories += 1
        summary.steps += steps
        summary.events += len(outcome.events)
        summary.stats.update(outcome.stats)
        if not outcome.ok:
            summary.failures.append(outcome)
            if stop_at_first:
                break
    summary.seconds = time.monotonic() - began
    summary.cpu_seconds = time.process_time() - cpu_began
    return summary


def shrink(outcome: Outcome, *, sqlite: bool = False) -> Outcome:
    """The shortest failing history of the same seed that breaks the same invariant
    (bisection on the step count, then the failing count found)."""
    assert outcome.failure is not None
    invariant = outcome.failure.invariant
    best = outcome
    low, high = 0, outcome.steps  # high fails; find the smallest that does
    while low + 1 < high:
        middle = (low + high) // 2
        attempt = run(outcome.seed, middle, sqlite=sqlite)
        if attempt.failure is not None and attempt.failure.invariant == invariant:
            high, best = middle, attempt
        else:
            low = middle
    return best


def keep_log(events: Sequence[RecordedEvent], path: Path) -> Path:
    """Write ``events`` (a whole log, in order) to a new SQLite log at ``path``."""

    async def write() -> None:
        async with open_sqlite_store(path, synchronous="OFF") as store:
            for record in events:
                await store.append(record.stream, record.version - 1, [record.event])

    path.unlink(missing_ok=True)
    trio.run(write)
    return path


def command(seed: int, steps: int, *, sqlite: bool = False) -> str:
    flag = " --sqlite" if sqlite else ""
    return f"python -m plane.testing.simulate --seed {seed} --steps {steps}{flag}"


def report(outcome: Outcome, *, keep_dir: Path | None = None, shrunk: Outcome | None = None) -> str:
    """What a failing history broke, how to re-run it, where its log is kept."""
    assert outcome.failure is not None
    sqlite = outcome.store == "sqlite"
    lines = [
        f"FAILED seed={outcome.seed} steps={outcome.steps} store={outcome.store}: "
        f"{outcome.failure}",
        f"  re-run: {command(outcome.seed, outcome.steps, sqlite=sqlite)}",
    ]
    final = outcome
    if shrunk is not None and shrunk.steps < outcome.steps:
        final = shrunk
        lines.append(
            f"  shrunk to {shrunk.steps} steps: {shrunk.failure}\n"
            f"  re-run: {command(shrunk.seed, shrunk.steps, sqlite=sqlite)}"
        )
    if keep_dir is not None:
        path = keep_log(final.events, keep_dir / f"sim-{final.seed}-{final.steps}.db")
        lines.append(f"  log kept: {path}  (plane-replay timeline {path} BACKEND_ID)")
    return "\n".join(lines)


def _seeds(start: int) -> Iterator[int]:
    seed = start
    while True:
        yield seed
        seed += 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m plane.testing.simulate",
        description="Run plane under deterministic simulation (issue #17).",
    )
    parser.add_argument("--seed", type=int, help="run exactly the history of this seed")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="steps per history")
    parser.add_argument("--histories", type=int, help="run this many histories (a bench)")
    parser.add_argument("--minutes", type=float, help="run histories for this long (a soak)")
    parser.add_argument("--hours", type=float, help="run histories for this long (a soak)")
    parser.add_argument("--start-seed", type=int, help="first seed of a run (default: time)")
    parser.add_argument("--sqlite", action="store_true", help="on a real SQLite log file")
    parser.add_argument("--no-shrink", action="store_true", help="report failures as found")
    parser.add_argument(
        "--keep-dir", type=Path, default=Path(tempfile.gettempdir()), help="where failing logs go"
    )
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, not {args.steps}")
    chosen = [args.seed is not None, args.histories is not None, bool(args.minutes or args.hours)]
    if sum(chosen) > 1:
        parser.error("give one of --seed, --histories, --minutes/--hours")
    if args.seed is not None:
        outcome = run(args.seed, args.steps, sqlite=args.sqlite)
        if outcome.ok:
            print(
                f"ok seed={args.seed} steps={args.steps}: {len(outcome.events)} events, "
                f"log digest {outcome.digest}"
            )
            print("  " + ", ".join(f"{k} {v}" for k, v in sorted(outcome.stats.items())))
            return 0
        print(report(outcome, keep_dir=args.keep_dir))
        return 1
    start = args.start_seed if args.start_seed is not None else int(time.time())
    seeds: Iterable[int] = _seeds(start)
    until = None
    if args.histories is not None:
        seeds = range(start, start + args.histories)
    else:
        seconds = (args.minutes or 0.0) * 60 + (args.hours or 0.0) * 3600
        until = time.monotonic() + (seconds or 60.0)
    summary = explore(seeds, args.steps, sqlite=args.sqlite, until=until)
    for failure in summary.failures:
        shrunk = None if args.no_shrink else shrink(failure, sqlite=args.sqlite)
        print(report(failure, keep_dir=args.keep_dir, shrunk=shrunk))
    print(f"seeds {start}..: {summary.line()}")
    print("  " + ", ".join(f"{k} {v}" for k, v in sorted(summary.stats.items())))
    return 1 if summary.failures else 0


if __name__ == "__main__":
    sys.exit(main())
