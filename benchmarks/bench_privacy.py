"""Privacy scrubber benchmark: what scrubbing costs per KB of prompt, and restoring per KB streamed.

Texts: (a) the false-positive corpus (tests/data/privacy/code_corpus.txt: real source, a
changelog, a lockfile, JSON); (b) a prose prompt holding a dozen personal values, Russian and
English; (c) a 100 KB prompt (the corpus and the prose, interleaved). Measured in the same run, on
the same texts, two baselines: one regex pass over the digits (`[0-9]+`, the least any digit
recognizer must do) and `len(text.encode())` (what sending the text costs anyway). The restorer
is fed the scrubbed prose's placeholders in an answer, 4 characters a chunk. Also printed: the
findings on the corpus, which has no personal data — each one a false positive.

Run: ``python -m benchmarks.bench_privacy [--rounds N]``.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from routing.privacy import Scrubber
from routing.privacy.recognizers import RECOGNIZERS, findings

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "privacy" / "code_corpus.txt"
PROSE = (
    "Здравствуйте! Меня зовут Иван Петров, мой email ivan.petrov@mail.ru, телефон +7 (912) 345-67-89, "
    "запасной 8 916 123 45 67. Паспорт серия 4510 номер 123456, СНИЛС 112-233-445 95, ИНН 500100732259. "
    "Оплата с карты 4111 1111 1111 1111 на счёт DE89370400440532013000 (ООО, ИНН 7707083893, "
    "ОГРН 1027700132195). Hi team, please reach Jane at jane.doe@example.co.uk or +44 20 7946 0958; the "
    "staging box is 10.20.30.40 and the deploy key is sk-proj-Xy12Ab34Cd56Ef78Gh90Ij. Could you review "
    "the attached handler and tell me why the login fails after the password reset? Спасибо!\n"
)
CHUNK = 4


def per_kb(action: Callable[[str], object], text: str, rounds: int) -> float:
    """Median microseconds per KB (UTF-8) of `action(text)` over `rounds` runs."""
    kb = len(text.encode()) / 1024
    samples = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        action(text)
        samples.append((time.perf_counter_ns() - start) / 1000 / kb)
    return statistics.median(samples)


def big_prompt(corpus: str, size: int = 100 * 1024) -> str:
    """Pasted code and prose by turns, 8000 characters of code to a prose paragraph, to `size` bytes."""
    parts: list[str] = []
    at = total = 0
    while total < size:
        piece = corpus[at : at + 8000] + PROSE
        parts.append(piece)
        total += len(piece.encode())
        at = (at + 8000) % len(corpus)
    return "".join(parts)


def streamed(scrubber: Scrubber, rounds: int) -> tuple[float, float, int]:
    """(restorer us/KB, plain join us/KB, KB): the answer repeats the prose's placeholders."""
    vault = scrubber.vault()
    scrubbed = vault.scrub(PROSE)
    answer = (scrubbed * 20)[: 20 * 1024]
    chunks = [answer[i : i + CHUNK] for i in range(0, len(answer), CHUNK)]
    expected = vault.restore(answer)

    def restore(_: str) -> str:
        restorer = vault.restorer()
        return "".join([restorer.feed(c) for c in chunks]) + restorer.flush()

    assert restore(answer) == expected, "the stream restored differently from the whole"
    joined = per_kb(lambda _: "".join([c for c in chunks]), answer, rounds)
    return per_kb(restore, answer, rounds), joined, len(answer.encode()) // 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.bench_privacy")
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args(argv)
    scrubber = Scrubber(["Ромашка", "project-phoenix"])
    corpus = CORPUS.read_text(encoding="utf-8")
    digits = re.compile(r"[0-9]+")
    texts = (
        (f"(a) code corpus, {len(corpus.encode()) // 1024} KB", corpus),
        (f"(b) prose, 12 values, {len(PROSE.encode())} B", PROSE),
        ("(c) 100 KB prompt (corpus + prose)", big_prompt(corpus)),
    )
    print(f"scrub, median of {args.rounds} rounds, a fresh vault each, one core")
    print(f"{'':<40}{'scrub us/KB':>12}{'[0-9]+ us/KB':>14}{'ratio':>8}{'encode us/KB':>14}{'found':>7}")
    for label, text in texts:
        vault_scrub = per_kb(lambda t: scrubber.vault().scrub(t), text, args.rounds)
        regex = per_kb(lambda t: sum(1 for _ in digits.finditer(t)), text, args.rounds)
        encode = per_kb(lambda t: len(t.encode()), text, args.rounds)
        vault = scrubber.vault()
        vault.scrub(text)
        found = sum(vault.counts.values())
        print(f"{label:<40}{vault_scrub:>12.1f}{regex:>14.1f}{vault_scrub / regex:>8.2f}{encode:>14.2f}{found:>7}")
    restorer, joined, kb = streamed(scrubber, args.rounds)
    print(
        f"restore, {kb} KB answer in {CHUNK}-char chunks: {restorer:.1f} us/KB "
        f"(joining the chunks alone: {joined:.1f} us/KB, ratio {restorer / joined:.1f})"
    )
    hits = Counter(f.kind for f in findings(corpus, RECOGNIZERS))
    print(f"false positives on the corpus: {sum(hits.values())} {dict(sorted(hits.items()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
