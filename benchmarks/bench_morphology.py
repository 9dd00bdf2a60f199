"""Russian word forms: Snowball stems (PyStemmer) against pymorphy3 lemmas, on our own data.

The routing issue asked for both to be measured and one picked by results. Printed, for each:
- conflation: of the inflection groups below, how many map every form to one key, and how
  many distinct words wrongly share a key;
- the routing eval (tests/data/routing_eval.jsonl): macro-F1 with that Russian normalizer;
- speed: microseconds per word, each word seen once (no cache), and the start-up cost.

Run: ``python -m benchmarks.bench_morphology`` (needs the dev extra: pymorphy3).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import Stemmer

from routing.eval import DEFAULT_RULES, DEFAULT_SET, load_examples, score, triggers_router
from routing.rules import load_rules
from routing.triggers import TriggerIndex

GROUPS = [  # forms a trigger must catch as one word (several come from the issue)
    ["уязвимость", "уязвимости", "уязвимостях", "уязвимостями", "уязвимостей"],
    ["тест", "тесты", "тестами", "тестов", "тесте"],
    ["безопасность", "безопасности", "безопасностью"],
    ["архитектура", "архитектуры", "архитектуре", "архитектурой"],
    ["проверь", "проверить", "проверка", "проверки", "проверку"],
    ["покрыть", "покрой", "покройте", "покрытие", "покрытия"],
    ["интерфейс", "интерфейса", "интерфейсы", "интерфейсом"],
    ["инъекция", "инъекции", "инъекций", "инъекцию"],
    ["оптимизируй", "оптимизировать", "оптимизация", "оптимизации"],
    ["шифрование", "шифрования", "шифровать", "зашифровать"],
    ["рефакторинг", "рефакторинга", "рефакторингом"],
    ["юнит-тест", "юнит-тесты", "юнит-тестами"],
]
DISTINCT = ["тест", "тесто", "безопасность", "опасность", "интерфейс", "интерес", "код", "кот", "база", "базар"]


def snowball() -> Callable[[str], str]:
    stemmer = Stemmer.Stemmer("russian")
    return stemmer.stemWord  # type: ignore[no-any-return]


def pymorphy() -> Callable[[str], str]:
    import pymorphy3

    analyzer = pymorphy3.MorphAnalyzer()

    def lemma(word: str) -> str:
        parsed = analyzer.parse(word)
        return str(parsed[0].normal_form) if parsed else word

    return lemma


def conflation(key: Callable[[str], str]) -> tuple[list[list[str]], list[str]]:
    """The groups split into several keys, and the distinct words that share one."""
    split = [sorted({key(w) for w in group}) for group in GROUPS if len({key(w) for w in group}) > 1]
    keys = [key(w) for w in DISTINCT]
    return split, [w for w, k in zip(DISTINCT, keys, strict=True) if keys.count(k) > 1]


def per_word_us(key: Callable[[str], str], words: list[str]) -> float:
    start = time.perf_counter_ns()
    for word in words:
        key(word)
    return (time.perf_counter_ns() - start) / 1000 / len(words)


def main() -> int:
    rules, examples = load_rules(DEFAULT_RULES), load_examples(DEFAULT_SET)
    words = sorted({w for e in examples for w in e.text.lower().split() if w.isalpha() and not w.isascii()})
    print(f"{len(GROUPS)} inflection groups; {len(words)} distinct Russian words of the eval set for speed")
    print(f"{'':<24}{'groups whole':>14}{'false merges':>14}{'macro-F1':>10}{'us/word':>10}{'start s':>10}")
    details: list[str] = []
    for name, make in (("Snowball (PyStemmer)", snowball), ("pymorphy3 lemmas", pymorphy)):
        started = time.perf_counter()
        key = make()
        start_s = time.perf_counter() - started
        split, merged = conflation(key)
        router = triggers_router(rules, TriggerIndex(rules, russian=key))
        f1 = score(examples, [router(e) for e in examples]).macro_f1
        speed = statistics.median(per_word_us(key, words) for _ in range(3))
        whole = f"{len(GROUPS) - len(split)}/{len(GROUPS)}"
        print(f"{name:<24}{whole:>14}{len(merged):>14}{f1:>10.3f}{speed:>10.2f}{start_s:>10.2f}")
        details.append(f"{name}: split {split}; merged {merged}")
    print("\n".join(details))
    return 0


if __name__ == "__main__":
    sys.exit(main())
