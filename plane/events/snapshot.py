"""Snapshots: what a restart needs, kept beside the log so startup skips the history.

This module owns the startup fold and its snapshot file.

:class:`StartupState` is the fold the supervisor and the projections need to
start, and nothing more: every backend not yet terminated (its folded
:class:`~plane.actors.lifecycle.BackendState`; the supervisor adopts each),
each key's highest fencing token, every backend id ever used, the version of
the system stream, and, per unfinished backend, the recorded events the
proxy's route table folds (its tokens, revocations, address).  Terminated
backends leave only their id and their key's fencing token; archived ones
(:mod:`plane.events.archive`) are summed up by the
:class:`~plane.events.types.HistoryArchived` events the live log keeps.  So
the fold's size depends on the live backends, not on the log's length.

The snapshot (``events.db.snapshot`` beside ``events.db``) is that fold as
JSON, stamped with :data:`SNAPSHOT_FORMAT`, the log's schema version, the seq
it covers and a fingerprint of the event at that seq.  It is derived data,
never instead of the log: :func:`load_startup` uses it only when it is from
this format, covers a seq the log has, and the log's event at that seq still
matches the fingerprint; otherwise (missing, corrupt, other version, from
another log, ahead of the log) it folds the whole live log instead and says
why.  Either way it then folds the tail (the events after the covered seq).
:func:`write_snapshot` writes the file atomically (temporary file, fsync,
rename); ``plane-replay verify`` compares it with a fold of the whole history
(:func:`check_snapshot`).

Speed trick kept here, **no garbage collection while loading**
(:func:`load_startup`): the file holds one id and one fencing entry per key
for every backend the history holds (51,000 for the benchmark's 1.4 M events);
building those sets, dicts and tuples triggers the cyclic collector again and
again, each pass walking everything built so far, which doubled the load's
cost.  Nothing built there is garbage, so the collector is paused for the load
(process-wide, for tens of milliseconds; it runs as usual afterwards).

Resource handling: every function here opens the log read-only
(:class:`~plane.events.sqlite.SqliteLogReader`) and closes it before
returning; a running plane may keep writing meanwhile (the fold stops at the
seq it read first).

Error handling: a snapshot that cannot be used is never an error (the reason
is returned); errors about the log itself are the store's
(:class:`~plane.events.store.StoreError`).
"""

from __future__ import annotations

import gc
import os
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import orjson

from plane import __version__
from plane.actors import lifecycle
from plane.actors.lifecycle import BackendState
from plane.events import wire
from plane.events.sqlite import SCHEMA_VERSION, SqliteLogReader
from plane.events.store import RecordedEvent
from plane.events.types import SYSTEM_STREAM, BackendTerminating, HistoryArchived
from plane.proxy.routes import KEPT_TYPES

__all__ = [
    "SNAPSHOT_FORMAT",
    "StartupState",
    "check_snapshot",
    "load_startup",
    "read_snapshot",
    "snapshot_path",
    "write_snapshot",
]

SNAPSHOT_FORMAT = 1
"""The snapshot file's format; a file of any other format is rebuilt from the log."""

Slot = tuple[str, str]


def snapshot_path(log: str | os.PathLike[str]) -> Path:
    """Where the snapshot of the log at ``log`` lives."""
    log = Path(log)
    return log.with_name(log.name + ".snapshot")


