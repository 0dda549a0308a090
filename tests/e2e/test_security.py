"""Secure by default, against a real ``plane serve`` subprocess: private files whatever
the umask, no unauthenticated API beyond loopback, key files rotated by SIGHUP, a
read-only key."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from plane.testing.serve_process import PlaneServe, serve_command

BACKEND_APP = Path(__file__).parent.parent / "executors" / "backend_app.py"
KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-fedcba9876543210"
READ_1 = "read-1-0123456789abcdef"
READ_2 = "read-2-fedcba9876543210"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _write_key(path: Path, key: str) -> None:
    """Replace the key file atomically, as an operator's rotation script would."""
    fresh = path.with_suffix(".new")
    fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    os.replace(fresh, path)


def _until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``check()`` until true; fail naming ``what`` after ``timeout`` (a hang guard)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not {what} after {timeout}s")
        time.sleep(0.05)


def _status(api_url: str, key: str | None, method: str = "GET", path: str = "/ctrl/status") -> int:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    body: dict[str, object] | None = {} if method == "POST" else None
    return httpx.request(method, api_url + path, headers=headers, json=body, timeout=30).status_code


def _backend_pid(backend_id: str) -> int:
    """The pid of the process executor's child for ``backend_id`` (from /proc)."""
    marker = f"SESSION_BACKEND_ID={backend_id}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            return int(entry.name)
    raise AssertionError(f"no process for backend {backend_id}")


# ----------------------------------------------------------- permissions


@pytest.fixture
def loose_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _assert_private_tree(data_dir: Path) -> list[Path]:
    """Every directory under ``data_dir`` is 0700 and every file 0600; returns the files."""
    assert _mode(data_dir) == 0o700
    files = []
    for top, dirs, names in os.walk(data_dir):
        for name in dirs:
            assert _mode(Path(top) / name) == 0o700, Path(top) / name
        for name in names:
            path = Path(top) / name
            assert _mode(path) == 0o600, f"{path} is {_mode(path):04o}"
            files.append(path)
    return files


def test_files_are_private_whatever_the_umask(tmp_path: Path, loose_umask: None) -> None:
    data = tmp_path / "data"
    plane = PlaneServe(data, "process", "--terminate-on-exit", umask=0o022)
    try:
        result = plane.connect(
            {
                "key": {"name": "private", "namespace": "", "tag": ""},
                "spawn_config": {
                    "executable": {"command": [sys.executable, str(BACKEND_APP)]},
                    "max_idle_seconds": 300,
                },
            }
        )
        backend_id = result["backend_id"]
        plane.wait_status(backend_id, "ready")
        names = {p.name for p in _assert_private_tree(data)}
        assert {"events.db", "events.db-wal", "events.db-shm", f"{backend_id}.log"} <= names
        # the backend itself runs with the operator's umask, not plane's private one
        status = Path(f"/proc/{_backend_pid(backend_id)}/status").read_text()
        assert "Umask:\t0022" in status
    finally:
        assert plane.stop() == 0
    _assert_private_tree(data)


def test_an_existing_data_dir_is_made_private_at_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert PlaneServe(data, "process").stop() == 0
    # as an older plane (or a hand-made copy) would have left it
    (data / "logs").mkdir(exist_ok=True)
    (data / "logs" / "old.log").write_text("old output\n")
    for path in [data, data / "logs"]:
        path.chmod(0o755)
    for path in [data / "events.db", data / "logs" / "old.log"]:
        path.chmod(0o644)
    plane = PlaneServe(data, "process")
    try:
        _assert_private_tree(data)
    finally:
        assert plane.stop() == 0
    log = plane.log_path.read_text()
    assert "readable by other users" in log
    assert f"{data} 0755 -> 0700" in log
    assert f"{data / 'events.db'} 0644 -> 0600" in log


