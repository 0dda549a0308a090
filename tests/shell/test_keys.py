"""Keys: held until terminated (never two backends of one key), fencing tokens across
restarts, and Plane's static tokens; on the fake executor under MockClock."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from plane import tokens
from plane.actors import lifecycle
from plane.actors.supervisor import HOLD_SLACK_SECONDS, ConnectRefused, ConnectRequest
from plane.events.spec import BackendKey
from plane.events.sqlite import open_sqlite_store
from plane.events.types import (
    BackendRequested,
    Status,
    TerminationKind,
    TokenIssued,
)
from plane.testing.fake_executor import FakeExecutor

from ..keyhold import overlaps
from .conftest import Harness, open_harness, request


@asynccontextmanager
async def on_log(path: Path, executor: FakeExecutor) -> AsyncIterator[Harness]:
    """A supervisor on the SQLite log at ``path`` (a restart when opened again)."""
    async with open_sqlite_store(path) as store, open_harness(store, executor) as h:
        yield h


class SlowKill(FakeExecutor):
    """A backend that takes ``kill_delay`` seconds to die after SIGKILL (None: it
    never dies; ``stop`` is ignored either way)."""

    def __init__(self, kill_delay: float | None, **kwargs: object) -> None:
        super().__init__(stop_exit_code=None, **kwargs)  # type: ignore[arg-type]
        self.kill_delay = kill_delay

    async def kill(self, backend_id: str) -> None:
        self.calls.append(("kill", backend_id))
        if self.kill_delay is None:
            return
        await trio.sleep(self.kill_delay)
        self.exit(backend_id, 137)


async def test_200_connects_with_a_hard_terminate_in_the_middle_only_get_live_backends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    executor = SlowKill(kill_delay=3.0, start_delay=0.5)
    async with open_harness(executor=executor) as h:
        rng = random.Random(7)
        answers: list[tuple[str, bool, Status]] = []
        terminated = trio.Event()

        async def one(delay: float) -> None:
            await trio.sleep(delay)
            result = await h.supervisor.connect(request("shared", max_idle_seconds=600))
            # answer time: no checkpoint between connect returning and this look
            state = h.supervisor.states[result.backend_id]
            assert state.status is not None
            answers.append((result.backend_id, result.spawned, state.status))

        async def terminate_first() -> None:
            await trio.sleep(5.0)
            (first,) = {b for b, _, _ in answers}
            await h.wait_status(first, Status.READY)
            await h.supervisor.terminate(first, TerminationKind.HARD)
            terminated.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(terminate_first)
            for _ in range(200):
                nursery.start_soon(one, rng.uniform(0.0, 10.0))
        assert terminated.is_set()
        assert len(answers) == 200
        assert {status for _, _, status in answers} <= lifecycle.LIVE
        backends = list(dict.fromkeys(b for b, _, _ in answers))
        assert len(backends) == 2, backends
        assert sum(spawned for _, spawned, _ in answers) == 2
        first, second = [await h.supervisor.lookup(b) for b in backends]
        assert first.status is Status.TERMINATED
        assert second.fencing_token == first.fencing_token + 1
        # some connects did arrive while the first was terminating, and waited
        assert sum(b == second.backend_id for b, _, _ in answers) > 50
        assert second.requested_at >= first.status_at
        assert overlaps(await h.store.read_all()) == []


async def test_while_the_holder_terminates_each_kind_of_connect_gets_its_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness(executor=SlowKill(kill_delay=4.0)) as h:
        first = await h.supervisor.connect(request("room", tag="v1"))
        await h.wait_status(first.backend_id, Status.READY)
        await h.supervisor.terminate(first.backend_id, TerminationKind.HARD)
        assert h.supervisor.states[first.backend_id].status is Status.TERMINATING
        before = trio.current_time()
        # another tag: refused at once, even though the key is only terminating
        with pytest.raises(ConnectRefused) as info:
            await h.supervisor.connect(request("room", tag="v2"))
        assert (info.value.code, info.value.http_status) == ("KeyHeld", 409)
        # no spawn_config: the terminating backend, as Plane answers
        attached = await h.supervisor.connect(ConnectRequest(key=BackendKey("room", tag="v1")))
        assert attached.backend_id == first.backend_id and not attached.spawned
        assert attached.state.status is Status.TERMINATING
        assert trio.current_time() == before
        # same tag with a spawn_config: waits for the end, then spawns the next one
        nxt = await h.supervisor.connect(request("room", tag="v1"))
        assert nxt.spawned and nxt.backend_id != first.backend_id
        assert trio.current_time() - before == pytest.approx(4.0)
        assert (await h.supervisor.lookup(first.backend_id)).status is Status.TERMINATED
        assert overlaps(await h.store.read_all()) == []


async def test_a_holder_that_does_not_end_in_time_is_answered_as_plane_does(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_harness(executor=SlowKill(kill_delay=None)) as h:
        first = await h.supervisor.connect(request("stuck", stop_grace_seconds=5.0))
        await h.wait_status(first.backend_id, Status.READY)
        await h.supervisor.terminate(first.backend_id, TerminationKind.SOFT)
        began = trio.current_time()
        await trio.sleep(2.0)
        answer = await h.supervisor.connect(request("stuck"))
        assert answer.backend_id == first.backend_id and not answer.spawned
        assert answer.state.status is Status.TERMINATING
        assert trio.current_time() - began == pytest.approx(5.0 + HOLD_SLACK_SECONDS)
        # later connects past the deadline do not wait again
        again = await h.supervisor.connect(request("stuck"))
        assert again.backend_id == first.backend_id
        assert trio.current_time() - began == pytest.approx(5.0 + HOLD_SLACK_SECONDS)
        # the decider's kill confirmation ends it; then the key is free
        await h.wait_status(first.backend_id, Status.TERMINATED)
        fresh = await h.supervisor.connect(request("stuck"))
        assert fresh.spawned
        assert overlaps(await h.store.read_all()) == []


async def test_fencing_tokens_increase_per_key_across_restarts(tmp_path: Path) -> None:
    executor = FakeExecutor()
    path = tmp_path / "events.db"
    fencing = []
    async with on_log(path, executor) as h:
        for _ in range(2):
            result = await h.supervisor.connect(request("room"))
            fencing.append(result.state.fencing_token)
            await h.wait_status(result.backend_id, Status.READY)
            await h.supervisor.terminate(result.backend_id, TerminationKind.HARD)
            await h.wait_status(result.backend_id, Status.TERMINATED)
        other = await h.supervisor.connect(request("other-room"))
    async with on_log(path, executor) as h:
        result = await h.supervisor.connect(request("room"))
        fencing.append(result.state.fencing_token)
        assert result.spawned
        # the other key's backend was adopted and still holds its key
        held = await h.supervisor.connect(request("other-room"))
        assert held.backend_id == other.backend_id and not held.spawned
        await h.wait_status(result.backend_id, Status.READY)
        assert executor.specs[result.backend_id].fencing_token == fencing[-1]
    assert fencing == sorted(set(fencing)) and len(fencing) == 3


async def test_a_static_token_is_minted_once_and_answered_to_every_connect(
    tmp_path: Path,
) -> None:
    executor = FakeExecutor()
    path = tmp_path / "events.db"
    async with on_log(path, executor) as h:
        first = await h.supervisor.connect(request("doc", use_static_token=True, subdomain="doc-1"))
        assert first.spawned and first.secret_token is None
        assert first.token.startswith(tokens.STATIC_PREFIX)
        assert len(first.token) == len(tokens.STATIC_PREFIX) + 43
        assert first.subdomain == "doc-1"
        again = await h.supervisor.connect(ConnectRequest(key=BackendKey("doc"), auth="{}"))
        assert (again.backend_id, again.token) == (first.backend_id, first.token)
        assert not again.spawned and again.secret_token is None
        assert again.subdomain == "doc-1"
        await h.wait_status(first.backend_id, Status.READY)
        spec = executor.specs[first.backend_id]
        assert spec.static_token == first.token
        assert spec.session_env()["SESSION_BACKEND_STATIC_TOKEN"] == first.token
        events = await h.events(first.backend_id)
        assert not [e for e in events if isinstance(e, TokenIssued)]
        requested = events[0]
        assert isinstance(requested, BackendRequested)
        assert requested.static_token == first.token
        changes: list[tuple[str, dict[str, Any]]] = [
            ("user", {"user": "ann"}),
            ("auth", {"auth": '{"a":1}'}),
        ]
        for field, change in changes:
            with pytest.raises(ConnectRefused) as info:
                await h.supervisor.connect(
                    attrs.evolve(ConnectRequest(key=BackendKey("doc")), **change)
                )
            assert info.value.http_status == 400
            assert str(info.value).endswith(f"@ $.{field}")
    # after a restart the same token is answered (it is in the log)
    async with on_log(path, executor) as h:
        later = await h.supervisor.connect(ConnectRequest(key=BackendKey("doc")))
        assert (later.backend_id, later.token) == (first.backend_id, first.token)


async def test_a_static_token_spawn_with_user_data_is_refused_and_records_nothing() -> None:
    async with open_harness() as h:
        wanted = attrs.evolve(request("doc", use_static_token=True), auth='{"role":"x"}')
        with pytest.raises(ConnectRefused) as info:
            await h.supervisor.connect(wanted)
        assert info.value.http_status == 400 and "$.auth" in str(info.value)
        assert h.supervisor.states == {} and await h.store.read_all() == []
        plain = await h.supervisor.connect(request("plain"))
        assert plain.secret_token and not plain.token.startswith(tokens.STATIC_PREFIX)
        assert plain.subdomain is None
