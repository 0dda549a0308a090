"""Seeds of every bug the simulator found, kept as regression cases: (seed, steps, bug).

Each failed before its fix (with the in-memory store unless the bug says SQLite)
and must pass for ever after (re-checked with each fix reverted once trio's
scheduling became a function of the seed alone: 14, 7399520293 and 2174 still
reach their bugs; the leftover one has a new seed).  A seed names a history of
the simulator's model as it is: when the model changes (a new fault, a new
draw), a seed may stop reaching its bug; its entry then gets a seed that does
(found by running the simulator with the fix reverted), and says which seed
found it first.
"""

REGRESSIONS: list[tuple[int, int, str]] = [
    (
        14,
        200,
        "connections of a crashed plane's proxy stayed open after recovery: never idle "
        "(found by seed 3 of the first model)",
    ),
    (
        1,
        156,
        "an exited, unremoved container of a backend terminated just before a crash is "
        "never removed (recovery lists running ones only); checked once executors have "
        "list_all (branch h8-leaks), see plane.testing.sim.executor.LIST_ALL "
        "(found by seed 7399520080 of the model before engines could be lost, then "
        "7399541497/163 until scheduling no longer depended on the process)",
    ),
    (
        7399520293,
        199,
        "recovery with the engine not answering (deferred) adopted backends without closing "
        "the dead proxy's connections: never idle (found by seeds 7399520025, 7399520111, "
        "7399520146 before engines could be lost)",
    ),
    (
        2174,
        92,
        "a readiness probe first run after its backend had left starting (ExecutorStarted "
        "and an exit decided back to back after a full log) was never cancelled: the actor "
        "never ended (found by seeds 1109, 1269 of the model before two engines; "
        "tests/shell/test_log_full.py::"
        "test_a_start_and_an_exit_decided_back_to_back_leave_no_probe_behind catches it "
        "on every run)",
    ),
]
