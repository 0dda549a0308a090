"""Verifying a whole log file, on one core or on several.

This module owns the work of ``plane-replay verify`` on a file: it folds the
log and its archives as one history (:class:`plane.events.archive.HistoryReader`)
with :class:`replay.fold.LogFold` (invariants and the determinism check),
checks the snapshot beside the log against a fold of that history
(:func:`plane.events.snapshot.check_snapshot`; a violation of kind
``snapshot`` if it differs) and returns a :class:`VerifyReport`.

Streams are independent: each backend's events are checked against that
backend's own state only.  So a big log is split by stream over worker
processes (forked, so nothing is imported again).  The parent reads the last
sequence number once; every worker reads the same snapshot (the events up to
that number, even while plane keeps writing), skips the rows of streams that
are not its share before decoding them, and folds the rest.  The reports are
merged into exactly the report one process gives (a test checks this on
altered logs).  The order of sequence numbers across streams needs no worker:
SQLite hands rows out by their unique ``seq``.

Errors reading the file are raised as :class:`~plane.events.store.StoreError`
from whichever process met them; a worker that dies (killed, out of memory)
raises :class:`VerifyWorkerDied`.
"""

from __future__ import annotations

import multiprocessing
import os
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import attrs

from plane.events.archive import HistoryReader
from plane.events.snapshot import check_snapshot, snapshot_path
from replay.fold import LogFold, Violation

PARALLEL_FROM_EVENTS = 50_000
"""Below this many events one process is quicker than starting others."""

MAX_JOBS = 8


class VerifyWorkerDied(Exception):
    """A worker process ended without a report; the message says what to do."""


@attrs.frozen
class VerifyReport:
    """What verifying a log found; ``ok`` when ``violations`` is empty."""

    events: int
    backends: int
    last_seq: int
    violations: tuple[Violation, ...]
    jobs: int
    snapshot: str = "none"
    """``none``, ``matches the log at seq N``, or what is wrong with it."""
    archives: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations


@attrs.frozen
class _Part:
    events: int
    backends: int
    violations: tuple[Violation, ...]


def can_fork() -> bool:
    """Whether worker processes can be forked here (Linux and the like)."""
    return "fork" in multiprocessing.get_all_start_methods()


def auto_jobs(events: int) -> int:
    """How many processes to verify ``events`` events with: one for a small log."""
    if events < PARALLEL_FROM_EVENTS or not can_fork():
        return 1
    return max(1, min(os.cpu_count() or 1, MAX_JOBS))


def verify_log(path: str | os.PathLike[str], *, jobs: int | None = None) -> VerifyReport:
    """Verify the log at ``path`` with ``jobs`` processes (``None``: :func:`auto_jobs`)."""
    if jobs is not None and jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}")
    with HistoryReader(path) as reader:  # checks the files once, for every worker
        last_seq = reader.last_seq()
        archives = len(reader.archives)
        snapshot, snapshot_violations = _check_snapshot(path, reader, last_seq)
        if jobs is None:
            jobs = auto_jobs(last_seq)
        if jobs == 1 or not can_fork():
            fold = LogFold(verify=True).feed_all(reader.iter_events(up_to_seq=last_seq))
            violations = [*fold.finish(last_seq), *snapshot_violations]
            return VerifyReport(
                fold.events,
                len(fold.backends),
                last_seq,
                tuple(violations),
                1,
                snapshot,
                archives,
            )
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=jobs - 1, mp_context=context) as pool:
        others = [
            pool.submit(_verify_share, Path(path), share, jobs, last_seq)
            for share in range(1, jobs)
        ]
        parts = [_verify_share(Path(path), 0, jobs, last_seq)]
        try:
            parts += [future.result() for future in others]
        except BrokenProcessPool as exc:
            raise VerifyWorkerDied(
                f"a verify process died before it reported ({exc});"
                " run again, or with --jobs 1 to use one process"
            ) from None
    merged = sorted(
        (v for part in parts for v in part.violations),
        key=lambda v: (v.seq, v.kind == "incomplete", v.stream if v.kind == "incomplete" else ""),
    )
    return VerifyReport(
        events=sum(part.events for part in parts),
        backends=sum(part.backends for part in parts),
        last_seq=last_seq,
        violations=(*merged, *snapshot_violations),
        jobs=jobs,
        snapshot=snapshot,
        archives=archives,
    )


def _check_snapshot(
    path: str | os.PathLike[str], reader: HistoryReader, last_seq: int
) -> tuple[str, list[Violation]]:
    """The snapshot beside the log against a fold of the history up to its seq."""
    if not snapshot_path(path).exists():
        return "none", []
    problems = check_snapshot(path, reader.iter_events(up_to_seq=last_seq))
    if not problems:
        return "matches the log (or is unusable and will be rebuilt at startup)", []
    return "DIFFERS from the log", [
        Violation(last_seq, "", "snapshot", problem) for problem in problems
    ]


def _verify_share(path: Path, share: int, shares: int, last_seq: int) -> _Part:
    """Fold the streams of one share (of ``shares``) of the log, up to ``last_seq``."""
    with HistoryReader(path, check=False) as reader:
        records = reader.iter_events(up_to_seq=last_seq, keep_stream=_share_of(share, shares))
        fold = LogFold(verify=True).feed_all(records)
    violations = fold.finish(last_seq)
    return _Part(fold.events, len(fold.backends), tuple(violations))


def _share_of(share: int, shares: int) -> Callable[[str], bool]:
    """Whether a stream belongs to ``share``: a stable hash of its name (cached)."""
    mine: dict[str, bool] = {}

    def keep(stream: str) -> bool:
        kept = mine.get(stream)
        if kept is None:
            kept = mine[stream] = zlib.crc32(stream.encode()) % shares == share
        return kept

    return keep
