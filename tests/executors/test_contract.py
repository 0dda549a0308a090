"""The executor contract (``plane.executors.base``), one suite for every executor.

Each test runs against the fake (``plane.testing``), the process executor, the
Docker executor on the machine's engine and on the second engine
(``scripts/ensure-docker2``: containers published on 127.0.0.2), through a
:class:`Harness` that knows how to say, for its executor, "a backend that
serves", "one that ignores SIGTERM", "one that exits by itself with code N" and
"one that cannot run".  What is particular to one executor (Docker's labels,
limits, images and leftovers; processes' groups, files and adoption) stays in
that executor's own test file.

The Docker cases need a real engine (skipped without one, failed under
``CI=true``); every container a case makes is removed at the end (each case
has its own scope).
"""

from __future__ import annotations

import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, suppress
from pathlib import Path
from typing import Any

import attrs
import docker.errors
import pytest
import trio

from plane.addresses import split_host_port
from plane.events.spec import BackendKey, Executable
from plane.executors.base import (
    Executor,
    ExitObserved,
    Running,
    SpawnError,
    Started,
    StartSpec,
)
from plane.executors.docker import DockerExecutor
from plane.executors.process import ProcessExecutor
from plane.executors.readiness import wait_until_answers
from plane.testing.fake_executor import FakeExecutor
from tests.conftest import DOCKER2_PUBLISH

RUN = uuid.uuid4().hex[:8]
APP = Path(__file__).with_name("backend_app.py")
MISSING_IMAGE = "plane-contract-no-such-image:1"

#: What a contract backend is asked to be (``CONTRACT`` in its environment).
SERVE, STUBBORN, EXIT3 = "serve", "stubborn", "exit3"


class ContractFake(FakeExecutor):
    """The fake, playing the contract's backends: a ``stubborn`` one ignores stop."""

    async def stop(self, backend_id: str) -> None:
        spec = self.specs.get(backend_id)
        if spec is not None and spec.executable.env.get("CONTRACT") == STUBBORN:
            self.calls.append(("stop", backend_id))
            return
        await super().stop(backend_id)


@attrs.define
class Harness:
    """One executor under the contract, and how to ask it for each kind of backend."""

    executor: Executor
    publish: str
    executable: Callable[[str], Executable]
    """The executable of a backend of that kind (SERVE, STUBBORN, EXIT3, or "unrunnable")."""
    greeting: bytes
    """A line a SERVE backend prints at start."""
    stop_code: int | None
    """The exit code after a polite stop."""
    ready: Callable[[Started], Awaitable[None]]
    after_start: Callable[[StartSpec], None] = lambda _spec: None
    leaves_remains: bool = True
    """An ended backend leaves something (a stopped container) until ``remove``."""

    def spec(self, name: str, kind: str) -> StartSpec:
        bid = f"c{RUN}-{name}"
        return StartSpec(
            backend_id=bid,
            key=BackendKey(name=f"key-{bid}", namespace="ns"),
            fencing_token=11,
            executable=self.executable(kind),
        )

    async def start(self, spec: StartSpec) -> Started:
        started = await self.executor.start(spec)
        self.after_start(spec)
        return started


async def answers_http(started: Started) -> None:
    with trio.fail_after(30):
        await wait_until_answers(started.address)

    def get() -> int:
        with urllib.request.urlopen(f"http://{started.address}/", timeout=5) as response:
            return int(response.status)

    assert await trio.to_thread.run_sync(get) == 200


def fake_harness() -> Harness:
    fake = ContractFake(missing_images=frozenset({MISSING_IMAGE}))

    def executable(kind: str) -> Executable:
        image = MISSING_IMAGE if kind == "unrunnable" else "fake-image"
        return Executable(image=image, env={"CONTRACT": kind})

    def after_start(spec: StartSpec) -> None:
        if spec.executable.env.get("CONTRACT") == EXIT3:
            fake.exit(spec.backend_id, 3)  # it ends by itself

    async def ready(started: Started) -> None:
        await fake.probe(started.address)

    return Harness(fake, "127.0.0.1", executable, b"fake log of", 0, ready, after_start)


