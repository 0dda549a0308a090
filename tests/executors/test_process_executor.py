"""End-to-end tests of ProcessExecutor with real processes and real sockets."""

from __future__ import annotations

import os
import signal
import stat
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from plane.addresses import split_host_port
from plane.events.spec import BackendKey, Executable
from plane.executors.base import LOG_MAX_BYTES, ExitObserved, SpawnError, StartSpec
from plane.executors.process import ProcessExecutor, exit_code_from_returncode
from plane.executors.readiness import wait_until_answers

APP = Path(__file__).with_name("backend_app.py")
RUN = uuid.uuid4().hex[:8]


def backend_id(name: str) -> str:
    return f"t{RUN}-{name}"


def make_spec(
    bid: str,
    *args: str,
    command: tuple[str, ...] | None = None,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
) -> StartSpec:
    return StartSpec(
        backend_id=bid,
        key=BackendKey(name=f"key-{bid}", namespace="ns"),
        fencing_token=7,
        executable=Executable(
            command=command if command is not None else (sys.executable, str(APP), *args),
            env=env or {},
            cwd=cwd,
        ),
    )


def _get_json(address: str) -> Any:
    with urllib.request.urlopen(f"http://{address}/", timeout=5) as response:
        assert response.status == 200
        return orjson.loads(response.read())


async def get_json(address: str) -> Any:
    return await trio.to_thread.run_sync(_get_json, address)


async def next_exit(
    receive: trio.MemoryReceiveChannel[ExitObserved], bid: str, within: float = 10
) -> ExitObserved:
    with trio.fail_after(within):
        async for observed in receive:
            if observed.backend_id == bid:
                return observed
    raise AssertionError("exit channel closed")


