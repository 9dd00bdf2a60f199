"""Compiled triggers: which roles a text speaks of, in any word form, layout or transliteration.

Every token is read once (and remembered): as itself, stemmed with Snowball (Russian or
English), with its keyboard layout swapped and stemmed again, and as a transliteration key
matched against the Russian stems' keys. Triggers are indexed by those readings, so matching a
text is set arithmetic over its distinct chunks plus a check of the few phrases whose every word
occurs.

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
MEMO_SIZE = 200_000  # distinct chunks (and tokens) remembered; cleared when full
_NONE: frozenset[str] = frozenset()
NEAR = 2  # a phrase is looked for this many chunks either side of its anchor
WINDOWS_SIZE = 20_000  # phrase windows remembered (~0.3 KB each), then cleared

Reading = tuple[str, str]  # ("ru" | "en" | "term", stem or term)
Spelled = tuple[tuple[int, tuple[int, ...]], ...]  # (phrase id, the window's chunks it covers) ...


@dataclass(frozen=True, slots=True)
class Chunks:
    """A text as the role readers see it: its whitespace-separated chunks as written, code blocks
    dropped, in order and as a set (built once a text: the triggers and the classifier share it)."""

    order: list[str]
    distinct: set[str]


def split_chunks(text: str) -> Chunks:
    order = (CODE_BLOCK.sub(" ", text) if "```" in text else text).split()
    return Chunks(order, set(order))


@dataclass(frozen=True)
class Trigger:
    role: AgentRole
    label: str  # what headers and explanations show: the stem, term or phrase
    kind: str  # "term" | "word" | "phrase" | "context" (an `unless_in` phrase: it only hides words)
    readings: tuple[Reading, ...]  # one per word of a phrase
    weight: float
    language: str  # "ru" | "en" | "any"


class TriggerIndex:
    """Matching is two-speed. Each distinct whitespace-separated chunk is read once and
    remembered as the ids of the triggers anchored in it (a term or word, or a phrase's longest
    stem) and the phrase words it carries; a text then costs a few C-level set operations over
    its distinct chunks (only new chunks cost Python time). A phrase is checked in place — in the
    chunks around its anchor — only when every one of its words occurs somewhere in the text."""

    def __init__(
        self, rules: RoutingRules, russian: Callable[[str], str] | None = None, translit_stems: Collection[str] = ()
    ) -> None:
        """`russian`: a Russian word to its key — Snowball's stem by default (PyStemmer: Snowball in
        C); `benchmarks/bench_morphology.py` passes pymorphy3's lemma to compare. `translit_stems`:
        more Russian stems a transliterated word may be read as (the classifier's vocabulary); the
        triggers' own stems win where two share a key."""
        self._ru = russian or Stemmer.Stemmer("russian").stemWord
        self._en = Stemmer.Stemmer("english")
        compiled = [t for role, spec in rules.roles.items() for t in self._compile(role, spec, rules)]
        # `secure` and `security` are one stem: one trigger; ids by weight, then as the rules list them
        distinct = list(dict.fromkeys(compiled))
        self.triggers = sorted(distinct, key=lambda t: -t.weight)  # a stable sort
        self._by_anchor: dict[Reading, list[int]] = {}
        for i, trigger in enumerate(self.triggers):
            self._by_anchor.setdefault(trigger.readings[_anchor(trigger)], []).append(i)
        self._phrasal = frozenset(i for i, t in enumerate(self.triggers) if t.kind in PHRASAL)
        self._words_of = [frozenset(t.readings) for t in self.triggers]
        self._phrase_words = frozenset(r for i in self._phrasal for r in self._words_of[i])
        # a phrase's words but its anchor (the chunk that anchors it carries that one)
        self._others = {i: self._words_of[i] - {t.readings[_anchor(t)]} for i, t in enumerate(self.triggers)}
        self._rivals = _rivals(self.triggers)
        stems = [*translit_stems, *sorted({stem for t in self.triggers for kind, stem in t.readings if kind == "ru"})]
        self._translit = {translit_key(s): s for s in stems if len(translit_key(s)) >= MIN_TRANSLIT_KEY}
        self._translit_lengths = sorted({len(k) for k in self._translit})
        self.readings_of = lru_cache(maxsize=MEMO_SIZE)(self._readings_of)
        self.translit_key = lru_cache(maxsize=MEMO_SIZE)(translit_key)  # a word's, asked again by the classifier
        self.token_readings = lru_cache(maxsize=MEMO_SIZE)(self._token_readings)
        self.chunk_readings = lru_cache(maxsize=MEMO_SIZE)(self._chunk_readings)
        self.chunk_tokens = lru_cache(maxsize=MEMO_SIZE)(_tokens)
        self._known: set[str] = set()  # every chunk seen, as a set for C-speed differences
        self._hot: set[str] = set()  # the chunks that anchor a trigger ...
        self._singles: dict[str, frozenset[int]] = {}  # ... the terms and words in each
        self._anchors: dict[str, frozenset[int]] = {}  # ... and the phrases anchored in each
        self._carriers: dict[Reading, set[str]] = {}  # a phrase word -> the chunks that carry it
        self._windows: dict[tuple[int, tuple[str, ...]], Spelled] = {}  # (centre, chunks) -> see _spell
        self._last: tuple[str, Chunks] = ("", split_chunks(""))

    def chunks(self, text: str) -> Chunks:
        """The text's chunks; the last text's are kept, so the classifier reading the text the
        triggers just read splits and hashes it no second time (an invisible one-entry cache)."""
        last = self._last
        if last[0] is text:
            return last[1]
        chunks = split_chunks(text)
        self._last = (text, chunks)
        return chunks

    def match(self, text: str) -> tuple[Trigger, ...]:
        """The triggers in a text, each once (a role's label counts once: its strongest kind), the
        strongest first, then in the order the rules list them."""
        # Chunks are remembered as written: lower-casing the whole text would cost more than
        # remembering "Test" and "test" apart (each chunk is folded once, when first seen).
        read = self.chunks(text)
        chunks, distinct = read.order, read.distinct
        new = distinct - self._known  # set arithmetic in C: only new chunks cost Python time
        if new:
            if len(self._known) + len(new) > MEMO_SIZE:  # emptied first: the text's chunks all stay
                self.forget()
                new = distinct
            for chunk in new:
                self._remember(chunk)
        hot = distinct & self._hot
        if not hot:
            return ()
        found: set[int] = set().union(*map(self._singles.__getitem__, hot))
        anchored: set[int] = set().union(*map(self._anchors.__getitem__, hot))
        if anchored:
            carriers = self._carriers
            wanted: set[Reading] = set().union(*map(self._others.__getitem__, anchored))
            present = {r for r in wanted if not carriers.get(r, _NONE).isdisjoint(distinct)}
            candidates = {p for p in anchored if self._others[p] <= present}
            if candidates:
                self._match_phrases(chunks, hot, candidates, found)
        for weak, strong in self._rivals:
            if strong in found:
                found.discard(weak)
        return tuple(self.triggers[i] for i in sorted(found))

    def forget(self) -> None:
        """Empty the per-token memory (the benchmark measures the cold case with it)."""
        for memo in (self._known, self._hot, self._singles, self._anchors, self._carriers, self._windows):
            memo.clear()
        for cached in (
            self.readings_of,
            self.translit_key,
            self.token_readings,
            self.chunk_readings,
            self.chunk_tokens,
        ):
            cached.cache_clear()

    def _remember(self, chunk: str) -> None:
        self._known.add(chunk)
        readings = self.chunk_readings(chunk)
        ids = frozenset(i for reading in readings for i in self._by_anchor.get(reading, ()))
        if ids:
            self._hot.add(chunk)
            self._singles[chunk] = ids - self._phrasal
            self._anchors[chunk] = ids & self._phrasal
        for reading in readings & self._phrase_words:
            self._carriers.setdefault(reading, set()).add(chunk)

    def _match_phrases(self, chunks: list[str], hot: set[str], candidates: set[int], found: set[int]) -> None:
        """Look for the candidate phrases around the chunks holding their anchors; add the phrases
        that match to `found` and take out the words they hide."""
        covering: dict[int, list[Trigger]] = {}  # chunk index -> the matched phrases that cover it
        for chunk in hot:
            if self._anchors[chunk].isdisjoint(candidates):
                continue
            for index in _occurrences(chunks, (chunk,)):
                start = max(0, index - NEAR)
                window = (index - start, tuple(chunks[start : index + NEAR + 1]))
                spelled = self._windows.get(window)
                if spelled is None:
                    spelled = self._spell(*window)
                for phrase, offsets in spelled:
                    trigger = self.triggers[phrase]
                    if trigger.kind == "phrase":
                        found.add(phrase)
                    for offset in offsets:
                        covering.setdefault(start + offset, []).append(trigger)
        if covering:
            self._drop_hidden(chunks, hot, found, covering)

    def _spell(self, center: int, window: tuple[str, ...]) -> Spelled:
        """The phrases anchored in a window's centre chunk that its tokens spell, each with the
        window's chunks it covers (remembered: a text's windows recur as its chunks do)."""
        if len(self._windows) >= WINDOWS_SIZE:
            self._windows.clear()
        near = [self.token_readings(c) for c in window]
        tokens = [readings for chunk_tokens in near for readings in chunk_tokens]
        spelled = []
        for phrase in sorted(self._anchors[window[center]]):
            if _spelled(self.triggers[phrase].readings, tokens):
                words = self._words_of[phrase]
                offsets = tuple(
                    offset
                    for offset, chunk_tokens in enumerate(near)
                    if any(not words.isdisjoint(readings) for readings in chunk_tokens)
                )
                spelled.append((phrase, offsets))
        found = self._windows[center, window] = tuple(spelled)
        return found

    def _drop_hidden(
        self, chunks: list[str], hot: set[str], found: set[int], covering: dict[int, list[Trigger]]
    ) -> None:
        """Drop each term or word whose every occurrence sits inside a phrase that hides it: a phrase
        of another role, or one of its own role's `unless_in` contexts."""
        covered = {chunks[index] for index in covering}
        free = set().union(*(self._singles[c] for c in hot - covered))  # a word with one free occurrence stays
        for single in found - self._phrasal - free:
            word = self.triggers[single]
            where = [c for c in hot & covered if single in self._singles[c]]
            if all(
                any(_hides(phrase, word) for phrase in covering.get(index, ())) for index in _occurrences(chunks, where)
            ):
                found.discard(single)

    def _token_readings(self, chunk: str) -> tuple[frozenset[Reading], ...]:
        return tuple(self.readings_of(token) for token in self.chunk_tokens(chunk))

    def _chunk_readings(self, chunk: str) -> frozenset[Reading]:
        return frozenset().union(*self.token_readings(chunk))

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
        key = self.translit_key(word)
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


def _hides(phrase: Trigger, word: Trigger) -> bool:
    return phrase.role == word.role if phrase.kind == "context" else phrase.role != word.role


def _tokens(chunk: str) -> tuple[str, ...]:
    return tuple(TOKEN.findall(fold(chunk)))


def _anchor(trigger: Trigger) -> int:
    """The word a trigger is looked up by: the longest stem, the rarest in ordinary text."""
    return max(range(len(trigger.readings)), key=lambda i: len(trigger.readings[i][1]))


def _occurrences(chunks: list[str], wanted: Collection[str]) -> Iterator[int]:
    """Where the wanted chunks stand; `list.index` searches in C, and the wanted are few."""
    for chunk in wanted:
        index = -1
        while True:
            try:
                index = chunks.index(chunk, index + 1)
            except ValueError:
                break
            yield index


def _spelled(wanted: tuple[Reading, ...], tokens: Sequence[frozenset[Reading]]) -> bool:
    """Do consecutive tokens read as the phrase's words, in order?"""
    size = len(wanted)
    return any(all(wanted[i] in tokens[start + i] for i in range(size)) for start in range(len(tokens) - size + 1))


def _rivals(triggers: Sequence[Trigger]) -> list[tuple[int, int]]:
    """(weaker, stronger) pairs of triggers with one role and label (`mock` the term and the
    word): a label counts once, as the strongest that matched."""
    groups: dict[tuple[AgentRole, str], list[int]] = {}
    for i, trigger in enumerate(triggers):
        groups.setdefault((trigger.role, trigger.label), []).append(i)
    pairs = []
    for ids in groups.values():
        ranked = sorted(ids, key=lambda i: (-triggers[i].weight, i))
        pairs += [(weak, strong) for n, strong in enumerate(ranked) for weak in ranked[n + 1 :]]
    return pairs
