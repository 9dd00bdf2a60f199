"""Stop sequences across token boundaries (pure; no llama.cpp import, so it is cheap to test)."""

from __future__ import annotations


class StopMatcher:
    """Finds stop strings across token boundaries, holding back only a possible stop's prefix."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = [s for s in stops if s]
        self._pending = ""
        self.hit = False

    def feed(self, text: str) -> tuple[str, bool]:
        if not self._stops:
            return text, False
        self._pending += text
        cut = min((i for i in (self._pending.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self._pending, self.hit = self._pending[:cut], "", True
            return out, True
        keep = max((overlap(self._pending, s) for s in self._stops), default=0)
        out = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(out) :]
        return out, False

    def flush(self, text: str) -> str:
        out, _ = self.feed(text)
        rest, self._pending = self._pending, ""
        return out + rest


def overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `stop`."""
    for size in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:size]):
            return size
    return 0
