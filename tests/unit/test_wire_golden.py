"""Golden fixtures freeze the log's wire format, one entry per wire tag.

``tests/golden/events.json`` was written once from the instances below and is
checked in; this test only ever reads it.  If a change to an event type makes
these tests fail, the change breaks logs already written: give the event a new
tag (``.v2``) and a new golden entry instead of editing the old one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import pytest

from plane.events import wire
from plane.events.spec import (
    BackendKey,
    Executable,
    RegistryCredentials,
    ResourceLimits,
    SpawnConfig,
)
from plane.events.types import (
    BackendActive,
    BackendClaimed,
    BackendIdle,
    BackendReady,
    BackendRequested,
    BackendStarting,
    BackendTerminated,
    BackendTerminating,
    BackendWarmed,
    ConnectionClosed,
    ConnectionOpened,
    EngineDrained,
    EngineLost,
    EngineRegistered,
    EngineReturned,
    EngineUndrained,
    Event,
    ExecutorExited,
    ExecutorStarted,
    ExecutorVanished,
    HistoryArchived,
    HttpActivityRecorded,
    KeyFencing,
    OrphanRemoved,
    ReadinessObserved,
    SpawnFailed,
    TerminationEscalated,
    TerminationKind,
    TerminationReason,
    TerminationRequested,
    TokenIssued,
    TokenRevoked,
    WarmBackendRequested,
    WarmPoolDefined,
    WarmPoolRemoved,
    WarmPoolResized,
)

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "events.json"

TOKEN_HASH = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
ADDRESS = "127.0.0.1:49153"

FULL_EXECUTABLE = Executable(
    image="ghcr.io/acme/editor:1.4.2",
    command=("python", "-m", "editor"),
    cwd="/srv/editor",
    env={"TZ": "UTC"},
    pull_policy="Never",
    resource_limits=ResourceLimits(
        cpu_period=100000,
        cpu_period_percent=50,
        cpu_time_limit=3600,
        memory_limit_bytes=536870912,
        disk_limit_bytes=1073741824,
        pids_limit=256,
    ),
    port=9090,
    credentials=RegistryCredentials(username="robot", password="hunter2"),
    mount="docs",
    network_name="plane-net",
)
FULL_SPAWN = SpawnConfig(
    executable=FULL_EXECUTABLE,
    max_idle_seconds=60.0,
    lifetime_limit_seconds=3600.0,
    start_timeout_seconds=45.5,
    stop_grace_seconds=10.0,
    use_static_token=True,
    subdomain="doc-43",
    pool="gpu",
)
"""A spawn config with every field set (for the tags written after its fields)."""

# Built by hand, never from the fixture.  Every field holds a value other than
# its default (checked below), so a field dropped or renamed on the wire shows.
EXPECTED: dict[str, Event] = {
    "backend.requested.v1": BackendRequested(
        at=1700000000.25,
        backend_id="bk-7f3a9c",
        key=BackendKey(name="doc-42", namespace="acme", tag="v2"),
        spawn_config=SpawnConfig(
            executable=Executable(
                image="ghcr.io/acme/editor:1.4.2",
                command=("python", "-m", "editor", "--port", "9090"),
                cwd="/srv/editor",
                env={"LOG_LEVEL": "debug", "TZ": "UTC"},
                pull_policy="Always",
                resource_limits=ResourceLimits(
                    cpu_period=100000,
                    cpu_period_percent=50,
                    cpu_time_limit=3600,
                    memory_limit_bytes=536870912,
                    disk_limit_bytes=1073741824,
                    pids_limit=256,
                ),
                port=9090,
            ),
            max_idle_seconds=60.0,
            lifetime_limit_seconds=3600.0,
            start_timeout_seconds=45.5,
            stop_grace_seconds=10.0,
        ),
        fencing_token=12,
    ),
    "executor.started.v1": ExecutorStarted(at=1700000001.5, address=ADDRESS, handle="c0ffee123456"),
    "executor.readiness_observed.v1": ReadinessObserved(at=1700000002.75),
    "executor.spawn_failed.v1": SpawnFailed(
        at=1700000003.0, message="pull access denied for acme/missing"
    ),
    "executor.exited.v1": ExecutorExited(at=1700000004.125, exit_code=137),
    "executor.vanished.v1": ExecutorVanished(
        at=1700000005.0, message="container not found on recovery"
    ),
    "proxy.connection_opened.v1": ConnectionOpened(at=1700000006.5, connection_id="ws-1"),
    "proxy.connection_closed.v1": ConnectionClosed(at=1700000007.5, connection_id="ws-1"),
    "proxy.http_activity.v1": HttpActivityRecorded(at=1700000008.0, requests=17),
    "api.termination_requested.v1": TerminationRequested(
        at=1700000009.0, kind=TerminationKind.HARD
    ),
    "token.issued.v1": TokenIssued(
        at=1700000010.0,
        token_hash=TOKEN_HASH,
        expires_at=1700003610.0,
        secret_token="s3cr3t-Zk9",
        user="user-123",
        auth='{"role":"editor"}',
    ),
    "token.revoked.v1": TokenRevoked(at=1700000011.0, token_hash=TOKEN_HASH),
    "plane.orphan_removed.v1": OrphanRemoved(
        at=1700000012.0, backend_id="bk-orphan", handle="deadbeef0001"
    ),
    "plane.history_archived.v1": HistoryArchived(
        at=1700000012.5,
        before=1697408012.5,
        backend_ids=("bk-old-1", "bk-old-2"),
        fencing=(KeyFencing(namespace="acme", name="doc-42", fencing_token=11),),
    ),
    "backend.starting.v1": BackendStarting(at=1700000000.25),
    "backend.ready.v1": BackendReady(at=1700000002.75, address=ADDRESS),
    "backend.idle.v1": BackendIdle(at=1700000007.5),
    "backend.active.v1": BackendActive(at=1700000013.0),
    "backend.terminating.v1": BackendTerminating(
        at=1700000014.0, reason=TerminationReason.IDLE, kind=TerminationKind.SOFT
    ),
    "backend.termination_escalated.v1": TerminationEscalated(at=1700000024.0),
    "backend.terminated.v1": BackendTerminated(
        at=1700000025.5,
        reason=TerminationReason.EXITED,
        exit_code=143,
        message="exited after the stop signal",
    ),
    "engine.registered.v1": EngineRegistered(
        at=1700000030.0,
        name="b",
        url="tcp://10.0.0.7:2376",
        publish="10.0.0.7",
        pool="gpu",
        max_backends=40,
    ),
    "engine.drained.v1": EngineDrained(at=1700000031.0, name="b"),
    "engine.undrained.v1": EngineUndrained(at=1700000032.0, name="b"),
    "engine.lost.v1": EngineLost(
        at=1700000033.0, name="b", message="engine b lost: no answer for 30 s"
    ),
    "engine.returned.v1": EngineReturned(at=1700000034.0, name="b"),
    "backend.warm_requested.v1": WarmBackendRequested(
        at=1700000040.0,
        backend_id="bk-warm-1",
        warm_pool="editors",
        spawn_config=FULL_SPAWN,
        engine="b",
    ),
    "backend.warmed.v1": BackendWarmed(at=1700000041.5, address=ADDRESS),
    "backend.claimed.v1": BackendClaimed(
        at=1700000042.0,
        key=BackendKey(name="doc-43", namespace="acme", tag="v2"),
        fencing_token=13,
        token_hash=TOKEN_HASH,
        expires_at=1700003642.0,
        secret_token="s3cr3t-Wm4",
        user="user-124",
        auth='{"role":"viewer"}',
    ),
    "warm_pool.defined.v1": WarmPoolDefined(
        at=1700000043.0,
        name="editors",
        spawn_config=FULL_SPAWN,
        size=3,
        claim_path="/plane/claim",
    ),
    "warm_pool.resized.v1": WarmPoolResized(at=1700000044.0, name="editors", size=5),
    "warm_pool.removed.v1": WarmPoolRemoved(at=1700000045.0, name="editors"),
}


def load_golden() -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads(GOLDEN.read_text(encoding="utf-8"))
    return entries


def golden_by_tag() -> dict[str, Any]:
    return {entry["type"]: entry["data"] for entry in load_golden()}


def canonical(data: Any) -> str:
    """JSON text that tells 1 from 1.0 and a list from an object: an exact compare."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


