"""The LoRA slot policy (pure): which adapter leaves when `max_loras` are resident."""

from __future__ import annotations

import pytest

from model_store.vllm.adapters import choose_victim


@pytest.mark.parametrize(
    ("resident", "in_use", "victim"),
    [
        ({"a": 1.0, "b": 2.0}, {}, "a"),  # least recently used
        ({"a": 1.0, "b": 2.0}, {"a": 1}, "b"),  # ... that no request is using
        ({"a": 1.0, "b": 2.0}, {"a": 1, "b": 3}, None),  # all busy: nobody leaves (the caller says 429)
        ({"a": 5.0, "b": 2.0, "c": 3.0}, {"a": 0}, "b"),  # a count of 0 is idle
        ({}, {}, None),
    ],
)
def test_the_least_recently_used_idle_adapter_leaves(
    resident: dict[str, float], in_use: dict[str, int], victim: str | None
) -> None:
    assert choose_victim(resident, in_use) == victim
