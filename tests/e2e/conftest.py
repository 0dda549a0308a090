"""What the e2e tests of proxy processes share (``test_proxy_process``,
``test_proxy_feed_resync``, ``test_proxy_tls``): a ``plane serve`` with the
process executor and a proxy key file, the echo backend's spawn body, and
polling.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from plane.testing.serve_process import PlaneServe

ECHO = Path(__file__).resolve().parents[2] / "bench" / "conn_echo_backend.py"
API_KEY = "api-key-0123456789abcdef"
PROXY_KEY = "proxy-key-0123456789abcdef"

def echo(name: str, **spawn: Any) -> dict[str, Any]:
    config = {"executable": {"command": [sys.executable, str(ECHO)]}, **spawn}
    return {"key": {"name": name}, "spawn_config": config}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "proxy.key"
    path.write_text(PROXY_KEY + "\n")
    path.chmod(0o600)
    return path


def start_serve(tmp_path: Path, key_file: Path, *extra: str, api_port: int = 0) -> PlaneServe:
    serve = PlaneServe(
        tmp_path / "data",
        "process",
        "--api-key",
        API_KEY,
        "--proxy-key-file",
        str(key_file),
        "--api-listen",
        f"127.0.0.1:{api_port}",
        *extra,
        log_path=tmp_path / f"serve-{api_port}-{len(extra)}.log",
    )
    serve.api.headers["Authorization"] = f"Bearer {API_KEY}"
    return serve


def kind_of(response: httpx.Response) -> str:
    kind: str = response.json()["kind"]
    return kind


async def wait_for(check: Any, what: str, limit: float = 15.0) -> Any:
    """Poll ``check()`` (sync or async) until it returns a true value."""
    with trio.move_on_after(limit):
        while True:
            result = check()
            if hasattr(result, "__await__"):
                result = await result
            if result:
                return result
            await trio.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def via(url: str, serve: PlaneServe, proxy_url: str) -> str:
    return url.replace(serve.urls["proxy"], proxy_url)


def ws(url: str) -> str:
    return "ws://" + url.removeprefix("http://")
