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
chunk's weights are summed once and remembered (one dict per role), so a text costs a set
difference, a set intersection and, per role, one C-level gather and sum over the chunks it knows.
"""

from __future__ import annotations

import math
from operator import itemgetter
from pathlib import Path
from typing import Protocol

import msgspec

from konsilium.errors import ConfigError
from routing.rules import AgentRole
from routing.text import CODE_BLOCK, swap_layout, translit_key
from routing.triggers import PUNCT, Reading, TriggerIndex

HEAD_CHARS = 700  # the classifier reads a long text's head and tail: where a request says what it wants
TAIL_CHARS = 300
MEMO_SIZE = 50_000  # distinct chunks remembered (~0.5 KB each: a float per role), then cleared
GRAM = 4  # 5-fold accuracy on the training prompts: readings alone 0.883, with 3-grams 0.887, 4-grams 0.906


class RoleModel(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    roles: tuple[AgentRole, ...]
    bias: tuple[float, ...]
    weights: dict[str, tuple[float, ...]]  # a feature ("kind:stem" or "g:" + 4-gram) -> one weight per role
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
            names.update(_grams(translit_key(word)))
        if token.isascii():  # the punctuation keys are letters on the Russian layout: `,tpjgfcyjcnm`
            names.update(_grams(translit_key(swap_layout(token))))
    return names


def _grams(key: str) -> list[str]:
    marked = f"<{key}>"
    return [f"g:{marked[i : i + GRAM]}" for i in range(max(1, len(marked) - GRAM + 1))]


def load_model(path: Path) -> RoleModel:
    try:
        return msgspec.json.decode(path.read_bytes(), type=RoleModel)
    except (OSError, msgspec.DecodeError) as exc:  # ValidationError is a DecodeError
        raise ConfigError([f"routing classifier.file: {path}: {exc}"]) from exc


def classifier_text(text: str) -> str:
    """What the classifier reads: code blocks dropped, a long text's head and tail."""
    if "```" in text:
        text = CODE_BLOCK.sub(" ", text)
    if len(text) > HEAD_CHARS + TAIL_CHARS:
        text = f"{text[:HEAD_CHARS]} {text[-TAIL_CHARS:]}"
    return text


class RoleClassifier:
    def __init__(self, model: RoleModel, index: TriggerIndex) -> None:
        self.model = model
        self._index = index
        self._by_role: list[dict[str, float]] = [{} for _ in model.roles]  # chunk -> its summed weight
        self._known: set[str] = set()  # every chunk seen, as a set for C-speed differences
        self._hot: set[str] = set()  # the chunks above that carry a known reading

    def opinion(self, text: str) -> Opinion | None:
        chunks = set(classifier_text(text).split())
        for chunk in chunks - self._known:
            self._remember(chunk)
        hot = chunks & self._hot
        if not hot:
            return None  # nothing it knows: no opinion rather than its prior
        if len(hot) == 1:
            (chunk,) = hot
            totals = [bias + weights[chunk] for bias, weights in zip(self.model.bias, self._by_role, strict=True)]
        else:
            weights_of = itemgetter(*hot)  # one lookup per chunk and role, in C
            totals = [bias + sum(weights_of(w)) for bias, w in zip(self.model.bias, self._by_role, strict=True)]
        return _softmax_opinion(self.model.roles, totals)

    def forget(self) -> None:
        for weights in self._by_role:
            weights.clear()
        self._known.clear()
        self._hot.clear()

    def _remember(self, chunk: str) -> None:
        if len(self._known) >= MEMO_SIZE:
            self.forget()
        self._known.add(chunk)
        known = self.model.weights
        rows = [w for name in chunk_features(self._index, chunk) if (w := known.get(name)) is not None]
        if rows:
            for weights, column in zip(self._by_role, zip(*rows, strict=True), strict=True):
                weights[chunk] = math.fsum(column)
            self._hot.add(chunk)


def _softmax_opinion(roles: tuple[AgentRole, ...], totals: list[float]) -> Opinion:
    top = max(totals)
    exps = [math.exp(t - top) for t in totals]
    norm = sum(exps)
    ranked = sorted(range(len(roles)), key=lambda i: exps[i], reverse=True)
    first, second = exps[ranked[0]] / norm, exps[ranked[1]] / norm
    return Opinion(role=roles[ranked[0]], confidence=first, margin=first - second)