ALL_TAGS = sorted(wire.TAGS.values())

ADDED_AFTER_FIXTURE: dict[str, tuple[str, ...]] = {
    "backend.requested.v1": (
        "spawn_config.executable.credentials",
        "spawn_config.executable.mount",
        "spawn_config.executable.network_name",
        "spawn_config.use_static_token",
        "spawn_config.subdomain",
        "spawn_config.pool",
        "static_token",
        "engine",
    ),
}
"""Fields added to a tag after its fixture was written, each with a default.

A log written before them still reads (the fields take their defaults); the
fixture stays frozen, so these fields hold their defaults in ``EXPECTED`` and
are dropped from the payload before it is compared with the fixture."""


def without_added(tag: str, payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` less the fields added after the fixture (which hold their defaults)."""
    trimmed: dict[str, Any] = json.loads(json.dumps(payload))
    for dotted in ADDED_AFTER_FIXTURE.get(tag, ()):
        *parents, name = dotted.split(".")
        node = trimmed
        for part in parents:
            node = node[part]
        node.pop(name)
    return trimmed


# ------------------------------------------------------------------ coverage


def test_fixture_is_a_list_of_type_and_data() -> None:
    entries = load_golden()
    assert isinstance(entries, list)
    for entry in entries:
        assert set(entry) == {"type", "data"}
        assert isinstance(entry["type"], str)
        assert isinstance(entry["data"], dict)


def test_fixture_covers_every_tag_exactly_once() -> None:
    tags = [entry["type"] for entry in load_golden()]
    assert len(tags) == len(set(tags)), "a tag appears twice in the fixture"
    assert sorted(tags) == ALL_TAGS


def test_expected_instances_cover_every_tag_with_its_type() -> None:
    assert sorted(EXPECTED) == ALL_TAGS
    for tag, event in EXPECTED.items():
        assert wire.TYPES_BY_TAG[tag] is type(event)
        assert wire.tag_of(event) == tag


def test_tags_are_unique_and_versioned() -> None:
    assert len(set(wire.TAGS.values())) == len(wire.TAGS)
    for tag in wire.TAGS.values():
        name, _, version = tag.rpartition(".")
        assert name and version.startswith("v") and version[1:].isdigit(), tag
        assert tag == tag.lower()


def non_default_fields(obj: Any, path: str) -> list[str]:
    """Paths of attrs fields (recursively) that hold their default value."""
    found: list[str] = []
    for field in attrs.fields(type(obj)):
        value = getattr(obj, field.name)
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        if default is not attrs.NOTHING and value == default:
            found.append(f"{path}.{field.name}")
        if attrs.has(type(value)):
            found.extend(non_default_fields(value, f"{path}.{field.name}"))
    return found


@pytest.mark.parametrize("tag", ALL_TAGS)
def test_expected_instance_sets_every_field_to_a_non_default(tag: str) -> None:
    added = [f"{tag}.{dotted}" for dotted in ADDED_AFTER_FIXTURE.get(tag, ())]
    assert non_default_fields(EXPECTED[tag], tag) == added


# ------------------------------------------------------------ frozen format


@pytest.mark.parametrize("tag", ALL_TAGS)
def test_golden_payload_structures_to_the_expected_event(tag: str) -> None:
    assert wire.structure(tag, golden_by_tag()[tag]) == EXPECTED[tag]


@pytest.mark.parametrize("tag", ALL_TAGS)
def test_expected_event_unstructures_to_the_golden_payload(tag: str) -> None:
    data = golden_by_tag()[tag]
    payload = without_added(tag, wire.unstructure(EXPECTED[tag]))
    assert payload == data
    assert canonical(payload) == canonical(data)


@pytest.mark.parametrize("tag", ALL_TAGS)
def test_dumps_writes_the_golden_payload_compact_and_sorted(tag: str) -> None:
    text = wire.dumps(EXPECTED[tag])
    assert without_added(tag, json.loads(text)) == golden_by_tag()[tag]
    assert canonical(without_added(tag, json.loads(text))) == canonical(golden_by_tag()[tag])
    assert text == canonical(json.loads(text))
    assert wire.encode(EXPECTED[tag]) == (tag, text)  # the store's one-step path agrees


@pytest.mark.parametrize("tag", ALL_TAGS)
def test_loads_reads_the_golden_text(tag: str) -> None:
    text = json.dumps(golden_by_tag()[tag])
    assert wire.loads(tag, text) == EXPECTED[tag]


def test_fields_added_after_the_fixture_round_trip_with_non_default_values() -> None:
    requested = EXPECTED["backend.requested.v1"]
    assert isinstance(requested, BackendRequested)
    exe = attrs.evolve(
        requested.spawn_config.executable,
        credentials=RegistryCredentials(username="robot", password="hunter2"),
        mount="docs/42",
        network_name="plane-net",
    )
    spawn = attrs.evolve(
        requested.spawn_config,
        executable=exe,
        use_static_token=True,
        subdomain="doc-42",
        pool="gpu",
    )
    full = attrs.evolve(requested, spawn_config=spawn, static_token="s.Zm9vYmFy", engine="b")
    assert non_default_fields(full, "r") == []
    text = wire.dumps(full)
    assert wire.loads("backend.requested.v1", text) == full
    assert wire.loads("backend.requested.v1", text.replace('"docs/42"', "true")) == attrs.evolve(
        full, spawn_config=attrs.evolve(spawn, executable=attrs.evolve(exe, mount=True))
    )
    with pytest.raises(wire.WireError, match="mount"):
        wire.loads("backend.requested.v1", text.replace('"docs/42"', "42"))


def test_command_is_an_array_and_enums_are_lowercase_strings_on_the_wire() -> None:
    data = golden_by_tag()
    assert data["backend.requested.v1"]["spawn_config"]["executable"]["command"] == [
        "python",
        "-m",
        "editor",
        "--port",
        "9090",
    ]
    assert data["backend.terminating.v1"]["reason"] == "idle"
    assert data["backend.terminating.v1"]["kind"] == "soft"
    assert data["backend.terminated.v1"]["reason"] == "exited"
    assert data["api.termination_requested.v1"]["kind"] == "hard"


def test_integral_json_numbers_are_read_as_float_times() -> None:
    event = wire.structure("backend.idle.v1", {"at": 1700000000})
    assert event == BackendIdle(at=1700000000.0)
    assert isinstance(event.at, float)


def test_optional_fields_may_be_omitted_and_take_their_defaults() -> None:
    assert wire.structure("executor.started.v1", {"at": 1.0, "address": ADDRESS}) == (
        ExecutorStarted(at=1.0, address=ADDRESS, handle="")
    )
    assert wire.structure("token.revoked.v1", {"at": 1.0}) == TokenRevoked(at=1.0)


# ------------------------------------------------------------------- errors


def test_unknown_tag_raises_wire_error_naming_it() -> None:
    with pytest.raises(wire.WireError, match=r"backend\.exploded\.v1"):
        wire.structure("backend.exploded.v1", {"at": 1.0})


def test_loads_with_unknown_tag_raises_wire_error() -> None:
    with pytest.raises(wire.WireError, match=r"backend\.exploded\.v1"):
        wire.loads("backend.exploded.v1", '{"at": 1.0}')


def test_loads_of_non_json_raises_wire_error_naming_the_tag() -> None:
    with pytest.raises(wire.WireError, match=r"backend\.idle\.v1"):
        wire.loads("backend.idle.v1", "{not json")


def with_value(data: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A deep copy of ``data`` with the field at ``path`` set to ``value``."""
    copy: dict[str, Any] = json.loads(json.dumps(data))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return copy


WRONG_TYPES = [
    ("executor.exited.v1", ("at",), "yesterday"),
    ("token.issued.v1", ("expires_at",), {"when": 1}),
    ("backend.terminating.v1", ("reason",), "bored"),
    ("backend.terminating.v1", ("kind",), "gentle"),
    ("api.termination_requested.v1", ("kind",), 1),
    ("backend.requested.v1", ("fencing_token",), "twelve"),
    ("backend.requested.v1", ("spawn_config", "executable", "port"), "http"),
    ("backend.requested.v1", ("spawn_config", "max_idle_seconds"), "a minute"),
    ("backend.requested.v1", ("spawn_config", "executable", "resource_limits", "pids_limit"), []),
]


@pytest.mark.parametrize(("tag", "path", "value"), WRONG_TYPES)
def test_wrong_field_type_raises_wire_error_naming_tag_and_field(
    tag: str, path: tuple[str, ...], value: Any
) -> None:
    data = with_value(golden_by_tag()[tag], path, value)
    with pytest.raises(wire.WireError) as info:
        wire.structure(tag, data)
    message = str(info.value)
    assert tag in message
    assert "$." + ".".join(path) in message


def test_nested_object_of_wrong_type_raises_wire_error_naming_it() -> None:
    data = with_value(golden_by_tag()["backend.requested.v1"], ("key",), "doc-42")
    with pytest.raises(wire.WireError, match=r"backend\.requested\.v1.*\$\.key"):
        wire.structure("backend.requested.v1", data)


def test_missing_field_raises_wire_error_naming_it() -> None:
    data = dict(golden_by_tag()["executor.exited.v1"])
    del data["exit_code"]
    with pytest.raises(wire.WireError, match=r"executor\.exited\.v1.*exit_code"):
        wire.structure("executor.exited.v1", data)


def test_extra_field_raises_wire_error_naming_it() -> None:
    data = {**golden_by_tag()["backend.idle.v1"], "surprise": 1}
    with pytest.raises(wire.WireError, match=r"backend\.idle\.v1.*surprise"):
        wire.structure("backend.idle.v1", data)


@pytest.mark.parametrize("payload", [None, [1.0], "backend", 3])
def test_payload_that_is_not_an_object_raises_wire_error(payload: Any) -> None:
    with pytest.raises(wire.WireError, match=r"executor\.exited\.v1"):
        wire.structure("executor.exited.v1", payload)


# Payloads whose field does not fit its type, which cattrs' default hooks would
# coerce (str()/int()/float()): the wire converter must reject each one.
COERCED = [
    pytest.param(
        "executor.exited.v1",
        {"at": 1.0, "exit_code": 1.5},
        id="float-exit-code-truncated",
    ),
    pytest.param(
        "executor.exited.v1",
        {"at": 1.0, "exit_code": True},
        id="bool-exit-code",
    ),
    pytest.param(
        "executor.exited.v1",
        {"at": "12", "exit_code": 0},
        id="string-time",
    ),
    pytest.param(
        "backend.ready.v1",
        {"at": 1.0, "address": None},
        id="null-address",
    ),
    pytest.param(
        "executor.started.v1",
        {"at": 1.0, "address": 5, "handle": ""},
        id="number-address",
    ),
    pytest.param(
        "proxy.http_activity.v1",
        {"at": 1.0, "requests": 2.9},
        id="float-requests-truncated",
    ),
    pytest.param(
        "backend.requested.v1",
        with_value(
            wire.unstructure(EXPECTED["backend.requested.v1"]),
            ("spawn_config", "executable", "command"),
            "python app.py",
        ),
        id="string-command-split-into-characters",
    ),
    pytest.param(
        "backend.requested.v1",
        with_value(
            wire.unstructure(EXPECTED["backend.requested.v1"]),
            ("spawn_config", "executable", "env"),
            {"WORKERS": 4},
        ),
        id="number-env-value",
    ),
]


@pytest.mark.parametrize(("tag", "data"), COERCED)
def test_payload_of_the_wrong_scalar_type_raises_wire_error(tag: str, data: Any) -> None:
    with pytest.raises(wire.WireError, match=tag.replace(".", r"\.")):
        wire.structure(tag, data)
