"""Snapshots: startup from snapshot + tail equals the fold of the whole log, and a
snapshot that cannot be trusted is rebuilt from the log."""

from __future__ import annotations

import gc
from pathlib import Path

import orjson
import pytest

from plane.actors import lifecycle
from plane.events import snapshot as snapshot_module
from plane.events.snapshot import (
    StartupState,
    check_snapshot,
    load_startup,
    read_snapshot,
    snapshot_path,
    write_snapshot,
)
from plane.events.sqlite import SqliteLogReader, open_sqlite_store, read_log
from plane.events.types import (
    SYSTEM_STREAM,
    Event,
    OrphanRemoved,
    TerminationKind,
    TerminationRequested,
)

from .histories import History


def supervisor_fold(log: Path) -> dict[str, object]:
    """What Supervisor._recover folds at startup, spelled out on its own: every
    stream folded, the non-terminated kept, each key's highest fencing token."""
    streams: dict[str, list[Event]] = {}
    system_version = 0
    for record in read_log(log):
        if record.stream == SYSTEM_STREAM:
            system_version = record.version
            continue
        streams.setdefault(record.stream, []).append(record.event)
    live: dict[str, lifecycle.BackendState] = {}
    fencing: dict[tuple[str, str], int] = {}
    for backend_id, events in streams.items():
        state = lifecycle.fold(events)
        assert state.key is not None
        slot = state.key.slot()
        fencing[slot] = max(fencing.get(slot, 0), state.fencing_token)
        if not lifecycle.is_terminal(state):
            live[backend_id] = state
    return {"live": live, "fencing": fencing, "ids": set(streams), "system": system_version}


def as_supervisor_sees(state: StartupState) -> dict[str, object]:
    return {
        "live": state.live,
        "fencing": state.fencing,
        "ids": state.ids,
        "system": state.system_version,
    }


async def make_log(log: Path) -> History:
    history = History()
    async with open_sqlite_store(log) as store:
        await history.add_finished(store, 30)
        await history.add_live(store, 5)
        await store.append(SYSTEM_STREAM, 0, [OrphanRemoved(1.7e9, "stranger")])
    return history


async def test_snapshot_plus_tail_equals_the_full_fold(tmp_path: Path) -> None:
    log = tmp_path / "events.db"
    history = await make_log(log)
    written = write_snapshot(log)
    assert written.seq == SqliteLogReader(log).last_seq()
    # the tail: more finished, more live, one live backend asked to terminate
    async with open_sqlite_store(log) as store:
        await history.add_finished(store, 4)
        await history.add_live(store, 2)
        first = history.live[0]
        version = len(await store.read_stream(first))
        await store.append(first, version, [TerminationRequested(1.7e9 + 5, TerminationKind.SOFT)])
    state, how = load_startup(log)
    assert how == "snapshot"
    full = StartupState().apply_all(read_log(log))
    assert state.comparable() == full.comparable()
    expected = supervisor_fold(log)
    assert as_supervisor_sees(state) == expected
    assert set(state.live) == set(history.live)
    assert state.fencing[("ns", "room-3")] == history.fencing["room-3"]
    assert state.system_version == 1
    # the route table's live entries: the tokens of the live backends only
    routed = {r.stream for r in state.route_records()}
    assert routed == set(history.live)
    assert check_snapshot(log, read_log(log)) == []


@pytest.mark.parametrize("damage", ["missing", "corrupt", "other-format", "ahead", "other-log"])
async def test_an_untrustworthy_snapshot_is_rebuilt_from_the_log(
    tmp_path: Path, damage: str
) -> None:
    log = tmp_path / "events.db"
    await make_log(log)
    write_snapshot(log)
    path = snapshot_path(log)
    doc = orjson.loads(path.read_text())
    if damage == "missing":
        path.unlink()
    elif damage == "corrupt":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "other-format":
        path.write_bytes(orjson.dumps({**doc, "format": 99}))
    elif damage == "ahead":
        path.write_bytes(orjson.dumps({**doc, "seq": doc["seq"] + 10}))
    else:  # a snapshot of another log: its last event differs from ours
        other = tmp_path / "other" / "events.db"
        other.parent.mkdir()
        async with open_sqlite_store(other) as store:
            await History(keys=2).add_finished(store, 40)
        write_snapshot(other)
        path.write_bytes(snapshot_path(other).read_bytes())
    state, how = load_startup(log)
    assert how.startswith("rebuilt: ")
    assert state.comparable() == StartupState().apply_all(read_log(log)).comparable()


async def test_verify_finds_a_snapshot_that_lies(tmp_path: Path) -> None:
    log = tmp_path / "events.db"
    await make_log(log)
    write_snapshot(log)
    path = snapshot_path(log)
    doc = orjson.loads(path.read_text())
    doc["fencing"][2][0] += 100  # the first key's token
    path.write_bytes(orjson.dumps(doc))
    snapshot, why = read_snapshot(log)
    assert snapshot is not None, why
    problems = check_snapshot(log, read_log(log))
    assert problems and "fencing" in problems[0]


@pytest.mark.parametrize("enabled", [True, False])
async def test_load_startup_leaves_the_collector_as_it_found_it(
    tmp_path: Path, enabled: bool
) -> None:
    log = tmp_path / "events.db"
    await make_log(log)
    write_snapshot(log)
    seen: list[bool] = []
    real = snapshot_module.read_snapshot

    def spying(path: Path) -> object:
        seen.append(gc.isenabled())
        return real(path)

    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(snapshot_module, "read_snapshot", spying)
            state, how = load_startup(log)
        assert how == "snapshot" and len(state.live) == 5
        assert seen == [False], "the collector is paused while the fold is built"
        assert gc.isenabled() is enabled, "and left as it was afterwards"
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(snapshot_module, "read_snapshot", lambda _p: 1 / 0)
            with pytest.raises(ZeroDivisionError):
                load_startup(log)
        assert gc.isenabled() is enabled, "also when the load fails"
    finally:
        (gc.enable if was else gc.disable)()