@attrs.define
class StartupState:
    """The startup fold; feed it recorded events in seq order (:meth:`apply`)."""

    seq: int = 0
    """The seq of the last event folded."""
    system_version: int = 0
    live: dict[str, BackendState] = attrs.field(factory=dict)
    """Every backend not terminated, by id (terminating ones too: they are adopted)."""
    fencing: dict[Slot, int] = attrs.field(factory=dict)
    """Each key's (namespace, name) highest fencing token."""
    ids: set[str] = attrs.field(factory=set)
    """Every backend id the history holds (live, terminated, archived)."""
    routes: dict[str, list[RecordedEvent]] = attrs.field(factory=dict)
    """Per unfinished backend, its events the proxy's route table folds."""
    fingerprint: list[Any] | None = None
    """(stream, version, tag, crc32 of data) of the event at ``seq``."""

    def apply(self, record: RecordedEvent) -> None:
        """Fold one recorded event."""
        seq, stream, version, event = record
        if seq > self.seq:
            self.seq = seq
        self.fingerprint = None
        if stream == SYSTEM_STREAM:
            self.system_version = version
            if isinstance(event, HistoryArchived):
                self.ids.update(event.backend_ids)
                for mark in event.fencing:
                    self._fence((mark.namespace, mark.name), mark.fencing_token)
            return
        state = self.live.get(stream)
        if state is None:
            if stream in self.ids:
                return  # an event after terminated: not this fold's business (verify's)
            state = lifecycle.initial
            self.ids.add(stream)
        state = lifecycle.evolve(state, event)
        if state.key is not None:
            self._fence(state.key.slot(), state.fencing_token)
        if lifecycle.is_terminal(state):
            self.live.pop(stream, None)
            self.routes.pop(stream, None)
            return
        self.live[stream] = state
        if isinstance(event, KEPT_TYPES):
            self.routes.setdefault(stream, []).append(record)
        elif isinstance(event, BackendTerminating):
            self.routes.pop(stream, None)  # the route table refuses it from now on

    def apply_all(self, records: Iterable[RecordedEvent]) -> StartupState:
        for record in records:
            self.apply(record)
        return self

    def _fence(self, slot: Slot, token: int) -> None:
        if token > self.fencing.get(slot, 0):
            self.fencing[slot] = token

    def route_records(self) -> list[RecordedEvent]:
        """The recorded events to seed the proxy's route table with, in seq order."""
        return sorted((r for rs in self.routes.values() for r in rs), key=lambda r: r.seq)

    def comparable(self) -> dict[str, Any]:
        """Everything but the fingerprint, as plain data (for equality checks)."""
        return _to_json(self, with_fingerprint=False)


# ---------------------------------------------------------------- the file


def _fingerprint(reader: SqliteLogReader, seq: int) -> list[Any] | None:
    row = reader.raw_row(seq)
    if row is None:
        return None
    stream, version, tag, data = row
    return [stream, version, tag, zlib.crc32(data.encode())]


def _to_json(state: StartupState, *, with_fingerprint: bool = True) -> dict[str, Any]:
    fencing = [(ns, name, token) for (ns, name), token in state.fencing.items()]
    out: dict[str, Any] = {
        "seq": state.seq,
        "system_version": state.system_version,
        "live": {bid: wire.converter.unstructure(s) for bid, s in sorted(state.live.items())},
        # three flat lists (namespaces, names, tokens): one entry per key ever used,
        # so the cheapest shape to parse
        "fencing": [list(column) for column in zip(*sorted(fencing), strict=True)] or [[], [], []],
        "ids": sorted(state.ids),
        "routes": [
            [r.seq, r.stream, r.version, *wire.encode(r.event)] for r in state.route_records()
        ],
    }
    if with_fingerprint:
        out["fingerprint"] = state.fingerprint
    return orjson.loads(orjson.dumps(out, default=sorted)) if not with_fingerprint else out


def _from_json(doc: dict[str, Any]) -> StartupState:
    state = StartupState(
        seq=int(doc["seq"]),
        system_version=int(doc["system_version"]),
        live={str(k): wire.converter.structure(v, BackendState) for k, v in doc["live"].items()},
        fencing={(ns, name): token for ns, name, token in zip(*doc["fencing"], strict=True)},
        ids={str(i) for i in doc["ids"]},
        fingerprint=doc["fingerprint"],
    )
    for seq, stream, version, tag, data in doc["routes"]:
        record = RecordedEvent(int(seq), str(stream), int(version), wire.loads(tag, data))
        state.routes.setdefault(record.stream, []).append(record)
    return state


