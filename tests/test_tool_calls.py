"""Tool calls in each chat template family's own syntax: which family a template teaches, how
calls are read while they stream (content before the trigger, the trigger held back while it is
still only a prefix, arguments piece by piece), and the grammars that constrain them.

The families other than SmolLM2's cannot be run here (no Qwen, Mistral or Llama 3 model is
packaged): their templates are represented by the markers their real templates carry, and their
answers by the text those models write. SmolLM2 runs end to end in test_e2e_generation.py.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator

import pytest
from llama_cpp._internals import LlamaModel

from model_store.llama_cpp.grammar import json_grammar, tool_calls_grammar
from model_store.llama_cpp.tool_calls import (
    HERMES,
    LLAMA3,
    MISTRAL,
    SMOLLM2,
    ToolCallReader,
    ToolSyntax,
    calls_text,
    system_prompt,
    template_tools,
)
from model_store.types import ToolCallDelta, ToolSpec
from tests.servers import SMOLLM2 as SMOLLM2_GGUF

WEATHER = ToolSpec(
    name="get_weather",
    description="Weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
NOTE = ToolSpec(name="note", description="Free text")  # no parameters: a string argument

# the markers each family's real chat template carries (abridged from the templates on the Hub)
QWEN_TEMPLATE = "{% if tools %}<tools>{{ tools }}</tools> ... <tool_call>\n{{ call }}\n</tool_call>{% endif %}"
MISTRAL_TEMPLATE = "{% if tools %}[AVAILABLE_TOOLS]{{ tools }}[/AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]"
LLAMA3_TEMPLATE = "{% if tools %}Environment: ipython{% endif %}<|python_tag|>{{ custom_tools }}"
SMOLLM2_TEMPLATE = "{% for message in messages %}<|im_start|>{{ message['role'] }}{% endfor %}"


def ids() -> Iterator[str]:
    return (f"call_{n}" for n in itertools.count())


def read(syntax: ToolSyntax, text: str, *, step: int = 0, required: bool = False) -> tuple[str, list[ToolCallDelta]]:
    """The content and deltas of `text`, fed whole (`step` 0) or `step` characters at a time."""
    reader = ToolCallReader(syntax, ids(), required=required)
    pieces = [text] if step == 0 else [text[i : i + step] for i in range(0, len(text), step)]
    content, deltas = "", []
    for piece in pieces:
        more, calls = reader.feed(piece)
        content, deltas = content + more, deltas + calls
    more, calls = reader.flush()
    return content + more, deltas + calls


def calls_of(deltas: list[ToolCallDelta]) -> list[tuple[str | None, str | None, str]]:
    """(id, name, arguments) per call index, as a client assembles the deltas."""
    calls: dict[int, list[str | None]] = {}
    for delta in deltas:
        call = calls.setdefault(delta.index, [None, None, ""])
        if delta.id is not None:
            assert call[0] is None, "a call's id and name come on its first delta only"
            call[0], call[1] = delta.id, delta.name
        else:
            assert call[0] is not None, "arguments before the call was announced"
        call[2] = f"{call[2]}{delta.arguments}"
    return [(c[0], c[1], str(c[2])) for _, c in sorted(calls.items())]


@pytest.mark.parametrize(
    ("template", "family", "syntax", "native"),
    [
        (QWEN_TEMPLATE, "", HERMES, True),
        (MISTRAL_TEMPLATE, "", MISTRAL, True),
        (LLAMA3_TEMPLATE, "", LLAMA3, True),
        (SMOLLM2_TEMPLATE, "smollm2", SMOLLM2, False),
        (SMOLLM2_TEMPLATE, "", HERMES, False),  # an unknown model without tools: the documented format
        (None, "", HERMES, False),
    ],
)
def test_the_family_comes_from_the_template_then_the_model(
    template: str | None, family: str, syntax: ToolSyntax, native: bool
) -> None:
    found = template_tools(template, family)
    assert (found.syntax, found.native) == (syntax, native)


# (family, what a model of the family writes, content before the calls, the calls)
ANSWERS = [
    (HERMES, 'Let me look.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
     "Let me look.", [("get_weather", '{"city": "Paris"}')]),
    (HERMES, '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>\n'
             '<tool_call>{"name": "note", "arguments": "buy \\"milk\\""}</tool_call>',
     "", [("get_weather", '{"city": "Oslo"}'), ("note", 'buy "milk"')]),
    (SMOLLM2, '<tool_call>[{"name": "get_weather", "arguments": {"city": "Rome"}}, '
              '{"name": "get_weather", "arguments": {"city": "Bari"}}]</tool_call>',
     "", [("get_weather", '{"city": "Rome"}'), ("get_weather", '{"city": "Bari"}')]),
    (MISTRAL, 'Sure. [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "a}b", "days": [1, {"x": null}]}, '
              '"id": "abc123XYZ"}]',
     "Sure. ", [("get_weather", '{"city": "a}b", "days": [1, {"x": null}]}')]),
    (LLAMA3, '{"name": "get_weather", "parameters": {"city": "Kyiv"}}', "", [("get_weather", '{"city": "Kyiv"}')]),
    (LLAMA3, 'The JSON is {"name": "x"}.', 'The JSON is {"name": "x"}.', []),  # not at the start: text
    (LLAMA3, '  {"city": "Kyiv"}', '  {"city": "Kyiv"}', []),  # an object, but no call
    (HERMES, '<tool_call>{"arguments": {"n": 5}, "name": "get_weather"}</tool_call>',
     "", [("get_weather", '{"n": 5}')]),  # arguments first: they wait for the name
    (HERMES, '<tool_call>{"name": "get_weather", "arguments": 42}</tool_call>', "", [("get_weather", "42")]),
    (HERMES, "Not needed: 1 < 2 and <tool> is not a call.", "Not needed: 1 < 2 and <tool> is not a call.", []),
]  # fmt: skip


@pytest.mark.parametrize(("syntax", "text", "content", "calls"), ANSWERS)
@pytest.mark.parametrize("step", [0, 1, 3, 7])
def test_answers_are_read_the_same_however_the_tokens_split(
    syntax: ToolSyntax, text: str, content: str, calls: list[tuple[str, str]], step: int
) -> None:
    got_content, deltas = read(syntax, text, step=step)
    assert got_content == content
    assert calls_of(deltas) == [(f"call_{i}", name, arguments) for i, (name, arguments) in enumerate(calls)]


def test_arguments_stream_as_they_come_not_at_the_end() -> None:
    reader = ToolCallReader(HERMES, ids())
    assert reader.feed("I will check. <tool") == ("I will check. ", [])  # a trigger's prefix waits
    announced = [ToolCallDelta(index=0, id="call_0", name="get_weather", arguments="")]
    assert reader.feed('_call>{"name": "get_weather", "argu') == ("", announced)  # once the name is whole
    assert reader.feed('ments": {"ci') == ("", [ToolCallDelta(index=0, arguments='{"ci')])
    assert reader.feed('ty": "Paris"}}</tool_call>') == ("", [ToolCallDelta(index=0, arguments='ty": "Paris"}')])
    assert reader.calls == 1


def test_a_call_cut_short_by_the_length_is_reported_as_far_as_it_got() -> None:
    content, deltas = read(HERMES, '<tool_call>{"name": "get_weather", "arguments": {"city": "Par')
    assert (content, calls_of(deltas)) == ("", [("call_0", "get_weather", '{"city": "Par')])
    assert read(HERMES, '<tool_call>{"name": "get_wea') == ("", [])  # no name yet: no call


def test_a_held_back_prefix_is_content_when_the_answer_ends() -> None:
    assert read(HERMES, "Done <tool_") == ("Done <tool_", [])


def test_required_calls_start_at_the_first_token() -> None:
    """tool_choice "required": the grammar starts with the trigger, nothing is content."""
    assert read(SMOLLM2, "<", required=True) == ("", [])
    content, deltas = read(SMOLLM2, '<tool_call>[{"name": "note", "arguments": "hi"}]</tool_call>', required=True)
    assert (content, calls_of(deltas)) == ("", [("call_0", "note", "hi")])


@pytest.mark.parametrize("syntax", [HERMES, SMOLLM2, MISTRAL, LLAMA3])
def test_an_earlier_turns_calls_written_in_the_syntax_read_back_the_same(syntax: ToolSyntax) -> None:
    calls = [("get_weather", '{"city": "Paris"}')] + ([("note", '"x"')] if syntax.parallel else [])
    _, deltas = read(syntax, calls_text(syntax, calls))
    expected = [(name, json.loads(arguments) if arguments.startswith('"') else arguments) for name, arguments in calls]
    assert [(name, arguments) for _, name, arguments in calls_of(deltas)] == expected


def test_the_system_prompt_lists_every_tool_and_shows_the_syntax() -> None:
    words = system_prompt(SMOLLM2, (WEATHER, NOTE), required=False)
    listed = words.split("<tools>\n")[1].split("\n</tools>")[0].splitlines()
    assert [json.loads(line)["name"] for line in listed] == ["get_weather", "note"]
    assert json.loads(listed[1])["parameters"] == {"type": "string"}
    assert words.endswith('<tool_call>[{"name": "function_name", "arguments": {"argument": "value"}}, ...]</tool_call>')
    assert "Call one only when it is needed" in words
    assert "You must call one of them." in system_prompt(HERMES, (WEATHER,), required=True)


@pytest.fixture(scope="module")
def vocab() -> Iterator[object]:
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = LlamaModel(path_model=str(SMOLLM2_GGUF), params=params, verbose=False)
    yield model.vocab
    model.close()


@pytest.mark.parametrize("syntax", [HERMES, SMOLLM2, MISTRAL, LLAMA3])
@pytest.mark.parametrize("lazy", [True, False])
def test_every_familys_call_grammar_compiles(syntax: ToolSyntax, lazy: bool, vocab: object) -> None:
    grammar = tool_calls_grammar(syntax, (WEATHER, NOTE), parallel=True, lazy=lazy, trigger_token=None, vocab=vocab)
    assert '"\\"get_weather\\""' in grammar.text
    assert '"\\"note\\""' in grammar.text
    assert (len(grammar.lazy_patterns) == 1) is lazy
    if lazy:  # free text until the trigger; from the trigger on, the grammar (fed from the group)
        start = r"\s*(" if syntax.at_start else r"[\s\S]*?("
        assert grammar.lazy_patterns[0].startswith(start)


def test_parallel_calls_only_when_asked(vocab: object) -> None:
    def root(parallel: bool, syntax: ToolSyntax) -> str:
        text = tool_calls_grammar(
            syntax, (WEATHER,), parallel=parallel, lazy=True, trigger_token=None, vocab=vocab
        ).text
        return next(line for line in text.splitlines() if line.startswith("root ::="))

    assert root(True, SMOLLM2).count(" call") == 2
    assert root(False, SMOLLM2).count(" call") == 1
    assert root(True, HERMES).endswith(")*")
    assert not root(False, HERMES).endswith(")*")


def test_json_grammars_allow_one_space_between_tokens_and_no_newlines(vocab: object) -> None:
    """A small model must not be able to spend `max_tokens` on whitespace (json_object and schemas)."""
    for schema in (None, {"type": "object", "properties": {"a": {"type": "array"}}}):
        text = json_grammar(schema, "response_format", vocab).text
        rules = dict(line.split(" ::= ", 1) for line in text.splitlines() if " ::= " in line)
        assert rules["space"] == '" "?'
        assert "\\n" not in text
        assert "[ \\t" not in text
