"""End to end: the collaborative notepad example (examples/notepad) under a real plane.

Each test starts ``plane serve`` as a real subprocess (ports chosen by the
kernel and read back from its startup banner), spawns the notepad through the
HTTP API, talks to it through plane's proxy over real sockets (HTTP and two
WebSocket clients), and finally stops plane with SIGTERM and expects exit
status 0.

Resource handling: the ``plane serve`` subprocess is always stopped by the
fixture's finalizer (SIGTERM, then SIGKILL); leftover backend processes
labelled with this plane's scope are killed; containers labelled with the
backend ids a test created are removed.  The Docker test needs a Docker
engine: without one it is skipped, or fails under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import orjson
import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from plane.executors.process import MARKER_SCOPE_ENV

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "notepad"
APP = EXAMPLE / "app.py"
BUILD_SCRIPT = EXAMPLE / "build-image.sh"
IMAGE = "plane-example-notepad:latest"

pytestmark = pytest.mark.slow


# ----------------------------------------------------------------- plane serve


@attrs.frozen
class PlaneServer:
    proc: subprocess.Popen[bytes]
    api: str
    proxy: str
    data_dir: Path
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    async def sigterm_and_wait(self, limit: float = 30.0) -> int:
        """SIGTERM plane serve and wait (at most *limit* seconds) for its exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return await trio.to_thread.run_sync(self.proc.wait, limit)


def _banner_urls(text: str) -> tuple[str, str] | None:
    urls: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, rest = line.strip().partition(":")
        if sep and name in ("api", "proxy") and rest.strip():
            urls[name] = rest.split()[0]
    if "api" in urls and "proxy" in urls:
        return urls["api"], urls["proxy"]
    return None


def _kill_labelled_processes(scope: str) -> None:
    """SIGKILL the process groups of backends a process-executor plane left running."""
    wanted = f"{MARKER_SCOPE_ENV}={scope}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in environ:
            with contextlib.suppress(OSError):
                os.killpg(os.getpgid(int(entry)), signal.SIGKILL)


@contextlib.contextmanager
def run_plane(tmp_path: Path, executor: str) -> Iterator[PlaneServer]:
    data_dir = tmp_path / "plane-data"
    out_path, err_path = tmp_path / "serve.stdout", tmp_path / "serve.stderr"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLANE_")}
    argv = [
        sys.executable, "-m", "plane.cli", "serve",
        "--data-dir", str(data_dir),
        "--api-listen", "127.0.0.1:0",
        "--proxy-listen", "127.0.0.1:0",
        "--executor", executor,
    ]  # fmt: skip
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, cwd=tmp_path, env=env)
    try:
        deadline = time.monotonic() + 20
        while (urls := _banner_urls(out_path.read_text(errors="replace"))) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"plane serve did not start (exit {proc.poll()}):\n"
                    f"{out_path.read_text()}\n{err_path.read_text()}"
                )
            time.sleep(0.05)
        yield PlaneServer(proc, urls[0], urls[1], data_dir, err_path)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if executor == "process":
            _kill_labelled_processes(str((data_dir / "logs").resolve()))


# --------------------------------------------------------------------- helpers


def connect_body(name: str, executable: dict[str, Any], **spawn: Any) -> dict[str, Any]:
    return {
        "key": {"name": name, "namespace": "", "tag": ""},
        "spawn_config": {"executable": executable, **spawn},
    }


async def wait_status(
    api: httpx.AsyncClient, backend_id: str, wanted: set[str], limit: float
) -> dict[str, Any]:
    """Poll /pub/b/{id}/status until its status is one of *wanted* (at most *limit* s)."""
    status: dict[str, Any] = {}
    with trio.move_on_after(limit):
        while True:
            response = await api.get(f"/pub/b/{backend_id}/status")
            assert response.status_code == 200, response.text
            status = response.json()
            if status["status"] in wanted:
                return status
            if status["status"] == "terminated":
                break  # not wanted, and it will never change again
            await trio.sleep(0.1)
    pytest.fail(f"backend {backend_id} is {status} after {limit} s, not one of {wanted}")


async def state_where(
    ws: WebSocketConnection, check: Callable[[dict[str, Any]], bool], limit: float = 10.0
) -> dict[str, Any]:
    """Read state messages until one satisfies *check* (states may be coalesced)."""
    seen: list[dict[str, Any]] = []
    with trio.move_on_after(limit):
        while True:
            message = orjson.loads(await ws.get_message())
            assert isinstance(message, dict) and message["type"] == "state", message
            if check(message):
                return message
            seen.append(message)
    pytest.fail(f"no matching state within {limit} s; saw {seen}")


def ws_url(url: str) -> str:
    """The WebSocket URL of a backend url ``http://proxy/<token>/``: same prefix, then ``ws``."""
    assert url.startswith("http://") and url.endswith("/"), url
    return "ws://" + url.removeprefix("http://") + "ws"


async def check_page(url: str, key: str, backend_id: str) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        page = await http.get(url)
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["x-plane-backend-id"] == backend_id
        assert "<textarea" in page.text
        assert f'<code id="key">{key}</code>' in page.text
        assert backend_id in page.text
        # Every URL in the page stays under the token prefix.
        assert 'src="/' not in page.text and 'href="/' not in page.text
        state = (await http.get(url + "state")).json()
        assert state["key"] == key and state["backend_id"] == backend_id
        assert (await http.get(url + "healthz")).status_code == 200


# ------------------------------------------------------------- process executor


@pytest.fixture
def plane_process(tmp_path: Path) -> Iterator[PlaneServer]:
    with run_plane(tmp_path, "process") as server:
        yield server


