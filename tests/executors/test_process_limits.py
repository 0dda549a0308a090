"""The process executor's resource limits, on real child processes, and what it
refuses by name (``plane.executors.proclimits``)."""

from __future__ import annotations

import signal
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

import attrs
import pytest
import trio

from plane.events.spec import BackendKey, Executable, RegistryCredentials, ResourceLimits
from plane.executors.base import ExitObserved, SpawnError, StartSpec
from plane.executors.process import ProcessExecutor
from plane.executors.proclimits import PidsCgroups

RUN = uuid.uuid4().hex[:8]

ALLOCATE = """
import sys
try:
    block = bytearray(int(sys.argv[1]))
except MemoryError:
    print("MemoryError", flush=True)
    sys.exit(3)
print("allocated", len(block), flush=True)
"""

FORK = """
import os, sys, time
children = []
for _ in range(int(sys.argv[1])):
    try:
        pid = os.fork()
    except OSError as exc:
        print("fork failed:", exc.strerror, flush=True)
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    children.append(pid)
print("forked", len(children), flush=True)
for pid in children:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
"""


def spec(name: str, script: str, *args: str, limits: ResourceLimits) -> StartSpec:
    bid = f"l{RUN}-{name}"
    return StartSpec(
        backend_id=bid,
        key=BackendKey(name=bid),
        fencing_token=1,
        executable=Executable(
            command=(sys.executable, "-c", script, *args), resource_limits=limits
        ),
    )


@pytest.fixture
async def executor(tmp_path: Path) -> AsyncIterator[ProcessExecutor]:
    ex = ProcessExecutor(tmp_path / "logs")
    yield ex
    for bid in list(ex._children):
        await ex.remove(bid)


async def run_to_exit(executor: ProcessExecutor, start: StartSpec) -> tuple[int | None, str]:
    """Start *start*, wait for its exit; its exit code and its output."""
    send, receive = trio.open_memory_channel[ExitObserved](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(executor.serve_exits, send)
        executor.check(start.executable)
        await executor.start(start)
        with trio.fail_after(60):
            async for observed in receive:
                if observed.backend_id == start.backend_id:
                    break
        nursery.cancel_scope.cancel()
    output = b""
    async with aclosing(executor.logs(start.backend_id)) as chunks:
        async for chunk in chunks:
            output += chunk
    return observed.exit_code, output.decode()


async def test_memory_limit_makes_a_large_allocation_fail(executor: ProcessExecutor) -> None:
    limits = ResourceLimits(memory_limit_bytes=300 << 20)
    code, output = await run_to_exit(
        executor, spec("mem-big", ALLOCATE, str(600 << 20), limits=limits)
    )
    assert (code, output.strip()) == (3, "MemoryError")
    # the same limit leaves room for a small allocation: it is the limit that bit
    code, output = await run_to_exit(
        executor, spec("mem-small", ALLOCATE, str(8 << 20), limits=limits)
    )
    assert code == 0
    assert output.strip() == f"allocated {8 << 20}"


async def test_cpu_time_limit_ends_a_busy_loop(executor: ProcessExecutor) -> None:
    busy = spec("cpu", "while True: pass", limits=ResourceLimits(cpu_time_limit=1))
    code, _ = await run_to_exit(executor, busy)
    assert code in (128 + signal.SIGXCPU, 128 + signal.SIGKILL)


async def test_pids_limit_bounds_forks(executor: ProcessExecutor, tmp_path: Path) -> None:
    problem = executor.cgroups.problem()
    if problem is not None:
        pytest.skip(f"no writable pids cgroup here ({problem}); the refusal is tested instead")
    forks = spec("pids", FORK, "10", limits=ResourceLimits(pids_limit=4))
    code, output = await run_to_exit(executor, forks)
    assert code == 0
    assert "fork failed" in output
    assert "forked 3" in output  # the backend itself and three children: pids.max = 4
    cgroup = executor.cgroups.path(forks.backend_id)
    assert cgroup is not None and cgroup.exists()
    await executor.remove(forks.backend_id)
    assert not cgroup.exists()


async def test_pids_limit_is_refused_where_no_cgroup_is_writable(tmp_path: Path) -> None:
    executor = ProcessExecutor(tmp_path / "logs")
    executor.cgroups = PidsCgroups("scope", root=tmp_path / "no-cgroups")
    with pytest.raises(
        SpawnError, match=r"@ \$\.spawn_config\.executable\.resource_limits\.pids_limit"
    ):
        executor.check(Executable(command=("true",), resource_limits=ResourceLimits(pids_limit=5)))


@pytest.mark.parametrize(
    ("field", "executable"),
    [
        ("resource_limits.cpu_period", Executable(resource_limits=ResourceLimits(cpu_period=1000))),
        (
            "resource_limits.cpu_period_percent",
            Executable(resource_limits=ResourceLimits(cpu_period_percent=50)),
        ),
        (
            "resource_limits.disk_limit_bytes",
            Executable(resource_limits=ResourceLimits(disk_limit_bytes=1 << 30)),
        ),
        ("image", Executable(image="busybox")),
        ("pull_policy", Executable(pull_policy="Always")),
        ("credentials", Executable(credentials=RegistryCredentials("u", "secret-pw"))),
        ("network_name", Executable(network_name="net")),
        ("mount", Executable(mount=True)),
        ("mount", Executable(mount="data/x")),
    ],
)
def test_what_a_process_cannot_honour_is_refused_by_name(
    tmp_path: Path, field: str, executable: Executable
) -> None:
    executor = ProcessExecutor(tmp_path / "logs")
    with_command = attrs.evolve(executable, command=("true",))
    with pytest.raises(SpawnError) as refused:
        executor.check(with_command)
    assert f"@ $.spawn_config.executable.{field}" in str(refused.value)
    assert "secret-pw" not in str(refused.value)


def test_plane_defaults_and_applied_limits_are_accepted(tmp_path: Path) -> None:
    executor = ProcessExecutor(tmp_path / "logs")
    executor.check(
        Executable(
            command=("true",),
            resource_limits=ResourceLimits(memory_limit_bytes=1 << 30, cpu_time_limit=10),
        )
    )
