"""Plane's fields on the real Docker engine: ``mount``, ``network_name``,
``credentials`` (a real registry with htpasswd auth), ``cpu_time_limit`` and
``disk_limit_bytes``; and the refusals, each naming its field.

Uses the busybox image of ``plane.testing.images``.  When no engine answers the
tests are skipped, or fail under ``CI=true``; the same holds for the registry
of ``scripts/ensure-registry``.  Containers are named ``plane-f<run id>-...``
and removed by the module fixture; the test network is removed too.
"""

from __future__ import annotations

import contextlib
import signal
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import trio

from plane.addresses import split_host_port
from plane.events.spec import BackendKey, Executable, RegistryCredentials, ResourceLimits
from plane.executors.base import ExitObserved, SpawnError, Started, StartSpec
from plane.executors.docker import DockerExecutor, disk_quota_problem
from plane.executors.readiness import wait_until_answers
from plane.testing.images import INDEX_HTML
from plane.testing.registry import Registry, push_image

pytestmark = pytest.mark.docker

RUN = uuid.uuid4().hex[:8]
PREFIX = f"f{RUN}-"
SERVE = 'exec /bin/httpd -f -p "$PORT" -h /www'


@pytest.fixture(scope="module")
def docker_client(docker_engine: Any) -> Iterator[Any]:
    yield docker_engine
    for container in docker_engine.containers.list(all=True, filters={"name": f"plane-{PREFIX}"}):
        container.remove(force=True, v=True)


@pytest.fixture(scope="module")
def image(docker_client: Any, busybox_image: str) -> str:
    return busybox_image


@pytest.fixture
async def executor(docker_client: Any, tmp_path: Path) -> DockerExecutor:
    ex = DockerExecutor(docker_client, timeout=20, pull_timeout=60, mount_base=tmp_path / "mounts")
    await ex.inspect_engine()
    return ex


@pytest.fixture(scope="module")
def network(docker_client: Any) -> Iterator[str]:
    name = f"plane-test-{RUN}"
    created = docker_client.networks.create(name, driver="bridge")
    yield name
    created.reload()
    for container in created.containers:  # a failed test may leave one behind
        container.remove(force=True, v=True)
    created.remove()


def spec(name: str, image: str, **executable: Any) -> StartSpec:
    bid = f"{PREFIX}{name}"
    return StartSpec(
        backend_id=bid,
        key=BackendKey(name=executable.pop("key_name", f"key-{bid}")),
        fencing_token=1,
        executable=Executable(
            image=image, pull_policy=executable.pop("pull_policy", "Never"), **executable
        ),
    )


async def start_ready(executor: DockerExecutor, start: StartSpec) -> Started:
    executor.check(start.executable)
    started = await executor.start(start)
    with trio.fail_after(20):
        await wait_until_answers(started.address)
    return started


async def inspect(client: Any, bid: str) -> dict[str, Any]:
    container = await trio.to_thread.run_sync(client.containers.get, f"plane-{bid}")
    attrs: dict[str, Any] = container.attrs
    return attrs


def _get(address: str) -> bytes:
    with urllib.request.urlopen(f"http://{address}/", timeout=5) as response:
        body: bytes = response.read()
        return body


def refused(field: str, excinfo: pytest.ExceptionInfo[SpawnError]) -> bool:
    return f"@ $.spawn_config.executable.{field}" in str(excinfo.value)


# ------------------------------------------------------------------- mount


async def test_mount_true_binds_the_key_directory(
    executor: DockerExecutor, docker_client: Any, image: str, tmp_path: Path
) -> None:
    write = ("/bin/sh", "-c", f"echo from-the-backend > /plane-data/note; {SERVE}")
    start = spec("mount-key", image, command=write, mount=True, key_name="room-7")
    await start_ready(executor, start)
    note = tmp_path / "mounts" / "room-7" / "note"
    assert note.read_text() == "from-the-backend\n"  # created by the backend, on the host
    mounts = (await inspect(docker_client, start.backend_id))["Mounts"]
    assert [(m["Type"], m["Destination"], m["RW"]) for m in mounts] == [
        ("bind", "/plane-data", True)
    ]
    assert mounts[0]["Source"] == str((tmp_path / "mounts" / "room-7").resolve())


async def test_mount_path_binds_that_directory_created_if_missing(
    executor: DockerExecutor, image: str, tmp_path: Path
) -> None:
    existing = tmp_path / "mounts" / "shared"
    existing.mkdir(parents=True)
    (existing / "seed").write_text("seeded")
    command = ("/bin/sh", "-c", f"cat /plane-data/seed > /plane-data/copy; {SERVE}")
    await start_ready(executor, spec("mount-path", image, command=command, mount="shared"))
    assert (existing / "copy").read_text() == "seeded"

    command = ("/bin/sh", "-c", f"touch /plane-data/made; {SERVE}")
    await start_ready(executor, spec("mount-new", image, command=command, mount="a/b/c"))
    assert (tmp_path / "mounts" / "a" / "b" / "c" / "made").exists()


async def test_mount_escapes_are_refused(
    executor: DockerExecutor, image: str, tmp_path: Path
) -> None:
    base = tmp_path / "mounts"
    base.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (base / "link").symlink_to(outside)
    for path in ("../outside", "/etc", "a/../../outside", "link", "link/deeper", ".", ""):
        with pytest.raises(SpawnError) as excinfo:
            executor.check(Executable(image=image, mount=path))
        assert refused("mount", excinfo), path
    # a key name that leaves the base is refused when the backend starts
    with pytest.raises(SpawnError) as excinfo:
        await executor.start(spec("mount-dots", image, mount=True, key_name=".."))
    assert refused("mount", excinfo)
    assert list(outside.iterdir()) == []


async def test_mount_without_a_mount_base_is_refused(docker_client: Any, image: str) -> None:
    executor = DockerExecutor(docker_client)
    with pytest.raises(SpawnError) as excinfo:
        executor.check(Executable(image=image, mount=True))
    assert refused("mount", excinfo)
    assert "--mount-base" in str(excinfo.value)


# ----------------------------------------------------------------- network


async def test_network_name_joins_that_network_and_still_publishes_on_loopback(
    executor: DockerExecutor, docker_client: Any, image: str, network: str
) -> None:
    start = spec("net", image, network_name=network)
    started = await start_ready(executor, start)
    assert started.address.startswith("127.0.0.1:")
    assert (await trio.to_thread.run_sync(_get, started.address)).decode() == INDEX_HTML
    attrs = await inspect(docker_client, start.backend_id)
    assert attrs["HostConfig"]["NetworkMode"] == network
    assert list(attrs["NetworkSettings"]["Networks"]) == [network]
    ports = attrs["NetworkSettings"]["Ports"]["8080/tcp"]
    assert ports == [{"HostIp": "127.0.0.1", "HostPort": str(split_host_port(started.address)[1])}]


async def test_unknown_network_fails_the_start_naming_it(
    executor: DockerExecutor, image: str
) -> None:
    with pytest.raises(SpawnError) as excinfo:
        await executor.start(spec("no-net", image, network_name=f"no-such-net-{RUN}"))
    assert refused("network_name", excinfo)
    assert f"no-such-net-{RUN}" in str(excinfo.value)


@pytest.mark.parametrize("mode", ["host", "none", "container:abc"])
async def test_network_modes_without_published_ports_are_refused(
    executor: DockerExecutor, image: str, mode: str
) -> None:
    with pytest.raises(SpawnError) as excinfo:
        executor.check(Executable(image=image, network_name=mode))
    assert refused("network_name", excinfo)


# ------------------------------------------------------------- credentials


@pytest.fixture(scope="module")
def pushed(docker_client: Any, image: str, registry: Registry) -> str:
    return push_image(docker_client, image, registry, f"plane-test-{RUN}", "v1")


async def test_credentials_pull_from_a_private_registry(
    executor: DockerExecutor, docker_client: Any, pushed: str, registry: Registry
) -> None:
    good = RegistryCredentials(registry.username, registry.password)
    start = spec("creds", pushed, pull_policy="Always", credentials=good)
    started = await start_ready(executor, start)
    assert (await trio.to_thread.run_sync(_get, started.address)).decode() == INDEX_HTML
    assert (await inspect(docker_client, start.backend_id))["Config"]["Image"] == pushed


async def test_wrong_or_missing_credentials_fail_the_spawn_clearly(
    executor: DockerExecutor, docker_client: Any, pushed: str, registry: Registry
) -> None:
    with contextlib.suppress(docker.errors.ImageNotFound):
        await trio.to_thread.run_sync(docker_client.images.remove, pushed)
    wrong = RegistryCredentials(registry.username, "not-the-password-xyzzy")
    with pytest.raises(SpawnError) as excinfo:
        await executor.start(spec("bad-creds", pushed, pull_policy="Always", credentials=wrong))
    message = str(excinfo.value)
    assert f"image {pushed!r} could not be pulled with the given credentials" in message
    assert "unauthorized" in message or "authentication" in message
    assert "not-the-password-xyzzy" not in message
    with pytest.raises(SpawnError, match="could not be pulled"):
        await executor.start(spec("no-creds", pushed, pull_policy="Always"))


# ------------------------------------------------------------------ limits


async def test_cpu_time_limit_is_a_cpu_ulimit_that_ends_a_busy_loop(
    executor: DockerExecutor, docker_client: Any, image: str
) -> None:
    send, receive = trio.open_memory_channel[ExitObserved](10)
    busy = ("/bin/sh", "-c", "while :; do :; done")
    start = spec("cpu", image, command=busy, resource_limits=ResourceLimits(cpu_time_limit=1))
    async with trio.open_nursery() as nursery:
        await nursery.start(executor.serve_exits, send)
        executor.check(start.executable)
        await executor.start(start)
        ulimits = (await inspect(docker_client, start.backend_id))["HostConfig"]["Ulimits"]
        assert ulimits == [{"Name": "cpu", "Soft": 1, "Hard": 1}]
        with trio.fail_after(60):
            async for observed in receive:
                if observed.backend_id == start.backend_id:
                    break
        nursery.cancel_scope.cancel()
    assert observed.exit_code in (128 + signal.SIGXCPU, 128 + signal.SIGKILL)


def test_disk_quota_support_is_read_from_the_engine_info() -> None:
    xfs = {"Driver": "overlay2", "DriverStatus": [["Backing Filesystem", "xfs"]]}
    ext4 = {"Driver": "overlay2", "DriverStatus": [["Backing Filesystem", "extfs"]]}
    assert disk_quota_problem(xfs) is None
    problem = disk_quota_problem(ext4)
    assert problem is not None
    assert "overlay2 on extfs" in problem
    assert problem.endswith("@ $.spawn_config.executable.resource_limits.disk_limit_bytes")
    assert disk_quota_problem({"Driver": "vfs"}) is not None


@pytest.fixture(scope="module")
def disk_problem(docker_client: Any) -> str | None:
    """Why this engine cannot limit disk size (None: it can)."""
    return disk_quota_problem(docker_client.info())


@pytest.fixture
def disk_unsupported(disk_problem: str | None) -> str:
    if disk_problem is None:
        pytest.skip("this engine can limit disk size: nothing to refuse")
    return disk_problem


@pytest.fixture
def disk_supported(disk_problem: str | None) -> None:
    if disk_problem is not None:
        pytest.skip(
            f"this engine cannot limit disk size ({disk_problem}); the refusal is tested "
            "by test_disk_limit_is_refused_by_name_where_the_engine_cannot"
        )


DISK_LIMIT = ResourceLimits(disk_limit_bytes=1 << 30)


async def test_disk_limit_is_refused_by_name_where_the_engine_cannot(
    executor: DockerExecutor, docker_client: Any, image: str, disk_unsupported: str
) -> None:
    with pytest.raises(SpawnError) as excinfo:
        executor.check(Executable(image=image, resource_limits=DISK_LIMIT))
    assert refused("resource_limits.disk_limit_bytes", excinfo)
    assert str(excinfo.value) == disk_unsupported
    # an executor that has not read the engine's info yet refuses at start
    fresh = DockerExecutor(docker_client)
    fresh.check(Executable(image=image, resource_limits=DISK_LIMIT))
    with pytest.raises(SpawnError) as excinfo:
        await fresh.start(spec("disk-late", image, resource_limits=DISK_LIMIT))
    assert refused("resource_limits.disk_limit_bytes", excinfo)


async def test_disk_limit_is_applied_where_the_engine_can(
    executor: DockerExecutor, docker_client: Any, image: str, disk_supported: None
) -> None:
    start = spec("disk", image, resource_limits=DISK_LIMIT)
    await start_ready(executor, start)
    host = (await inspect(docker_client, start.backend_id))["HostConfig"]
    assert host["StorageOpt"] == {"size": str(1 << 30)}
