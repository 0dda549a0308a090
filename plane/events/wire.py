"""The one converter between events and their stored JSON, with stable tags.

This module owns the log's wire format.  Each event type has an explicit,
versioned tag (``backend.ready.v1``); class names never reach the log, so a
class can be renamed freely.  A change to an event's meaning gets a new tag
(``.v2``) and both stay readable forever: golden fixtures in
``tests/golden/`` freeze every tag's JSON.

Error handling: :class:`WireError` (a ``ValueError``) for an unknown tag or a
payload that does not fit its type; it names the tag and the problem.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cattrs
import orjson

from plane.events import types as t

TAGS: dict[type[t.Event], str] = {
    # inputs
    t.BackendRequested: "backend.requested.v1",
    t.ExecutorStarted: "executor.started.v1",
    t.ReadinessObserved: "executor.readiness_observed.v1",
    t.SpawnFailed: "executor.spawn_failed.v1",
    t.ExecutorExited: "executor.exited.v1",
    t.ExecutorVanished: "executor.vanished.v1",
    t.ConnectionOpened: "proxy.connection_opened.v1",
    t.ConnectionClosed: "proxy.connection_closed.v1",
    t.HttpActivityRecorded: "proxy.http_activity.v1",
    t.TerminationRequested: "api.termination_requested.v1",
    t.TokenIssued: "token.issued.v1",
    t.TokenRevoked: "token.revoked.v1",
    t.OrphanRemoved: "plane.orphan_removed.v1",
    t.HistoryArchived: "plane.history_archived.v1",
    t.WarmBackendRequested: "backend.warm_requested.v1",
    t.BackendClaimed: "backend.claimed.v1",
    # decisions
    t.BackendStarting: "backend.starting.v1",
    t.BackendReady: "backend.ready.v1",
    t.BackendWarmed: "backend.warmed.v1",
    t.BackendIdle: "backend.idle.v1",
    t.BackendActive: "backend.active.v1",
    t.BackendTerminating: "backend.terminating.v1",
    t.TerminationEscalated: "backend.termination_escalated.v1",
    t.BackendTerminated: "backend.terminated.v1",
    # engines (in the system stream)
    t.EngineRegistered: "engine.registered.v1",
    t.EngineDrained: "engine.drained.v1",
    t.EngineUndrained: "engine.undrained.v1",
    t.EngineLost: "engine.lost.v1",
    t.EngineReturned: "engine.returned.v1",
    # warm pools (in the system stream)
    t.WarmPoolDefined: "warm_pool.defined.v1",
    t.WarmPoolResized: "warm_pool.resized.v1",
    t.WarmPoolRemoved: "warm_pool.removed.v1",
}
TYPES_BY_TAG: dict[str, type[t.Event]] = {tag: cls for cls, tag in TAGS.items()}


class WireError(ValueError):
    """An event could not be read from or written to the wire format."""


def _strict_str(value: Any, _: Any) -> str:
    if type(value) is not str:
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _strict_int(value: Any, _: Any) -> int:
    if type(value) is not int:
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _strict_float(value: Any, _: Any) -> float:
    kind = type(value)
    if kind is float:
        if value - value != 0.0:  # NaN or infinity: not a time, not a limit
            raise ValueError(f"expected a finite number, got {value}")
        return value  # type: ignore[no-any-return]
    if kind is int:
        return float(value)
    raise TypeError(f"expected a number, got {kind.__name__}")


def _strict_bool(value: Any, _: Any) -> bool:
    if type(value) is not bool:
        raise TypeError(f"expected true or false, got {type(value).__name__}")
    return value


def _strict_argv(value: Any, _: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(type(v) is str for v in value):
        raise TypeError("expected a list of strings")
    return tuple(value)


def _strict_mount(value: Any, _: Any) -> bool | str:
    if type(value) is bool or type(value) is str:
        return value
    raise TypeError(f"expected true, false or a path, got {type(value).__name__}")


def _make_converter(*, detailed: bool) -> cattrs.Converter:
    """A converter that never coerces: "12" is not a number and 5 is not a string."""
    made = cattrs.Converter(forbid_extra_keys=True, detailed_validation=detailed)
    made.register_structure_hook(str, _strict_str)
    made.register_structure_hook(int, _strict_int)
    made.register_structure_hook(float, _strict_float)
    made.register_structure_hook(bool, _strict_bool)
    made.register_structure_hook_func(lambda cls: cls == tuple[str, ...], _strict_argv)
    made.register_structure_hook_func(lambda cls: cls == bool | str, _strict_mount)
    for enum_cls in (t.Status, t.TerminationReason, t.TerminationKind):
        # exact registrations: these enums are str subclasses, and must not fall
        # through to the plain-string hook
        made.register_structure_hook(enum_cls, _strict_enum)
    return made


def _strict_enum(value: Any, cls: Any) -> Any:
    if isinstance(value, cls):
        return value
    return cls(_strict_str(value, cls))


converter = _make_converter(detailed=True)
"""The converter of record: unstructures events, and explains bad payloads field by field."""

_fast = _make_converter(detailed=False)
"""The same rules without per-field error bookkeeping: reading a log is hot (replay)."""


def tag_of(event: t.Event) -> str:
    return TAGS[type(event)]


_UNHOOKS: dict[type[t.Event], Callable[[Any], dict[str, Any]]] = {}


def unstructure(event: t.Event) -> dict[str, Any]:
    """The event's JSON-ready payload (without its tag)."""
    cls = type(event)
    hook = _UNHOOKS.get(cls)
    if hook is None:
        hook = _UNHOOKS[cls] = converter.get_unstructure_hook(cls)
    return hook(event)


