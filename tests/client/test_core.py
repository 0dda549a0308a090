"""The client's core without a server: SSE decoding, error bodies, the status
vocabulary, connect bodies, retries (over httpx's MockTransport), and that
Client and AsyncClient cannot drift apart."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import anyio
import httpx
import pytest

from plane.client import (
    AsyncClient,
    Backend,
    BackendStatus,
    Client,
    Connection,
    InvalidResponse,
    KeyHeld,
    PlaneConnectionError,
    PlaneError,
    Status,
    TerminationReason,
)
from plane.client.core import SSEDecoder, SSEEvent, connect_body
from plane.client.errors import error_from_response
from plane.client.models import structure


def test_sse_decoder_frames_events_across_chunks_and_line_endings() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(": keep-alive\n\nid: 3\nda") == []
    assert decoder.feed('ta: {"a":\r\ndata: 1}\r') == []
    assert decoder.feed("\n\r\n") == [SSEEvent('{"a":\n1}', "3")]
    assert decoder.feed("data:x\n\nevent: e\ndata: y\n\n") == [
        SSEEvent("x", "3"),
        SSEEvent("y", "3", "e"),
    ]
    assert decoder.feed("id: ready\n\n") == [] and decoder.last_id == "ready"


def test_both_error_body_shapes_become_the_kind_class() -> None:
    new = error_from_response(409, b'{"id": "e-1", "kind": "KeyHeld", "message": "held"}')
    assert isinstance(new, KeyHeld) and (new.id, new.message, new.status_code) == (
        "e-1",
        "held",
        409,
    )
    old = error_from_response(409, b'{"error": {"code": "KeyHeld", "message": "held"}}')
    assert isinstance(old, KeyHeld) and old.id is None
    unknown = error_from_response(418, b'{"id": "e-2", "kind": "Teapot", "message": "no"}')
    assert type(unknown) is PlaneError and unknown.kind == "Teapot"
    text = error_from_response(502, b"bad gateway")
    assert text.kind == "HttpError" and text.message == "bad gateway"
    assert "KeyHeld" in str(new) and "e-1" in str(new) and "409" in str(new)


@pytest.mark.parametrize(
    ("answer", "plane"),
    [
        ({"status": "scheduled"}, (Status.SCHEDULED, None)),
        ({"status": "waiting"}, (Status.WAITING, None)),
        ({"status": "hard-terminating"}, (Status.HARD_TERMINATING, None)),
        ({"status": "terminated", "termination_reason": "swept"}, (Status.TERMINATED, "swept")),
        ({"status": "terminated", "termination_reason": "keyexpired"},
         (Status.TERMINATED, "keyexpired")),
    ],
)  # fmt: skip
def test_status_entries_read_in_plane_words(
    answer: dict[str, str], plane: tuple[Status, str | None]
) -> None:
    entry = structure({**answer, "time": 1, "extra": "ignored"}, BackendStatus)
    reason = TerminationReason(plane[1]) if plane[1] else None
    assert (entry.status, entry.termination_reason) == (plane[0], reason)


@pytest.mark.parametrize("ours", ["requested", "idle", "exploded"])
def test_a_status_outside_plane_s_enum_is_an_invalid_response(ours: str) -> None:
    with pytest.raises(InvalidResponse):
        structure({"status": ours, "time": 1}, BackendStatus)


def test_backend_detail_keeps_our_words_beside_plane_s() -> None:
    detail = structure(
        {"backend_id": "b", "state": "terminated", "reason": "exited", "status": "terminated",
         "termination_reason": None, "time": 1},
        Backend,
    )  # fmt: skip
    words = (detail.state, detail.reason, detail.status)
    assert words == ("terminated", "exited", Status.TERMINATED)
    conn = structure(
        {"backend_id": "b", "spawned": True, "status": "scheduled", "token": "t", "url": "u",
         "subdomain": None, "drone": "local"},
        Connection,
    )  # fmt: skip
    assert conn.status is Status.SCHEDULED and conn.drone == "local"


def test_connect_body_is_plane_s_and_refuses_options_it_would_ignore() -> None:
    body = connect_body(
        "doc", spawn_config=None, image=None, command="python app.py --x 'a b'", cwd=None,
        env={"A": "1"}, port=None, pull_policy=None, max_idle=30, lifetime=None,
        backend_id=None, user="ann", auth={"role": "editor"},
    )  # fmt: skip
    assert body["key"] == {"name": "doc", "namespace": "", "tag": ""}
    exe = body["spawn_config"]["executable"]
    assert exe["command"] == ["python", "app.py", "--x", "a b"] and exe["env"] == {"A": "1"}
    assert body["spawn_config"]["max_idle_seconds"] == 30
    assert (body["user"], body["auth"]) == ("ann", {"role": "editor"})
    json.dumps(body)
    with pytest.raises(ValueError, match="env"):
        connect_body(
            "doc", spawn_config=None, image=None, command=None, cwd=None, env={"A": "1"},
            port=None, pull_policy=None, max_idle=None, lifetime=None, backend_id=None,
            user=None, auth=None,
        )  # fmt: skip


def _flaky(failures: list[type[httpx.TransportError]], calls: list[str]) -> httpx.MockTransport:
    ok = {"backend_id": "b", "spawned": True, "status": "ready", "token": "t", "url": "u"}

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if failures:
            raise failures.pop(0)("boom", request=request)
        return httpx.Response(200, json=ok)

    return httpx.MockTransport(handler)


def test_connect_by_key_is_retried_with_backoff_and_without_a_key_only_if_unsent() -> None:
    calls: list[str] = []
    transport = _flaky([httpx.ReadError, httpx.ConnectError], calls)
    with Client("http://plane", transport=transport, backoff=0.001) as api:
        assert api.connect("doc").backend_id == "b" and len(calls) == 3
    calls.clear()
    transport = _flaky([httpx.ReadError], calls)
    with Client("http://plane", transport=transport, backoff=0.001) as api:
        with pytest.raises(PlaneConnectionError):
            api.connect(command=["app"])  # no key: a retry could spawn a second backend
        assert len(calls) == 1
    calls.clear()
    transport = _flaky([httpx.ConnectError], calls)
    with Client("http://plane", transport=transport, backoff=0.001) as api:
        assert api.connect(command=["app"]).backend_id == "b" and len(calls) == 2


def test_async_retries_the_same_way() -> None:
    async def body() -> None:
        calls: list[str] = []
        transport = _flaky([httpx.ConnectError] * 5, calls)
        async with AsyncClient("http://plane", transport=transport, retries=2) as api:
            with pytest.raises(PlaneConnectionError):
                await api.connect("doc")
        assert len(calls) == 3

    anyio.run(body, backend="trio")


def test_client_and_async_client_have_the_same_methods_and_signatures() -> None:
    def public(cls: type) -> dict[str, inspect.Signature]:
        return {
            name: inspect.signature(member)
            for name, member in vars(cls).items()
            if callable(member) and not name.startswith("_") and name not in ("close", "aclose")
        }

    sync, aio = public(Client), public(AsyncClient)
    assert sync.keys() == aio.keys()
    for name in sync:
        ours = [(p.name, p.kind, p.default) for p in sync[name].parameters.values()]
        theirs = [(p.name, p.kind, p.default) for p in aio[name].parameters.values()]
        assert ours == theirs, name
        assert (Client.__dict__[name].__doc__ or "").strip(), f"{name} has no docstring"


def test_importing_the_client_pulls_in_no_trio_and_no_server_module() -> None:
    code = (
        "import sys, plane.client\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('trio', 'trio_websocket', "
        "'docker', 'sqlite_utils', 'wsproto', 'httptools', 'prometheus_client') "
        "or m.startswith(('plane.api', 'plane.actors', 'plane.proxy', 'plane.executors', "
        "'plane.serve', 'plane.events.sqlite', 'plane.events.store')) or m == 'plane.cli']\n"
        "print(bad)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout
