"""End-to-end tests of DockerExecutor against the real Docker engine.

Uses the busybox image built by ``plane.testing.images`` (no registry).  When
no engine answers, the tests are skipped, or fail under ``CI=true``.  Every
container a test creates is named ``plane-d<run id>-...`` and removed by the
module fixture's finalizer.
"""

from __future__ import annotations

import contextlib
import os
import stat
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import attrs
import docker
import docker.errors
import pytest
import requests
import trio

from plane.addresses import split_host_port
from plane.events.spec import BackendKey, Executable, ResourceLimits
from plane.executors.base import (
    LOG_FILES,
    LOG_MAX_BYTES,
    ExecutorError,
    ExitObserved,
    SpawnError,
    Started,
    StartSpec,
)
from plane.executors.docker import DEFAULT_CAP_DROP, DockerExecutor, engine_errors
from plane.executors.readiness import wait_until_answers
from plane.testing.images import INDEX_HTML, build_test_image

pytestmark = pytest.mark.docker

RUN = uuid.uuid4().hex[:8]
PREFIX = f"d{RUN}-"


def backend_id(name: str) -> str:
    return f"{PREFIX}{name}"


@pytest.fixture(scope="module")
def docker_client(docker_engine: Any, busybox_image: str) -> Iterator[Any]:
    yield docker_engine
    leftovers = docker_engine.containers.list(all=True, filters={"name": f"plane-{PREFIX}"})
    for container in leftovers:
        container.remove(force=True, v=True)


@pytest.fixture(scope="module")
def image(docker_client: Any) -> str:
    return build_test_image(docker_client)


@pytest.fixture
def executor(docker_client: Any) -> DockerExecutor:
    return DockerExecutor(docker_client, timeout=20, pull_timeout=15)


@pytest.fixture
async def exits(
    executor: DockerExecutor,
) -> AsyncIterator[trio.MemoryReceiveChannel[ExitObserved]]:
    send, receive = trio.open_memory_channel[ExitObserved](100)
    async with trio.open_nursery() as nursery:
        await nursery.start(executor.serve_exits, send)
        yield receive
        nursery.cancel_scope.cancel()


def make_spec(
    bid: str,
    image: str,
    *,
    command: tuple[str, ...] | None = None,
    env: dict[str, str] | None = None,
    limits: ResourceLimits | None = None,
    pull_policy: str = "Never",
) -> StartSpec:
    return StartSpec(
        backend_id=bid,
        key=BackendKey(name=f"key-{bid}", namespace="ns"),
        fencing_token=42,
        executable=Executable(
            image=image,
            command=command,
            env=env or {},
            pull_policy=pull_policy,
            resource_limits=limits or ResourceLimits(),
            port=8080,
        ),
    )


async def next_exit(
    receive: trio.MemoryReceiveChannel[ExitObserved], bid: str, within: float = 15
) -> ExitObserved:
    with trio.fail_after(within):
        async for observed in receive:
            if observed.backend_id == bid:
                return observed
    raise AssertionError("exit channel closed")


