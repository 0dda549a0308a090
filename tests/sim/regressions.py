"""Seeds of every bug the simulator found, kept as regression cases: (seed, steps, bug).

Each failed before its fix (with the in-memory store unless the bug says SQLite)
and must pass for ever after.
"""

REGRESSIONS: list[tuple[int, int, str]] = [
    (3, 200, "connections of a crashed plane's proxy stayed open after recovery: never idle"),
]
