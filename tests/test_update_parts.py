"""The pure parts of staged updates and hot reload: control-prompt checks and the verdict, what a
new config changes, and the manifest rewrite that keeps an operator's comments."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import yaml

from konsilium.config import Config, default_config
from konsilium.errors import ConfigError
from konsilium.manifest import Manifest
from konsilium.manifest_file import manifest_file, write_fields
from konsilium.reload_plan import model_changes, restart_problems
from model_store.control import (
    ControlPrompt,
    Expectation,
    PromptResult,
    RevisionReport,
    check,
    failed,
    judge,
    load_control_prompts,
    revision_report,
)

BUILT_IN_PROMPTS = Path(__file__).resolve().parents[1] / "model_store" / "control_prompts"


@pytest.mark.parametrize(
    ("expect", "answer", "why"),
    [
        (Expectation(exact="4"), " 4\n", ""),
        (Expectation(exact="4"), "2 + 2 = 4", "expected exactly '4'"),
        (Expectation(contains="Paris"), "It is Paris.", ""),
        (Expectation(contains="Paris"), "It is paris.", "expected it to contain 'Paris'"),
        (Expectation(regex="(?i)blue"), "Blue, mostly", ""),
        (Expectation(regex=r"^\d+$"), "four", "expected a match for /^\\d+$/"),
        (Expectation(json=True), '{"city": "Paris"}', ""),
        (Expectation(json=True), '{"city": "Par', "expected JSON that parses"),
        (Expectation(contains="a", regex="b"), "a", "expected a match for /b/"),
    ],
)
def test_each_expectation_given_must_hold(expect: Expectation, answer: str, why: str) -> None:
    assert check(expect, answer) == why


def _report(revision: str, passes: list[bool], tokens_per_s: float = 50.0, error: str = "") -> RevisionReport:
    results = [
        PromptResult(f"p{i}", ok, "" if ok else "x", "", ttft_ms=10.0, tokens=int(tokens_per_s), seconds=1.0)
        for i, ok in enumerate(passes)
    ]
    return revision_report(revision, None, results, error)


def test_the_verdict_allows_a_drop_within_the_threshold_and_refuses_one_beyond() -> None:
    active = _report("r1", [True] * 20)
    within = _report("r2", [True] * 19 + [False])  # 0.95: exactly 5 % below
    beyond = _report("r3", [True] * 18 + [False] * 2)  # 0.90
    assert judge(active, within, max_score_drop=0.05, min_speed_ratio=None) == []
    reasons = judge(active, beyond, max_score_drop=0.05, min_speed_ratio=None)
    assert reasons == [
        "score 0.90 (18/20) is below the active revision's 1.00 by more than 5% (updates.max_score_drop)"
    ]
    assert (beyond.passed, beyond.total, beyond.score, beyond.tokens_per_s, beyond.ttft_ms_p50) == (
        18, 20, 0.9, 50.0, 10.0,
    )  # fmt: skip


def test_speed_is_judged_only_when_configured_and_a_candidate_that_did_not_load_is_refused() -> None:
    active, slow = _report("r1", [True], 100.0), _report("r2", [True], 40.0)
    assert judge(active, slow, max_score_drop=0.05, min_speed_ratio=None) == []
    assert judge(active, slow, max_score_drop=0.05, min_speed_ratio=0.5) == [
        "40.0 tokens/s is under 50% of the active revision's 100.0 (updates.min_speed_ratio)"
    ]
    assert judge(
        _report("r1", [False, False]), _report("r2", [False, False]), max_score_drop=0.05, min_speed_ratio=None
    ) == ["the active revision passes none of the control prompts: they tell nothing of a candidate"]
    down = revision_report("r1", None, [failed(ControlPrompt(name="p", prompt="x"), "model 'm' failed to load")] * 4)
    assert judge(down, _report("r2", [True] * 4), max_score_drop=0.05, min_speed_ratio=None) == []
    assert judge(down, _report("r2", [True] * 3 + [False]), max_score_drop=0.05, min_speed_ratio=None) == [
        "score 0.75 (3/4) is below a full score (the active revision cannot answer) by more than 5% "
        "(updates.max_score_drop)"
    ]
    broken = _report("r2", [], error="model 'm' failed to load: bad magic")
    assert judge(active, broken, max_score_drop=0.05, min_speed_ratio=None) == [
        "the candidate could not be checked: model 'm' failed to load: bad magic"
    ]


def test_a_control_prompts_file_reports_every_problem_with_its_place(tmp_path: Path) -> None:
    path = tmp_path / "control.yaml"
    path.write_text(
        "prompts:\n"
        "  - {name: a, prompt: hi, messages: [{role: user, content: hi}]}\n"
        "  - {name: a, prompt: hi, expect: {regex: '(unclosed'}}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as raised:
        load_control_prompts(path)
    assert raised.value.problems == [
        f"{path}: prompts[0]: give either prompt or messages",
        f"{path}: prompts[1].expect.regex: missing ), unterminated subpattern at position 0",
        f"{path}: prompts: names must be unique",
    ]
    path.write_text("prompts:\n  - {name: a, prompt: hi, expect: {regexp: x}}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_control_prompts(path)
    assert raised.value.problems == [f"{path}: prompts[0].expect: Object contains unknown field `regexp`"]


def test_the_built_in_models_control_prompts_load_and_are_greedy() -> None:
    prompts = load_control_prompts(BUILT_IN_PROMPTS / "smollm2-135m-instruct.yaml")
    assert [p.name for p in prompts.prompts] == ["arithmetic", "sky", "json", "opposite"]
    request = prompts.prompts[2].request(prompts.max_tokens)
    assert (request.temperature, request.max_tokens, request.json_output is not None) == (0.0, 24, True)
    assert default_config().models[0].control_prompts == str(BUILT_IN_PROMPTS / "smollm2-135m-instruct.yaml")


def _manifest(model_id: str, **fields: object) -> Manifest:
    return msgspec.convert({"id": model_id, "path": "/m.gguf", **fields}, Manifest)


def test_model_changes_tell_a_new_process_from_an_in_place_update() -> None:
    before = [_manifest("a"), _manifest("b"), _manifest("c"), _manifest("d")]
    after = [
        _manifest("a"),
        _manifest("b", n_ctx=4096),  # the worker's context: a new process
        _manifest("c", description="now described", max_queue=8),  # read from the entry: kept
        _manifest("e"),
    ]
    changes = model_changes(before, after)
    assert (changes.added, changes.removed, changes.changed, changes.updated, changes.unchanged) == (
        ["e"], ["d"], ["b"], ["c"], ["a"],
    )  # fmt: skip


def test_settings_built_once_need_a_restart_and_are_named() -> None:
    running = Config(models=[])
    new = msgspec.structs.replace(running, port=9000, allow_external_api=True, redis_url="redis://x")
    assert restart_problems(running, new, "k.yaml") == [
        "k.yaml: port: changed, and takes a restart to apply (the running value stays)",
        "k.yaml: redis_url: changed, and takes a restart to apply (the running value stays)",
    ]


MANIFEST = """\
# Qwen for the dev seat: keep this comment
id: qwen
path: qwen-r1.gguf   # the first download
revision: r1
capabilities:
  - chat
