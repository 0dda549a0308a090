"""Dependencies as used: every third-party import is declared where it is needed,
and every declared runtime dependency is imported by plane itself."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OURS = {"plane", "replay", "tests", "bench"}
# Imported only through another package, never by plane's own code: a runtime
# dependency for a reason that an import does not show.
RUNTIME_NOT_IMPORTED: set[str] = set()


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(requirements: list[str]) -> set[str]:
    return {_normal(re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0]) for r in requirements}


def _imported(*folders: str) -> set[str]:
    """The distributions whose top-level modules ``folders`` import."""
    dists = packages_distributions()
    found: set[str] = set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top in OURS:
                        continue
                    assert top in dists, f"{path}: {top} is not installed"
                    found.update(_normal(d) for d in dists[top])
    return found


def _project() -> dict[str, list[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras: dict[str, list[str]] = project["optional-dependencies"]
    return {"runtime": project["dependencies"], **extras}


def test_plane_imports_only_its_runtime_dependencies_and_all_of_them() -> None:
    runtime = _declared(_project()["runtime"])
    used = _imported("plane", "replay")
    assert used - runtime == set(), "imported by plane but not declared"
    assert runtime - used - RUNTIME_NOT_IMPORTED == set(), "declared but never imported"


def test_tests_and_benchmarks_import_only_declared_packages() -> None:
    project = _project()
    declared = _declared(project["runtime"] + project["test"] + project["examples"])
    assert _imported("tests", "bench", "examples") - declared == set()
