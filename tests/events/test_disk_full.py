"""A full disk is survived by the store: on a real 2 MB tmpfs, appends fail with
StoreFullError, reads keep working, and appends work again once space is freed,
without reopening; nothing acknowledged is lost, nothing is written twice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from plane.events.sqlite import open_sqlite_store
from plane.events.store import StoreFullError
from replay.verify import verify_log

from ..sqlite_files import integrity_ok
from ..tmpfs import mounted_tmpfs
from .histories import History


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MB tmpfs, mounted for the test and unmounted after."""
    with mounted_tmpfs(tmp_path / "disk") as mount:
        yield mount


async def test_a_full_disk_fails_appends_then_heals_without_reopening(small_disk: Path) -> None:
    log = small_disk / "events.db"
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * 400_000)  # room to free later
    history = History()
    async with open_sqlite_store(log) as store:
        full: StoreFullError | None = None
        for _ in range(10_000):
            try:
                await history.add_finished(store, 1)
            except StoreFullError as exc:
                full = exc
                break
        assert full is not None, "the disk never filled"
        assert "full" in str(full)
        acked = list(history.finished)  # the one refused was never added to it
        last = await store.last_seq()
        # reads keep working
        assert len(await store.read_all()) == last
        assert await store.read_stream(acked[0])
        # still full: refused again, nothing written half-way
        with pytest.raises(StoreFullError):
            await history.add_finished(store, 1)
        assert await store.last_seq() == last
        # space freed: the same store appends again
        filler.unlink()
        await history.add_finished(store, 3)
        records = await store.read_all()
    seqs = [r.seq for r in records]
    assert seqs == list(range(1, len(seqs) + 1)), "a gap or a duplicate"
    streams = {r.stream for r in records}
    assert set(acked) <= streams and set(history.finished[-3:]) <= streams
    assert len(streams) == len(acked) + 3  # the refused ones are nowhere
    assert integrity_ok(log)
    report = verify_log(log, jobs=1)
    assert report.ok, report.violations[:3]
