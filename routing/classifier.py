"""The second opinion: a linear classifier over the same readings the triggers use.

A text's features are those of its distinct whitespace-separated chunks, counted once per
distinct chunk: the readings the triggers use (each token as itself, its Snowball stems, its
keyboard layout swapped, its transliteration read as a Russian stem —
`routing.triggers.TriggerIndex.chunk_readings`) and the character 4-grams of each token's
transliteration key, and of its layout-swapped key for a Latin token (`bezopasnost`,
`безопасность` and `,tpjgfcyjcnm` share most of theirs; typos keep most of theirs). The
triggers' scores are not features: the triggers were tuned on the training prompts, so they look
more reliable there than on new text (tried: 5-fold accuracy rose, held-out macro-F1 fell). The
model is multinomial logistic regression plus a fifth of Complement Naive Bayes (one weight table:
both are linear in the counts), trained offline by `python -m routing.train` from the
labelled sets in `tests/data/` (never the held-out split) and shipped as `routing/role_model.json`:
a weight per role for each kept reading. Deciding is pure and needs no library: each distinct
chunk's (and pair's) weights are summed once and remembered as one packed integer, and the
classifier reads the chunks the triggers have just split, so a text costs two set differences
and two C-level sums.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise, repeat
from pathlib import Path
from typing import Protocol

import msgspec

from konsilium.errors import ConfigError
from routing.rules import AgentRole
from routing.text import swap_layout, translit_key
from routing.triggers import PUNCT, Chunks, Reading, TriggerIndex

HEAD_CHUNKS = 100  # the classifier reads a long text's head and tail: where a request says what it wants
TAIL_CHUNKS = 40
MEMO_SIZE = 100_000  # distinct chunks and pairs remembered (a packed integer each), then cleared
GRAM = 4  # 5-fold accuracy on the training prompts: readings alone 0.883, with 3-grams 0.887, 4-grams 0.906
SCALE = 10_000  # weights are stored as integers of 1/SCALE: they sum exactly
STEMMED = ("ru", "en")  # the readings a pair feature is made of
FIELD_BITS = 48  # a role's sum in a packed integer: exact while |sum| < 2**47 / SCALE (1.4e10)


Pair = tuple[str, str]  # two neighbouring chunks


class RoleModel(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    roles: tuple[AgentRole, ...]
    bias: tuple[float, ...]
    # a feature ("kind:stem", "g:" + 4-gram, "p:stem_stem") -> its weight per role in 1/SCALE, packed (`pack`)
    weights: dict[str, int]
    translit_stems: tuple[str, ...]  # Russian stems transliterated words may be read as (as trained)
    trained_on: dict[str, str]  # data file -> its SHA-256 (the model is stale when they change)


class Opinion(msgspec.Struct, frozen=True):
    role: AgentRole
    confidence: float  # the top role's probability
    margin: float  # its lead over the second role's probability


class SecondOpinion(Protocol):
    def opinion(self, text: str) -> Opinion | None: ...


def feature_name(reading: Reading) -> str:
    return f"{reading[0]}:{reading[1]}"


def chunk_features(index: TriggerIndex, chunk: str) -> set[str]:
    """A chunk's feature names, the same at training and at decision time."""
    names = {feature_name(r) for r in index.chunk_readings(chunk)}
    for token in index.chunk_tokens(chunk):
        word = token.strip(PUNCT)
        if word:
            names.update(_grams(index.translit_key(word)))
        if token.isascii():  # the punctuation keys are letters on the Russian layout: `,tpjgfcyjcnm`
            names.update(_grams(translit_key(swap_layout(token))))
    return names


def pair_features(index: TriggerIndex, pair: Pair) -> set[str]:
    """Two neighbouring chunks' stems side by side (`p:sql_injection`, `p:внедрен_зависим`): the
    context a word has (5-fold accuracy on the training prompts 0.938 -> 0.942)."""
    first, second = ({stem for kind, stem in index.chunk_readings(c) if kind in STEMMED} for c in pair)
    return {f"p:{a}_{b}" for a in first for b in second}


