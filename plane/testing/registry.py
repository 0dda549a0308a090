"""A private Docker registry on loopback, with htpasswd auth, for tests.

This module owns :func:`ensure_registry`: it runs ``scripts/ensure-registry``
(which installs Debian's ``docker-registry`` when missing and starts one on
``127.0.0.1:<free port>``, or finds the one it started before) and reads the
address and credentials the script writes to ``registry.env``; and
:func:`push_image`, which pushes a local image there with the docker SDK.
dockerd talks plain HTTP to it: registries on 127.0.0.0/8 are trusted as
insecure by default.

Resource handling: the registry keeps running after the tests (the next run
reuses it); ``scripts/ensure-registry stop`` ends it.

Error handling: :class:`RegistryUnavailable` when the script fails (its output
is in the message); the docker SDK's errors propagate from :func:`push_image`.
Synchronous: call from a thread inside trio.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import attrs

__all__ = ["SCRIPT", "Registry", "RegistryUnavailable", "ensure_registry", "push_image"]

#: The script that installs and starts the registry.
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "ensure-registry"


class RegistryUnavailable(RuntimeError):
    """No registry could be installed or started here."""


@attrs.frozen
class Registry:
    """Where the registry listens and the one user it accepts."""

    address: str
    username: str
    password: str = attrs.field(repr=False)


def ensure_registry(timeout: float = 300) -> Registry:
    """A running registry (started by ``scripts/ensure-registry`` if need be)."""
    directory = Path(os.environ.get("PLANE_TEST_REGISTRY_DIR", "/tmp/plane-test-registry"))
    try:
        done = subprocess.run(
            [str(SCRIPT)], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RegistryUnavailable(f"{SCRIPT} could not run: {exc}") from exc
    if done.returncode != 0:
        raise RegistryUnavailable(
            f"{SCRIPT} failed ({done.returncode}): {(done.stdout + done.stderr).strip()}"
        )
    values: dict[str, str] = {}
    for line in (directory / "registry.env").read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep:
            values[name.strip()] = value.strip()
    return Registry(
        values["REGISTRY_ADDRESS"], values["REGISTRY_USERNAME"], values["REGISTRY_PASSWORD"]
    )


def push_image(client: Any, local: str, registry: Registry, repository: str, tag: str) -> str:
    """Push the local image *local* as ``<registry>/<repository>:<tag>``; returns that
    reference.  The local tag of that reference is removed afterwards, so a later
    pull really goes to the registry."""
    reference = f"{registry.address}/{repository}"
    client.images.get(local).tag(reference, tag)
    auth = {"username": registry.username, "password": registry.password}
    try:
        for line in client.images.push(reference, tag, auth_config=auth, stream=True, decode=True):
            if isinstance(line, dict) and line.get("error"):
                raise RegistryUnavailable(f"pushing {reference}:{tag} failed: {line['error']}")
    finally:
        client.images.remove(f"{reference}:{tag}")
    return f"{reference}:{tag}"
