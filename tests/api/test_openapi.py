"""The OpenAPI document: the committed copy matches, and the live server conforms
to it (schemathesis, positive and negative data, run against a real socket)."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import jsonschema_rs
import orjson
import pytest
import schemathesis
import trio
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from plane.actors.backend import ExecutorPolicy
from plane.actors.supervisor import Supervisor
from plane.api.app import ApiContext, serve_api
from plane.api.keys import ApiKeys
from plane.api.openapi import render
from plane.api.routes import api_document, build_router
from plane.events.memory import open_memory_store
from plane.events.types import Status
from plane.metrics import Metrics
from plane.testing.fake_executor import FakeExecutor
from tests.api.conftest import API_KEY, Api

ROOT = Path(__file__).resolve().parents[2]


async def test_committed_document_is_what_the_server_serves(api: Api) -> None:
    served = (await api.client.get("/openapi.json")).json()
    committed = orjson.loads((ROOT / "openapi.json").read_text())
    assert committed == served, "regenerate: python -m plane.api.openapi > openapi.json"
    assert (ROOT / "openapi.json").read_text() == render()


async def test_document_describes_every_route(api: Api) -> None:
    paths = api_document()["paths"]
    documented = {(method.upper(), path) for path, ops in paths.items() for method in ops}
    routes = build_router(api.ctx).routes
    served = {(route.method, route.pattern) for route in routes if route.documented}
    assert documented == served
    # only the dashboard's static files (not JSON API) and the proxies' WebSocket
    # channel (the proxy key only; plane/api/proxies.py) are left out
    left_out = {route.pattern for route in routes if not route.documented}
    assert left_out == {"/ui", "/ui/", "/ui/{name}", "/ctrl/proxy-feed"}
    assert {"/ctrl/state", "/ctrl/event-types", "/ui/settings.json"} <= set(paths)


# ------------------------------------------------------------ schemathesis


@pytest.fixture(scope="module")
def live_api() -> Iterator[str]:
    """The API in a thread of its own (its own trio.run), for sync schemathesis calls."""
    with _api_in_a_thread() as url:
        yield url


@pytest.fixture
def fresh_api() -> Iterator[str]:
    """The same, new for one test: a stateful run replays its steps, so what an
    earlier test left (backends still starting, ending) must not change the answers."""
    with _api_in_a_thread() as url:
        yield url


@contextlib.contextmanager
def _api_in_a_thread() -> Iterator[str]:
    started: queue.Queue[Any] = queue.Queue()

    async def main() -> None:
        executor = FakeExecutor(needs_image=True)  # refuses a command alone, as Docker does
        async with open_memory_store() as store:
            supervisor = Supervisor(store, executor, policy=ExecutorPolicy(probe=executor.probe))
            metrics = Metrics()
            supervisor.observers.append(metrics.observe_backend)
            ctx = ApiContext(
                supervisor=supervisor,
                store=store,
                executor=executor,
                metrics=metrics,
                public_proxy_url="http://proxy.test",
                public_api_url="http://api.test",
                keys=ApiKeys(full=API_KEY),
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(supervisor.serve)
                port = await nursery.start(serve_api, ctx, "127.0.0.1", 0)
                started.put((port, trio.lowlevel.current_trio_token(), nursery.cancel_scope))

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # pragma: no cover - reported by the fixture
            started.put(exc)

    thread = threading.Thread(target=run, name="plane-api", daemon=True)
    thread.start()
    item = started.get(timeout=10)
    if isinstance(item, BaseException):
        raise item
    port, token, scope = item
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        trio.from_thread.run_sync(scope.cancel, trio_token=token)
        thread.join(10)


SSE_PATHS = ("/ctrl/events", "/pub/b/{id}/status-stream")
CONTEXT_400 = (
    # A schema-valid connect that this plane's configuration or executor cannot
    # honour: the document declares each (400 kinds on connect, field descriptions).
    "@ $.spawn_config.cluster",  # not this plane's cluster name
    "a static token carries no user data",
    "no subdomain can hang under it",
    "spawn_config.executable.image is required",  # the executor runs images only
    "@ $.spawn_config.warm_pool",  # no warm pool of that name is defined here
)
WARM_TEMPLATE_400 = (
    # A schema-valid warm pool template this plane cannot run, or that needs a key
    # (declared on PUT /ctrl/warm-pools/{name}).
    "a warm pool's backends cannot",
    "unknown before the claim",
    "plane sets SESSION_BACKEND_*",
    "spawn_config.executable.image is required",
)


def _schema(*, warm_claims: bool = True) -> Any:
    document = api_document()
    if not warm_claims:
        # a connect that claims from a warm pool (none is defined there) answers 400:
        # the stateful run spends its steps on spawned backends instead
        spawn = document["components"]["schemas"]["SpawnConfigBody"]
        del spawn["oneOf"]
        del spawn["properties"]["warm_pool"]
        spawn["required"] = ["executable"]
        spawn["properties"]["executable"] = {"$ref": "#/components/schemas/ExecutableBody"}
    loaded = schemathesis.openapi.from_dict(document)
    # The key is supplied by _Bearer, not generated (negative cases must not "drop" it);
    # unknown query parameters are ignored by design (as Plane ignores unknown fields),
    # so they are not generated as negative data.
    loaded.config.generation.update(with_security_parameters=False, allow_extra_parameters=False)
    # endless streams are read for at most this many events (else until the timeout)
    loaded.config.max_stream_events = 5
    # a request head over the size limit (many repeated `backend` parameters) is
    # rejected with 431 before any parameter is read: a rejection too
    rejection = loaded.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "431"]
    return loaded


schema = _schema()
stateful_schema = _schema(warm_claims=False)


@stateful_schema.auth()
@schema.auth()
class _Bearer:
    """The API key as schemathesis auth, so its ignored_auth probes can take it away."""

    def get(self, case: schemathesis.Case[Any], context: schemathesis.AuthContext) -> str:
        return API_KEY

    def set(
        self, case: schemathesis.Case[Any], data: str, context: schemathesis.AuthContext
    ) -> None:
        case.headers["Authorization"] = f"Bearer {data}"


def declared_unavailable(ctx: Any, response: Any, case: schemathesis.Case[Any]) -> bool | None:
    """schemathesis's not_a_server_error, except the declared 503 of a connect
    whose ``spawn_config.pool`` no engine serves (``NoDroneAvailable``)."""
    if (
        case.operation.path == "/ctrl/connect"
        and response.status_code == 503
        and response.json().get("kind") == "NoDroneAvailable"
    ):
        return None
    return not_a_server_error(ctx, response, case)


def positive_data_accepted(ctx: Any, response: Any, case: schemathesis.Case[Any]) -> bool | None:
    """schemathesis's positive_data_acceptance, except a connect refused for one of
    the declared configuration- or executor-dependent reasons (CONTEXT_400)."""
    allowed = {"/ctrl/connect": CONTEXT_400, "/ctrl/warm-pools/{name}": WARM_TEMPLATE_400}
    reasons = allowed.get(case.operation.path, ())
    if reasons and response.status_code == 400:
        message = response.json().get("message", "")
        if any(reason in message for reason in reasons):
            return None
    return positive_data_acceptance(ctx, response, case)


CHECKS = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
    unsupported_method,
]


def _timeout(case: schemathesis.Case[Any]) -> float:
    # an SSE stream may never end: schemathesis reads it until this many seconds
    return 1.0 if case.operation.path in SSE_PATHS else 10.0


def _validate(case: schemathesis.Case[Any], response: Any) -> None:
    case.validate_response(
        response, checks=CHECKS, additional_checks=[declared_unavailable, positive_data_accepted]
    )


@schema.parametrize()  # type: ignore[untyped-decorator]
@hypothesis.settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    derandomize=os.environ.get("PLANE_FUZZ_RANDOM") is None,
)
def test_api_conforms_to_its_document(case: schemathesis.Case[Any], live_api: str) -> None:
    response = case.call(base_url=live_api, timeout=_timeout(case))
    _validate(case, response)


def test_stateful_sequences_conform_to_the_document(fresh_api: str) -> None:
    """Sequences along the document's links (connect -> status, stream, detail,
    events, logs, revoke, terminate) on one live server, every answer checked."""
    answered: Counter[tuple[str, int]] = Counter()

    # draining the one engine would refuse every later spawn: left to the
    # parametrized run (which names engines that do not exist) and the tests above
    # drains would leave no engine; warm pools are links of their own and would use
    # up the steps that follow a spawned backend
    steps = stateful_schema.exclude(path_regex=r"/drain$|/undrain$|^/ctrl/warm-pools")

    class Workflow(steps.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: schemathesis.Case[Any]) -> dict[str, Any]:
            return {"base_url": fresh_api, "timeout": _timeout(case)}

        def after_call(self, response: Any, case: schemathesis.Case[Any]) -> None:
            answered[(case.operation.path, response.status_code)] += 1

        def validate_response(
            self, response: Any, case: schemathesis.Case[Any], **kwargs: Any
        ) -> None:
            _validate(case, response)

    Workflow.run(
        settings=hypothesis.settings(
            max_examples=20,
            stateful_step_count=8,
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
            derandomize=os.environ.get("PLANE_FUZZ_RANDOM") is None,
        )
    )
    # the links were followed: a spawned backend was then read, streamed and stopped
    for path in ("/pub/b/{id}/status", "/pub/b/{id}/status-stream", "/ctrl/b/{id}"):
        assert answered[(path, 200)] > 0, answered
    assert (
        answered[("/ctrl/b/{id}/soft-terminate", 200)]
        + answered[("/ctrl/b/{id}/hard-terminate", 200)]
        > 0
    ), answered


# ------------------------------------------- answers across a whole lifecycle


def _validator(name: str) -> Any:
    doc = api_document()
    return jsonschema_rs.validator_for(
        {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    )


async def test_every_answer_of_a_lifecycle_fits_its_schema(api: Api) -> None:
    """The views built as dicts (detail, list, status, events, revoke) fit the
    answer models the document publishes, in every state: spawned, ready,
    revoked, terminating, terminated by a stop and by a failing exit."""
    checks = {
        name: _validator(name)
        for name in ("BackendDetail", "BackendList", "BackendStatus", "EventList", "RevokeAnswer")
    }

    async def fits(path: str, schema: str) -> None:
        response = await api.client.get(path)
        assert response.status_code == 200, response.text
        checks[schema].validate(response.json())

    async def everything(backend_id: str) -> None:
        await fits(f"/ctrl/b/{backend_id}", "BackendDetail")
        await fits(f"/pub/b/{backend_id}/status", "BackendStatus")
        await fits(f"/ctrl/b/{backend_id}/events", "EventList")
        await fits("/ctrl/backends?limit=1", "BackendList")

    stopped = await api.connect("stopped", executable={"resource_limits": {"pids_limit": 5}})
    await everything(stopped["backend_id"])
    await api.wait_status(stopped["backend_id"], Status.READY)
    await everything(stopped["backend_id"])
    revoked = await api.client.post(f"/ctrl/b/{stopped['backend_id']}/revoke", json={})
    checks["RevokeAnswer"].validate(revoked.json())
    await api.client.post(f"/ctrl/b/{stopped['backend_id']}/soft-terminate")
    await everything(stopped["backend_id"])
    await api.wait_status(stopped["backend_id"], Status.TERMINATED)
    await everything(stopped["backend_id"])

    failed = await api.connect("failed")
    await api.wait_status(failed["backend_id"], Status.READY)
    api.executor.exit(failed["backend_id"], 3)
    await api.wait_status(failed["backend_id"], Status.TERMINATED)
    await everything(failed["backend_id"])
    page = (await api.client.get("/ctrl/backends?limit=1")).json()
    assert page["next"] is not None
    await fits(f"/ctrl/backends?cursor={page['next']}", "BackendList")


async def test_the_dict_answers_fit_their_schemas(api: Api) -> None:
    """The answers built as dicts (engines, cluster state, the dashboard's state
    at a point and now, its event types and settings) fit the published models."""
    backend = await api.connect("drawn")
    await api.wait_status(backend["backend_id"], Status.READY)
    cluster = str(api.ctx.cluster_name)
    answers = {
        "/ctrl/engines": "EngineList",
        "/ctrl/state": "StatePage",
        "/ctrl/state?at=1&limit=1": "StatePage",
        "/ctrl/state?at=2000-01-01T00:00:00Z": "StatePage",
        "/ctrl/event-types": "EventTypes",
        "/ui/settings.json": "DashboardSettings",
        f"/ctrl/c/{cluster}/state": "ClusterState",
    }
    for path, name in answers.items():
        response = await api.client.get(path)
        assert response.status_code == 200, (path, response.text)
        _validator(name).validate(response.json())
    page = (await api.client.get("/ctrl/state?limit=1")).json()
    assert page["backends"], page
    engines = (await api.client.get("/ctrl/engines")).json()["engines"]
    assert engines, "the one executor is an engine"
    for verb in ("drain", "undrain"):
        changed = await api.client.post(f"/ctrl/engines/{engines[0]['name']}/{verb}")
        _validator("Updated").validate(changed.json())
        assert changed.json() == {"updated": True}
    drained = await api.client.post(f"/ctrl/c/{cluster}/d/{engines[0]['name']}/drain")
    _validator("Updated").validate(drained.json())
    assert (await api.client.post("/ctrl/engines/nonesuch/drain")).status_code == 404
