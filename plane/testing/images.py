"""A tiny Docker image for tests and benchmarks, built without any registry.

This module owns :func:`build_test_image`: it assembles a root filesystem in a
temporary directory (the host's statically linked ``/bin/busybox`` plus applet
symlinks and a ``/www/index.html``) and builds it ``FROM scratch``, so nothing
is ever pulled.  The image's default command serves ``/www`` over HTTP on
``$PORT`` with ``busybox httpd`` (after printing one line to stdout, so log
tests have something to read)::

    /bin/sh -c 'echo "plane-test-image: serving /www on port $PORT";
                exec /bin/httpd -f -p "$PORT" -h /www'

``exec`` makes httpd the shell's replacement, so a SIGTERM reaches the server
directly (plane runs containers with an init process that forwards it).

Resource handling
-----------------
:func:`copy_image` copies an image from one engine to another (a second
engine on the same machine, see ``scripts/ensure-docker2``) the way
``docker save | docker load`` does, through a temporary file.

The build context lives in a :class:`tempfile.TemporaryDirectory` that is
removed when the build returns or fails.  The image stays in the engine; it is
labelled with a digest of its inputs, and a second call with the same inputs
returns at once without building.

Error handling
--------------
This is test support and is synchronous: it raises :class:`FileNotFoundError`
when the host has no ``/bin/busybox`` and lets the docker SDK's own errors
(``docker.errors.BuildError``, ``docker.errors.APIError``) propagate.  Call it
from a thread (``trio.to_thread.run_sync``) when inside trio.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import docker.errors
import orjson

__all__ = ["APPLETS", "BUSYBOX", "INDEX_HTML", "build_test_image", "copy_image"]

#: Where the statically linked busybox is taken from.
BUSYBOX = Path("/bin/busybox")

#: Applets made available as ``/bin/<name>`` symlinks to busybox.
APPLETS: tuple[str, ...] = (
    "sh",
    "httpd",
    "sleep",
    "echo",
    "cat",
    "env",
    "ls",
    "kill",
    "true",
    "false",
    "printf",
    "wget",
    "nc",
    "ps",
    "trap",
)

#: The page the default command serves at ``/``.
INDEX_HTML = "<!doctype html><title>plane test</title><p>plane test backend</p>\n"

_CMD = 'echo "plane-test-image: serving /www on port $PORT"; exec /bin/httpd -f -p "$PORT" -h /www'

_DOCKERFILE = f"""\
FROM scratch
COPY rootfs/ /
ENV PORT=8080 PATH=/bin
EXPOSE 8080
LABEL dev.plane.test-image-digest="{{digest}}"
CMD {orjson.dumps(["/bin/sh", "-c", _CMD]).decode()}
"""

_DIGEST_LABEL = "dev.plane.test-image-digest"


def _inputs_digest(busybox: bytes) -> str:
    h = hashlib.sha256()
    h.update(busybox)
    h.update(_DOCKERFILE.encode())
    h.update(INDEX_HTML.encode())
    h.update("\0".join(APPLETS).encode())
    return h.hexdigest()[:32]


def _existing_digest(client: Any, tag: str) -> str | None:
    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None
    labels = image.attrs.get("Config", {}).get("Labels") or {}
    value = labels.get(_DIGEST_LABEL)
    return str(value) if value is not None else None


def build_test_image(client: Any, tag: str = "plane-test-busybox:latest") -> str:
    """Build (or find) the busybox test image in the engine behind *client*.

    *client* is a ``docker.DockerClient``.  Returns *tag*, which names the image
    from then on (use it with ``pull_policy="Never"``).  Idempotent: when an
    image with this tag and the same input digest exists, nothing is built.
    """
    busybox = BUSYBOX.read_bytes()
    digest = _inputs_digest(busybox)
    if _existing_digest(client, tag) == digest:
        return tag
    with tempfile.TemporaryDirectory(prefix="plane-test-image-") as tmp:
        root = Path(tmp) / "rootfs"
        bindir = root / "bin"
        bindir.mkdir(parents=True)
        shutil.copyfile(BUSYBOX, bindir / "busybox")
        os.chmod(bindir / "busybox", 0o755)
        for applet in APPLETS:
            os.symlink("busybox", bindir / applet)
        www = root / "www"
        www.mkdir()
        (www / "index.html").write_text(INDEX_HTML)
        (root / "tmp").mkdir(mode=0o1777)
        os.chmod(root / "tmp", 0o1777)
        (Path(tmp) / "Dockerfile").write_text(_DOCKERFILE.format(digest=digest))
        client.images.build(path=tmp, tag=tag, rm=True, forcerm=True, pull=False)
    return tag


def copy_image(source: Any, target: Any, tag: str) -> str:
    """Copy image *tag* from the engine behind *source* to the one behind *target*
    (both ``docker.DockerClient``), through a temporary tar file (``docker save``,
    then ``docker load``).  Idempotent: nothing is copied when *target* has an
    image with the same id already.  Returns *tag*."""
    image = source.images.get(tag)
    try:
        if target.images.get(tag).id == image.id:
            return tag
    except docker.errors.ImageNotFound:
        pass
    with tempfile.TemporaryDirectory(prefix="plane-image-copy-") as tmp:
        path = Path(tmp) / "image.tar"
        with path.open("wb") as out:
            for chunk in image.save(named=tag):
                out.write(chunk)
        with path.open("rb") as tar:
            target.images.load(tar.read())
    return tag