async def test_notepad_under_the_process_executor(plane_process: PlaneServer) -> None:
    plane = plane_process
    executable = {"command": [sys.executable, str(APP)], "env": {"HOST": "127.0.0.1"}}
    async with httpx.AsyncClient(base_url=plane.api, timeout=10) as api:
        response = await api.post(
            "/ctrl/connect", json=connect_body("doc", executable, max_idle_seconds=2)
        )
        assert response.status_code == 200, response.text
        connected = response.json()
        backend_id, url = connected["backend_id"], connected["url"]
        assert connected["spawned"] is True
        assert url.startswith(plane.proxy + "/")
        await wait_status(api, backend_id, {"ready", "idle"}, limit=15)

        await check_page(url, "doc", backend_id)

        async with open_websocket_url(ws_url(url)) as alice:
            hello_a = await state_where(alice, lambda m: True)
            assert hello_a["text"] == "" and hello_a["editors"] == 1 and hello_a["ack"] == 0
            async with open_websocket_url(ws_url(url)) as bob:
                hello_b = await state_where(bob, lambda m: True)
                assert hello_b["editors"] == 2
                assert hello_b["you"] != hello_a["you"]
                await state_where(alice, lambda m: m["editors"] == 2)  # bob joined

                await alice.send_message(
                    orjson.dumps({"type": "set", "text": "hello, bob"}).decode()
                )
                seen_by_bob = await state_where(bob, lambda m: m["rev"] >= 1)
                assert seen_by_bob["text"] == "hello, bob"
                assert seen_by_bob["by"] == hello_a["you"]
                assert seen_by_bob["editors"] == 2 and seen_by_bob["ack"] == 0
                echo = await state_where(alice, lambda m: m["rev"] >= 1)
                assert echo["text"] == "hello, bob" and echo["ack"] == 1

                await bob.send_message(orjson.dumps({"type": "set", "text": "hi, alice"}).decode())
                seen_by_alice = await state_where(alice, lambda m: m["rev"] >= 2)
                assert (
                    seen_by_alice["text"] == "hi, alice" and seen_by_alice["by"] == hello_b["you"]
                )
                assert (await state_where(bob, lambda m: m["rev"] >= 2))["ack"] == 1

                async with httpx.AsyncClient(timeout=10) as http:
                    state = (await http.get(url + "state")).json()
                assert state["text"] == "hi, alice" and state["editors"] == 2

                # One stdout line per connection, readable through plane's logs API.
                logs = (await api.get(f"/ctrl/b/{backend_id}/logs")).text
                assert "editor 1 connected" in logs and "editor 2 connected" in logs, logs
            left = await state_where(alice, lambda m: m["editors"] == 1)  # bob left
            assert left["text"] == "hi, alice"

        # Nobody is connected any more: reaped after max_idle_seconds (2 s).
        final = await wait_status(api, backend_id, {"terminated"}, limit=20)
        assert final["termination_reason"] == "swept", final  # idle, in Plane's words

    assert await plane.sigterm_and_wait() == 0, plane.stderr()


# ---------------------------------------------------------------- docker executor


@pytest.fixture(scope="module")
def docker_client(docker_engine: Any) -> Any:
    return docker_engine


@pytest.fixture(scope="module")
def notepad_image(docker_client: Any) -> str:
    """Build the image with the example's own script (no registry involved)."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    tag = result.stdout.strip().splitlines()[-1]
    assert tag == IMAGE
    assert docker_client.images.get(tag).attrs["Config"]["Cmd"] == ["python3", "/app/app.py"]
    return tag


@pytest.fixture
def plane_docker(tmp_path: Path, docker_client: Any) -> Iterator[tuple[PlaneServer, list[str]]]:
    created: list[str] = []  # backend ids, for the cleanup of their containers
    try:
        with run_plane(tmp_path, "docker") as server:
            yield server, created
    finally:
        for backend_id in created:
            labels = ["dev.plane.managed=true", f"dev.plane.backend={backend_id}"]
            for container in docker_client.containers.list(all=True, filters={"label": labels}):
                with contextlib.suppress(Exception):
                    container.remove(force=True, v=True)


@pytest.mark.docker
async def test_notepad_under_the_docker_executor(
    plane_docker: tuple[PlaneServer, list[str]], notepad_image: str
) -> None:
    plane, created = plane_docker
    executable = {"image": notepad_image, "pull_policy": "Never", "port": 8080}
    async with httpx.AsyncClient(base_url=plane.api, timeout=30) as api:
        response = await api.post(
            "/ctrl/connect", json=connect_body("doc-docker", executable, max_idle_seconds=60)
        )
        assert response.status_code == 200, response.text
        connected = response.json()
        backend_id, url = connected["backend_id"], connected["url"]
        created.append(backend_id)
        await wait_status(api, backend_id, {"ready", "idle"}, limit=30)

        await check_page(url, "doc-docker", backend_id)

        async with open_websocket_url(ws_url(url)) as editor:
            hello = await state_where(editor, lambda m: True)
            assert hello["editors"] == 1 and hello["text"] == ""
            await editor.send_message(
                orjson.dumps({"type": "set", "text": "from a container"}).decode()
            )
            echo = await state_where(editor, lambda m: m["rev"] >= 1)
            assert echo["text"] == "from a container" and echo["by"] == hello["you"]
            assert echo["ack"] == 1

            response = await api.post(f"/ctrl/b/{backend_id}/hard-terminate")
            assert response.status_code == 200, response.text
            final = await wait_status(api, backend_id, {"terminated"}, limit=20)
            assert final["termination_kind"] == "hard", final

    assert await plane.sigterm_and_wait() == 0, plane.stderr()