def write_snapshot(log: str | os.PathLike[str], state: StartupState | None = None) -> StartupState:
    """Write the snapshot of the log at ``log`` (of ``state``, else of a fresh
    :func:`load_startup`) atomically; returns the state written."""
    log = Path(log)
    if state is None:
        state, _ = load_startup(log)
    if state.fingerprint is None:
        with SqliteLogReader(log, check=False) as reader:
            state.fingerprint = _fingerprint(reader, state.seq)
    doc = {
        "format": SNAPSHOT_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "written_by": f"plane {__version__}",
        **_to_json(state),
    }
    target = snapshot_path(log)
    temporary = target.with_name(target.name + ".tmp")
    try:
        with open(temporary, "wb") as out:
            out.write(orjson.dumps(doc, default=sorted))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except OSError:
        temporary.unlink(missing_ok=True)  # a full disk: give its space back
        raise
    _fsync_dir(target.parent)
    return state


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_snapshot(log: str | os.PathLike[str]) -> tuple[StartupState | None, str]:
    """The snapshot file of ``log`` as written, or None and why it cannot be used
    as a file (missing, unreadable, another format or schema)."""
    path = snapshot_path(log)
    try:
        doc = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None, "no snapshot"
    except (OSError, orjson.JSONDecodeError) as exc:
        return None, f"snapshot unreadable ({exc})"
    if not isinstance(doc, dict):
        return None, "snapshot unreadable (not a JSON object)"
    if doc.get("format") != SNAPSHOT_FORMAT or doc.get("schema_version") != SCHEMA_VERSION:
        return None, (
            f"snapshot of another version (format {doc.get('format')!r},"
            f" schema {doc.get('schema_version')!r})"
        )
    try:
        return _from_json(doc), "snapshot"
    except Exception as exc:  # any shape problem: derived data, rebuilt from the log
        return None, f"snapshot unreadable ({type(exc).__name__}: {exc})"


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The speed trick named in the module docstring."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_startup(log: str | os.PathLike[str]) -> tuple[StartupState, str]:
    """The startup fold of the live log at ``log``: the snapshot plus the tail when
    the snapshot is usable, else the whole log.  Returns it and how it was made
    (``"snapshot"`` or ``"rebuilt: <why>"``)."""
    with _collector_paused():
        return _load_startup(log)


def _load_startup(log: str | os.PathLike[str]) -> tuple[StartupState, str]:
    snapshot, why = read_snapshot(log)
    with SqliteLogReader(log, check=False) as reader:
        last = reader.last_seq()
        if snapshot is not None:
            if snapshot.seq > last:
                why = f"stale snapshot (covers seq {snapshot.seq}, log ends at {last})"
                snapshot = None
            elif snapshot.seq and _fingerprint(reader, snapshot.seq) != snapshot.fingerprint:
                why = f"snapshot of another log (event {snapshot.seq} differs)"
                snapshot = None
        state, how = (snapshot, "snapshot") if snapshot else (StartupState(), f"rebuilt: {why}")
        state.apply_all(reader.iter_events(state.seq, up_to_seq=last))
        state.fingerprint = _fingerprint(reader, state.seq)
    return state, how


def check_snapshot(log: str | os.PathLike[str], history: Iterable[RecordedEvent]) -> list[str]:
    """Problems of the snapshot of ``log`` against ``history`` (every event of the
    log and its archives, in seq order); empty when it matches or is absent.

    A snapshot that is unusable as a file (corrupt, another version) is no
    problem: startup rebuilds it.  One that reads fine but differs from the
    fold of the history up to its seq is.
    """
    snapshot, _ = read_snapshot(log)
    if snapshot is None:
        return []
    fold = StartupState()
    for record in history:
        if record.seq > snapshot.seq:
            break
        fold.apply(record)
    if fold.seq != snapshot.seq:
        return [f"the snapshot covers seq {snapshot.seq}, the log ends at {fold.seq}"]
    mine, theirs = fold.comparable(), snapshot.comparable()
    return [
        f"the snapshot's {name} differs from the fold of the log up to seq {snapshot.seq}"
        for name in mine
        if mine[name] != theirs[name]
    ]