def _get(address: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(f"http://{address}/", timeout=5) as response:
        return response.status, response.read()


async def inspect(client: Any, bid: str) -> dict[str, Any]:
    container = await trio.to_thread.run_sync(client.containers.get, f"plane-{bid}")
    attrs: dict[str, Any] = container.attrs
    return attrs


async def start_ready(executor: DockerExecutor, spec: StartSpec) -> Started:
    started = await executor.start(spec)
    with trio.fail_after(15):
        await wait_until_answers(started.address)
    return started


async def test_spawn_answers_http_on_loopback_with_labels_and_env(
    executor: DockerExecutor, docker_client: Any, image: str
) -> None:
    bid = backend_id("http")
    started = await start_ready(executor, make_spec(bid, image, env={"GREETING": "hi"}))
    assert started.address.startswith("127.0.0.1:")
    status, body = await trio.to_thread.run_sync(_get, started.address)
    assert status == 200
    assert body.decode() == INDEX_HTML

    attrs = await inspect(docker_client, bid)
    assert attrs["Id"] == started.handle
    assert attrs["Name"] == f"/plane-{bid}"
    labels = attrs["Config"]["Labels"]
    assert labels["dev.plane.backend"] == bid
    assert labels["dev.plane.key"] == f"ns/key-{bid}"
    assert labels["dev.plane.managed"] == "true"
    assert labels["dev.plane.port"] == "8080"
    assert labels["dev.plane.fencing-token"] == "42"
    env = set(attrs["Config"]["Env"])
    assert {
        "PORT=8080",
        f"SESSION_BACKEND_ID={bid}",
        f"SESSION_BACKEND_KEY=key-{bid}",
        "SESSION_BACKEND_FENCING_TOKEN=42",
        "GREETING=hi",
    } <= env

    # start is idempotent while the backend's container runs
    assert await executor.start(make_spec(bid, image)) == started


async def test_limits_and_hardening_are_applied(
    executor: DockerExecutor, docker_client: Any, image: str
) -> None:
    bid = backend_id("limits")
    limits = ResourceLimits(
        cpu_period=100_000, cpu_period_percent=50, memory_limit_bytes=64 * 2**20, pids_limit=100
    )
    await executor.start(make_spec(bid, image, limits=limits))
    host = (await inspect(docker_client, bid))["HostConfig"]
    assert host["Memory"] == 64 * 2**20
    assert host["CpuPeriod"] == 100_000
    assert host["CpuQuota"] == 50_000
    assert host["PidsLimit"] == 100
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["Init"] is True
    assert host["Privileged"] is False
    assert set(host["CapDrop"]) == set(DEFAULT_CAP_DROP)
    assert host["PortBindings"] == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}

    bid2 = backend_id("default-pids")
    started = await start_ready(executor, make_spec(bid2, image))
    assert (await inspect(docker_client, bid2))["HostConfig"]["PidsLimit"] == 512
    ports = (await inspect(docker_client, bid2))["NetworkSettings"]["Ports"]["8080/tcp"]
    assert ports == [{"HostIp": "127.0.0.1", "HostPort": str(split_host_port(started.address)[1])}]


async def test_a_container_exiting_at_once_is_observed(
    executor: DockerExecutor, exits: trio.MemoryReceiveChannel[ExitObserved], image: str
) -> None:
    """Start may or may not still see it running; the exit is observed either way.
    (An exit after start: tests/executors/test_contract.py.)"""
    bid = backend_id("exit7-now")
    with contextlib.suppress(SpawnError):
        await executor.start(make_spec(bid, image, command=("sh", "-c", "exit 7")))
    assert await next_exit(exits, bid) == ExitObserved(bid, 7)


async def test_missing_command_exits_with_127(
    executor: DockerExecutor, exits: trio.MemoryReceiveChannel[ExitObserved], image: str
) -> None:
    bid = backend_id("nocmd")
    with contextlib.suppress(SpawnError):
        await executor.start(make_spec(bid, image, command=("/no/such/command",)))
    assert await next_exit(exits, bid) == ExitObserved(bid, 127)


@pytest.mark.parametrize("policy", ["IfNotPresent", "Always"])
async def test_unpullable_image_is_a_spawn_error_quickly(
    executor: DockerExecutor, policy: str
) -> None:
    image = f"plane-no-such-image-{RUN}:1"
    with trio.fail_after(20), pytest.raises(SpawnError, match="could not be pulled") as info:
        await executor.start(make_spec(backend_id("pull"), image, pull_policy=policy))
    assert image in str(info.value)


async def test_unknown_pull_policy_is_a_spawn_error(executor: DockerExecutor, image: str) -> None:
    with pytest.raises(SpawnError, match="pull_policy"):
        await executor.start(make_spec(backend_id("policy"), image, pull_policy="Sometimes"))


