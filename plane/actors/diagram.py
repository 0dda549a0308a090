"""The lifecycle drawn from its table: ``python -m plane.actors.diagram``.

This module owns ``docs/lifecycle.md``: a Mermaid ``stateDiagram-v2`` with one
arrow per (status, event type) that changes the status, labelled with the
event type, and under it every row of
:data:`plane.actors.lifecycle.TRANSITIONS` (where each event may happen, where
it leads, what an input decides).  It is generated, never edited by hand: a
test fails when the committed file differs from what the table gives.

    python -m plane.actors.diagram              # (re)write docs/lifecycle.md
    python -m plane.actors.diagram --check      # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from plane.actors.lifecycle import TRANSITIONS, AnyStatus, Transition
from plane.events.types import Status

OUTPUT = Path("docs/lifecycle.md")
"""Where the diagram goes, from the repository's root."""
COMMAND = "python -m plane.actors.diagram"

_ORDER: tuple[AnyStatus, ...] = (None, *Status)


def _node(status: AnyStatus) -> str:
    return "[*]" if status is None else status.value


def _statuses(statuses: Iterable[AnyStatus]) -> str:
    chosen = set(statuses)
    return (
        ", ".join("(nothing yet)" if s is None else s.value for s in _ORDER if s in chosen) or "-"
    )


def _summary(fn: Callable[..., Any] | None) -> str:
    """The first line of a decision rule's docstring: what it decides."""
    doc = (fn.__doc__ or "").strip() if fn is not None else ""
    return " ".join(doc.split()) or "-"


def arrows(table: Mapping[type, Transition[Any]] = TRANSITIONS) -> list[str]:
    """Mermaid arrows: one per (status, event type) that leads to another status."""
    lines = []
    for row in table.values():
        if row.target is None:
            continue
        for source in _ORDER:
            if source in row.source:
                lines.append(f"    {_node(source)} --> {_node(row.target)}: {row.event.__name__}")
    lines.append(f"    {_node(Status.TERMINATED)} --> [*]")
    return lines


def rows(table: Mapping[type, Transition[Any]] = TRANSITIONS) -> list[str]:
    """The table in Markdown: one line per event type."""
    lines = [
        "| Event | Family | May happen in | Leads to | Decides | Late (recorded nothing) in |",
        "|---|---|---|---|---|---|",
    ]
    for row in table.values():
        family = "input" if row.is_input else "decision"
        target = row.target.value if row.target is not None else "(status stays)"
        decides = _summary(row.decides) if row.is_input else "-"
        if row.guard is not None:
            decides = f"if {_summary(row.guard)}: {decides}"
        lines.append(
            f"| {row.event.__name__} | {family} | {_statuses(row.source)} | {target} "
            f"| {decides} | {_statuses(row.late)} |"
        )
    return lines


def render(table: Mapping[type, Transition[Any]] = TRANSITIONS) -> str:
    """The whole of ``docs/lifecycle.md``."""
    return "\n".join(
        [
            "# The backend lifecycle",
            "",
            "<!-- Generated from plane.actors.lifecycle.TRANSITIONS by",
            f"     `{COMMAND}`: do not edit by hand. -->",
            "",
            "Every arrow is an event that changes a backend's status; events that keep",
            "the status (most inputs) are only in the table below.  `[*]` is the",
            "stream before its first event.  Timers (start timeout, idle, lifetime,",
            "stop grace, kill confirmation) decide `BackendStarting`,",
            "`BackendTerminating`, `TerminationEscalated` and `BackendTerminated`;",
            "see `next_deadline` in `plane/actors/lifecycle.py`.",
            "",
            "```mermaid",
            "stateDiagram-v2",
            *arrows(table),
            "```",
            "",
            "An input is a fact from outside: `decide` records it, then the decisions",
            "it implies.  In a *late* status it records nothing (the fact came after",
            "the end); anywhere else outside *May happen in* it is refused",
            "(`IllegalTransition`), as `evolve` refuses any event there.",
            "",
            *rows(table),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"default: {OUTPUT}")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    args = parser.parse_args(argv)
    text = render()
    path: Path = args.output
    if args.check:
        current = path.read_text(encoding="utf-8") if path.is_file() else ""
        if current != text:
            print(f"{path} differs from the table: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
