"""Stop sequences across token boundaries: cut exactly at the first stop, hold back no more."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from model_store.llama_cpp.stops import StopMatcher


def run(pieces: list[str], stops: tuple[str, ...]) -> tuple[str, bool, list[str]]:
    matcher = StopMatcher(stops)
    emitted: list[str] = []
    for piece in pieces:
        out, hit = matcher.feed(piece)
        emitted.append(out)
        if hit:
            return "".join(emitted), True, emitted
    return "".join(emitted) + matcher.flush(""), False, emitted


@pytest.mark.parametrize(
    ("pieces", "stops", "text", "hit"),
    [
        (["Hello", " wor", "ld"], ("END",), "Hello world", False),
        (["Hello E", "N", "D more"], ("END",), "Hello ", True),
        (["a\n", "\nb"], ("\n\n",), "a", True),
        (["EN", "x"], ("END",), "ENx", False),
        (["x", "yz"], ("yz", "xy"), "", True),
        (["abc"], (), "abc", False),
        (["уязвим", "ость"], ("ость",), "уязвим", True),
    ],
)
def test_stop_table(pieces: list[str], stops: tuple[str, ...], text: str, hit: bool) -> None:
    assert run(pieces, stops)[:2] == (text, hit)


def test_text_is_released_as_soon_as_it_cannot_be_a_stop() -> None:
    _, _, emitted = run(["Hello E", "x"], ("END",))
    assert emitted == ["Hello ", "Ex"]


@given(
    pieces=st.lists(st.text(alphabet="abEND\n", max_size=4), max_size=12),
    stops=st.lists(st.text(alphabet="abEND\n", min_size=1, max_size=3), min_size=1, max_size=3),
)
def test_output_is_the_text_cut_where_a_stop_first_appears(pieces: list[str], stops: list[str]) -> None:
    """Reference: after each piece, look for any stop in everything so far; cut at the earliest."""
    text, hit, _ = run(pieces, tuple(stops))
    seen = ""
    for piece in pieces:
        seen += piece
        found = [seen.find(s) for s in stops if s in seen]
        if found:
            assert (text, hit) == (seen[: min(found)], True)
            return
    assert (text, hit) == (seen, False)