async def test_logs_and_follow(executor: DockerExecutor, image: str) -> None:
    bid = backend_id("logs")
    started = await start_ready(executor, make_spec(bid, image))
    async with aclosing(executor.logs(bid)) as chunks:
        output = b"".join([chunk async for chunk in chunks])
    assert output == b"plane-test-image: serving /www on port 8080\n"

    bid2 = backend_id("follow")
    command = ("sh", "-c", "echo one; sleep 0.5; echo two >&2; sleep 1000")
    await executor.start(make_spec(bid2, image, command=command))
    collected: list[bytes] = []

    async def follow() -> None:
        async with aclosing(executor.logs(bid2, follow=True)) as chunks:
            async for chunk in chunks:
                collected.append(chunk)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            while True:
                if b"two" in b"".join(collected):
                    break
                await trio.sleep(0.05)
            await executor.kill(bid2)  # following ends with the container
    assert b"".join(collected) == b"one\ntwo\n"

    # Cancelling a follow is prompt.
    with trio.fail_after(5), trio.move_on_after(0.3):
        async with aclosing(executor.logs(bid, follow=True)) as chunks:
            async for _chunk in chunks:
                pass
    assert started.address


async def test_leftover_container_with_the_same_name_is_replaced(
    executor: DockerExecutor, docker_client: Any, image: str
) -> None:
    bid = backend_id("leftover")
    old = await trio.to_thread.run_sync(
        lambda: docker_client.containers.create(image, name=f"plane-{bid}", command=["true"])
    )
    started = await start_ready(executor, make_spec(bid, image))
    assert started.handle != old.id

    # A running container of that name that is not this backend is in the way.
    bid2 = backend_id("squatter")
    await trio.to_thread.run_sync(
        lambda: docker_client.containers.run(
            image, name=f"plane-{bid2}", command=["sleep", "1000"], detach=True
        )
    )
    with pytest.raises(SpawnError, match="in the way"):
        await executor.start(make_spec(bid2, image))


async def test_serve_exits_stops_promptly_when_cancelled(executor: DockerExecutor) -> None:
    send, _receive = trio.open_memory_channel[ExitObserved](1)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(executor.serve_exits, send)
            await trio.sleep(0.05)
            nursery.cancel_scope.cancel()


async def test_executor_makes_its_own_client(docker_client: Any, image: str) -> None:
    executor = DockerExecutor(base_url="unix:///var/run/docker.sock", timeout=20)
    try:
        bid = backend_id("own-client")
        started = await start_ready(executor, make_spec(bid, image))
        assert bid in {r.backend_id for r in await executor.list_running()}
        await executor.remove(bid)
        assert bid not in {r.backend_id for r in await executor.list_running()}
        assert started.handle
    finally:
        await executor.aclose()


