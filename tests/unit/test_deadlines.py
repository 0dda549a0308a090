"""plane.proxy.deadlines: entries come back once their deadline has passed,
never before, re-arming moves them, and nothing is left behind."""

from __future__ import annotations

import math
import random

import pytest

from plane.proxy.deadlines import Deadlines


class Entry:
    def __init__(self, name: str) -> None:
        self.name = name
        self.bucket: int | None = None

    def __repr__(self) -> str:
        return self.name


def test_expired_only_once_passed_and_at_most_a_tick_late() -> None:
    d: Deadlines[Entry] = Deadlines(0.25)
    a, b = Entry("a"), Entry("b")
    d.arm(a, 100.1)
    d.arm(b, 100.6)
    assert d.expired(100.0) == []
    assert d.expired(100.09) == []
    assert d.expired(100.25) == [a]
    assert a.bucket is None
    assert d.expired(100.5) == []
    assert d.expired(100.75) == [b]
    assert len(d) == 0


def test_rearm_moves_and_disarm_removes() -> None:
    d: Deadlines[Entry] = Deadlines(0.1)
    a, b = Entry("a"), Entry("b")
    d.arm(a, 10.0)
    d.arm(a, 20.0)
    d.arm(b, 10.0)
    d.arm(b, math.inf)  # disarms
    assert len(d) == 1
    assert d.expired(15.0) == []
    assert d.expired(20.0) == [a]
    d.arm(a, 30.0)
    d.disarm(a)
    d.disarm(a)
    assert d.expired(1000.0) == [] and len(d) == 0


def test_a_deadline_already_past_comes_back_at_the_next_look() -> None:
    d: Deadlines[Entry] = Deadlines(0.25)
    d.expired(50.0)
    late = Entry("late")
    d.arm(late, 10.0)
    assert d.expired(50.1) == []  # the tick is not over yet
    assert d.expired(50.25) == [late]


def test_random_schedule_matches_a_plain_scan() -> None:
    rng = random.Random(7)
    d: Deadlines[Entry] = Deadlines(0.25)
    entries = [Entry(str(n)) for n in range(300)]
    due: dict[Entry, float] = {}
    latest: dict[Entry, float] = {}  # the deadline, or when armed if that was later
    now = 1000.0
    for _ in range(2000):
        entry = rng.choice(entries)
        if rng.random() < 0.2:
            d.disarm(entry)
            due.pop(entry, None)
        else:
            when = now + rng.uniform(-1, 30)
            d.arm(entry, when)
            due[entry] = when
            latest[entry] = max(when, now)
        now += rng.uniform(0, 0.5)
        got = d.expired(now)
        for entry in got:
            assert due.pop(entry) <= now  # never early
        for entry in due:  # at most a tick late
            assert latest[entry] > now - 0.25 - 1e-9, (entry, latest[entry], now)
    assert len(d) == len(due)


def test_a_bad_tick_is_refused() -> None:
    with pytest.raises(ValueError, match="tick"):
        Deadlines(0)