# ------------------------------------------------------------- exposure


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0", "plane.example:0"])
def test_serve_refuses_an_exposed_api_without_a_key(tmp_path: Path, listen: str) -> None:
    done = subprocess.run(
        [*serve_command(tmp_path / "data", "--api-listen", listen), "--executor", "process"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("PLANE_")},
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    for hint in ("without an API key", "--api-key-file", "PLANE_API_KEY", "--insecure-no-auth"):
        assert hint in done.stderr, (hint, done.stderr)
    assert not (tmp_path / "data").exists(), "nothing started"


@pytest.mark.parametrize("how", ["flag", "env"])
def test_insecure_no_auth_serves_with_a_warning_and_shows_the_real_bind(
    tmp_path: Path, how: str
) -> None:
    flag = ["--insecure-no-auth"] if how == "flag" else []
    env = {"PLANE_INSECURE_NO_AUTH": "1"} if how == "env" else {}
    plane = PlaneServe(tmp_path / "data", "process", "--api-listen", "0.0.0.0:0", *flag, env=env)
    try:
        listening = next(line for line in plane.banner if "listening:" in line)
        port = httpx.URL(plane.urls["api"]).port
        assert f"api on 0.0.0.0:{port} (every interface)" in listening
        assert "proxy on 127.0.0.1:" in listening
        auth = next(line for line in plane.banner if "api auth:" in line)
        assert "NONE" in auth and "--insecure-no-auth" in auth
        assert plane.api.get("/ctrl/status").status_code == 200
    finally:
        assert plane.stop() == 0
    assert "INSECURE" in plane.log_path.read_text()


def test_an_exposed_api_with_a_key_file_starts(tmp_path: Path) -> None:
    key_file = tmp_path / "api.key"
    _write_key(key_file, KEY_A)
    plane = PlaneServe(
        tmp_path / "data",
        "process",
        "--api-listen",
        "0.0.0.0:0",
        env={"PLANE_API_KEY_FILE": str(key_file)},
    )
    try:
        assert _status(plane.urls["api"], None) == 401
        assert _status(plane.urls["api"], KEY_A) == 200
    finally:
        assert plane.stop() == 0
    assert "INSECURE" not in plane.log_path.read_text()


# ------------------------------------------------------------ key files


def test_key_files_rotate_on_sighup_and_the_read_key_only_reads(tmp_path: Path) -> None:
    key_file, read_file = tmp_path / "api.key", tmp_path / "read.key"
    _write_key(key_file, KEY_A)
    _write_key(read_file, READ_1)
    plane = PlaneServe(
        tmp_path / "data",
        "process",
        "--api-key-file",
        str(key_file),
        env={"PLANE_READ_KEY_FILE": str(read_file)},
    )
    api = plane.urls["api"]
    try:
        auth = next(line for line in plane.banner if "api auth:" in line)
        assert str(key_file) in auth and str(read_file) in auth

        assert _status(api, None) == 401
        assert _status(api, KEY_A) == 200
        assert _status(api, READ_1) == 200
        assert _status(api, READ_1, path="/metrics") == 200
        assert _status(api, READ_1, "POST", "/ctrl/connect") == 403
        # past auth: an empty body is KeyUnheldNoSpawnConfig
        assert _status(api, KEY_A, "POST", "/ctrl/connect") == 409
        refused = httpx.post(
            api + "/ctrl/b/x/hard-terminate",
            headers={"authorization": f"Bearer {READ_1}"},
            timeout=30,
        )
        assert refused.status_code == 403
        assert "read-only" in refused.text and "ReadOnlyKey" in refused.text

        # rotate both keys without a restart
        _write_key(key_file, KEY_B)
        _write_key(read_file, READ_2)
        assert _status(api, KEY_A) == 200, "nothing changes before the signal"
        plane.process.send_signal(signal.SIGHUP)
        _until(lambda: _status(api, KEY_B) == 200, "accepting the new key")
        assert _status(api, KEY_A) == 401
        assert _status(api, READ_2) == 200
        assert _status(api, READ_1) == 401
        assert _status(api, READ_2, "POST", "/ctrl/connect") == 403

        # a broken rotation (too short a key) changes nothing and is logged
        _write_key(key_file, "short")
        plane.process.send_signal(signal.SIGHUP)
        _until(lambda: "keys in use are unchanged" in plane.log_path.read_text(), "logged")
        assert _status(api, KEY_B) == 200
        assert _status(api, "short") == 401
        assert plane.process.poll() is None, "SIGHUP does not stop plane serve"

        # the CLI client reads a key file too; with the read key it lists but cannot stop
        client_env = {**os.environ, "PLANE_API_KEY_FILE": str(read_file)}
        client_env.pop("PLANE_API_KEY", None)
        for args, code, needle in (
            (["ls"], 0, "BACKEND"),
            (["terminate", "nosuch"], 1, "read-only"),
        ):
            done = subprocess.run(
                [sys.executable, "-m", "plane.cli", *args, "--api", api],
                capture_output=True,
                text=True,
                timeout=60,
                env=client_env,
            )
            assert done.returncode == code, done.stderr
            assert needle in done.stdout + done.stderr
    finally:
        assert plane.stop() == 0


def test_unusable_key_options_are_refused_by_name(tmp_path: Path) -> None:
    short = tmp_path / "short.key"
    short.write_text("abc\n")
    good = tmp_path / "good.key"
    _write_key(good, KEY_A)
    for args, needle in (
        (["--api-key-file", str(tmp_path / "missing.key")], "--api-key-file"),
        (["--api-key-file", str(short)], "at least 8"),
        (["--api-key", KEY_A, "--api-key-file", str(good)], "give one"),
        (["--read-key-file", str(good)], "--read-key-file needs a full key"),
        (["--api-key-file", str(good), "--read-key-file", str(good)], "must differ"),
    ):
        done = subprocess.run(
            [*serve_command(tmp_path / "data"), "--executor", "process", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, (args, done.stderr)
        assert needle in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)