_FAST: dict[str, tuple[Callable[[Any, Any], t.Event], type[t.Event]]] = {
    tag: (_fast.get_structure_hook(cls), cls) for tag, cls in TYPES_BY_TAG.items()
}
"""Each tag's fast structure hook and class, made once: reading a log is hot."""


def structure(tag: str, data: Any) -> t.Event:
    """Rebuild an event from its tag and payload; :class:`WireError` if they do not fit.

    The fast converter reads what fits; only a payload it refuses goes through
    the detailed one, which says field by field what is wrong.
    """
    try:
        hook, cls = _FAST[tag]
        return hook(data, cls)
    except Exception:
        return _structure_in_detail(tag, data)


def _structure_in_detail(tag: str, data: Any) -> t.Event:
    """The slow path: the detailed converter's verdict, or a :class:`WireError`."""
    cls = TYPES_BY_TAG.get(tag)
    if cls is None:
        raise WireError(f"unknown event type {tag!r}")
    try:
        event: t.Event = converter.structure(data, cls)
    except Exception as exc:
        detail = (
            "; ".join(cattrs.transform_error(exc))
            if isinstance(exc, cattrs.BaseValidationError)
            else str(exc)
        )
        raise WireError(f"bad payload for {tag}: {detail}") from exc
    return event  # the fast path refused what the detailed one accepts: trust the latter


def dumps(event: t.Event) -> str:
    """Compact, key-sorted JSON of the event's payload."""
    return encode(event)[1]


_ENCODERS: dict[type[t.Event], tuple[str, Callable[[Any], dict[str, Any]]]] = {
    cls: (tag, converter.get_unstructure_hook(cls)) for cls, tag in TAGS.items()
}


def encode(event: t.Event) -> tuple[str, str]:
    """The event's tag and :func:`dumps` text in one step (the store's hot path);
    ``KeyError`` for an object that is not a plane event."""
    tag, hook = _ENCODERS[type(event)]
    return tag, _orjson_dumps(hook(event), option=_SORT_KEYS).decode()


_orjson_dumps = orjson.dumps
_SORT_KEYS = orjson.OPT_SORT_KEYS


def loads(tag: str, text: str | bytes) -> t.Event:
    """Rebuild an event from its tag and JSON text; :class:`WireError` if they do not fit."""
    try:
        hook, cls = _FAST[tag]
        return hook(_orjson_loads(text), cls)
    except Exception:
        pass
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise WireError(f"payload of {tag} is not JSON: {exc}") from exc
    return _structure_in_detail(tag, data)


_orjson_loads = orjson.loads
