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
from konsilium.config import with_yaml_path
from konsilium.errors import ConfigError

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


class RoutingRules(_Strict, frozen=True):
    default_role: AgentRole = "dev"
    aliases: dict[str, AgentRole] = msgspec.field(default_factory=dict)  # model field -> role
    term_weight: float = 2.0
    phrase_weight: float = 2.0
    word_weight: float = 1.0
    system_prompt_weight: float = 0.5  # the system prompt counts only when the user text is silent
    roles: dict[AgentRole, RoleTriggers] = msgspec.field(default_factory=dict)


def load_rules(path: Path) -> RoutingRules:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        return msgspec.convert(raw or {}, RoutingRules, strict=True)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError([f"{path}: {exc}"]) from exc
    except msgspec.ValidationError as exc:
        raise ConfigError([f"{path}: {with_yaml_path(str(exc))}"]) from exc
