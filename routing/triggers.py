"""Compiled triggers: which roles a text speaks of, in any word form, layout or transliteration.

Every token is read once (and remembered): as itself, stemmed with Snowball (Russian or
English), with its keyboard layout swapped and stemmed again, and as a transliteration key
matched against the Russian stems' keys. Triggers are indexed by those readings, so matching a
text is a dictionary lookup per token plus a check of the few phrases whose first word occurs.

Context beats words: a phrase that matches hides the words inside it from every other role
(`dependency injection` is dev's, so its `injection` does not count for security), and a role's
`unless_in` phrases hide that role's words inside them without belonging to anyone (`interface`
counts for ux except in `interface in go`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import Stemmer

from routing.rules import AgentRole, RoleTriggers, RoutingRules
from routing.text import CODE_BLOCK, CYRILLIC_TOKEN, fold, normalize, swap_layout, translit_key

TOKEN = re.compile(r"[a-z0-9\[\];',.`]+|[а-я0-9]+")
PUNCT = "[];',.`"
PHRASAL = ("phrase", "context")
SUBWORD = re.compile(r"[a-z0-9]+")
MAX_TRANSLIT_SUFFIX = 7
MIN_TRANSLIT_KEY = 4
MEMO_SIZE = 200_000
_NONE: frozenset[str] = frozenset()  # distinct tokens remembered; cleared when full

Reading = tuple[str, str]  # ("ru" | "en" | "term", stem or term)


@dataclass(frozen=True)
class Trigger:
    role: AgentRole
    label: str  # what headers and explanations show: the stem, term or phrase
    kind: str  # "term" | "word" | "phrase" | "context" (an `unless_in` phrase: it only hides words)
    readings: tuple[Reading, ...]  # one per word of a phrase
    weight: float
    language: str  # "ru" | "en" | "any"


@dataclass(frozen=True)
class Hit:
    trigger: Trigger
    position: int  # character offset of the first occurrence (in the text without code blocks)


class TriggerIndex:
    """Matching is two-speed. The fast path looks each distinct whitespace-separated chunk up in
    a memo (chunk -> the triggers anchored in it), which settles terms and single words; new
    chunks are found with set arithmetic. A phrase is checked in place — in the chunks around its
    anchor (its longest stem) — only when every one of its words occurs somewhere in the text."""

    def __init__(
        self, rules: RoutingRules, russian: Callable[[str], str] | None = None, translit_stems: Collection[str] = ()
    ) -> None:
        """`russian`: a Russian word to its key — Snowball's stem by default (PyStemmer: Snowball in
        C); `benchmarks/bench_morphology.py` passes pymorphy3's lemma to compare. `translit_stems`:
        more Russian stems a transliterated word may be read as (the classifier's vocabulary); the
        triggers' own stems win where two share a key."""
        self._ru = russian or Stemmer.Stemmer("russian").stemWord
        self._en = Stemmer.Stemmer("english")
        self.triggers = [t for role, spec in rules.roles.items() for t in self._compile(role, spec, rules)]
        self._by_anchor: dict[Reading, list[Trigger]] = {}
        for trigger in self.triggers:
            self._by_anchor.setdefault(trigger.readings[_anchor(trigger)], []).append(trigger)
        stems = [*translit_stems, *sorted({stem for t in self.triggers for kind, stem in t.readings if kind == "ru"})]
        self._translit = {translit_key(s): s for s in stems if len(translit_key(s)) >= MIN_TRANSLIT_KEY}
        self._translit_lengths = sorted({len(k) for k in self._translit})
        self.readings_of = lru_cache(maxsize=MEMO_SIZE)(self._readings_of)
        self.chunk_readings = lru_cache(maxsize=MEMO_SIZE)(self._chunk_readings)
        self.chunk_tokens = lru_cache(maxsize=MEMO_SIZE)(_tokens)
        # chunk -> (terms and words in it, phrases anchored in it)
        self._chunks: dict[str, tuple[tuple[Trigger, ...], tuple[Trigger, ...]]] = {}
        self._known: set[str] = set()  # the chunks above, as a set for C-speed differences
        self._phrase_words = frozenset(r for t in self.triggers if t.kind in PHRASAL for r in t.readings)
        self._chunks_by_word: dict[Reading, set[str]] = {}  # a phrase word -> the chunks that carry it
        self._hot: set[str] = set()  # the chunks above that anchor anything

    def match(self, text: str) -> list[Hit]:
        # Chunks are remembered as written: lower-casing the whole text would cost more than
        # remembering "Test" and "test" apart (each chunk is folded once, when first seen).
        normalized = CODE_BLOCK.sub(" ", text) if "```" in text else text
        chunks = normalized.split()
        distinct = set(chunks)
        for chunk in distinct - self._known:  # set arithmetic in C: only new chunks cost Python time
            self._remember(chunk)
        singles: dict[str, tuple[Trigger, list[str]]] = {}  # label -> (trigger, the chunks it is in)
        phrases: dict[str, list[Trigger]] = {}  # anchor chunk -> phrases whose every word occurs
        present: dict[int, bool] = {}  # id(phrase) -> every word occurs (asked once per phrase)
        for chunk in distinct & self._hot:
            words, anchored = self._chunks[chunk]
            for trigger in words:
                seen = singles.get(trigger.label)
                if seen is None:
                    singles[trigger.label] = (trigger, [chunk])
                else:
                    seen[1].append(chunk)
            for trigger in anchored:
                known = present.get(id(trigger))
                if known is None:
                    known = present[id(trigger)] = self._all_words_present(trigger, distinct)
                if known:
                    phrases.setdefault(chunk, []).append(trigger)
        found = {  # a position per label, found once the labels are known
            label: Hit(trigger, min(normalized.find(chunk) for chunk in where))
            for label, (trigger, where) in singles.items()
        }
        if phrases:
            hidden = self._match_phrases(normalized, chunks, phrases, found)
            if hidden:
                _drop_hidden(found, singles, chunks, hidden)
        return sorted(found.values(), key=lambda h: (h.position, -len(h.trigger.readings)))

    def forget(self) -> None:
        """Empty the per-token memory (the benchmark measures the cold case with it)."""
        self._chunks.clear()
        self._chunks_by_word.clear()
        self._known.clear()
        self._hot.clear()
        self.readings_of.cache_clear()
        self.chunk_readings.cache_clear()
        self.chunk_tokens.cache_clear()

    def _remember(self, chunk: str) -> None:
        if len(self._chunks) >= MEMO_SIZE:
            self.forget()
        readings = self.chunk_readings(chunk)
        found = tuple(t for reading in readings for t in self._by_anchor.get(reading, ()))
        self._chunks[chunk] = (
            tuple(t for t in found if t.kind not in PHRASAL),
            tuple(t for t in found if t.kind in PHRASAL),
        )
        self._known.add(chunk)
        for reading in readings & self._phrase_words:
            self._chunks_by_word.setdefault(reading, set()).add(chunk)
        if found:
            self._hot.add(chunk)

    def _match_phrases(
        self, normalized: str, chunks: list[str], phrases: dict[str, list[Trigger]], found: dict[str, Hit]
    ) -> dict[int, list[Trigger]]:
        """Check each phrase around the chunks holding its anchor, two chunks either side. Returns
        the chunks each matched phrase covers (by index): the words in them may be hidden."""
        covering: dict[int, list[Trigger]] = {}
        for index, chunk in _occurrences(chunks, phrases.keys()):
            start = max(0, index - 2)
            near = chunks[start : index + 3]
            readings = [self.chunk_readings(c) for c in near]
            present = set().union(*readings)
            for trigger in phrases[chunk]:
                if not present.issuperset(trigger.readings):
                    continue  # cheap test first: every word of the phrase is somewhere near
                if not self._spelled_in(trigger, [t for c in near for t in self.chunk_tokens(c)]):
                    continue
                if trigger.kind == "phrase" and trigger.label not in found:
                    found[trigger.label] = Hit(trigger, normalized.find(chunk))
                words = set(trigger.readings)
                for offset, chunk_readings in enumerate(readings):
                    if not words.isdisjoint(chunk_readings):
                        covering.setdefault(start + offset, []).append(trigger)
        return covering

    def _all_words_present(self, trigger: Trigger, distinct: set[str]) -> bool:
        """Set arithmetic in C: does some chunk of the text carry each word of the phrase?"""
        by_word = self._chunks_by_word
        return all(not by_word.get(r, _NONE).isdisjoint(distinct) for r in trigger.readings)

    def _chunk_readings(self, chunk: str) -> frozenset[Reading]:
        return frozenset(r for token in self.chunk_tokens(chunk) for r in self.readings_of(token))

    def _spelled_in(self, trigger: Trigger, window: Sequence[str]) -> bool:
        wanted = trigger.readings
        return any(
            all(wanted[i] in self.readings_of(window[start + i]) for i in range(len(wanted)))
            for start in range(len(window) - len(wanted) + 1)
        )

    def _readings_of(self, token: str) -> frozenset[Reading]:
        if CYRILLIC_TOKEN.fullmatch(token):
            swapped = swap_layout(token).strip(PUNCT)
            return frozenset(
                {
                    ("term", token),
                    ("ru", self._ru(token)),
                    ("en", self._en.stemWord(swapped)),
                    ("term", swapped),
                }
            )
        found: set[Reading] = {("ru", self._ru(swap_layout(token))), ("term", token.strip(PUNCT))}
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
        for language, stem_of in (("ru", self._ru), ("en", self._en.stemWord)):
            for word in getattr(spec.words, language):
                stem = stem_of(normalize(word))
                out.append(Trigger(role, stem, "word", ((language, stem),), rules.word_weight, language))
            for kind, phrases, weight in (
                ("phrase", spec.phrases, rules.phrase_weight),
                ("context", spec.unless_in, 0.0),
            ):
                for phrase in getattr(phrases, language):
                    stems = tuple(self._stem_reading(w) for w in TOKEN.findall(normalize(phrase)))
                    out.append(Trigger(role, " ".join(s for _, s in stems), kind, stems, weight, language))
        return out

    def _stem_reading(self, word: str) -> Reading:
        """A phrase may mix scripts (`sql инъекция`): each word is stemmed in its own language."""
        return ("ru", self._ru(word)) if CYRILLIC_TOKEN.fullmatch(word) else ("en", self._en.stemWord(word))


def _drop_hidden(
    found: dict[str, Hit],
    singles: dict[str, tuple[Trigger, list[str]]],
    chunks: list[str],
    covering: dict[int, list[Trigger]],
) -> None:
    """Drop each term or word whose every occurrence sits inside a phrase that hides it: a phrase
    of another role, or one of its own role's `unless_in` contexts."""
    covered = {chunks[index] for index in covering}
    for label, (trigger, where) in singles.items():
        if covered.issuperset(where) and all(
            any(_hides(phrase, trigger) for phrase in covering.get(index, ()))
            for index, _ in _occurrences(chunks, where)
        ):
            del found[label]


def _hides(phrase: Trigger, word: Trigger) -> bool:
    return phrase.role == word.role if phrase.kind == "context" else phrase.role != word.role


def _tokens(chunk: str) -> tuple[str, ...]:
    return tuple(TOKEN.findall(fold(chunk)))


def _anchor(trigger: Trigger) -> int:
    """The word a trigger is looked up by: the longest stem, the rarest in ordinary text."""
    return max(range(len(trigger.readings)), key=lambda i: len(trigger.readings[i][1]))


def _occurrences(chunks: list[str], wanted: Collection[str]) -> Iterator[tuple[int, str]]:
    """Where the wanted chunks stand; `list.index` searches in C, and the wanted are few."""
    for chunk in wanted:
        index = -1
        while True:
            try:
                index = chunks.index(chunk, index + 1)
            except ValueError:
                break
            yield index, chunk
