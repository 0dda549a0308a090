"""The activity coalescing rule: at most one report per backend per interval, nothing lost."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from plane.proxy.activity import ActivityCoalescer


def test_first_request_is_reported_at_once_then_held() -> None:
    c = ActivityCoalescer(1.0)
    assert c.record("b", 10.0) == 1
    assert c.record("b", 10.2) == 0
    assert c.record("b", 10.5) == 0
    assert c.next_due() == 11.0
    assert c.due(10.9) == []
    assert c.due(11.0) == [("b", 2)]
    assert c.next_due() is None
    # the trailing report counts as a report: the next request waits again
    assert c.record("b", 11.5) == 0
    assert c.due(12.0) == [("b", 1)]
    assert c.record("b", 13.5) == 1


def test_backends_are_independent() -> None:
    c = ActivityCoalescer(1.0)
    assert c.record("a", 0.0) == 1
    assert c.record("b", 0.1) == 1
    assert c.record("a", 0.2) == 0
    assert c.due(1.05) == [("a", 1)]


@given(st.lists(st.tuples(st.sampled_from("abc"), st.floats(0, 0.5)), max_size=200))
def test_every_request_is_counted_and_reports_are_spaced(steps: list[tuple[str, float]]) -> None:
    c = ActivityCoalescer(1.0)
    now = 0.0
    reports: dict[str, list[tuple[float, int]]] = {}
    counted: dict[str, int] = {}

    def flush(at: float) -> None:
        for backend, n in c.due(at):
            reports.setdefault(backend, []).append((at, n))

    for backend, gap in steps:
        due = c.next_due()
        if due is not None and due <= now + gap:
            flush(due)
        now += gap
        counted[backend] = counted.get(backend, 0) + 1
        n = c.record(backend, now)
        if n:
            reports.setdefault(backend, []).append((now, n))
    while (due := c.next_due()) is not None:
        flush(due)
    for backend, n in counted.items():
        assert sum(k for _, k in reports[backend]) == n
    for times in reports.values():
        for (t1, _), (t2, _) in itertools.pairwise(times):
            assert t2 - t1 >= 1.0 - 1e-9
