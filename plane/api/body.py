"""Request bodies: JSON in, validated plane types out.

This module owns how the API reads what clients send: the JSON of ``POST
/ctrl/connect`` (Plane's field names) becomes a
:class:`~plane.actors.supervisor.ConnectRequest`, and the optional body of
``POST /ctrl/b/{id}/revoke`` becomes a token (or None: all tokens; an unknown
field there is refused, never read as "all"), and Plane's ``POST
/ctrl/b/revoke`` body becomes a backend id and a user.

Parsing goes through one strict cattrs converter into the wire models
(:class:`ConnectBody` and friends), whose fields declare their constraints
once, as attrs metadata (:class:`Check`, made by :func:`wire_field`; a
:class:`Rule` for a constraint on several fields).  :func:`problems` reads
them to refuse a bad value naming the field; :mod:`plane.api.openapi` reads
the same declarations to publish each request body's JSON Schema, so the
document and the checks cannot disagree.  The wire models are then mapped
onto the log's spec types (:mod:`plane.events.spec`).  The converter is
strict where cattrs is lenient by default: a number is never accepted for a
string (nor ``"8080"`` for a port), a string never for a list (cattrs would
split it into characters), ``true`` never for a number.  Fields this API does
not know are ignored, as Plane's serde ignores them (``WIRE_CLOSED`` models
refuse them).  Every field Plane defines is read; a non-default value this
plane cannot honour is refused by name (``_NOT_YET_HONOURED``), never
accepted and ignored.

To add a request body: declare an attrs class here with ``wire_field``
constraints, parse it with :func:`parse_body`, and name it as the route's
``body`` in :mod:`plane.api.routes`; its schema follows.

Error handling
--------------
Everything wrong with a body is an :class:`~plane.api.errors.ApiError` 400:
``InvalidJson`` when it is not JSON (or not UTF-8, or uses ``NaN``), and
``InvalidRequest`` when it is JSON of the wrong shape or out of range; the
message names every offending field by its JSON path, e.g. ``expected an
integer, got a string @ $.spawn_config.executable.port``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar

import attrs
import cattrs
import orjson
from cattrs.gen import make_dict_structure_fn

from plane.actors.supervisor import ConnectRequest
from plane.api.errors import ApiError
from plane.cluster import MAX_SUBDOMAIN_CHARS, SUBDOMAIN_PATTERN
from plane.events.spec import (
    BackendKey,
    Executable,
    RegistryCredentials,
    ResourceLimits,
    SpawnConfig,
)
from plane.tokens import BACKEND_ID_PATTERN

PULL_POLICIES = ("IfNotPresent", "Always", "Never")
MAX_KEY_CHARS = 256
MAX_TEXT_CHARS = 4096
MAX_SECONDS = 1e9
"""Upper bound of every duration (about 31 years): keeps deadline arithmetic finite."""
MAX_INT64 = 2**63 - 1
WARM_POOL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_WARM_POOL_NAME = re.compile(WARM_POOL_NAME_PATTERN)
NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
NO_NUL = r"^[^\x00]*$"
ENV_NAME_PATTERN = r"^[^=\x00]+$"
T = TypeVar("T")
CHECK = "plane.check"
"""The attrs metadata key of a wire field's :class:`Check`."""


# ------------------------------------------------------- field constraints


@attrs.frozen
class Check:
    """The constraints on one wire field, declared once and read twice: by
    :func:`problems` (which refuses a value breaking one, naming the field) and
    by :mod:`plane.api.openapi` (which publishes each as its JSON Schema keyword).

    ``min_length``/``max_length`` count characters of a string or items of an
    array; ``pattern`` must match the whole string (``says`` is the message when
    it does not); ``items``, ``keys`` and ``values`` apply to each element of an
    array, each name and each value of an object."""

    minimum: float | None = None
    exclusive_minimum: float | None = None
    maximum: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    says: str | None = None
    enum: tuple[str, ...] | None = None
    items: Check | None = None
    keys: Check | None = None
    values: Check | None = None
    description: str | None = None

    def schema(self) -> dict[str, Any]:
        """These constraints as JSON Schema keywords (``items`` etc. excepted)."""
        out: dict[str, Any] = {}
        for name, keyword in (
            ("minimum", "minimum"),
            ("exclusive_minimum", "exclusiveMinimum"),
            ("maximum", "maximum"),
            ("pattern", "pattern"),
        ):
            value = getattr(self, name)
            if value is not None:
                out[keyword] = value
        if self.enum is not None:
            out["enum"] = list(self.enum)
        if self.description is not None:
            out["description"] = self.description
        return out


