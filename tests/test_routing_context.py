"""Routing that understands context: phrases hide the words inside them, margins, the classifier.

The prompts here are written for these tests (not taken from the labelled sets), one group per
class of miss the independent set showed: `dependency injection` is not an attack, a Go or
TypeScript interface is code, a type checker's complaint is dev work, slow pages losing their
ranking is seo, and the colours, spacing and layout of buttons or a mobile dashboard are ux.
"""

from __future__ import annotations

import hashlib

import msgspec
import pytest

from routing.classifier import HEAD_CHUNKS, TAIL_CHUNKS, classifier_reads, pack, unpack
from routing.eval import HELDOUT_SET, ROOT, SUBSETS, TRAIN_SETS, by_subset, decider, load_examples, naive_router, score
from routing.roles import RoleDecision, resolve_role, role_scores
from routing.router import DEFAULT_RULES, role_readers
from routing.rules import load_rules
from routing.triggers import split_chunks

RULES = load_rules(DEFAULT_RULES)
INDEX, CLASSIFIER = role_readers(RULES)


def route(text: str) -> RoleDecision:
    return resolve_role(RULES, INDEX, header=None, model="auto", user_text=text, system_text="", classifier=CLASSIFIER)


def roles_matched(text: str) -> set[str]:
    return {trigger.role for trigger in INDEX.match(text)}


MISSES = {
    "dev": [
        "как в Litestar сделать внедрение зависимостей для сессии базы",
        "внедрение зависимостей в NestJS: провайдер не находится в модуле",
        "FastAPI dependency injection: how do I override a dependency in one router only",
        "Spring dependency injection picks the wrong bean when two implement the same interface",
        "how do I declare an interface in Go for a cache with Get and Set",
        "TypeScript interface for the API response with optional fields, extends or intersection?",
        "объяви интерфейс в Go для очереди задач и сделай реализацию на каналах",
        "mypy says Incompatible types in assignment (expression has type None), how to fix properly",
        "проверка типов в pyright ругается на Optional[str] при вызове функции",
        "tsc type checking fails: Property 'id' does not exist on type 'never'",
    ],
    "seo": [
        "страницы медленно грузятся и сайт просел в выдаче Яндекса, что с этим делать",
        "our product pages got slow after the redesign and lost their Google rankings",
        "LCP 5 seconds on mobile and traffic from search dropped, is it the page speed",
    ],
    "ux": [
        "подбери цвета и отступы для кнопок на мобильном дашборде",
        "what colours and spacing should the primary and secondary buttons have",
        "layout of the mobile dashboard: cards are cramped and the buttons overlap",
        "сделай раскладку экрана настроек на телефоне чтобы кнопки не налезали друг на друга",
    ],
}


@pytest.mark.parametrize(("role", "text"), [(role, text) for role, texts in MISSES.items() for text in texts])
def test_each_class_of_miss_goes_to_its_role(role: str, text: str) -> None:
    decision = route(text)
    assert decision.role == role, decision


@pytest.mark.parametrize(
    ("text", "hidden"),
    [
        ("set up dependency injection in FastAPI", "security"),  # dev's phrase hides `injection`
        ("внедрение зависимостей через конструктор", "architect"),
        ("how do I declare an interface in Go", "ux"),  # dev's phrase hides `interface`
        ("mypy type checking fails on this module", "qa"),  # `checking` is not a test here
    ],
)
def test_a_phrase_hides_the_words_inside_it_from_other_roles(text: str, hidden: str) -> None:
    assert hidden not in roles_matched(text)
    assert "dev" in roles_matched(text)


@pytest.mark.parametrize(
    ("text", "role"),
    [
        ("is there a sql injection in this query", "security"),
        ("найди sql-инъекцию в этом запросе", "security"),
        ("the settings interface is confusing for new users", "ux"),
        ("покрой тестами модуль оплаты", "qa"),
    ],
)
def test_the_same_words_outside_those_phrases_still_count(text: str, role: str) -> None:
    assert role in roles_matched(text)
    assert route(text).role == role


def triggers_only(text: str) -> RoleDecision:
    return resolve_role(RULES, INDEX, header=None, model="auto", user_text=text, system_text="")


def test_the_triggers_margin_is_the_winners_lead_as_a_share_of_its_score() -> None:
    alone = triggers_only("проверь уязвимости в этом коде")
    assert (alone.role, alone.source, alone.margin) == ("security", "trigger", 1.0)
    assert alone.matched == ("провер уязвим", "уязвим")  # the strongest first: a phrase, then a word
    opposed = triggers_only("напиши тесты на XSS")
    assert (opposed.role, opposed.source, opposed.margin) == ("security", "trigger", 0.5)  # xss 2 vs тест 1


def test_the_classifier_is_asked_first_and_shows_the_triggers_that_agree() -> None:
    """The shipped thresholds ask the classifier first (`below_margin: 1.0`: chosen on the
    training sets, out of fold); its margin is its probability lead."""
    decision = route("проверь уязвимости в этом коде")
    assert (decision.role, decision.source, decision.matched) == ("security", "classifier", ("провер уязвим", "уязвим"))
    assert 0.5 < decision.margin <= 1.0
    unsure_rules = msgspec.structs.replace(
        RULES, classifier=msgspec.structs.replace(RULES.classifier, min_confidence=1.0)
    )
    unsure = resolve_role(
        unsure_rules, INDEX, header=None, model="auto", user_text="напиши тесты на XSS", system_text="",
        classifier=CLASSIFIER,
    )  # fmt: skip
    assert (unsure.role, unsure.source, unsure.margin) == ("security", "trigger", 0.5)  # too unsure: the triggers'


