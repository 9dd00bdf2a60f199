"""The batch scheduler's pure policy (which slot a request takes, what one decode step holds) and
the thread governor (how many threads a decode gets beside busy processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from model_store.llama_cpp.batch import Chunk, Placement, Slot, choose_slot, common_prefix, plan_step
from model_store.llama_cpp.threads import SAMPLE_S, ThreadGovernor, threads_for

BUSY: Any = object()  # any non-None job marks a slot busy; the policy never looks inside


def slot(seq: int, cached: list[int], *, busy: bool = False, **fields: Any) -> Slot:
    return Slot(seq=seq, cached=cached, job=BUSY if busy else None, **fields)


def test_common_prefix() -> None:
    assert [common_prefix([1, 2, 3], b) for b in ([1, 2, 3], [1, 2], [1, 9, 3], [], [2])] == [3, 2, 1, 0, 0]


def test_a_request_takes_the_free_slot_sharing_its_longest_prefix() -> None:
    slots = [slot(0, [1, 2]), slot(1, [1, 2, 3, 4]), slot(2, [9])]
    assert choose_slot(slots, [1, 2, 3, 4, 5]) == Placement(slot=slots[1], keep=4)


def test_the_prompts_last_token_is_always_decoded_again() -> None:
    """Its logits give the first token, so a prompt cached whole keeps all but its last token."""
    slots = [slot(0, [1, 2, 3, 4, 5, 6])]
    assert choose_slot(slots, [1, 2, 3]) == Placement(slot=slots[0], keep=2)


def test_no_free_slot_means_the_request_waits() -> None:
    assert choose_slot([slot(0, [], busy=True), slot(1, [1], busy=True)], [1, 2]) is None


def test_a_step_holds_every_generating_token_then_prompt_chunks_by_arrival() -> None:
    generating = slot(0, [1, 2, 3], busy=True, sampled=7)
    late = slot(1, [], busy=True, pending=list(range(10)), admitted=5)
    early = slot(2, [4], busy=True, pending=list(range(6)), admitted=2)
    idle = slot(3, [8, 9])
    assert plan_step([generating, late, early, idle], budget=10) == [
        Chunk(generating, [7], start=3, logits=True),
        Chunk(early, list(range(6)), start=1, logits=True),  # its whole prompt: it samples
        Chunk(late, list(range(3)), start=0, logits=False),  # the rest of the budget
    ]


@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 600), st.integers(0, 50)), min_size=1, max_size=8),
    st.integers(8, 512),
)
def test_a_step_fits_the_batch_and_always_makes_progress(shape: list[tuple[bool, int, int]], budget: int) -> None:
    def busy(i: int, generating: bool, pending: int, cached: int) -> Slot:
        work: dict[str, Any] = {"sampled": 1} if generating else {"pending": list(range(1, pending + 2))}
        return slot(i, list(range(cached)), busy=True, **work)

    slots = [busy(i, *fields) for i, fields in enumerate(shape)]
    chunks = plan_step(slots, budget)
    total = sum(len(c.tokens) for c in chunks)
    assert total <= max(budget, sum(s.sampled is not None for s in slots))
    assert total > 0
    for chunk in chunks:
        assert chunk.start == len(chunk.slot.cached), "every chunk continues its sequence"
        assert chunk.logits == (chunk.slot.sampled is not None or len(chunk.tokens) == len(chunk.slot.pending))


@pytest.mark.parametrize(
    ("configured", "cores", "others", "threads"),
    [(2, 2, 0.0, 2), (2, 2, 0.3, 2), (2, 2, 0.74, 1), (2, 2, 1.0, 1), (2, 2, 2.0, 1), (8, 16, 3.0, 8), (4, 4, 1.6, 2)],
)
def test_threads_are_the_cores_other_processes_leave(configured: int, cores: int, others: float, threads: int) -> None:
    assert threads_for(configured, cores, others) == threads


def test_the_governor_gives_up_the_cores_busy_processes_hold() -> None:
    """Real CPU-bound neighbours (one fewer than the cores), started and stopped by their pids."""
    cores = os.cpu_count() or 1
    governor = ThreadGovernor(cores, adaptive=True)
    fixed = ThreadGovernor(cores, adaptive=False)
    if cores < 2:
        pytest.skip("one core: nothing to give up")
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores - 1)]
    try:
        time.sleep(2 * SAMPLE_S + 0.3)  # a whole window with the neighbours busy
        assert governor.threads == 1
        assert fixed.threads == cores
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    deadline = time.monotonic() + 10 * SAMPLE_S + 5  # a busy CI neighbour of its own may take a while to leave
    while governor.threads != cores and time.monotonic() < deadline:
        time.sleep(SAMPLE_S)
    assert governor.threads == cores, "the neighbours are gone: every core again"
