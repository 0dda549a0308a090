"""The lifecycle decider is pure: it imports nothing that does I/O or reads a clock.

Two proofs: statically, no module of the ``plane`` package that
``plane.actors.lifecycle`` (transitively) imports names an I/O or clock module;
dynamically, importing it in a fresh interpreter loads no I/O framework.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOT_MODULE = "plane.actors.lifecycle"
FORBIDDEN = frozenset(
    {
        "trio",
        "time",
        "datetime",
        "socket",
        "sqlite3",
        "docker",
        "os",
        "random",
        "asyncio",
        "threading",
        "subprocess",
        # not in the brief's list, but just as impure for a decider:
        "importlib",  # would hide any of the above behind a string
        "sqlite_utils",
        "trio_websocket",
        "secrets",
        "uuid",
    }
)
IO_FRAMEWORKS = ("trio", "trio_websocket", "sqlite3", "sqlite_utils", "docker")


def module_path(name: str) -> Path | None:
    """The source file of a module of this repository, or None if it is not one."""
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_names(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    """Every module name an import statement in ``tree`` may load (absolute)."""
    names: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            names.add(base)
            # ``from plane.events import types`` imports the submodule types.
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def dynamic_imports(tree: ast.Module) -> list[str]:
    """Calls that import by string: ``__import__(...)``."""
    return [
        ast.unparse(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "__import__"
    ]


def with_parents(name: str) -> list[str]:
    """``a.b.c`` -> ``a``, ``a.b``, ``a.b.c``: importing a module runs its packages."""
    parts = name.split(".")
    return [".".join(parts[: n + 1]) for n in range(len(parts))]


def closure(root: str) -> dict[str, set[str]]:
    """Each plane module ``root`` loads (with its packages) -> the names it imports."""
    seen: dict[str, set[str]] = {}
    todo = with_parents(root)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = module_path(name)
        if path is None:
            continue  # not part of this repository (stdlib, attrs, ...)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        names = imported_names(tree, name, path.name == "__init__.py")
        seen[name] = names
        for imported in names:
            if imported.split(".")[0] == "plane":
                todo.extend(with_parents(imported))
    return seen


CLOSURE = closure(ROOT_MODULE)


def test_the_closure_is_what_the_decider_needs() -> None:
    # A sanity check on the walker: it must at least find these.
    assert {
        "plane",
        "plane.actors",
        "plane.actors.lifecycle",
        "plane.events",
        "plane.events.types",
        "plane.events.spec",
    } <= set(CLOSURE)
    # ...and not the shell around the decider.
    assert not {"plane.events.store", "plane.events.sqlite", "plane.events.wire"} & set(CLOSURE)
    assert not any(name.startswith(("plane.executors", "plane.proxy")) for name in CLOSURE)


@pytest.mark.parametrize("module", sorted(CLOSURE))
def test_module_imports_no_io_or_clock(module: str) -> None:
    offending = sorted(name for name in CLOSURE[module] if name.split(".")[0] in FORBIDDEN)
    assert offending == [], f"{module} imports {offending}"


@pytest.mark.parametrize("module", sorted(CLOSURE))
def test_module_imports_nothing_by_string(module: str) -> None:
    path = module_path(module)
    assert path is not None
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assert dynamic_imports(tree) == []


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("import trio", {"trio"}),
        ("import os.path as p", {"os.path"}),
        ("from datetime import datetime", {"datetime", "datetime.datetime"}),
        ("def f():\n    import socket\n", {"socket"}),
        ("if TYPE_CHECKING:\n    from time import monotonic\n", {"time", "time.monotonic"}),
        ("from . import wire", {"plane.events", "plane.events.wire"}),
        ("from .store import X", {"plane.events.store", "plane.events.store.X"}),
        ("from ..actors import lifecycle", {"plane.actors", "plane.actors.lifecycle"}),
    ],
)
def test_the_walker_sees_every_kind_of_import(source: str, found: set[str]) -> None:
    tree = ast.parse(source)
    assert imported_names(tree, "plane.events.types", is_package=False) == found


def test_the_walker_sees_dynamic_imports() -> None:
    assert dynamic_imports(ast.parse("m = __import__('trio')")) == ["__import__('trio')"]


def test_importing_the_decider_loads_no_io_framework() -> None:
    script = (
        "import json, sys\nimport plane.actors.lifecycle\nprint(json.dumps(sorted(sys.modules)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded = set(json.loads(result.stdout))
    assert ROOT_MODULE in loaded
    assert "trio" not in loaded
    assert "sqlite3" not in loaded
    assert "docker" not in loaded
    frameworks = sorted(m for m in loaded if m.split(".")[0] in IO_FRAMEWORKS)
    assert frameworks == []
    # Every plane module that got loaded is one the static walk knows about.
    plane_modules = {m for m in loaded if m.split(".")[0] == "plane"}
    assert plane_modules <= set(CLOSURE)
