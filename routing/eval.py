"""`python -m routing.eval [FILE]`: how well the role router routes a labelled prompt set.

By default the held-out split (`tests/data/routing_heldout.jsonl`: prompts written by people who
did not see the trigger lists, never used to train the classifier or tune the triggers). Prints
per-role precision / recall / F1, macro-F1, the confusions, per-subset figures (Russian,
English, mixed, wrong layout, transliteration) and which layer decided, next to a naive
baseline that matches the same trigger lists as case-insensitive substrings of the raw text.

`--tune` picks the classifier's thresholds on the training sets, with each training prompt's
opinion from a model that did not see it (needs scikit-learn, a development dependency).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec

from routing.classifier import Opinion, SecondOpinion
from routing.roles import RoleDecision, resolve_role
from routing.router import DEFAULT_RULES as DEFAULT_RULES
from routing.router import role_readers
from routing.rules import AGENT_ROLES, AgentRole, RoutingRules, load_rules
from routing.triggers import TriggerIndex

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
DEFAULT_SET = DATA / "routing_eval.jsonl"  # the project's own set: the triggers were tuned on it
TRAIN_SETS = (DEFAULT_SET, DATA / "routing_train.jsonl")
HELDOUT_SET = DATA / "routing_heldout.jsonl"
SUBSETS = ("ru", "en", "mixed", "layout", "translit")


class Example(msgspec.Struct, frozen=True):
    text: str
    role: AgentRole
    kind: str = ""
    system: str = ""


class Scores(msgspec.Struct, frozen=True):
    per_role: dict[str, tuple[float, float, float]]  # precision, recall, f1
    macro_f1: float
    accuracy: float
    confusions: list[tuple[str, str, int]]  # expected, predicted, count


def load_examples(path: Path) -> list[Example]:
    decoder = msgspec.json.Decoder(Example)
    return [decoder.decode(line) for line in path.read_bytes().splitlines() if line.strip()]


def decider(
    rules: RoutingRules, index: TriggerIndex | None = None, classifier: SecondOpinion | None = None
) -> Callable[[Example], RoleDecision]:
    """The router's role decision for an example: the packaged classifier unless an index is given."""
    if index is None:
        index, classifier = role_readers(rules)

    def decide(example: Example) -> RoleDecision:
        return resolve_role(
            rules, index, header=None, model="", user_text=example.text, system_text=example.system,
            classifier=classifier,
        )  # fmt: skip

    return decide


def triggers_router(rules: RoutingRules, index: TriggerIndex | None = None) -> Callable[[Example], AgentRole]:
    decide = decider(rules, index)
    return lambda example: decide(example).role


def naive_router(rules: RoutingRules) -> Callable[[Example], AgentRole]:
    """The baseline: every trigger string as a case-insensitive substring, same weights and ties."""
    needles: list[tuple[AgentRole, str, float]] = []
    for role, spec in rules.roles.items():
        needles += [(role, t.lower(), rules.term_weight) for t in spec.terms]
        needles += [(role, w.lower(), rules.word_weight) for w in (*spec.words.ru, *spec.words.en)]
        needles += [(role, p.lower(), rules.phrase_weight) for p in (*spec.phrases.ru, *spec.phrases.en)]

    def route(example: Example) -> AgentRole:
        for text in (example.text.lower(), example.system.lower()):
            scores: dict[AgentRole, float] = {}
            for role, needle, weight in needles:
                if needle in text:
                    scores[role] = scores.get(role, 0.0) + weight
            if scores:
                priority = {r: (s.priority if s else 0) for r, s in ((r, rules.roles.get(r)) for r in AGENT_ROLES)}
                return max(scores, key=lambda r: (scores[r], priority[r]))
        return rules.default_role

    return route


def score(examples: Sequence[Example], predicted: Sequence[AgentRole]) -> Scores:
    pairs = list(zip((e.role for e in examples), predicted, strict=True))
    per_role: dict[str, tuple[float, float, float]] = {}
    for role in AGENT_ROLES:
        tp = sum(1 for e, p in pairs if e == p == role)
        fp = sum(1 for e, p in pairs if p == role != e)
        fn = sum(1 for e, p in pairs if e == role != p)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_role[role] = (precision, recall, f1)
    present = [r for r in AGENT_ROLES if any(e == r for e, _ in pairs)]
    confusions = Counter((e, p) for e, p in pairs if e != p)
    return Scores(
        per_role=per_role,
        macro_f1=sum(per_role[r][2] for r in present) / len(present),
        accuracy=sum(e == p for e, p in pairs) / len(pairs),
        confusions=[(e, p, n) for (e, p), n in confusions.most_common()],
    )


