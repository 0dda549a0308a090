"""Build the notepad's container image on this machine, without any registry.

Usage (from the repository root, with plane's virtualenv)::

    .venv/bin/python examples/notepad/build_image.py [--tag TAG] [--force]

It assembles a root filesystem in a temporary directory and builds it
``FROM scratch`` with the local Docker engine, so nothing is pulled:

* the Python interpreter running this script (``sys.executable`` resolved to
  the real binary, e.g. ``/usr/bin/python3.11`` or a pyenv build), at the same
  path, with every shared library ``ldd`` lists for it and for the standard
  library's extension modules, and the dynamic loader, each at the same path;
* its standard library (``sys.base_prefix/lib/python3.X``), without tests,
  idlelib, tkinter, turtledemo, ensurepip, lib2to3, the static build
  configuration, site-packages and ``__pycache__`` directories;
* the pure-Python packages ``wsproto`` and ``h11``, copied from where this
  interpreter imports them, into ``/app/packages``;
* ``app.py`` as ``/app/app.py``.

The image runs ``python3 /app/app.py`` listening on ``0.0.0.0:8080``.  It is
labelled with a digest of its inputs; building again with unchanged inputs
returns at once (``--force`` rebuilds).  The tag is printed on stdout, progress
on stderr.  Needs the ``docker`` Python package (a dependency of plane) and a
Docker engine that answers.

On a machine that can pull from a registry, the ordinary ``Dockerfile`` next to
this script does the same job from ``python:3.11-slim``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
APP = HERE / "app.py"
DEFAULT_TAG = "plane-example-notepad:latest"
DIGEST_LABEL = "dev.plane.example-digest"
PACKAGES = ("wsproto", "h11")

#: Parts of the standard library that the notepad does not need (by directory name).
SKIPPED_DIRS = frozenset(
    {
        "test",
        "tests",
        "idlelib",
        "tkinter",
        "turtledemo",
        "ensurepip",
        "lib2to3",
        "site-packages",
        "dist-packages",
        "__pycache__",
    }
)
#: Extension modules left out (test helpers, Tk), by name prefix.
SKIPPED_EXTENSIONS = ("_tkinter", "_test", "_ctypes_test", "xxlimited", "_xxtestfuzz")


def say(message: str) -> None:
    print(f"build_image: {message}", file=sys.stderr, flush=True)


def shared_libraries(path: Path) -> tuple[list[Path], list[str]]:
    """What ``ldd`` says *path* loads: (resolved paths incl. the loader, missing names)."""
    result = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False)
    found: list[Path] = []
    missing: list[str] = []
    for line in result.stdout.splitlines():
        line = line.strip()
        if "=>" in line:
            name, _, rest = line.partition("=>")
            target = rest.strip().split(" (")[0].strip()
            if target == "not found":
                missing.append(name.strip())
            elif target.startswith("/"):
                found.append(Path(target))
        elif line.startswith("/"):  # the dynamic loader: "/lib64/ld-linux-x86-64.so.2 (0x...)"
            found.append(Path(line.split(" (")[0]))
    return found, missing


def copy_into(root: Path, source: Path) -> None:
    """Copy *source* (following symlinks) to the same absolute path under *root*."""
    target = root / str(source).lstrip("/")
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, target)


def stdlib_dir() -> Path:
    return Path(sysconfig.get_path("stdlib", vars={"installed_base": sys.base_prefix}))


def _ignore_stdlib(directory: str, names: list[str]) -> set[str]:
    ignored = {name for name in names if name in SKIPPED_DIRS or name.startswith("config-")}
    if Path(directory).name == "lib-dynload":
        ignored |= {name for name in names if name.startswith(SKIPPED_EXTENSIONS)}
    return ignored


def package_dir(name: str) -> Path:
    module = importlib.import_module(name)
    assert module.__file__ is not None
    return Path(module.__file__).resolve().parent


def assemble(root: Path) -> dict[str, str]:
    """Fill *root* with the interpreter, its libraries, the stdlib, packages and app.

    Returns the environment the image needs.
    """
    python = Path(os.path.realpath(sys.executable))
    stdlib = stdlib_dir()
    say(f"interpreter {python} (Python {sys.version.split()[0]}), stdlib {stdlib}")

    copy_into(root, python)
    bindir = python.parent
    link = root / str(bindir).lstrip("/") / "python3"
    if not link.exists():
        link.symlink_to(python.name)

    shutil.copytree(stdlib, root / str(stdlib).lstrip("/"), ignore=_ignore_stdlib, symlinks=True)

    libraries, missing = shared_libraries(python)
    if missing:
        raise SystemExit(f"build_image: {python} needs libraries ldd cannot find: {missing}")
    dynload = root / str(stdlib).lstrip("/") / "lib-dynload"
    for extension in sorted(dynload.glob("*.so")) if dynload.is_dir() else []:
        found, missing = shared_libraries(stdlib / "lib-dynload" / extension.name)
        if missing:
            say(f"leaving out {extension.name} (missing {', '.join(missing)})")
            extension.unlink()
            continue
        libraries.extend(found)
    # glibc dlopens libgcc_s for thread cancellation; ldd cannot see that.
    libc_dirs = {lib.parent for lib in libraries if lib.name.startswith("libc.so")}
    libraries.extend(d / "libgcc_s.so.1" for d in libc_dirs if (d / "libgcc_s.so.1").exists())
    for library in sorted(set(libraries)):
        copy_into(root, library)

    packages = root / "app" / "packages"
    for name in PACKAGES:
        shutil.copytree(
            package_dir(name),
            packages / name,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    shutil.copy2(APP, root / "app" / "app.py")
    tmp = root / "tmp"
    tmp.mkdir()
    tmp.chmod(0o1777)

    library_dirs = sorted({str(lib.parent) for lib in libraries if not lib.name.startswith("ld-")})
    return {
        "PATH": str(bindir),
        "PYTHONHOME": sys.base_prefix,
        "PYTHONPATH": "/app/packages",
        "LD_LIBRARY_PATH": ":".join(library_dirs),
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUTF8": "1",
        "LANG": "C.UTF-8",
        "HOST": "0.0.0.0",
        "PORT": "8080",
    }


def dockerfile(env: dict[str, str], digest: str) -> str:
    env_lines = " \\\n    ".join(f"{name}={json.dumps(value)}" for name, value in env.items())
    return (
        "# Generated by examples/notepad/build_image.py: no base image, nothing pulled.\n"
        "FROM scratch\n"
        "COPY rootfs/ /\n"
        f"ENV {env_lines}\n"
        "WORKDIR /app\n"
        "EXPOSE 8080\n"
        f'LABEL dev.plane.example="notepad" {DIGEST_LABEL}="{digest}"\n'
        'CMD ["python3", "/app/app.py"]\n'
    )


def inputs_digest() -> str:
    """A digest of what the image is made of, to skip rebuilding an identical image."""
    h = hashlib.sha256()
    h.update(APP.read_bytes())
    h.update(Path(__file__).read_bytes())
    h.update(os.path.realpath(sys.executable).encode())
    h.update(sys.version.encode())
    for name in PACKAGES:
        h.update(f"{name}=={importlib.metadata.version(name)}".encode())
    return h.hexdigest()[:32]


def existing_digest(client: Any, tag: str) -> str | None:
    import docker.errors

    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None
    labels = image.attrs.get("Config", {}).get("Labels") or {}
    value = labels.get(DIGEST_LABEL)
    return str(value) if value is not None else None


def build(tag: str = DEFAULT_TAG, *, force: bool = False) -> str:
    """Build (or find up to date) the image; return its tag."""
    import docker

    client = docker.from_env(timeout=300)
    try:
        digest = inputs_digest()
        if not force and existing_digest(client, tag) == digest:
            say(f"{tag} is up to date (inputs digest {digest})")
            return tag
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="plane-notepad-image-") as tmp:
            root = Path(tmp) / "rootfs"
            root.mkdir()
            env = assemble(root)
            (Path(tmp) / "Dockerfile").write_text(dockerfile(env, digest))
            size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
            say(f"root filesystem: {size / 1e6:.1f} MB; building {tag}")
            image, _logs = client.images.build(path=tmp, tag=tag, rm=True, forcerm=True, pull=False)
        say(
            f"built {tag} ({image.short_id}, {image.attrs['Size'] / 1e6:.1f} MB) "
            f"in {time.monotonic() - started:.1f} s"
        )
        return tag
    finally:
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", default=DEFAULT_TAG, help=f"image tag (default {DEFAULT_TAG})")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args()
    try:
        print(build(args.tag, force=args.force))
    except ModuleNotFoundError as exc:
        print(f"build_image: {exc}; run this with plane's virtualenv python", file=sys.stderr)
        return 2
    except Exception as exc:  # docker.errors.DockerException, BuildError, APIError
        print(f"build_image: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