@attrs.frozen
class Rule:
    """A constraint on a whole wire object (several fields together): ``test``
    answers the problem or None; ``schema`` is the same rule in JSON Schema."""

    test: Callable[[Any], str | None]
    schema: dict[str, Any]


def checks(**check: Any) -> dict[str, Check]:
    """attrs metadata declaring a wire field's :class:`Check`."""
    return {CHECK: Check(**check)}


def wire_field(default: Any, **check: Any) -> Any:
    """An optional wire-model field (``default``) with the constraints of
    :class:`Check`; a required one is ``attrs.field(metadata=checks(...))``."""
    return attrs.field(default=default, metadata=checks(**check))


def check_of(field: attrs.Attribute[Any]) -> Check | None:
    found = field.metadata.get(CHECK)
    return found if isinstance(found, Check) else None


def _num(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else str(value)


def _value_problem(check: Check, value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        low, high = check.minimum, check.maximum
        if low is not None and high is not None and not low <= value <= high:
            return f"must be between {_num(low)} and {_num(high)}"
        if check.exclusive_minimum is not None and value <= check.exclusive_minimum:
            return f"must be more than {_num(check.exclusive_minimum)}"
        if low is not None and value < low:
            return "must be zero or more" if low == 0 else f"must be at least {_num(low)}"
        if high is not None and value > high:
            return f"must be at most {_num(high)}"
        return None
    if isinstance(value, str | list | dict):
        if check.min_length is not None and len(value) < check.min_length:
            return (
                "must not be empty"
                if check.min_length == 1
                else (f"must be at least {check.min_length} long")
            )
        if check.max_length is not None and len(value) > check.max_length:
            unit = "characters" if isinstance(value, str) else "items"
            return f"must be at most {check.max_length} {unit}"
    if isinstance(value, str):
        if check.enum is not None and value not in check.enum:
            return f"must be one of {', '.join(check.enum)}"
        if check.pattern is not None and not re.fullmatch(check.pattern, value):
            return check.says or f"must match {check.pattern}"
    return None


def _field_problems(check: Check, value: Any, at: str) -> Iterator[str]:
    problem = _value_problem(check, value)
    if problem is not None:
        yield f"{problem} @ {at}"
        return
    if isinstance(value, list) and check.items is not None:
        for i, item in enumerate(value):
            yield from _field_problems(check.items, item, f"{at}[{i}]")
    if isinstance(value, dict):
        for name, item in value.items():
            if check.keys is not None and (why := _value_problem(check.keys, name)):
                yield f"invalid name {name[:40]!r}: {why} @ {at}"
            elif check.values is not None:
                yield from _field_problems(check.values, item, f"{at}[{name!r}]")


def problems(obj: Any, at: str = "$") -> list[str]:
    """Every constraint a structured wire object breaks (its own :class:`Rule`\\ s,
    each field's :class:`Check`, then the same for nested wire objects), each as
    ``"<what> @ <JSON path>"``."""
    found: list[str] = []
    for rule in getattr(type(obj), "WIRE_RULES", ()):
        if (problem := rule.test(obj)) is not None:
            found.append(f"{problem} @ {at}")
    for field in attrs.fields(type(obj)):
        value = getattr(obj, field.name)
        if value is None:
            continue
        path = f"{at}.{field.name}"
        check = check_of(field)
        if check is not None:
            found.extend(_field_problems(check, value, path))
        if attrs.has(type(value)):
            found.extend(problems(value, path))
    return found


def _text_check(limit: int, *, empty: bool = True) -> dict[str, Check]:
    return checks(
        min_length=None if empty else 1,
        max_length=limit,
        pattern=NO_CONTROL,
        says="must not contain control characters",
    )


def _text(limit: int, *, empty: bool = True) -> Any:
    return attrs.field(default=None, metadata=_text_check(limit, empty=empty))


def _limit(low: int = 1, high: int = MAX_INT64) -> Any:
    return wire_field(None, minimum=low, maximum=high)


def _seconds(*, zero: bool = False, description: str | None = None) -> Any:
    if zero:
        return wire_field(None, minimum=0, maximum=MAX_SECONDS, description=description)
    return wire_field(None, exclusive_minimum=0, maximum=MAX_SECONDS, description=description)


_NOT_NUL = Check(pattern=NO_NUL, says="must not contain NUL")


# ---------------------------------------------------------------- wire models
# The request bodies exactly as clients send them (Plane's field names).  Each
# field's constraints are declared here, once (see Check and Rule); the
# OpenAPI document's request schemas are generated from these classes.


@attrs.frozen
class Key:
    """At most one live backend per (namespace, name)."""

    name: str = attrs.field(metadata=_text_check(MAX_KEY_CHARS, empty=False))
    namespace: str | None = _text(MAX_KEY_CHARS)
    tag: str | None = _text(MAX_KEY_CHARS)


@attrs.frozen
class ResourceLimitsBody:
    """Plane's resource limits; each must be positive."""

    cpu_period: int | None = _limit()
    cpu_period_percent: int | None = _limit(1, 100)
    cpu_time_limit: int | None = _limit()
    memory_limit_bytes: int | None = _limit()
    disk_limit_bytes: int | None = _limit()
    pids_limit: int | None = _limit()


def _image_or_command(exe: ExecutableBody) -> str | None:
    return (
        None
        if exe.image is not None or exe.command is not None
        else ("needs an image or a command")
    )


@attrs.frozen
class ExecutableBody:
    """What to run: an image (Docker) and/or a command (local process)."""

    WIRE_RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            _image_or_command,
            {
                "anyOf": [
                    {"required": ["image"], "properties": {"image": {"type": "string"}}},
                    {"required": ["command"], "properties": {"command": {"type": "array"}}},
                ]
            },
        ),
    )

    image: str | None = _text(MAX_KEY_CHARS * 2, empty=False)
    env: dict[str, str] | None = attrs.field(
        default=None,
        metadata=checks(
            keys=Check(min_length=1, max_length=MAX_KEY_CHARS, pattern=ENV_NAME_PATTERN),
            values=_NOT_NUL,
        ),
    )
    pull_policy: str | None = wire_field(None, enum=PULL_POLICIES)
    resource_limits: ResourceLimitsBody | None = None
    port: int | None = wire_field(None, minimum=1, maximum=65535)
    command: list[str] | None = attrs.field(
        default=None, metadata=checks(min_length=1, items=_NOT_NUL)
    )
    cwd: str | None = _text(MAX_TEXT_CHARS, empty=False)
    credentials: RegistryCredentials | None = None
    mount: bool | str | None = wire_field(
        None,
        description="true: MOUNT_BASE/<key name>; a string: MOUNT_BASE/<that relative path>",
    )
    network_name: str | None = None


