"""The optional ranking pass, as llm-council does it: the answers are shown anonymised (A, B, …)
so no ranker favours a role or its own answer by name; each ranking is parsed leniently (a
ranker that writes junk is ignored, a label it forgot goes last) and the rankings are combined
by mean position. Pure."""

from __future__ import annotations

import json
import string
from collections.abc import Sequence


def labels(count: int) -> list[str]:
    return list(string.ascii_uppercase[:count])


def parse_ranking(text: str, known: Sequence[str]) -> list[str] | None:
    """The labels in the order a ranker gave, unknown and repeated ones dropped, missing ones
    appended; None when the text holds no ranking at all."""
    try:
        given = json.loads(text).get("ranking")
    except (ValueError, AttributeError):
        return None
    if not isinstance(given, list):
        return None
    ordered = list(dict.fromkeys(label for label in given if isinstance(label, str) and label in known))
    if not ordered:
        return None
    return ordered + [label for label in known if label not in ordered]


def combine(rankings: Sequence[Sequence[str]], known: Sequence[str]) -> list[str]:
    """Best first by mean position over the rankings; ties keep the answers' own order."""
    if not rankings:
        return []
    mean = {label: sum(r.index(label) for r in rankings) / len(rankings) for label in known}
    return sorted(known, key=lambda label: (mean[label], known.index(label)))