def test_no_trigger_falls_to_the_classifier_and_it_reports_its_confidence() -> None:
    assert not INDEX.match("the page jumps around while it loads and people tap the wrong thing")
    decision = route("the page jumps around while it loads and people tap the wrong thing")
    assert decision.source == "classifier"
    assert 0.0 < decision.margin <= 1.0


@pytest.mark.parametrize("text", ["hello there", "привет", "thanks!", "спасибо, продолжай", "what do you think?"])
def test_greetings_and_follow_ups_stay_with_the_default_role(text: str) -> None:
    assert route(text).role == "dev"


def test_without_a_classifier_no_trigger_is_the_default() -> None:
    decision = resolve_role(RULES, INDEX, header=None, model="auto", user_text="hello there", system_text="")
    assert (decision.role, decision.source, decision.margin) == ("dev", "default", 0.0)


def test_the_classifier_reads_the_head_and_tail_of_a_long_text() -> None:
    words = [f"w{i}" for i in range(500)]
    chunks, pairs = classifier_reads(split_chunks(" ".join(words)))
    assert chunks == set(words[:HEAD_CHUNKS]) | set(words[-TAIL_CHUNKS:])
    read = words[:HEAD_CHUNKS] + words[-TAIL_CHUNKS:]
    assert pairs == {(read[i], read[i + 1]) for i in range(len(read) - 1)}
    assert ("w99", "w460") in pairs  # the head and the tail are read as one sequence
    assert classifier_reads(split_chunks("fix ```def test_x(): pass``` this")) == ({"fix", "this"}, {("fix", "this")})


def test_the_shipped_model_was_trained_on_the_training_sets_as_they_are() -> None:
    """A changed training file without `python -m routing.train` would ship a stale model."""
    assert CLASSIFIER is not None
    trained_on = CLASSIFIER.model.trained_on
    assert trained_on == {
        str(path.relative_to(ROOT)): hashlib.sha256(path.read_bytes()).hexdigest() for path in TRAIN_SETS
    }
    assert str(HELDOUT_SET.relative_to(ROOT)) not in trained_on


def test_the_held_out_split_shares_no_prompt_with_training() -> None:
    heldout = {e.text.strip().lower() for e in load_examples(HELDOUT_SET)}
    training = {e.text.strip().lower() for path in TRAIN_SETS for e in load_examples(path)}
    assert len(heldout) >= 400
    assert len(heldout) + len(training) >= 800
    assert not heldout & training


def test_held_out_figures() -> None:
    examples = load_examples(HELDOUT_SET)
    decide = decider(RULES)
    predicted = [decide(e).role for e in examples]
    ours = score(examples, predicted)
    naive = score(examples, [naive_router(RULES)(e) for e in examples])
    assert ours.macro_f1 >= 0.97, ours  # seen: 0.978
    assert min(f1 for _, _, f1 in ours.per_role.values()) >= 0.93, ours.per_role  # seen: architect 0.953
    assert ours.macro_f1 - naive.macro_f1 >= 0.3
    subsets = by_subset(examples, predicted)
    assert set(subsets) == set(SUBSETS)
    assert min(s.macro_f1 for s in subsets.values()) >= 0.9, subsets


def test_a_label_counts_once_as_its_strongest_kind() -> None:
    """`mock` is a qa term (2) and a qa word (1): an exact `mock` counts as the term, once; a
    `mocking` only as the word."""
    assert role_scores(INDEX.match("mock the client")) == {"qa": (2.0, ("mock",))}
    assert role_scores(INDEX.match("mocking the client, mock it")) == {"qa": (2.0, ("mock",))}
    assert role_scores(INDEX.match("mocking the client")) == {"qa": (1.0, ("mock",))}


def test_a_text_matches_the_same_remembered_or_not() -> None:
    """The chunk and window memories are invisible: the same text, the same triggers, after a
    forget too; a phrase at the very start of a text (a window with no chunk before it) counts."""
    text = "dependency injection in FastAPI, and the injection of SQL is another matter: sql injection"
    first = INDEX.match(text)
    assert INDEX.match(text) == first
    INDEX.forget()
    assert INDEX.match(text) == first
    assert {t.label for t in first} == {"depend inject", "sql inject", "inject"}  # the last is free


@pytest.mark.parametrize("fields", [[0] * 7, [1, -1, 2, -2, 3, -3, 0], [-(2**46), 2**46 - 1, -1, 0, 5, -7, 12345]])
def test_packed_weights_unpack_to_their_fields_and_sum_as_fields_do(fields: list[int]) -> None:
    assert unpack(pack(fields), 7) == fields
    others = [7, -8, 9, -10, 11, -12, 13]
    assert unpack(pack(fields) + pack(others), 7) == [a + b for a, b in zip(fields, others, strict=True)]


def test_a_text_the_classifier_knows_nothing_of_gets_no_opinion() -> None:
    """No opinion rather than its prior (which would name the default role with some confidence)."""
    assert CLASSIFIER is not None
    assert CLASSIFIER.opinion("🙂 🙂 — ¿¡") is None
    assert CLASSIFIER.opinion("how do I store passwords") is not None