def _executable_or_warm_pool(cfg: SpawnConfigBody) -> str | None:
    if cfg.warm_pool is None:
        return None if cfg.executable is not None else "needs an executable (or a warm_pool)"
    given = [
        f.name
        for f in attrs.fields(type(cfg))
        if f.name != "warm_pool" and getattr(cfg, f.name) is not None
    ]
    if given:
        return (
            f"a spawn_config with warm_pool holds nothing else (the pool's template does), "
            f"not {', '.join(given)}"
        )
    return None


@attrs.frozen
class SpawnConfigBody:
    """Plane's spawn config: what to run and how long it may live; or (ours) only
    ``warm_pool``, to claim a warm backend of that pool."""

    WIRE_RULES: ClassVar[tuple[Rule, ...]] = ()  # set below, once the fields exist

    executable: ExecutableBody | None = None
    max_idle_seconds: float | None = _seconds()
    lifetime_limit_seconds: float | None = _seconds()
    id: str | None = wire_field(None, pattern=BACKEND_ID_PATTERN)
    start_timeout_seconds: float | None = _seconds()
    stop_grace_seconds: float | None = _seconds(zero=True)
    cluster: str | None = wire_field(None, description="Must be this plane's cluster name.")
    pool: str | None = wire_field(
        None,
        description="The engines' pool to place it on (empty: the default pool); a pool "
        "no engine serves: 503 NoDroneAvailable.",
    )
    use_static_token: bool | None = None
    subdomain: str | None = wire_field(
        None,
        max_length=MAX_SUBDOMAIN_CHARS,
        pattern=SUBDOMAIN_PATTERN,
        says="must be lowercase letters, digits and '-', not starting or ending with '-'",
    )
    warm_pool: str | None = wire_field(
        None,
        pattern=WARM_POOL_NAME_PATTERN,
        description="Ours: claim a warm backend of this pool (then nothing else may be given).",
    )


