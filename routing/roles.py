"""Which agent role a request speaks for. Pure: plain data in, a `RoleDecision` out.

First match wins: an explicit role (the `x-konsilium-role` header, or a model alias such as
`security` / `role:security`), then triggers in the last user message, then triggers in the
system prompt, then the configured default. When several roles match, the highest score wins
(terms and phrases weigh more than single words: they are more specific), and a tie goes to
the role with the higher `priority` — so "напиши тесты на XSS" is `security`, not `qa`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, cast

import msgspec

from konsilium.errors import InvalidRequestError
from routing.rules import AGENT_ROLES, AgentRole, RoutingRules
from routing.triggers import Hit, TriggerIndex

CLIP_CHARS = 8_000
NOT_LETTERS = bytes(c for c in range(128) if not chr(c).isalpha())
Source = Literal["header", "alias", "trigger", "system", "default"]
Language = Literal["ru", "en", "mixed", "none"]


class RoleDecision(msgspec.Struct, frozen=True):
    role: AgentRole
    source: Source
    matched: tuple[str, ...] = ()
    language: Language = "none"


def explicit_role(rules: RoutingRules, header: str | None, model: str) -> tuple[AgentRole, Source] | None:
    if header:
        if header not in AGENT_ROLES:
            raise InvalidRequestError(
                f"unknown role {header!r} in x-konsilium-role; known: {', '.join(AGENT_ROLES)}",
                param="x-konsilium-role",
            )
        return header, "header"
    name = model.removeprefix("role:")
    if name in rules.aliases:
        return rules.aliases[name], "alias"
    if name in AGENT_ROLES and (model.startswith("role:") or model == name):
        return name, "alias"
    return None


def resolve_role(
    rules: RoutingRules, index: TriggerIndex, *, header: str | None, model: str, user_text: str, system_text: str
) -> RoleDecision:
    user_text, system_text = clip(user_text), clip(system_text)
    language = detect_language(user_text or system_text)
    explicit = explicit_role(rules, header, model)
    if explicit is not None:
        return RoleDecision(role=explicit[0], source=explicit[1], language=language)
    for source, text in (("trigger", user_text), ("system", system_text)):
        hits = index.match(text) if text else []
        if hits:
            role = pick_role(hits, rules)
            matched = tuple(h.trigger.label for h in hits if h.trigger.role == role)
            return RoleDecision(role=role, source=cast(Source, source), matched=matched, language=language)
    return RoleDecision(role=rules.default_role, source="default", language=language)


def clip(text: str) -> str:
    """Triggers read a long text's head and tail (where a request says what it wants), so a
    megabyte of pasted logs costs what 16 KB does."""
    if len(text) <= 2 * CLIP_CHARS:
        return text
    return f"{text[:CLIP_CHARS]}\n{text[-CLIP_CHARS:]}"


def pick_role(hits: Sequence[Hit], rules: RoutingRules) -> AgentRole:
    scores: dict[AgentRole, float] = {}
    for hit in hits:
        scores[hit.trigger.role] = scores.get(hit.trigger.role, 0.0) + hit.trigger.weight
    return max(scores, key=lambda role: (scores[role], _priority(rules, role)))


def _priority(rules: RoutingRules, role: AgentRole) -> int:
    spec = rules.roles.get(role)
    return spec.priority if spec else 0


def detect_language(text: str) -> Language:
    """By letter counts in the first 2000 characters (non-ASCII letters taken as Cyrillic)."""
    sample = text[:2000]
    ascii_bytes = sample.encode("ascii", "ignore")
    latin = len(ascii_bytes.translate(None, NOT_LETTERS))
    cyrillic = len(sample) - len(ascii_bytes)  # non-ASCII characters: in practice Cyrillic letters
    if not cyrillic + latin:
        return "none"
    share = cyrillic / (cyrillic + latin)
    return "ru" if share > 0.8 else "en" if share < 0.05 else "mixed"