async def test_output_is_kept_when_the_container_is_removed(
    docker_client: Any, image: str, tmp_path: Path
) -> None:
    executor = DockerExecutor(docker_client, timeout=20, logs_dir=tmp_path / "logs")
    bid = backend_id("kept-logs")
    command = ("sh", "-c", "echo why it ended; sleep 0.3; exit 3")
    send, receive = trio.open_memory_channel[ExitObserved](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(executor.serve_exits, send)
        await executor.start(make_spec(bid, image, command=command))
        assert await next_exit(receive, bid) == ExitObserved(bid, 3)
        nursery.cancel_scope.cancel()
    await executor.remove(bid)
    assert not docker_client.containers.list(all=True, filters={"name": f"plane-{bid}"})
    async with contextlib.aclosing(executor.logs(bid)) as chunks:
        output = b"".join([chunk async for chunk in chunks])
    assert b"why it ended" in output


async def test_a_static_token_backend_gets_its_token_in_the_environment(
    executor: DockerExecutor, docker_client: Any, image: str
) -> None:
    bid = backend_id("static")
    spec = attrs.evolve(make_spec(bid, image), static_token="s.static-token-value")
    await start_ready(executor, spec)
    env = set((await inspect(docker_client, bid))["Config"]["Env"])
    assert "SESSION_BACKEND_STATIC_TOKEN=s.static-token-value" in env
    assert f"SESSION_BACKEND_ID={bid}" in env
    plain = backend_id("not-static")
    await start_ready(executor, make_spec(plain, image))
    env = set((await inspect(docker_client, plain))["Config"]["Env"])
    assert not [v for v in env if v.startswith("SESSION_BACKEND_STATIC_TOKEN=")]


async def test_output_is_bounded_kept_0600_and_forgotten(
    docker_client: Any, image: str, tmp_path: Path
) -> None:
    """The container logs to json-file with max-size; the output kept at removal is
    0600 whatever the umask, bounded, and ``forget`` deletes it."""
    executor = DockerExecutor(docker_client, timeout=20, logs_dir=tmp_path / "logs")
    bid = backend_id("bounded")
    command = ("sh", "-c", "for i in 0 1 2; do echo line-$i; done; exec sleep 60")
    await executor.start(make_spec(bid, image, command=command))
    log_config = (await inspect(docker_client, bid))["HostConfig"]["LogConfig"]
    with trio.fail_after(10):
        while True:  # the output is written
            async with aclosing(executor.logs(bid)) as chunks:
                if b"line-2" in b"".join([chunk async for chunk in chunks]):
                    break
            await trio.sleep(0.05)
    assert log_config["Type"] == "json-file"
    assert log_config["Config"] == {"max-size": str(LOG_MAX_BYTES), "max-file": str(LOG_FILES)}
    old = os.umask(0o022)
    try:
        await executor.remove(bid)
    finally:
        os.umask(old)
    kept = executor.kept_log_path(bid)
    assert kept is not None and kept.exists()
    assert b"line-2" in kept.read_bytes()
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert stat.S_IMODE(kept.parent.stat().st_mode) == 0o700
    await executor.forget(bid)
    assert not kept.exists()
    await executor.forget(bid)  # twice is fine


def test_invalid_image_reference_is_refused_by_check(executor: DockerExecutor) -> None:
    for image in ("Bad/Image:Name", "a//b", "busybox:", "x@sha256:short"):
        with pytest.raises(SpawnError, match=r"\$\.spawn_config\.executable\.image"):
            executor.check(Executable(image=image))
    for image in ("busybox", "localhost:5000/a/b:v1.2", "ghcr.io/org/app@sha256:" + "a" * 64):
        executor.check(Executable(image=image))


def test_engine_errors_are_classified_in_one_place() -> None:
    """While starting, a 4xx about the request is permanent; 5xx, 408, 409 and 429
    are retried; outside a start everything is transient; ignored statuses are
    swallowed; a caller's rule makes its own permanent errors."""

    def api_error(status: int) -> docker.errors.APIError:
        response = requests.Response()
        response.status_code = status
        return docker.errors.APIError("engine said no", response, explanation="engine said no")

    def raised(status: int, **options: Any) -> Exception | None:
        try:
            with engine_errors("x", **options):
                raise api_error(status)
        except Exception as exc:
            return exc
        return None

    for status in (400, 403, 404, 422):
        assert type(raised(status, starting=True)) is SpawnError
        assert type(raised(status)) is ExecutorError
    for status in (408, 409, 429, 500, 503):
        error = raised(status, starting=True)
        assert type(error) is ExecutorError and "engine said no" in str(error)
    assert raised(404, ignore=(404, 409)) is None and raised(409, ignore=(404, 409)) is None
    assert type(raised(500, ignore=(404,))) is ExecutorError
    rule = raised(500, permanent=lambda exc: f"mine: {exc.status_code}")
    assert type(rule) is SpawnError and str(rule) == "mine: 500"
