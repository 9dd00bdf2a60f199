"""Role routing: normalization, layouts, transliteration, word forms, scoring, and the eval set."""

from __future__ import annotations

import pytest

from konsilium.errors import InvalidRequestError
from routing.eval import load_examples, naive_router, score, triggers_router
from routing.roles import RoleDecision, detect_language, resolve_role
from routing.rules import RoutingRules, load_rules
from routing.text import normalize, swap_layout, translit_key
from routing.triggers import TriggerIndex
from tests.servers import ROOT

RULES = load_rules(ROOT / "routing" / "triggers.yaml")
INDEX = TriggerIndex(RULES)


def route(text: str, *, system: str = "", header: str | None = None, model: str = "m") -> RoleDecision:
    return resolve_role(RULES, INDEX, header=header, model=model, user_text=text, system_text=system)


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("Ёлка ЁЖ", "елка еж"),
        ("fix ```def test_user():\n    pass``` now", "fix   now"),
        ("unclosed ```security_group = 1", "unclosed  "),
    ],
)
def test_normalize(raw: str, normalized: str) -> None:
    assert normalize(raw) == normalized


@pytest.mark.parametrize(
    ("typed", "meant"),
    [("ntcns", "тесты"), ("ezpdbvjcnm", "уязвимость"), (",tpjgfcyjcnm", "безопасность"), ("ыусгкшен", "security")],
)
def test_keyboard_layout_swap(typed: str, meant: str) -> None:
    assert swap_layout(typed) == meant


@pytest.mark.parametrize(
    ("latin", "cyrillic"),
    [("bezopasnost", "безопасность"), ("uyazvimost", "уязвимость"), ("uiazvimost", "уязвимость"),
     ("arkhitektura", "архитектура"), ("arhitektura", "архитектура"), ("interfeys", "интерфейс"),
     ("testy", "тесты"), ("schetchik", "щетчик")],
)  # fmt: skip
def test_transliterations_meet_their_russian_spelling(latin: str, cyrillic: str) -> None:
    assert translit_key(latin) == translit_key(cyrillic)


@pytest.mark.parametrize(
    ("text", "role", "matched"),
    [
        ("найди уязвимость", "security", "уязвим"),
        ("в каких уязвимостях тут проблема", "security", "уязвим"),
        ("проверь безопасность", "security", "безопасн"),
        ("bezopasnost prilozheniya", "security", "безопасн"),
        ("ezpdbvjcnm d ajhvt", "security", "уязвим"),
        ("ыусгкшен", "security", "secur"),
        ("покрой тестами модуль оплаты", "qa", "покр тест"),
        ("покрыть тестами", "qa", "покр тест"),
        ("ntcns", "qa", "тест"),
        ("testy dlya modulya", "qa", "тест"),
        ("we need more testing here", "qa", "test"),
        ("архитектуры сервиса", "architect", "архитектур"),
        ("arkhitektura", "architect", "архитектур"),
        ("интерфейсе", "ux", "интерфейс"),
        ("generate sitemap.xml", "seo", "sitemap"),
        ("подведи итоги", "director", "подвед итог"),
        ("проверь этот endpoint на SQL-инъекции", "security", "sql инъекц"),
    ],
)
def test_word_forms_layouts_and_transliterations(text: str, role: str, matched: str) -> None:
    decision = route(text)
    assert (decision.role, decision.source) == (role, "trigger")
    assert matched in decision.matched


def test_specific_beats_generic_when_roles_compete() -> None:
    assert route("напиши тесты на XSS").role == "security"
    assert route("write unit tests for the parser").role == "qa"


def test_identifiers_in_code_blocks_do_not_route() -> None:
    assert route("why is this slow?\n```\ndef test_security_group(): ...\n```").role == "dev"


def test_order_explicit_then_user_then_system_then_default() -> None:
    assert route("покрой тестами", header="security") == RoleDecision("security", "header", (), "ru")
    assert route("покрой тестами", model="role:ux").source == "alias"
    assert route("покрой тестами", model="architect").role == "architect"
    assert route("покрой тестами", system="You review security.").role == "qa"
    assert route("refactor this loop", system="You review security.") == RoleDecision(
        "security", "system", ("secur",), "en"
    )
    assert route("refactor this loop") == RoleDecision("dev", "default", (), "en", margin=0.0)


def test_configured_aliases() -> None:
    rules = RoutingRules(aliases={"reviewer": "security"}, roles=RULES.roles)
    decision = resolve_role(rules, INDEX, header=None, model="reviewer", user_text="hi", system_text="")
    assert (decision.role, decision.source) == ("security", "alias")


def test_unknown_role_header_is_a_400_naming_it() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        route("hi", header="wizard")
    assert caught.value.param == "x-konsilium-role"


@pytest.mark.parametrize(
    ("text", "language"), [("тесты", "ru"), ("tests", "en"), ("настрой pytest", "mixed"), ("42", "none")]
)
def test_language(text: str, language: str) -> None:
    assert detect_language(text) == language


def test_eval_set_meets_the_target_and_beats_the_naive_baseline() -> None:
    examples = load_examples(ROOT / "tests" / "data" / "routing_eval.jsonl")
    assert len(examples) >= 200
    ours = score(examples, [triggers_router(RULES)(e) for e in examples])
    naive = score(examples, [naive_router(RULES)(e) for e in examples])
    assert ours.macro_f1 >= 0.95, ours
    assert ours.macro_f1 - naive.macro_f1 >= 0.15


def test_every_role_has_triggers_in_both_languages() -> None:
    for role, spec in RULES.roles.items():
        if role != "dev":
            assert spec.words.ru, role
            assert spec.words.en, role
