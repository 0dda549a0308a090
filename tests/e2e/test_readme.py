"""The README's two set-up commands, run literally as a new user would: in a clean copy
of the repository (only what git tracks), with a fresh virtual environment."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def setup_commands() -> tuple[str, str]:
    """The two commands of the README's "Set up" block: (run plane, run the tests)."""
    text = README.read_text()
    section = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block, "the Set up section has a sh block"
    commands = [
        line.strip()
        for line in block.group(1).splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert len(commands) == 2, f"exactly two set-up commands, found {commands}"
    run, test = commands
    assert "plane serve" in run and "test" in test
    return run, test


def clean_copy(dest: Path) -> Path:
    """What a fresh clone holds: the files git tracks, nothing else."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        source = ROOT / name.decode()
        if source.is_file():
            target = dest / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


def user_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    # the venv's python first on PATH would let the commands lean on our environment
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(sys.prefix)
    )
    env["HOME"] = env.get("HOME", str(tmp))
    return env


def test_readme_names_exactly_two_setup_commands() -> None:
    run, test = setup_commands()
    assert run.endswith("plane serve")
    assert test == "scripts/test"


@pytest.mark.slow
def test_readme_run_command_serves_plane_from_a_clean_copy(tmp_path: Path) -> None:
    run, _ = setup_commands()
    repo = clean_copy(tmp_path / "repo")
    env = user_env(tmp_path)
    # free ports instead of 8080/9090, which another plane on this machine may hold;
    # the command itself is the README's, untouched
    env.update({"PLANE_API_LISTEN": "127.0.0.1:0", "PLANE_PROXY_LISTEN": "127.0.0.1:0"})
    proc = subprocess.Popen(
        ["bash", "-c", run],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        api = None
        output: list[str] = []
        deadline = time.monotonic() + 300
        assert proc.stdout is not None
        while api is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            output.append(line)
            match = re.match(r"\s+api:\s+(\S+)", line)
            if match:
                api = match.group(1)
        assert api, "plane serve did not print its API address:\n" + "".join(output[-30:])
        assert httpx.get(f"{api}/pub/health", timeout=10).json() == {"status": "ok"}
        assert (repo / ".plane" / "events.db").exists()
        assert (repo / ".venv" / "bin" / "plane").exists()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0


@pytest.mark.slow
def test_readme_test_command_works_from_a_clean_copy(tmp_path: Path) -> None:
    _, test = setup_commands()
    repo = clean_copy(tmp_path / "repo")
    # The README's command, literally; the argument narrows pytest to the unit tests so
    # that the suite does not run itself recursively (ruff and mypy still run in full).
    done = subprocess.run(
        ["bash", "-c", f"{test} tests/unit -q -p no:cacheprovider"],
        cwd=repo,
        env=user_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=900,
    )
    tail = (done.stdout + done.stderr)[-3000:]
    assert done.returncode == 0, tail
    assert "== ruff" in done.stdout and "== mypy --strict" in done.stdout
    assert re.search(r"\d+ passed", done.stdout), tail
