"""Control prompts: what a model's new revision must still answer before it takes traffic.

A manifest's `control_prompts` names a YAML file beside it:

```yaml
max_tokens: 24              # each prompt's, unless it says otherwise
prompts:
  - name: capital
    prompt: What is the capital of France?      # one user message (or `messages:`)
    expect: {regex: "(?i)\\bparis\\b"}
  - name: json
    prompt: Give a JSON object with a key "city".
    expect: {json: true}                       # asks for JSON (response_format) and parses it
  - name: greeting
    messages: [{role: system, content: Answer in one word.}, {role: user, content: Say hi}]
    expect: {contains: "i", exact: null}
```

Every expectation given must hold (`exact` after trimming, `contains`, `regex` searched, `json`
parses). A revision's score is the share of prompts it passes; `judge` refuses a candidate whose
score falls more than `max_score_drop` below the active revision's (the seeds' 5 %), or whose
tokens/s fall below `min_speed_ratio` of the active's when that is configured — and any
candidate when the active revision answers and passes none (prompts that check nothing). When
the active revision cannot answer at all (it does not load: often why it is being replaced), the
candidate is held to a full score instead. Pure: the staging
code runs the prompts and hands the answers here.
"""

from __future__ import annotations

import re
from pathlib import Path
from statistics import median
from typing import Annotated

import msgspec
import yaml

from konsilium.errors import ConfigError
from konsilium.manifest_dir import with_yaml_path
from model_store.types import GenerationRequest, JsonOutput, Message, Role

ANSWER_SHOWN = 200  # characters of each answer kept in a report


class Expectation(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    exact: str | None = None
    contains: str | None = None
    regex: str | None = None
    json: bool = False


class ControlMessage(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    role: Role
    content: str


class ControlPrompt(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    prompt: str | None = None
    messages: list[ControlMessage] | None = None
    expect: Expectation = msgspec.field(default_factory=Expectation)
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=4096)] | None = None

    def request(self, default_max_tokens: int) -> GenerationRequest:
        """Greedy, so that two revisions are compared on the same footing."""
        messages = self.messages or [ControlMessage("user", self.prompt or "")]
        return GenerationRequest(
            kind="chat",
            messages=tuple(Message(m.role, m.content) for m in messages),
            max_tokens=self.max_tokens or default_max_tokens,
            temperature=0.0,
            seed=0,
            json_output=JsonOutput() if self.expect.json else None,
        )


class ControlPrompts(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    prompts: Annotated[list[ControlPrompt], msgspec.Meta(min_length=1, max_length=200)]
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 32


def load_control_prompts(path: Path) -> ControlPrompts:
    """The file, checked like a manifest: every problem names the file and the field."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        prompts = msgspec.convert(raw, ControlPrompts, strict=True)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError([f"{path}: {exc}"]) from exc
    except msgspec.ValidationError as exc:
        raise ConfigError([f"{path}: {with_yaml_path(str(exc))}"]) from exc
    problems = [
        f"{path}: prompts[{i}]: give either prompt or messages"
        for i, p in enumerate(prompts.prompts)
        if (p.prompt is None) == (p.messages is None)
    ]
    for i, p in enumerate(prompts.prompts):
        if p.expect.regex is not None:
            try:
                re.compile(p.expect.regex)
            except re.error as exc:
                problems.append(f"{path}: prompts[{i}].expect.regex: {exc}")
    names = [p.name for p in prompts.prompts]
    if len(set(names)) != len(names):
        problems.append(f"{path}: prompts: names must be unique")
    if problems:
        raise ConfigError(problems)
    return prompts


def check(expect: Expectation, answer: str) -> str:
    """Why the answer misses the expectation; "" when it meets it."""
    if expect.exact is not None and answer.strip() != expect.exact:
        return f"expected exactly {expect.exact!r}"
    if expect.contains is not None and expect.contains not in answer:
        return f"expected it to contain {expect.contains!r}"
    if expect.regex is not None and re.search(expect.regex, answer) is None:
        return f"expected a match for /{expect.regex}/"
    if expect.json:
        try:
            msgspec.json.decode(answer)
        except msgspec.DecodeError:
            return "expected JSON that parses"
    return ""


class PromptResult(msgspec.Struct, frozen=True):
    name: str
    passed: bool
    why: str  # "" when passed; else what was expected, or the error that stopped the answer
    answer: str  # its first ANSWER_SHOWN characters
    ttft_ms: float | None
    tokens: int
    seconds: float
    answered: bool = True  # False: an error stopped it (the model did not load, the request failed)


def result(prompt: ControlPrompt, answer: str, *, ttft_ms: float | None, tokens: int, seconds: float) -> PromptResult:
    why = check(prompt.expect, answer)
    return PromptResult(prompt.name, not why, why, answer[:ANSWER_SHOWN], ttft_ms, tokens, seconds)


def failed(prompt: ControlPrompt, error: str) -> PromptResult:
    return PromptResult(prompt.name, False, error, "", None, 0, 0.0, answered=False)


class RevisionReport(msgspec.Struct, frozen=True):
    revision: str
    path: str | None
    score: float  # the share of control prompts passed
    passed: int
    total: int
    ttft_ms_p50: float | None
    tokens_per_s: float | None  # completion tokens over generation time, every prompt together
    results: list[PromptResult]
    error: str = ""  # the revision could not be checked at all (it did not load)


def revision_report(revision: str, path: str | None, results: list[PromptResult], error: str = "") -> RevisionReport:
    passed = sum(r.passed for r in results)
    ttfts = [r.ttft_ms for r in results if r.ttft_ms is not None]
    tokens, seconds = sum(r.tokens for r in results), sum(r.seconds for r in results)
    return RevisionReport(
        revision=revision,
        path=path,
        score=passed / len(results) if results else 0.0,
        passed=passed,
        total=len(results),
        ttft_ms_p50=round(median(ttfts), 1) if ttfts else None,
        tokens_per_s=round(tokens / seconds, 1) if tokens and seconds > 0 else None,
        results=results,
        error=error,
    )


def judge(
    active: RevisionReport, candidate: RevisionReport, *, max_score_drop: float, min_speed_ratio: float | None
) -> list[str]:
    """Why the candidate is refused; [] when it may be promoted."""
    if candidate.error:
        return [f"the candidate could not be checked: {candidate.error}"]
    alone = bool(active.total) and not any(r.answered for r in active.results)
    if active.total and not alone and not active.passed:
        return ["the active revision passes none of the control prompts: they tell nothing of a candidate"]
    # the active revision cannot answer (often why it is replaced): the candidate stands alone
    baseline = 1.0 if alone else active.score
    reasons = []
    if candidate.score < baseline * (1 - max_score_drop) - 1e-9:
        against = (
            "a full score (the active revision cannot answer)" if alone else f"the active revision's {baseline:.2f}"
        )
        reasons.append(
            f"score {candidate.score:.2f} ({candidate.passed}/{candidate.total}) is below {against} "
            f"by more than {max_score_drop:.0%} (updates.max_score_drop)"
        )
    ratio, before, after = min_speed_ratio, active.tokens_per_s, candidate.tokens_per_s
    if ratio is not None and before and after is not None and after < ratio * before:
        reasons.append(
            f"{candidate.tokens_per_s} tokens/s is under {min_speed_ratio:.0%} of the active revision's "
            f"{active.tokens_per_s} (updates.min_speed_ratio)"
        )
    return reasons