def process_harness(tmp_path: Path) -> Harness:
    executor = ProcessExecutor(tmp_path / "logs", adopted_poll_interval=0.05)
    commands = {
        SERVE: (sys.executable, str(APP)),
        STUBBORN: (sys.executable, str(APP), "--ignore-term"),
        EXIT3: ("sh", "-c", "echo bye; sleep 1; exit 3"),
        "unrunnable": ("/nonexistent/plane-contract-command",),
    }

    def executable(kind: str) -> Executable:
        return Executable(command=commands[kind], env={"CONTRACT": kind})

    return Harness(
        executor,
        "127.0.0.1",
        executable,
        b"backend-app listening",
        143,
        answers_http,
        leaves_remains=False,  # a reaped process leaves only its output files
    )


def docker_harness(client: Any, image: str, publish: str, tmp_path: Path) -> Harness:
    executor = DockerExecutor(
        client,
        timeout=20,
        pull_timeout=15,
        publish=publish,
        scope=f"contract-{RUN}-{tmp_path.name}",
        logs_dir=tmp_path / "kept",
    )
    commands: dict[str, tuple[str, ...] | None] = {
        SERVE: None,  # the image's own: prints a line, serves /www on $PORT
        STUBBORN: ("sh", "-c", "trap '' TERM; exec httpd -f -p \"$PORT\" -h /www"),
        EXIT3: ("sh", "-c", "echo bye; sleep 1; exit 3"),
    }

    def executable(kind: str) -> Executable:
        if kind == "unrunnable":
            return Executable(image=MISSING_IMAGE, pull_policy="Never")
        return Executable(
            image=image, command=commands[kind], pull_policy="Never", env={"CONTRACT": kind}
        )

    return Harness(executor, publish, executable, b"plane-test-image: serving", 143, answers_http)


@pytest.fixture(
    params=[
        "fake",
        "process",
        pytest.param("docker", marks=pytest.mark.docker),
        pytest.param("docker-engine2", marks=pytest.mark.docker),
    ]
)
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    client: Any = None
    if request.param == "fake":
        made = fake_harness()
    elif request.param == "process":
        made = process_harness(tmp_path)
    elif request.param == "docker":
        client = request.getfixturevalue("docker_engine")
        image = request.getfixturevalue("busybox_image")
        made = docker_harness(client, image, "127.0.0.1", tmp_path)
    else:
        client = request.getfixturevalue("docker_engine2")
        image = request.getfixturevalue("busybox_image2")
        made = docker_harness(client, image, DOCKER2_PUBLISH, tmp_path)
    try:
        yield made
    finally:
        for running in await made.executor.list_all():
            if running.backend_id.startswith(f"c{RUN}-"):
                await made.executor.kill(running.backend_id)
                await made.executor.remove(running.backend_id)
        if client is not None:
            scope = getattr(made.executor, "scope", "")
            for summary in client.api.containers(
                all=True, filters={"label": f"dev.plane.scope={scope}"}
            ):
                with suppress(docker.errors.NotFound):
                    client.api.remove_container(summary["Id"], force=True, v=True)


@pytest.fixture
async def exits(harness: Harness) -> AsyncIterator[trio.MemoryReceiveChannel[ExitObserved]]:
    send, receive = trio.open_memory_channel[ExitObserved](100)
    async with trio.open_nursery() as nursery:
        await nursery.start(harness.executor.serve_exits, send)
        yield receive
        nursery.cancel_scope.cancel()


async def next_exit(
    receive: trio.MemoryReceiveChannel[ExitObserved], backend_id: str
) -> ExitObserved:
    with trio.fail_after(30):
        async for observed in receive:
            if observed.backend_id == backend_id:
                return observed
    raise AssertionError("the exit channel closed")


async def output(executor: Executor, backend_id: str, *, follow: bool = False) -> bytes:
    async with aclosing(executor.logs(backend_id, follow=follow)) as chunks:
        return b"".join([chunk async for chunk in chunks])


def listed(found: list[Running], backend_id: str) -> Running | None:
    return next((r for r in found if r.backend_id == backend_id), None)


async def not_running_soon(executor: Executor, backend_id: str) -> None:
    """``list_running`` stops reporting the backend once its exit was observed (the
    engine may report the ``die`` event just before its listing changes)."""
    with trio.fail_after(10):
        while True:
            if listed(await executor.list_running(), backend_id) is None:
                return
            await trio.sleep(0.05)


async def test_satisfies_the_executor_protocol(harness: Harness) -> None:
    executor: Executor = harness.executor  # checked by mypy
    assert executor.name in ("fake", "process", "docker")


