"""Routing rules: per agent role, its triggers and its priority. `routing/triggers.yaml` (packaged)
unless `routing.rules` names another file.

Strict like every config: unknown keys are errors that name the file and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, get_args

import msgspec
import yaml

from konsilium.config import AgentRole as AgentRole
from konsilium.errors import ConfigError
from konsilium.manifest_dir import with_yaml_path

AGENT_ROLES: tuple[AgentRole, ...] = get_args(AgentRole)


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    pass


class ByLanguage(_Strict, frozen=True):
    ru: list[str] = msgspec.field(default_factory=list)
    en: list[str] = msgspec.field(default_factory=list)


class RoleTriggers(_Strict, frozen=True):
    priority: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 0  # breaks ties between equal scores
    terms: list[str] = msgspec.field(default_factory=list)  # exact tokens: xss, csrf, pytest, seo
    words: ByLanguage = msgspec.field(default_factory=ByLanguage)  # matched in every word form
    phrases: ByLanguage = msgspec.field(default_factory=ByLanguage)  # consecutive words, every form
    # this role's terms and words do not count inside these phrases (`injection` in `dependency injection`)
    unless_in: ByLanguage = msgspec.field(default_factory=ByLanguage)


class SecondOpinion(_Strict, frozen=True):
    """The classifier asked when the triggers are unsure (`routing/classifier.py`)."""

    file: str = ""  # the trained model, relative to the rules file; "" turns the classifier off
    below_margin: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.5  # margins at or below this ask it
    min_confidence: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.5  # its answer counts from here
    # ... and the triggers decide alone only with at least this score (2: one phrase or term; a
    # lone word is ambiguous)
    trust_score: Annotated[float, msgspec.Meta(ge=0)] = 2.0


class RoutingRules(_Strict, frozen=True):
    default_role: AgentRole = "dev"
    aliases: dict[str, AgentRole] = msgspec.field(default_factory=dict)  # model field -> role
    term_weight: float = 2.0
    phrase_weight: float = 2.0
    word_weight: float = 1.0
    system_prompt_weight: float = 0.5  # the system prompt counts only when the user text is silent
    roles: dict[AgentRole, RoleTriggers] = msgspec.field(default_factory=dict)
    classifier: SecondOpinion = msgspec.field(default_factory=SecondOpinion)


def load_rules(path: Path) -> RoutingRules:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        rules = msgspec.convert(raw or {}, RoutingRules, strict=True)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError([f"{path}: {exc}"]) from exc
    except msgspec.ValidationError as exc:
        raise ConfigError([f"{path}: {with_yaml_path(str(exc))}"]) from exc
    if not rules.classifier.file:
        return rules
    model = path.parent / rules.classifier.file  # relative to the rules file, like an include
    return msgspec.structs.replace(rules, classifier=msgspec.structs.replace(rules.classifier, file=str(model)))