# the next revision to try
candidate:
  path: qwen-r2.gguf
  revision: r2
n_ctx: 4096
"""


def test_a_rewrite_keeps_the_other_keys_comments_and_order(tmp_path: Path) -> None:
    path = tmp_path / "qwen.yaml"
    path.write_text(MANIFEST, encoding="utf-8")
    write_fields(
        path, "qwen",
        {"path": "qwen-r2.gguf", "revision": "r2", "checksum_sha256": "ab" * 32, "candidate": None,
         "previous": {"path": "qwen-r1.gguf", "revision": "r1"}},
    )  # fmt: skip
    assert path.read_text(encoding="utf-8") == (
        "# Qwen for the dev seat: keep this comment\n"
        "id: qwen\n"
        "path: qwen-r2.gguf\n"
        "revision: r2\n"
        "capabilities:\n"
        "  - chat\n"
        "# the next revision to try\n"
        "n_ctx: 4096\n"
        f"checksum_sha256: {'ab' * 32}\n"
        "previous:\n"
        "  path: qwen-r1.gguf\n"
        "  revision: r1\n"
    )
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left beside it


def test_an_inline_model_is_rewritten_inside_the_config(tmp_path: Path) -> None:
    config = tmp_path / "konsilium.yaml"
    config.write_text(yaml.safe_dump({"port": 1, "models": [{"id": "a", "path": "a.gguf"}, {"id": "b"}]}))
    assert manifest_file(config, None, "a") == config
    assert manifest_file(config, None, "zzz") is None
    write_fields(config, "a", {"path": "a2.gguf", "revision": "r2"})
    assert yaml.safe_load(config.read_text()) == {
        "port": 1, "models": [{"id": "a", "path": "a2.gguf", "revision": "r2"}, {"id": "b"}],
    }  # fmt: skip


def test_the_manifest_file_is_found_in_models_dir(tmp_path: Path) -> None:
    (tmp_path / "one.yaml").write_text("id: one\n")
    (tmp_path / "two.yml").write_text("id: two\n")
    (tmp_path / "broken.yaml").write_text("id: [\n")
    assert manifest_file(None, tmp_path, "two") == tmp_path / "two.yml"
    assert manifest_file(None, tmp_path, "three") is None


def test_a_rebuilt_router_keeps_what_it_learned_except_of_new_processes() -> None:
    from routing.router import Router, load_routing_rules

    remote = {"format": "remote", "url": "http://127.0.0.1:9/v1", "path": None}
    config = Config(models=[_manifest("a", **remote), _manifest("b", **remote), _manifest("c", **remote)])
    rules = load_routing_rules(config)
    old = Router(config, rules)
    for name in ("a", "b"):
        old.observe(name, ttft_ms=40.0, total_ms=90.0, tokens=10)
        for _ in range(config.routing.breaker_failures):
            old.breakers[name].failure()
    new = Router(config, rules)
    new.inherit(old, fresh=["b"])  # b is a new process now
    learned = new.view()
    assert (learned["a"].ttft_ms, learned["a"].breaker) == (40.0, "open")
    assert (learned["b"].ttft_ms, learned["b"].breaker) == (None, "closed")
    new.forget("a")  # promoted: a new revision
    assert (new.view()["a"].ttft_ms, new.view()["a"].breaker) == (None, "closed")