async def test_start_gives_a_readiness_address_on_its_publish_address_and_lists_it(
    harness: Harness,
) -> None:
    spec = harness.spec("serve", SERVE)
    started = await harness.start(spec)
    assert started.backend_id == spec.backend_id and started.handle
    host, port = split_host_port(started.address)
    assert host == harness.publish and port > 0
    await harness.ready(started)
    running = listed(await harness.executor.list_running(), spec.backend_id)
    assert running is not None and running.running
    assert (running.address, running.handle) == (started.address, started.handle)
    assert running.key in (spec.key.display(), spec.backend_id)  # the fake keeps the id
    assert listed(await harness.executor.list_all(), spec.backend_id) == running


async def test_stop_lets_the_backend_end_by_itself(
    harness: Harness, exits: trio.MemoryReceiveChannel[ExitObserved]
) -> None:
    spec = harness.spec("stop", SERVE)
    await harness.ready(await harness.start(spec))
    await harness.executor.stop(spec.backend_id)  # returns without waiting
    assert await next_exit(exits, spec.backend_id) == ExitObserved(
        spec.backend_id, harness.stop_code
    )
    await not_running_soon(harness.executor, spec.backend_id)


async def test_kill_ends_a_backend_that_ignores_stop(
    harness: Harness, exits: trio.MemoryReceiveChannel[ExitObserved]
) -> None:
    spec = harness.spec("stubborn", STUBBORN)
    await harness.ready(await harness.start(spec))
    await harness.executor.stop(spec.backend_id)
    with trio.move_on_after(0.5):
        observed = await next_exit(exits, spec.backend_id)
        pytest.fail(f"the stop signal should have been ignored, got {observed}")
    assert listed(await harness.executor.list_running(), spec.backend_id) is not None
    await harness.executor.kill(spec.backend_id)
    assert await next_exit(exits, spec.backend_id) == ExitObserved(spec.backend_id, 137)


async def test_an_exit_is_observed_with_its_code_and_what_is_left_is_listed_until_removed(
    harness: Harness, exits: trio.MemoryReceiveChannel[ExitObserved]
) -> None:
    spec = harness.spec("exit3", EXIT3)
    await harness.start(spec)
    assert await next_exit(exits, spec.backend_id) == ExitObserved(spec.backend_id, 3)
    await not_running_soon(harness.executor, spec.backend_id)
    left = listed(await harness.executor.list_all(), spec.backend_id)
    if harness.leaves_remains:  # listed for recovery to remove, as not running
        assert left is not None and not left.running
    else:
        assert left is None
    # stopping or killing what has ended is not an error
    await harness.executor.stop(spec.backend_id)
    await harness.executor.kill(spec.backend_id)
    await harness.executor.remove(spec.backend_id)
    assert listed(await harness.executor.list_all(), spec.backend_id) is None


async def test_logs_follow_to_the_end_are_kept_after_removal_until_forgotten(
    harness: Harness, exits: trio.MemoryReceiveChannel[ExitObserved]
) -> None:
    spec = harness.spec("logs", SERVE)
    await harness.ready(await harness.start(spec))
    assert harness.greeting in await output(harness.executor, spec.backend_id)
    collected: list[bytes] = []

    async def follow() -> None:
        collected.append(await output(harness.executor, spec.backend_id, follow=True))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)  # ends once the backend has exited
            await trio.sleep(0.2)
            await harness.executor.kill(spec.backend_id)
    assert harness.greeting in b"".join(collected)
    await next_exit(exits, spec.backend_id)
    await harness.executor.remove(spec.backend_id)
    assert harness.greeting in await output(harness.executor, spec.backend_id)
    await harness.executor.forget(spec.backend_id)
    assert await output(harness.executor, spec.backend_id) == b""


async def test_an_unknown_backend_is_not_an_error(harness: Harness) -> None:
    unknown = f"c{RUN}-unknown"
    await harness.executor.stop(unknown)
    await harness.executor.kill(unknown)
    await harness.executor.remove(unknown)
    await harness.executor.forget(unknown)
    assert await output(harness.executor, unknown) == b""
    assert listed(await harness.executor.list_all(), unknown) is None


async def test_what_cannot_run_is_a_spawn_error_and_leaves_nothing(harness: Harness) -> None:
    spec = harness.spec("unrunnable", "unrunnable")
    with pytest.raises(SpawnError) as info:
        await harness.start(spec)
    assert str(info.value)  # a message for people
    assert listed(await harness.executor.list_all(), spec.backend_id) is None