def _grams(key: str) -> list[str]:
    marked = f"<{key}>"
    return [f"g:{marked[i : i + GRAM]}" for i in range(max(1, len(marked) - GRAM + 1))]


def load_model(path: Path) -> RoleModel:
    try:
        return msgspec.json.decode(path.read_bytes(), type=RoleModel)
    except (OSError, msgspec.DecodeError) as exc:  # ValidationError is a DecodeError
        raise ConfigError([f"routing classifier.file: {path}: {exc}"]) from exc


def classifier_reads(chunks: Chunks) -> tuple[set[str], set[Pair]]:
    """The distinct chunks and neighbouring pairs the classifier reads: a long text's first and
    last chunks, as one sequence (the chunk set is the text's own when it is short: read it,
    never change it)."""
    order = chunks.order
    if len(order) <= HEAD_CHUNKS + TAIL_CHUNKS:
        return chunks.distinct, set(pairwise(order))
    order = order[:HEAD_CHUNKS] + order[-TAIL_CHUNKS:]
    return set(order), set(pairwise(order))


class RoleClassifier:
    """Each distinct chunk's (and pair's) weights, summed over its features, are remembered as one
    integer that packs a fixed-point sum per role (`FIELD_BITS` each) and, in the field after,
    a 1 (it knows the chunk), so a text's totals for every role and the count of chunks it knows
    are one C-level `sum` — exact, whatever the order."""

    def __init__(self, model: RoleModel, index: TriggerIndex) -> None:
        self.model = model
        self._index = index
        self._packed: dict[str | Pair, int] = {}  # chunk or pair -> its weights, packed (absent: none known)
        self._known: set[str | Pair] = set()  # every chunk and pair seen, as a set for C-speed differences
        self._one_known = 1 << (FIELD_BITS * len(model.roles))

    def opinion(self, text: str) -> Opinion | None:
        chunks, pairs = classifier_reads(self._index.chunks(text))
        new = (chunks - self._known) | (pairs - self._known)
        if new:
            if len(self._known) + len(new) > MEMO_SIZE:
                self.forget()
                new = chunks | pairs
            for key in new:
                self._remember(key)
        get = self._packed.get
        packed = sum(map(get, chunks, repeat(0))) + sum(map(get, pairs, repeat(0)))  # unknown ones add 0
        *sums, known = unpack(packed, len(self.model.roles) + 1)
        if not known:
            return None  # nothing it knows: no opinion rather than its prior
        return _softmax_opinion(self.model.roles, [b + w / SCALE for b, w in zip(self.model.bias, sums, strict=True)])

    def forget(self) -> None:
        self._packed.clear()
        self._known.clear()

    def _remember(self, key: str | Pair) -> None:
        self._known.add(key)
        names = chunk_features(self._index, key) if isinstance(key, str) else pair_features(self._index, key)
        weights = [w for name in names if (w := self.model.weights.get(name)) is not None]
        if weights:
            self._packed[key] = sum(weights) + self._one_known  # the field after the roles' counts these


def pack(fields: Sequence[int]) -> int:
    """Signed integers as one: the sum of packed values unpacks to the sums of their fields."""
    return sum(field << (FIELD_BITS * i) for i, field in enumerate(fields))


def unpack(packed: int, count: int) -> list[int]:
    """The first `count` fields of a packed integer, lowest first."""
    fields = []
    for _ in range(count):
        field = packed & _FIELD_MASK
        if field > _FIELD_MASK >> 1:
            field -= 1 << FIELD_BITS
        fields.append(field)
        packed = (packed - field) >> FIELD_BITS
    return fields


_FIELD_MASK = (1 << FIELD_BITS) - 1


def _softmax_opinion(roles: tuple[AgentRole, ...], totals: list[float]) -> Opinion:
    top = max(totals)
    exps = [math.exp(t - top) for t in totals]
    norm = sum(exps)
    ranked = sorted(range(len(roles)), key=lambda i: exps[i], reverse=True)
    first, second = exps[ranked[0]] / norm, exps[ranked[1]] / norm
    return Opinion(role=roles[ranked[0]], confidence=first, margin=first - second)