def process_state(pid: int) -> str | None:
    """The /proc state letter of *pid*, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0]


async def wait_gone(pid: int) -> None:
    """Wait until *pid* has exited (gone, or a zombie nobody reaped yet)."""
    while True:
        if process_state(pid) in (None, "Z"):
            return
        await trio.sleep(0.01)


@pytest.fixture
async def executor(tmp_path: Path) -> AsyncIterator[ProcessExecutor]:
    ex = ProcessExecutor(tmp_path / "logs", adopted_poll_interval=0.05)
    yield ex
    for running in await ex.list_running():
        if running.backend_id.startswith(f"t{RUN}-"):
            await ex.kill(running.backend_id)
    for bid in list(ex._children):
        await ex.remove(bid)


@pytest.fixture
async def exits(
    executor: ProcessExecutor,
) -> AsyncIterator[trio.MemoryReceiveChannel[ExitObserved]]:
    send, receive = trio.open_memory_channel[ExitObserved](100)
    async with trio.open_nursery() as nursery:
        await nursery.start(executor.serve_exits, send)
        yield receive
        nursery.cancel_scope.cancel()


async def test_start_answers_with_env_and_logs(executor: ProcessExecutor, tmp_path: Path) -> None:
    bid = backend_id("env")
    started = await executor.start(make_spec(bid, env={"GREETING": "hi", "PORT": "1"}, cwd="/"))
    assert started.backend_id == bid
    assert started.address.startswith("127.0.0.1:")
    assert int(started.handle) > 0
    with trio.fail_after(10):
        await wait_until_answers(started.address)
    answer = await get_json(started.address)
    assert answer["pid"] == int(started.handle)
    assert answer["cwd"] == "/"
    env = answer["env"]
    assert env["PORT"] == str(split_host_port(started.address)[1])  # plane's PORT wins
    assert env["SESSION_BACKEND_ID"] == bid
    assert env["SESSION_BACKEND_KEY"] == f"key-{bid}"
    assert env["SESSION_BACKEND_FENCING_TOKEN"] == "7"
    assert env["PLANE_BACKEND_ID"] == bid
    assert env["PLANE_BACKEND_KEY"] == f"ns/key-{bid}"
    assert env["GREETING"] == "hi"
    assert env["HOME"] == os.environ.get("HOME")

    async with aclosing(executor.logs(bid)) as chunks:
        output = b"".join([chunk async for chunk in chunks])
    assert f"backend-app listening on {started.address}".encode() in output
    assert b"backend-app stderr line" in output
    assert (tmp_path / "logs" / f"{bid}.log").exists()

    # start is idempotent for a running backend
    again = await executor.start(make_spec(bid))
    assert again == started


async def test_kill_ends_a_process_that_ignores_sigterm_and_its_child(
    executor: ProcessExecutor, exits: trio.MemoryReceiveChannel[ExitObserved]
) -> None:
    bid = backend_id("stubborn")
    started = await executor.start(make_spec(bid, "--ignore-term", "--spawn-child"))
    with trio.fail_after(10):
        await wait_until_answers(started.address)
    child_pid = (await get_json(started.address))["child_pid"]
    assert process_state(child_pid) not in (None, "Z")

    await executor.stop(bid)
    with trio.move_on_after(0.3):
        observed = await next_exit(exits, bid)
        pytest.fail(f"SIGTERM should have been ignored, got {observed}")
    await executor.kill(bid)
    assert await next_exit(exits, bid) == ExitObserved(bid, 137)  # 128 + SIGKILL

    # The child (same process group) was killed too.
    with trio.fail_after(5):
        await wait_gone(child_pid)


async def test_exit_before_serve_exits_is_still_reported(executor: ProcessExecutor) -> None:
    bid = backend_id("early")
    started = await executor.start(make_spec(bid, "--exit", "5"))
    with trio.fail_after(5):
        await wait_gone(int(started.handle))
    send, receive = trio.open_memory_channel[ExitObserved](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(executor.serve_exits, send)
        assert await next_exit(receive, bid) == ExitObserved(bid, 5)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("command", "cwd", "message"),
    [
        (("/nonexistent/plane-test-command",), None, "not found"),
        (("plane-test-command-that-does-not-exist",), None, "not found"),
        ((sys.executable, "-c", "pass"), "/nonexistent/dir", "working directory"),
        ((), None, "executable.command"),
    ],
)
async def test_bad_command_or_cwd_is_a_spawn_error(
    executor: ProcessExecutor, command: tuple[str, ...], cwd: str | None, message: str
) -> None:
    with pytest.raises(SpawnError, match=message):
        await executor.start(make_spec(backend_id("bad"), command=command, cwd=cwd))


async def test_unrunnable_files_are_spawn_errors(executor: ProcessExecutor, tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("not a program\n")
    plain.chmod(0o644)
    with pytest.raises(SpawnError, match="not executable"):
        await executor.start(make_spec(backend_id("plain"), command=(str(plain),)))
    plain.chmod(0o755)
    with pytest.raises(SpawnError, match="Exec format error"):
        await executor.start(make_spec(backend_id("plain"), command=(str(plain),)))


async def test_list_running_and_adoption_by_a_fresh_executor(
    executor: ProcessExecutor, tmp_path: Path
) -> None:
    bid = backend_id("adopt")
    started = await executor.start(make_spec(bid, "--spawn-child"))
    with trio.fail_after(10):
        await wait_until_answers(started.address)

    listed = {r.backend_id: r for r in await executor.list_running()}
    assert bid in listed
    assert listed[bid].address == started.address
    assert listed[bid].handle == started.handle
    assert listed[bid].key == f"ns/key-{bid}"
    # The backend's child carries the label too but is not listed separately.
    assert sum(1 for r in await executor.list_running() if r.backend_id == bid) == 1

    # A fresh executor (plane restarted) finds it, its address and its logs.
    fresh = ProcessExecutor(tmp_path / "logs", adopted_poll_interval=0.05)
    found = {r.backend_id: r for r in await fresh.list_running()}
    assert found[bid] == listed[bid]
    async with aclosing(fresh.logs(bid)) as chunks:
        assert b"backend-app listening" in b"".join([chunk async for chunk in chunks])
    again = await fresh.start(make_spec(bid))
    assert again == started

    send, receive = trio.open_memory_channel[ExitObserved](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(fresh.serve_exits, send)
        await fresh.stop(bid)
        # Not plane's child any more: the exit is seen, its code is not.
        assert await next_exit(receive, bid) == ExitObserved(bid, None)
        nursery.cancel_scope.cancel()
    await fresh.remove(bid)
    assert (tmp_path / "logs" / f"{bid}.log").exists(), "logs outlive the backend"
    assert bid not in {r.backend_id for r in await fresh.list_running()}


def test_exit_code_from_returncode() -> None:
    assert exit_code_from_returncode(0) == 0
    assert exit_code_from_returncode(3) == 3
    assert exit_code_from_returncode(-15) == 143
    assert exit_code_from_returncode(-9) == 137


LOUD = (
    "import sys\nfor i in range(30000):\n    sys.stdout.write('line %06d %s\\n' % (i, 'x' * 100))\n"
)


def loud_output() -> bytes:
    return b"".join(b"line %06d %s\n" % (i, b"x" * 100) for i in range(30000))


async def test_output_rotates_at_a_size_files_0600_and_forget(
    executor: ProcessExecutor, exits: trio.MemoryReceiveChannel[ExitObserved]
) -> None:
    """A backend that prints 3.4 MB keeps at most LOG_FILES files of LOG_MAX_BYTES,
    the newest output; ``logs`` reads them in order, ``forget`` deletes them."""
    bid = backend_id("loud")
    old = os.umask(0o022)
    try:
        await executor.start(make_spec(bid, command=(sys.executable, "-c", LOUD)))
    finally:
        os.umask(old)
    await next_exit(exits, bid)
    followed = []
    async with aclosing(executor.logs(bid, follow=True)) as chunks:
        async for chunk in chunks:
            followed.append(chunk)
    await executor.remove(bid)  # waits for the writer to finish
    paths = executor.log_paths(bid)
    assert [p.name for p in paths] == [f"{bid}.log.1", f"{bid}.log"]
    assert not await trio.Path(f"{paths[-1]}.2").exists()
    for path in paths:
        assert path.stat().st_size <= LOG_MAX_BYTES
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths[-1].parent.stat().st_mode) == 0o700
    everything = loud_output()
    kept = b"".join(p.read_bytes() for p in paths)
    assert len(kept) > LOG_MAX_BYTES and everything.endswith(kept)  # the newest output
    async with aclosing(executor.logs(bid)) as chunks:
        read = b"".join([chunk async for chunk in chunks])
    assert read == kept
    assert b"".join(followed).endswith(b"line 029999 " + b"x" * 100 + b"\n")
    await executor.forget(bid)
    assert not any(p.exists() for p in paths)


async def test_check_resolves_the_command(executor: ProcessExecutor, tmp_path: Path) -> None:
    """A command that cannot run is refused by ``check`` (connect answers 400)."""
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    executor.check(Executable(command=("./tool",), cwd=str(tmp_path)))
    executor.check(Executable(command=("sh", "-c", "true")))
    executor.check(Executable(command=("tool",), env={"PATH": str(tmp_path)}))
    for executable, field in [
        (Executable(command=("./tool",), cwd="/"), "command"),
        (Executable(command=(f"no-such-{RUN}",)), "command"),
        (Executable(command=("sh",), env={"PATH": str(tmp_path)}), "command"),
        (Executable(command=(str(tmp_path),)), "command"),
        (Executable(command=("sh",), cwd=str(tmp_path / "nope")), "cwd"),
    ]:
        with pytest.raises(SpawnError, match=rf"\$\.spawn_config\.executable\.{field}"):
            executor.check(executable)
    tool.chmod(0o644)
    with pytest.raises(SpawnError, match="not executable"):
        executor.check(Executable(command=(str(tool),)))


async def test_list_all_reports_a_straggler_and_remove_ends_it(
    executor: ProcessExecutor, tmp_path: Path
) -> None:
    """The backend process died but its child still runs, labelled: not running, but
    left over; ``remove`` ends it."""
    bid = backend_id("straggler")
    marker = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        "open(sys.argv[1] + '.tmp', 'w').write(str(child.pid))\n"
        "import os; os.rename(sys.argv[1] + '.tmp', sys.argv[1])\n"
        "time.sleep(60)\n"
    )
    command = (sys.executable, "-c", script, str(marker))
    started = await executor.start(make_spec(bid, command=command))
    with trio.fail_after(10):
        while True:
            if await trio.Path(marker).exists():
                break
            await trio.sleep(0.02)
    child = int(marker.read_text())
    os.kill(int(started.handle), signal.SIGKILL)
    await wait_gone(int(started.handle))
    found = [r for r in await executor.list_all() if r.backend_id == bid]
    assert len(found) == 1 and not found[0].running and found[0].handle == str(child)
    assert bid not in {r.backend_id for r in await executor.list_running()}
    await executor.remove(bid)
    await wait_gone(child)
    assert bid not in {r.backend_id for r in await executor.list_all()}
