"""plan_load: tables for the cases a reader checks by eye, hypothesis for the invariants."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from model_store.planner import Plan, Resident, plan_load


def r(model_id: str, mb: int, used: float, *, pinned: bool = False, leases: int = 0) -> Resident:
    return Resident(id=model_id, memory_mb=mb, last_used=used, pinned=pinned, leases=leases)


@pytest.mark.parametrize(
    ("need", "residents", "budget", "evict"),
    [
        (100, [], 1000, ()),
        (400, [r("a", 500, 1)], 1000, ()),
        (600, [r("a", 500, 1)], 1000, ("a",)),
        (600, [r("old", 300, 1), r("new", 300, 2)], 1000, ("old",)),
        (700, [r("old", 300, 1), r("new", 300, 2), r("pin", 100, 0, pinned=True)], 1100, ("old",)),
        (900, [r("old", 300, 1), r("new", 300, 2), r("pin", 100, 0, pinned=True)], 1100, ("old", "new")),
        (600, [r("busy", 300, 1, leases=1), r("idle", 300, 2)], 1000, ("idle",)),
        (300, [r("target", 300, 1)], 300, ()),  # the target itself does not count against itself
    ],
)
def test_plans_that_fit(need: int, residents: list[Resident], budget: int, evict: tuple[str, ...]) -> None:
    assert plan_load("target", need, residents, budget) == Plan(fits=True, evict=evict)


@pytest.mark.parametrize(
    ("need", "residents", "budget"),
    [
        (2000, [], 1000),
        (600, [r("pin", 500, 1, pinned=True)], 1000),
        (600, [r("busy", 500, 1, leases=2)], 1000),
    ],
)
def test_plans_that_do_not_fit_change_nothing(need: int, residents: list[Resident], budget: int) -> None:
    plan = plan_load("target", need, residents, budget)
    assert (plan.fits, plan.evict) == (False, ())


def test_the_refusal_says_what_is_resident_and_what_was_needed() -> None:
    plan = plan_load("big", 900, [r("pin", 500, 1, pinned=True), r("busy", 300, 2, leases=1)], 1000)
    assert (
        plan.reason == "big needs 900 MB of a 1000 MB budget; resident: pin 500 MB (pinned), busy 300 MB (1 in flight)"
    )


residents_strategy = st.lists(
    st.builds(
        Resident,
        id=st.text(alphabet="abcdefgh", min_size=1, max_size=3),
        memory_mb=st.integers(0, 4000),
        last_used=st.floats(0, 1000, allow_nan=False),
        pinned=st.booleans(),
        leases=st.integers(0, 2),
    ),
    max_size=8,
    unique_by=lambda x: x.id,
)


@given(residents=residents_strategy, need=st.integers(0, 8000), budget=st.integers(0, 12000))
def test_plan_invariants(residents: list[Resident], need: int, budget: int) -> None:
    plan = plan_load("target", need, residents, budget)
    by_id = {x.id: x for x in residents}
    evicted = [by_id[i] for i in plan.evict]
    assert all(x.evictable for x in evicted), "never a pinned or leased model"
    if not plan.fits:
        assert plan.evict == ()
        return
    kept = [x for x in residents if x.id not in plan.evict and x.id != "target"]
    assert sum(x.memory_mb for x in kept) + need <= budget, "a plan that fits stays within the budget"
    candidates = sorted((x for x in residents if x.evictable and x.id != "target"), key=lambda x: (x.last_used, x.id))
    assert evicted == candidates[: len(evicted)], "least recently used first"
    if evicted:
        without_last = sum(x.memory_mb for x in kept) + evicted[-1].memory_mb + need
        assert without_last > budget, "no more evictions than needed"


@given(residents=residents_strategy, need=st.integers(0, 8000), budget=st.integers(0, 12000))
def test_refusal_only_when_even_every_idle_eviction_is_not_enough(
    residents: list[Resident], need: int, budget: int
) -> None:
    plan = plan_load("target", need, residents, budget)
    floor = sum(x.memory_mb for x in residents if not x.evictable and x.id != "target")
    assert plan.fits == (floor + need <= budget)
