"""The API (and plane serve's metrics) read the supervisor's projections
(``held_states``, ``lookup``), never its mutable dicts of states and actors."""

from __future__ import annotations

import re
from pathlib import Path

import plane

ROOT = Path(plane.__file__).parent
MUTABLE = re.compile(r"supervisor\.(states|actors)\b")


def test_no_api_module_reads_the_supervisors_mutable_dicts() -> None:
    readers = [*sorted((ROOT / "api").glob("*.py")), ROOT / "serve.py"]
    assert len(readers) > 5
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in readers
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if MUTABLE.search(line)
    ]
    assert found == []


def test_the_check_finds_a_direct_read() -> None:
    assert MUTABLE.search("held = dict(ctx.supervisor.states)")
    assert MUTABLE.search("for a in supervisor.actors.values():")
    assert not MUTABLE.search("held = dict(ctx.supervisor.held_states)")
