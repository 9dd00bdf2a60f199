"""Which agent role a request speaks for. Pure: plain data in, a `RoleDecision` out.

In order: an explicit role (the `x-konsilium-role` header, or a model alias such as
`security` / `role:security`); the triggers in the last user message when they are sure; the
classifier's second opinion when they are not (or found nothing) and it is confident; the
triggers anyway; the triggers in the system prompt; the configured default.

Every matched trigger adds its weight to its role (terms and phrases weigh more than single
words: they are more specific); the highest score wins, a tie goes to the role with the higher
`priority` — so among triggers "напиши тесты на XSS" is `security`, not `qa`. The margin is the
winner's lead over the runner-up as a share of its score (1.0: no other role matched). The
triggers decide alone when the margin is above `classifier.below_margin` and the score reaches
`classifier.trust_score` (a phrase or a term, not one lone word); otherwise the classifier is
asked. The shipped `below_margin: 1.0` asks it always (chosen on out-of-fold opinions of the
training prompts); a classifier decision still names the triggers of its role that matched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import msgspec

from konsilium.errors import InvalidRequestError
from routing.classifier import SecondOpinion
from routing.rules import AGENT_ROLES, AgentRole, RoutingRules
from routing.triggers import Trigger, TriggerIndex

CLIP_CHARS = 8_000
NOT_LETTERS = bytes(c for c in range(128) if not chr(c).isalpha())
Source = Literal["header", "alias", "trigger", "classifier", "system", "default"]
Language = Literal["ru", "en", "mixed", "none"]


class RoleDecision(msgspec.Struct, frozen=True):
    role: AgentRole
    source: Source
    matched: tuple[str, ...] = ()
    language: Language = "none"
    margin: float = 1.0  # the deciding layer's certainty: trigger score lead, or probability lead


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
    rules: RoutingRules,
    index: TriggerIndex,
    *,
    header: str | None,
    model: str,
    user_text: str,
    system_text: str,
    classifier: SecondOpinion | None = None,
) -> RoleDecision:
    user_text, system_text = clip(user_text), clip(system_text)
    language = detect_language(user_text or system_text)
    explicit = explicit_role(rules, header, model)
    if explicit is not None:
        return RoleDecision(role=explicit[0], source=explicit[1], language=language)
    scores = role_scores(index.match(user_text)) if user_text else {}
    triggered = _by_triggers(rules, scores, "trigger", language)
    sure = rules.classifier
    if triggered is not None and triggered.margin > sure.below_margin and scores[triggered.role][0] >= sure.trust_score:
        return triggered
    opinion = classifier.opinion(user_text) if classifier is not None and user_text else None
    if opinion is not None and opinion.confidence >= sure.min_confidence:
        matched = triggered.matched if triggered is not None and triggered.role == opinion.role else ()
        return RoleDecision(opinion.role, "classifier", matched, language, round(opinion.margin, 3))
    return (
        triggered
        or _by_triggers(rules, role_scores(index.match(system_text)) if system_text else {}, "system", language)
        or RoleDecision(role=rules.default_role, source="default", language=language, margin=0.0)
    )


def _by_triggers(
    rules: RoutingRules, scores: dict[AgentRole, tuple[float, tuple[str, ...]]], source: Source, language: Language
) -> RoleDecision | None:
    if not scores:
        return None
    role = max(scores, key=lambda r: (scores[r][0], _priority(rules, r)))
    runner_up = max((v for r, (v, _) in scores.items() if r != role), default=0.0)
    top, matched = scores[role]
    margin = round((top - runner_up) / top, 3) if top else 0.0
    return RoleDecision(role=role, source=source, matched=matched, language=language, margin=margin)


def clip(text: str) -> str:
    """Triggers read a long text's head and tail (where a request says what it wants), so a
    megabyte of pasted logs costs what 16 KB does."""
    if len(text) <= 2 * CLIP_CHARS:
        return text
    return f"{text[:CLIP_CHARS]}\n{text[-CLIP_CHARS:]}"


def role_scores(triggers: Sequence[Trigger]) -> dict[AgentRole, tuple[float, tuple[str, ...]]]:
    """Each matched role's score (the sum of its triggers' weights) and its triggers' labels."""
    scores: dict[AgentRole, tuple[float, tuple[str, ...]]] = {}
    for trigger in triggers:
        score, labels = scores.get(trigger.role, (0.0, ()))
        scores[trigger.role] = (score + trigger.weight, (*labels, trigger.label))
    return scores


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
