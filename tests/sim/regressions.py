"""Seeds of every bug the simulator found, kept as regression cases: (seed, steps, bug).

Each failed before its fix (with the in-memory store unless the bug says SQLite)
and must pass for ever after.
"""

REGRESSIONS: list[tuple[int, int, str]] = [
    (3, 200, "connections of a crashed plane's proxy stayed open after recovery: never idle"),
    (
        7399520080,
        130,
        "an exited, unremoved container of a backend terminated just before a crash is "
        "never removed (recovery lists running ones only); checked once executors have "
        "list_all (branch h8-leaks), see plane.testing.sim.executor.LIST_ALL",
    ),
    (
        7399520025,
        200,
        "recovery with the engine not answering (deferred) adopted backends without closing "
        "the dead proxy's connections: never idle (also seeds 7399520111, 7399520146)",
    ),
    (
        1109,
        175,
        "a readiness probe first run after its backend had left starting (ExecutorStarted "
        "and an exit decided back to back after a full log) was never cancelled: the actor "
        "never ended (also seed 1269)",
    ),
]