SpawnConfigBody.WIRE_RULES = (
    Rule(
        _executable_or_warm_pool,
        {
            "oneOf": [
                {
                    "required": ["executable"],
                    "properties": {"executable": {"type": "object"}, "warm_pool": {"type": "null"}},
                },
                {
                    "required": ["warm_pool"],
                    "properties": {
                        **{
                            f.name: {"type": "null"}
                            for f in attrs.fields(SpawnConfigBody)
                            if f.name != "warm_pool"
                        },
                        "warm_pool": {"type": "string"},
                    },
                },
            ]
        },
    ),
)


@attrs.frozen
class ConnectBody:
    """Plane's connect body; unknown fields are ignored."""

    key: Key | None = None
    spawn_config: SpawnConfigBody | None = None
    user: str | None = _text(MAX_TEXT_CHARS)
    auth: Any = attrs.field(
        default=None, metadata=checks(description="Any JSON; sent to the backend as compact JSON.")
    )


@attrs.frozen
class RevokeBody:
    """One token (by value) or, with no token, all of them; unknown fields are refused."""

    WIRE_CLOSED: ClassVar[bool] = True

    token: str | None = wire_field(None, min_length=1)


@attrs.frozen
class RevokeUserBody:
    """Plane's ``RevokeRequest``."""

    backend_id: str = attrs.field(metadata=_text_check(64, empty=False))
    user: str = attrs.field(metadata=_text_check(MAX_TEXT_CHARS, empty=False))


def _template_fields(body: WarmPoolBody) -> str | None:
    cfg = body.spawn_config
    if cfg is None:
        return None
    named = [f for f in ("id", "warm_pool", "cluster") if getattr(cfg, f) is not None]
    if named:
        return f"a warm pool's template cannot have {', '.join(named)}"
    return None if cfg.executable is not None else "the template needs an executable"


@attrs.frozen
class WarmPoolBody:
    """``PUT /ctrl/warm-pools/{name}`` (ours): a template (a connect's
    spawn_config less ``id``, ``warm_pool`` and ``cluster``; omitted: keep the
    pool's), a size and an optional claim hook path; unknown fields are refused."""

    WIRE_CLOSED: ClassVar[bool] = True
    WIRE_RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            _template_fields,
            {
                "allOf": [
                    {
                        "properties": {
                            "spawn_config": {
                                "anyOf": [
                                    {"type": "null"},
                                    {
                                        "type": "object",
                                        "required": ["executable"],
                                        "properties": {
                                            "executable": {"type": "object"},
                                            "id": {"type": "null"},
                                            "warm_pool": {"type": "null"},
                                            "cluster": {"type": "null"},
                                        },
                                    },
                                ]
                            }
                        }
                    }
                ]
            },
        ),
    )

    size: int = attrs.field(metadata=checks(minimum=0, maximum=1000))
    spawn_config: SpawnConfigBody | None = None
    claim_path: str | None = wire_field(
        None, min_length=1, max_length=MAX_TEXT_CHARS, pattern=r"^/[^\s\x00-\x1f\x7f]*$",
        says="must be a path starting with / (no spaces or control characters)",
    )


# ------------------------------------------------------------ the converter


class _WrongType(TypeError):
    """A JSON value of the wrong kind; the message says what was expected."""


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _wrong(expected: str, value: object) -> _WrongType:
    return _WrongType(f"expected {expected}, got {_kind(value)}")


def _str(value: object, _: type) -> str:
    if isinstance(value, str):
        return value
    raise _wrong("a string", value)


def _int(value: object, _: type) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise _wrong("an integer", value)


