"""Compiled triggers: which roles a text speaks of, in any word form, layout or transliteration.

Every token is read once (and remembered): as itself, stemmed with Snowball (Russian or
English), with its keyboard layout swapped and stemmed again, and as a transliteration key
matched against the Russian stems' keys. Triggers are indexed by those readings, so matching a
text is a dictionary lookup per token plus a check of the few phrases whose first word occurs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import snowballstemmer

from routing.rules import AgentRole, RoleTriggers, RoutingRules
from routing.text import CYRILLIC_TOKEN, normalize, swap_layout, translit_key

TOKEN = re.compile(r"[a-z0-9\[\];',.`]+|[а-я0-9]+")
PUNCT = "[];',.`"
SUBWORD = re.compile(r"[a-z0-9]+")
MAX_TRANSLIT_SUFFIX = 7
MIN_TRANSLIT_KEY = 4

Reading = tuple[str, str]  # ("ru" | "en" | "term", stem or term)


@dataclass(frozen=True)
class Trigger:
    role: AgentRole
    label: str  # what headers and explanations show: the stem, term or phrase
    kind: str  # "term" | "word" | "phrase"
    readings: tuple[Reading, ...]  # one per word of a phrase
    weight: float
    language: str  # "ru" | "en" | "any"


@dataclass(frozen=True)
class Hit:
    trigger: Trigger
    position: int  # token index of the first word


class TriggerIndex:
    def __init__(self, rules: RoutingRules) -> None:
        self._ru = snowballstemmer.stemmer("russian")
        self._en = snowballstemmer.stemmer("english")
        self.triggers = [t for role, spec in rules.roles.items() for t in self._compile(role, spec, rules)]
        self._first: dict[Reading, list[Trigger]] = {}
        for trigger in self.triggers:
            self._first.setdefault(trigger.readings[0], []).append(trigger)
        russian = {stem for t in self.triggers for kind, stem in t.readings if kind == "ru"}
        self._translit = {translit_key(s): s for s in russian if len(translit_key(s)) >= MIN_TRANSLIT_KEY}
        self._translit_lengths = sorted({len(k) for k in self._translit})
        self.readings_of = lru_cache(maxsize=100_000)(self._readings_of)

    def match(self, text: str) -> list[Hit]:
        readings = [self.readings_of(token) for token in TOKEN.findall(normalize(text))]
        hits: list[Hit] = []
        seen: set[str] = set()
        for position, token_readings in enumerate(readings):
            for reading in token_readings:
                for trigger in self._first.get(reading, ()):
                    if trigger.label not in seen and _follows(trigger.readings, readings, position):
                        seen.add(trigger.label)
                        hits.append(Hit(trigger, position))
        return hits

    def _readings_of(self, token: str) -> frozenset[Reading]:
        if CYRILLIC_TOKEN.fullmatch(token):
            swapped = swap_layout(token).strip(PUNCT)
            return frozenset(
                {
                    ("term", token),
                    ("ru", self._ru.stemWord(token)),
                    ("en", self._en.stemWord(swapped)),
                    ("term", swapped),
                }
            )
        found: set[Reading] = {("ru", self._ru.stemWord(swap_layout(token))), ("term", token.strip(PUNCT))}
        for part in SUBWORD.findall(token):  # sitemap.xml, robots.txt: each part, and the whole
            found |= {("term", part), ("en", self._en.stemWord(part))}
        word = token.strip(PUNCT)
        key = translit_key(word)
        for size in self._translit_lengths:
            if size > len(key):
                break
            stem = self._translit.get(key[:size])
            if stem is not None and len(key) - size <= MAX_TRANSLIT_SUFFIX:
                found.add(("ru", stem))
        return frozenset(found)

    def _compile(self, role: AgentRole, spec: RoleTriggers, rules: RoutingRules) -> list[Trigger]:
        out = [Trigger(role, t.lower(), "term", (("term", t.lower()),), rules.term_weight, "any") for t in spec.terms]
        for language, stemmer in (("ru", self._ru), ("en", self._en)):
            for word in getattr(spec.words, language):
                stem = stemmer.stemWord(normalize(word))
                out.append(Trigger(role, stem, "word", ((language, stem),), rules.word_weight, language))
            for phrase in getattr(spec.phrases, language):
                stems = tuple(self._stem_reading(w) for w in TOKEN.findall(normalize(phrase)))
                label = " ".join(s for _, s in stems)
                out.append(Trigger(role, label, "phrase", stems, rules.phrase_weight, language))
        return out

    def _stem_reading(self, word: str) -> Reading:
        """A phrase may mix scripts (`sql инъекция`): each word is stemmed in its own language."""
        return ("ru", self._ru.stemWord(word)) if CYRILLIC_TOKEN.fullmatch(word) else ("en", self._en.stemWord(word))


def _follows(wanted: Sequence[Reading], readings: Sequence[frozenset[Reading]], start: int) -> bool:
    if start + len(wanted) > len(readings):
        return False
    return all(wanted[i] in readings[start + i] for i in range(1, len(wanted)))
