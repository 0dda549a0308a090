"""Request bodies: JSON in, validated plane types out.

This module owns how the API reads what clients send: the JSON of ``POST
/ctrl/connect`` (Plane's field names) becomes a
:class:`~plane.actors.supervisor.ConnectRequest`, and the optional body of
``POST /ctrl/b/{id}/revoke`` becomes a token (or None: all tokens; an unknown
field there is refused, never read as "all"), and Plane's ``POST
/ctrl/b/revoke`` body becomes a backend id and a user.

Parsing goes through one strict cattrs converter into private wire models
(``_ConnectBody`` and friends), which are then checked for ranges and mapped
onto the log's spec types (:mod:`plane.events.spec`).  The converter is
strict where cattrs is lenient by default: a number is never accepted for a
string (nor ``"8080"`` for a port), a string never for a list (cattrs would
split it into characters), ``true`` never for a number.  Fields this API does
not know are ignored, as Plane's serde ignores them.  Every field Plane
defines is read; a non-default value this plane cannot honour is refused by
name (``_NOT_YET_HONOURED``), never accepted and ignored.

Error handling
--------------
Everything wrong with a body is an :class:`~plane.api.errors.ApiError` 400:
``InvalidJson`` when it is not JSON (or not UTF-8, or uses ``NaN``), and
``InvalidRequest`` when it is JSON of the wrong shape or out of range; the
message names every offending field by its JSON path, e.g. ``expected an
integer, got a string @ $.spawn_config.executable.port``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn

from plane.actors.supervisor import ConnectRequest
from plane.api.errors import ApiError
from plane.cluster import subdomain_problem
from plane.events.spec import (
    BackendKey,
    Executable,
    RegistryCredentials,
    ResourceLimits,
    SpawnConfig,
)

PULL_POLICIES = ("IfNotPresent", "Always", "Never")
MAX_KEY_CHARS = 256
MAX_TEXT_CHARS = 4096
MAX_SECONDS = 1e9
"""Upper bound of every duration (about 31 years): keeps deadline arithmetic finite."""
MAX_INT64 = 2**63 - 1
BACKEND_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
ENV_NAME_PATTERN = r"^[^=\x00]+$"
_BACKEND_ID = re.compile(BACKEND_ID_PATTERN)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
T = TypeVar("T")


# ---------------------------------------------------------------- wire models


@attrs.frozen
class _Key:
    name: str
    namespace: str | None = None
    tag: str | None = None


@attrs.frozen
class _Executable:
    image: str | None = None
    env: dict[str, str] | None = None
    pull_policy: str | None = None
    resource_limits: ResourceLimits | None = None  # already all optional: the spec type
    port: int | None = None
    command: list[str] | None = None
    cwd: str | None = None
    credentials: RegistryCredentials | None = None
    mount: bool | str | None = None
    network_name: str | None = None


@attrs.frozen
class _SpawnConfig:
    executable: _Executable | None = None
    max_idle_seconds: float | None = None
    lifetime_limit_seconds: float | None = None
    id: str | None = None
    start_timeout_seconds: float | None = None
    stop_grace_seconds: float | None = None
    cluster: str | None = None
    pool: str | None = None
    use_static_token: bool | None = None
    subdomain: str | None = None
    warm_pool: str | None = None
    """Ours: claim a backend of this warm pool (then nothing else may be given)."""


@attrs.frozen
class _ConnectBody:
    key: _Key | None = None
    spawn_config: _SpawnConfig | None = None
    user: str | None = None
    auth: Any = None


@attrs.frozen
class _RevokeBody:
    token: str | None = None


@attrs.frozen
class _RevokeUserBody:
    """Plane's ``RevokeRequest``."""

    backend_id: str
    user: str


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


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(body: bytes) -> Any:
    """The JSON value of ``body``; 400 ``InvalidJson`` if it is not strict JSON in UTF-8."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "InvalidJson", "request body is not UTF-8") from None
    if not text.strip():
        raise ApiError(400, "InvalidJson", "request body is empty; expected a JSON object")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "InvalidJson", f"request body is not valid JSON: {exc}") from None


# --------------------------------------------------------------- validation


class _Problems:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.messages.append(f"{message} @ {path}")

    def text(self, path: str, value: str | None, *, limit: int, empty: bool = True) -> None:
        if value is None:
            return
        if not empty and not value:
            self.add(path, "must not be empty")
        elif len(value) > limit:
            self.add(path, f"must be at most {limit} characters")
        elif _CONTROL.search(value):
            self.add(path, "must not contain control characters")

    def integer(self, path: str, value: int | None, low: int, high: int) -> None:
        if value is not None and not low <= value <= high:
            self.add(path, f"must be between {low} and {high}")

    def seconds(self, path: str, value: float | None, *, zero: bool = False) -> None:
        if value is None:
            return
        if value < 0 or (value == 0 and not zero):
            self.add(path, "must be zero or more" if zero else "must be more than 0")
        elif value > MAX_SECONDS:
            self.add(path, f"must be at most {MAX_SECONDS:.0f}")

    def raise_if_any(self) -> None:
        if self.messages:
            raise ApiError(400, "InvalidRequest", "; ".join(self.messages))


def _check_executable(p: _Problems, exe: _Executable, at: str) -> None:
    p.text(f"{at}.image", exe.image, limit=MAX_KEY_CHARS * 2, empty=False)
    p.text(f"{at}.cwd", exe.cwd, limit=MAX_TEXT_CHARS, empty=False)
    if exe.image is None and exe.command is None:
        p.add(at, "needs an image or a command")
    if exe.command is not None:
        if not exe.command:
            p.add(f"{at}.command", "must not be empty")
        for i, arg in enumerate(exe.command):
            if "\x00" in arg:
                p.add(f"{at}.command[{i}]", "must not contain NUL")
    if exe.pull_policy is not None and exe.pull_policy not in PULL_POLICIES:
        p.add(f"{at}.pull_policy", f"must be one of {', '.join(PULL_POLICIES)}")
    p.integer(f"{at}.port", exe.port, 1, 65535)
    for name, value in (exe.env or {}).items():
        if not name or "=" in name or "\x00" in name or len(name) > MAX_KEY_CHARS:
            p.add(f"{at}.env", f"invalid variable name {name[:40]!r}")
        elif "\x00" in value:
            p.add(f"{at}.env[{name!r}]", "must not contain NUL")
    limits = exe.resource_limits or ResourceLimits()
    rl = f"{at}.resource_limits"
    p.integer(f"{rl}.cpu_period", limits.cpu_period, 1, MAX_INT64)
    p.integer(f"{rl}.cpu_period_percent", limits.cpu_period_percent, 1, 100)
    p.integer(f"{rl}.cpu_time_limit", limits.cpu_time_limit, 1, MAX_INT64)
    p.integer(f"{rl}.memory_limit_bytes", limits.memory_limit_bytes, 1, MAX_INT64)
    p.integer(f"{rl}.disk_limit_bytes", limits.disk_limit_bytes, 1, MAX_INT64)
    p.integer(f"{rl}.pids_limit", limits.pids_limit, 1, MAX_INT64)


_NOT_YET_HONOURED: dict[str, Callable[[_SpawnConfig], bool]] = {
    # The executable's fields (credentials, mount, network_name, every limit) are
    # honoured or refused by name by the executor's check(); ``pool`` selects the
    # engines (a pool no engine serves: 503 NoDroneAvailable, as Plane answers).
}
"""Plane fields this plane does not honour yet, each with the test of a non-default
value: such a value is refused with 400 naming the field, never accepted and
ignored.  (Defaults, as Plane's client always sends them, are accepted.)"""


def _refuse_unhonoured(p: _Problems, cfg: _SpawnConfig) -> None:
    for field, is_set in _NOT_YET_HONOURED.items():
        if is_set(cfg):
            p.add(f"$.spawn_config.{field}", "is not supported by this plane")


def _check(body: _ConnectBody) -> None:
    p = _Problems()
    if body.key is not None:
        p.text("$.key.name", body.key.name, limit=MAX_KEY_CHARS, empty=False)
        p.text("$.key.namespace", body.key.namespace, limit=MAX_KEY_CHARS)
        p.text("$.key.tag", body.key.tag, limit=MAX_KEY_CHARS)
    p.text("$.user", body.user, limit=MAX_TEXT_CHARS)
    cfg = body.spawn_config
    if cfg is not None and cfg.warm_pool is not None:
        p.text("$.spawn_config.warm_pool", cfg.warm_pool, limit=MAX_KEY_CHARS, empty=False)
        for field in attrs.fields(_SpawnConfig):
            if field.name != "warm_pool" and getattr(cfg, field.name) is not None:
                p.add(
                    f"$.spawn_config.{field.name}",
                    "a spawn_config with warm_pool holds nothing else (the pool's template does)",
                )
    elif cfg is not None and cfg.executable is None:
        p.add("$.spawn_config.executable", "required field missing (or give warm_pool)")
    elif cfg is not None and cfg.executable is not None:
        _check_spawn(p, cfg, cfg.executable)
    p.raise_if_any()


def _check_spawn(p: _Problems, cfg: _SpawnConfig, exe: _Executable) -> None:
    if cfg.id is not None and not _BACKEND_ID.fullmatch(cfg.id):
        p.add("$.spawn_config.id", f"must match {BACKEND_ID_PATTERN}")
    if cfg.subdomain is not None and (problem := subdomain_problem(cfg.subdomain)):
        p.add("$.spawn_config.subdomain", problem)
    p.seconds("$.spawn_config.max_idle_seconds", cfg.max_idle_seconds)
    p.seconds("$.spawn_config.lifetime_limit_seconds", cfg.lifetime_limit_seconds)
    p.seconds("$.spawn_config.start_timeout_seconds", cfg.start_timeout_seconds)
    p.seconds("$.spawn_config.stop_grace_seconds", cfg.stop_grace_seconds, zero=True)
    _check_executable(p, exe, "$.spawn_config.executable")
    _refuse_unhonoured(p, cfg)


# ------------------------------------------------------------------ mapping


def _spawn_config(cfg: _SpawnConfig) -> SpawnConfig:
    exe = cfg.executable
    assert exe is not None, "checked by _check"
    executable = Executable(
        image=exe.image,
        command=tuple(exe.command) if exe.command is not None else None,
        cwd=exe.cwd,
        env=dict(exe.env or {}),
        pull_policy=exe.pull_policy or "IfNotPresent",
        resource_limits=exe.resource_limits or ResourceLimits(),
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
    wire = _structure(parse_json(body), _ConnectBody)
    _check(wire)
    key = None
    if wire.key is not None:
        key = BackendKey(
            name=wire.key.name, namespace=wire.key.namespace or "", tag=wire.key.tag or ""
        )
    spawn = wire.spawn_config
    auth = None
    if wire.auth is not None:
        auth = json.dumps(wire.auth, separators=(",", ":"))
    warm_pool = spawn.warm_pool if spawn is not None else None
    if warm_pool is not None:
        return ConnectRequest(key=key, user=wire.user, auth=auth, warm_pool=warm_pool)
    return ConnectRequest(
        key=key,
        spawn_config=_spawn_config(spawn) if spawn is not None else None,
        backend_id=spawn.id if spawn is not None else None,
        user=wire.user,
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
    data = parse_json(body)
    _only_fields(data, _RevokeBody)
    wire = _structure(data, _RevokeBody)
    if wire.token is not None and not wire.token:
        raise ApiError(400, "InvalidRequest", "must not be empty @ $.token")
    return wire.token


def parse_revoke_user(body: bytes) -> tuple[str, str]:
    """Plane's ``{"backend_id", "user"}`` revoke body -> (backend id, user)."""
    wire = _structure(parse_json(body), _RevokeUserBody)
    p = _Problems()
    p.text("$.backend_id", wire.backend_id, limit=64, empty=False)
    p.text("$.user", wire.user, limit=MAX_TEXT_CHARS, empty=False)
    p.raise_if_any()
    return wire.backend_id, wire.user


@attrs.frozen
class _WarmPoolBody:
    """``PUT /ctrl/warm-pools/{name}``."""

    size: int
    spawn_config: _SpawnConfig | None = None
    claim_path: str | None = None


WARM_POOL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_WARM_POOL_NAME = re.compile(WARM_POOL_NAME_PATTERN)


def check_warm_pool_name(name: str) -> None:
    """400 unless ``name`` can name a warm pool."""
    if not _WARM_POOL_NAME.fullmatch(name):
        raise ApiError(400, "InvalidRequest", f"must match {WARM_POOL_NAME_PATTERN} @ name")


def parse_warm_pool(body: bytes) -> tuple[SpawnConfig | None, int, str | None]:
    """A warm pool's definition -> (template or None: keep the pool's, size,
    claim path); 400 naming the field if it is wrong.  The template is a
    connect's spawn_config less what only one backend can have (``id``) or
    what names another pool (``warm_pool``), and less ``cluster``."""
    data = parse_json(body)
    _only_fields(data, _WarmPoolBody)
    wire = _structure(data, _WarmPoolBody)
    p = _Problems()
    p.integer("$.size", wire.size, 0, 1000)
    if wire.claim_path is not None and (
        not wire.claim_path.startswith("/")
        or _CONTROL.search(wire.claim_path)
        or " " in wire.claim_path
    ):
        p.add("$.claim_path", "must be a path starting with / (no spaces or control characters)")
    p.text("$.claim_path", wire.claim_path, limit=MAX_TEXT_CHARS, empty=False)
    cfg = wire.spawn_config
    if cfg is not None:
        for field in ("id", "warm_pool", "cluster"):
            if getattr(cfg, field) is not None:
                p.add(f"$.spawn_config.{field}", "a warm pool's template cannot have it")
        if cfg.executable is None:
            p.add("$.spawn_config.executable", "required field missing")
        else:
            _check_spawn(p, cfg, cfg.executable)
    p.raise_if_any()
    template = _spawn_config(cfg) if cfg is not None else None
    return template, wire.size, wire.claim_path