def _float(value: object, _: type) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            result = float(value)
        except OverflowError:
            raise _WrongType("number out of range") from None
        if math.isfinite(result):
            return result
        raise _WrongType("number out of range")
    raise _wrong("a number", value)


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=False, detailed_validation=True)
    conv.register_structure_hook(str, _str)
    conv.register_structure_hook(int, _int)
    conv.register_structure_hook(float, _float)

    list_of_str = conv.get_structure_hook(list[str])
    dict_of_str = conv.get_structure_hook(dict[str, str])

    def strict_list(value: object, type_: type) -> list[str]:
        if not isinstance(value, list):
            raise _wrong("an array", value)
        result: list[str] = list_of_str(value, type_)
        return result

    def strict_dict(value: object, type_: type) -> dict[str, str]:
        if not isinstance(value, dict):
            raise _wrong("an object", value)
        result: dict[str, str] = dict_of_str(value, type_)
        return result

    def strict_bool(value: object, _: type) -> bool:
        if isinstance(value, bool):
            return value
        raise _wrong("true or false", value)

    def mount(value: object, _: type) -> bool | str | None:
        if value is None or isinstance(value, bool | str):
            return value
        raise _wrong("true, false or a relative path", value)

    conv.register_structure_hook(bool, strict_bool)
    conv.register_structure_hook_func(lambda t: t == bool | str | None, mount)
    conv.register_structure_hook_func(lambda t: t == list[str], strict_list)
    conv.register_structure_hook_func(lambda t: t == dict[str, str], strict_dict)

    def object_hook(cls: type) -> Any:
        base: Callable[[Any, Any], Any] = make_dict_structure_fn(cls, conv)

        def structure(value: object, type_: type) -> Any:
            if not isinstance(value, dict):
                raise _wrong("an object", value)
            return base(value, type_)

        return structure

    conv.register_structure_hook_factory(attrs.has, object_hook)
    return conv


converter = _make_converter()


def _describe(exc: BaseException, type_: type | None) -> str:
    if isinstance(exc, _WrongType):
        return str(exc)
    if isinstance(exc, KeyError):
        return "required field missing"
    return cattrs.v.format_exception(exc, type_)


def _structure(data: object, cls: type[T]) -> T:
    try:
        return converter.structure(data, cls)
    except cattrs.BaseValidationError as exc:
        messages = cattrs.transform_error(exc, format_exception=_describe)
        raise ApiError(400, "InvalidRequest", "; ".join(messages)) from None
    except _WrongType as exc:
        raise ApiError(400, "InvalidRequest", f"{exc} @ $") from None
    except (TypeError, ValueError, AttributeError, KeyError) as exc:  # defensive
        raise ApiError(400, "InvalidRequest", f"invalid request body: {exc}") from None