def report(name: str, scores: Scores) -> str:
    lines = [f"{name}: macro-F1 {scores.macro_f1:.3f}, accuracy {scores.accuracy:.3f}"]
    lines += [f"  {role:<10} P {p:.3f}  R {r:.3f}  F1 {f:.3f}" for role, (p, r, f) in scores.per_role.items()]
    lines += [f"  confused: {e} -> {p} x{n}" for e, p, n in scores.confusions[:12]]
    return "\n".join(lines)


def by_subset(examples: Sequence[Example], predicted: Sequence[AgentRole]) -> dict[str, Scores]:
    out = {}
    for subset in SUBSETS:
        chosen = [i for i, e in enumerate(examples) if e.kind == subset]
        if chosen:
            out[subset] = score([examples[i] for i in chosen], [predicted[i] for i in chosen])
    return out


def tune(rules: RoutingRules, examples: Sequence[Example]) -> str:
    """Grid-search the classifier's thresholds on out-of-fold opinions of the training prompts."""
    from routing.train import Trainer

    trainer = Trainer(rules, examples)
    c, _, opinions = trainer.choose_c()
    out_of_fold = _Recorded(dict(zip((e.text for e in trainer.examples), opinions, strict=True)))

    results = []
    for below in (0.0, 0.2, 0.34, 0.5, 0.67, 0.8, 0.99, 1.0):
        for confidence in (0.3, 0.4, 0.5, 0.6, 0.7):
            thresholds = msgspec.structs.replace(rules.classifier, below_margin=below, min_confidence=confidence)
            tuned = msgspec.structs.replace(rules, classifier=thresholds)
            decide = decider(tuned, trainer.index, out_of_fold)
            results.append((score(examples, [decide(e).role for e in examples]).macro_f1, below, confidence))
    lines = [f"on the training sets, each opinion out of fold (C={c:g}); the best twelve:"]
    for f1, below, confidence in sorted(results, reverse=True)[:12]:
        lines.append(f"  macro-F1 {f1:.3f} at below_margin {below}, min_confidence {confidence}")
    return "\n".join(lines)


class _Recorded:
    """Opinions given beforehand, per text (each from a model that did not train on it)."""

    def __init__(self, opinions: dict[str, Opinion]) -> None:
        self._opinions = opinions

    def opinion(self, text: str) -> Opinion | None:
        return self._opinions.get(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="routing.eval")
    parser.add_argument("file", nargs="?", type=Path, default=HELDOUT_SET)
    parser.add_argument("--rules", type=Path, default=DEFAULT_RULES)
    parser.add_argument("--show-misses", action="store_true")
    parser.add_argument("--tune", action="store_true", help="choose the classifier's thresholds on the training sets")
    args = parser.parse_args(argv)
    rules = load_rules(args.rules)
    if args.tune:
        print(tune(rules, [e for path in TRAIN_SETS for e in load_examples(path)]))
        return 0
    examples = load_examples(args.file)
    decide = decider(rules)
    decisions = [decide(e) for e in examples]
    predicted = [d.role for d in decisions]
    naive = naive_router(rules)
    naive_predicted = [naive(e) for e in examples]
    print(f"{len(examples)} examples from {args.file}")
    print(report("router (triggers in context, then the classifier)", score(examples, predicted)))
    layers = Counter(d.source for d in decisions)
    print("  decided by: " + ", ".join(f"{layer} {n}" for layer, n in layers.most_common()))
    print(report("naive baseline (substrings)", score(examples, naive_predicted)))
    naive_subsets = by_subset(examples, naive_predicted)
    for subset, scores in by_subset(examples, predicted).items():
        print(
            f"  subset {subset:<9} n={sum(e.kind == subset for e in examples):<4} router macro-F1 {scores.macro_f1:.3f}"
            f" accuracy {scores.accuracy:.3f} | naive macro-F1 {naive_subsets[subset].macro_f1:.3f}"
        )
    if args.show_misses:
        for example, got in zip(examples, decisions, strict=True):
            if got.role != example.role:
                why = f"{got.source} {got.margin}"
                print(f"  MISS {example.role} -> {got.role} ({why}) [{example.kind}] {example.text[:100]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
