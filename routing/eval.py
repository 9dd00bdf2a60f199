"""`python -m routing.eval [FILE]`: how well the role triggers route a labelled prompt set.

Prints per-role precision / recall / F1, macro-F1 and the confusions, next to a naive baseline
that matches the same trigger lists as case-insensitive substrings of the raw text.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec

from routing.roles import resolve_role
from routing.rules import AGENT_ROLES, AgentRole, RoutingRules, load_rules
from routing.triggers import TriggerIndex

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SET = ROOT / "tests" / "data" / "routing_eval.jsonl"
DEFAULT_RULES = ROOT / "routing" / "triggers.yaml"


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


def triggers_router(rules: RoutingRules, index: TriggerIndex | None = None) -> Callable[[Example], AgentRole]:
    index = index or TriggerIndex(rules)

    def route(example: Example) -> AgentRole:
        decision = resolve_role(rules, index, header=None, model="", user_text=example.text, system_text=example.system)
        return decision.role

    return route


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="routing.eval")
    parser.add_argument("file", nargs="?", type=Path, default=DEFAULT_SET)
    parser.add_argument("--rules", type=Path, default=DEFAULT_RULES)
    parser.add_argument("--show-misses", action="store_true")
    args = parser.parse_args(argv)
    rules, examples = load_rules(args.rules), load_examples(args.file)
    route = triggers_router(rules)
    predicted = [route(e) for e in examples]
    naive = naive_router(rules)
    print(f"{len(examples)} examples from {args.file}")
    print(report("triggers (stems, layout, transliteration)", score(examples, predicted)))
    print(report("naive baseline (substrings)", score(examples, [naive(e) for e in examples])))
    if args.show_misses:
        for example, got in zip(examples, predicted, strict=True):
            if got != example.role:
                print(f"  MISS {example.role} -> {got} [{example.kind}] {example.text[:100]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