def parse_json(body: bytes) -> Any:
    """The JSON value of ``body``; 400 ``InvalidJson`` if it is not strict JSON in UTF-8."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "InvalidJson", "request body is not UTF-8") from None
    if not text.strip():
        raise ApiError(400, "InvalidJson", "request body is empty; expected a JSON object")
    try:
        return orjson.loads(text)  # strict: no NaN, no lone surrogate, depth <= 1024
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "InvalidJson", f"request body is not valid JSON: {exc}") from None


# --------------------------------------------------------------- validation


_NOT_YET_HONOURED: dict[str, Callable[[SpawnConfigBody], bool]] = {
    # The executable's fields (credentials, mount, network_name, every limit) are
    # honoured or refused by name by the executor's check(); ``pool`` selects the
    # engines (a pool no engine serves: 503 NoDroneAvailable, as Plane answers).
}
"""Plane fields this plane does not honour yet, each with the test of a non-default
value: such a value is refused with 400 naming the field, never accepted and
ignored.  (Defaults, as Plane's client always sends them, are accepted.)"""


def _unhonoured(body: ConnectBody) -> list[str]:
    cfg = body.spawn_config
    if cfg is None:
        return []
    return _unhonoured_of(cfg)


def _unhonoured_of(cfg: SpawnConfigBody) -> list[str]:
    return [
        f"is not supported by this plane @ $.spawn_config.{field}"
        for field, is_set in _NOT_YET_HONOURED.items()
        if is_set(cfg)
    ]


def _refuse(found: list[str]) -> None:
    if found:
        raise ApiError(400, "InvalidRequest", "; ".join(found))


def parse_body(data: object, cls: type[T]) -> T:
    """``data`` (parsed JSON) as the wire model ``cls``, every constraint checked;
    400 ``InvalidRequest`` naming each offending field otherwise."""
    if getattr(cls, "WIRE_CLOSED", False):
        _only_fields(data, cls)
    structured = _structure(data, cls)
    _refuse(problems(structured))
    return structured


# ------------------------------------------------------------------ mapping


def _spawn_config(cfg: SpawnConfigBody) -> SpawnConfig:
    exe = cfg.executable
    assert exe is not None, "a spawn config without warm_pool has one (its rule)"
    limits = exe.resource_limits
    executable = Executable(
        image=exe.image,
        command=tuple(exe.command) if exe.command is not None else None,
        cwd=exe.cwd,
        env=dict(exe.env or {}),
        pull_policy=exe.pull_policy or "IfNotPresent",
        resource_limits=(
            ResourceLimits(**attrs.asdict(limits)) if limits is not None else ResourceLimits()
        ),
        port=exe.port if exe.port is not None else 8080,
        credentials=exe.credentials,
        mount=exe.mount or False,
        network_name=exe.network_name,
    )
    defaults = SpawnConfig(executable)
    return SpawnConfig(
        executable,
        max_idle_seconds=cfg.max_idle_seconds,
        lifetime_limit_seconds=cfg.lifetime_limit_seconds,
        start_timeout_seconds=(
            cfg.start_timeout_seconds
            if cfg.start_timeout_seconds is not None
            else defaults.start_timeout_seconds
        ),
        stop_grace_seconds=(
            cfg.stop_grace_seconds
            if cfg.stop_grace_seconds is not None
            else defaults.stop_grace_seconds
        ),
        use_static_token=bool(cfg.use_static_token),
        subdomain=cfg.subdomain,
        pool=cfg.pool or "",
    )


def parse_connect(body: bytes) -> ConnectRequest:
    """Plane's connect body -> :class:`ConnectRequest`; 400 with field paths if it is wrong."""
    data = parse_json(body)
    structured = _structure(data, ConnectBody)
    _refuse(problems(structured) + _unhonoured(structured))
    key = None
    if structured.key is not None:
        key = BackendKey(
            name=structured.key.name,
            namespace=structured.key.namespace or "",
            tag=structured.key.tag or "",
        )
    spawn = structured.spawn_config
    auth = None
    if structured.auth is not None:
        auth = orjson.dumps(structured.auth).decode()
    if spawn is not None and spawn.warm_pool is not None:
        return ConnectRequest(key=key, user=structured.user, auth=auth, warm_pool=spawn.warm_pool)
    return ConnectRequest(
        key=key,
        spawn_config=_spawn_config(spawn) if spawn is not None else None,
        backend_id=spawn.id if spawn is not None else None,
        user=structured.user,
        auth=auth,
        cluster=spawn.cluster if spawn is not None else None,
    )


def _only_fields(data: object, cls: type) -> None:
    """Refuse a field ``cls`` does not have (where ignoring it would do harm)."""
    if isinstance(data, dict):
        known = {a.name for a in attrs.fields(cls)}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            names = ", ".join(f"$.{k[:40]}" for k in unknown)
            allowed = ", ".join(sorted(known))
            raise ApiError(400, "InvalidRequest", f"unknown field @ {names} (allowed: {allowed})")


def parse_revoke(body: bytes) -> str | None:
    """The token to revoke, or None for all of them (an empty body, ``{}``, or a null token).

    An unknown field is refused (400 naming it): a misspelt ``token`` must never
    revoke every token.
    """
    if not body.strip():
        return None
    return parse_body(parse_json(body), RevokeBody).token


def parse_revoke_user(body: bytes) -> tuple[str, str]:
    """Plane's ``{"backend_id", "user"}`` revoke body -> (backend id, user)."""
    parsed = parse_body(parse_json(body), RevokeUserBody)
    return parsed.backend_id, parsed.user


def check_warm_pool_name(name: str) -> None:
    """400 unless ``name`` can name a warm pool."""
    if not _WARM_POOL_NAME.fullmatch(name):
        raise ApiError(400, "InvalidRequest", f"must match {WARM_POOL_NAME_PATTERN} @ name")


def parse_warm_pool(body: bytes) -> tuple[SpawnConfig | None, int, str | None]:
    """A warm pool's definition -> (template or None: keep the pool's, size,
    claim path); 400 naming the field if it is wrong."""
    parsed = parse_body(parse_json(body), WarmPoolBody)
    cfg = parsed.spawn_config
    if cfg is not None:
        _refuse(_unhonoured_of(cfg))
    template = _spawn_config(cfg) if cfg is not None else None
    return template, parsed.size, parsed.claim_path
