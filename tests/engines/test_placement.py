"""Placement is a pure function: a table of cases and a hypothesis property."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plane.engines.placement import Load, place, why_none

TABLE = [
    ("fewest live wins", [Load("a", live=3), Load("b", live=1)], "", "b"),
    ("draining skipped", [Load("a", live=3), Load("b", live=0, draining=True)], "", "a"),
    ("lost skipped", [Load("a", live=3), Load("b", live=0, lost=True)], "", "a"),
    ("full skipped", [Load("a", live=2, max_backends=2), Load("b", live=5)], "", "b"),
    ("pool selects", [Load("a"), Load("g", pool="gpu", live=9)], "gpu", "g"),
    ("no engine of the pool", [Load("a")], "gpu", None),
    ("all draining", [Load("a", draining=True), Load("b", lost=True)], "", None),
    ("all full", [Load("a", live=1, max_backends=1)], "", None),
]


@pytest.mark.parametrize(("why", "loads", "pool", "expected"), TABLE, ids=[t[0] for t in TABLE])
def test_placement_table(why: str, loads: list[Load], pool: str, expected: str | None) -> None:
    assert place(loads, pool, random.Random(0)) == expected


def test_ties_are_broken_by_the_injected_rng() -> None:
    loads = [Load("a"), Load("b"), Load("c")]
    picks = {place(loads, "", random.Random(seed)) for seed in range(50)}
    assert picks == {"a", "b", "c"}
    assert place(loads, "", random.Random(7)) == place(loads, "", random.Random(7))


def test_why_none_names_the_pool_and_each_engine() -> None:
    assert "no engine serves pool 'gpu'" in why_none([Load("a")], "gpu")
    text = why_none([Load("a", draining=True), Load("b", lost=True)], "")
    assert "a: draining" in text and "b: lost" in text


loads_strategy = st.lists(
    st.builds(
        Load,
        name=st.sampled_from("abcdefgh"),
        pool=st.sampled_from(["", "gpu"]),
        live=st.integers(0, 20),
        max_backends=st.one_of(st.none(), st.integers(1, 20)),
        draining=st.booleans(),
        lost=st.booleans(),
    ),
    max_size=8,
    unique_by=lambda load: load.name,
)


@given(loads_strategy, st.sampled_from(["", "gpu"]), st.integers(0, 2**32))
def test_placement_property(loads: list[Load], pool: str, seed: int) -> None:
    chosen = place(loads, pool, random.Random(seed))
    eligible = [
        x
        for x in loads
        if x.pool == pool
        and not x.draining
        and not x.lost
        and (x.max_backends is None or x.live < x.max_backends)
    ]
    if not eligible:
        assert chosen is None
        return
    load = next(x for x in loads if x.name == chosen)
    assert load.pool == pool and not load.draining and not load.lost
    assert load.max_backends is None or load.live < load.max_backends  # never over max
    assert load.live == min(x.live for x in eligible)  # fewest live backends
