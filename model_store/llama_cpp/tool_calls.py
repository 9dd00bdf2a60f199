"""Tool calls in the model's own syntax, read as they are generated (pure: no llama.cpp import).

A chat template's family decides what a call looks like (`ToolSyntax`); `ToolCallReader` reads
the answer token by token: text before the family's trigger streams as content (holding back only
what could still become the trigger), everything from the trigger on is read as calls — each one
a `ToolCallDelta` with its id and name as soon as the name is complete, then its arguments piece
by piece. The worker constrains the calls with a lazy grammar (grammar.py): free text until the
trigger, the family's call syntax after it, so what is read here is well formed; a call the model
left unfinished (the length ran out) is still reported as far as it got.

Families and what each looks like (the trigger is the first text of the calls):

| family  | calls                                                                  |
|---------|------------------------------------------------------------------------|
| hermes  | `<tool_call>{"name": …, "arguments": {…}}</tool_call>` once per call   |
| smollm2 | `<tool_call>[{"name": …, "arguments": {…}}, …]</tool_call>`            |
| mistral | `[TOOL_CALLS][{"name": …, "arguments": {…}}, …]`                       |
| llama3  | `{"name": …, "parameters": {…}}` as the whole answer (one call)        |

Hermes is also the documented format for a template that knows no tools: the tools are then
written into the system prompt (`system_prompt`) and the answer is read the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from model_store.llama_cpp.stops import overlap
from model_store.types import ToolCallDelta, ToolSpec


@dataclass(frozen=True)
class ToolSyntax:
    family: str
    trigger: str  # the text that opens the calls
    close: str = ""  # the text after each call (hermes) or after the list (smollm2)
    listed: bool = False  # the calls are one JSON list after the trigger
    at_start: bool = False  # the trigger counts only as the answer's first text
    arguments_key: str = "arguments"
    parallel: bool = True  # the syntax can carry more than one call


HERMES = ToolSyntax("hermes", "<tool_call>", close="</tool_call>")
SMOLLM2 = ToolSyntax("smollm2", "<tool_call>", close="</tool_call>", listed=True)
MISTRAL = ToolSyntax("mistral", "[TOOL_CALLS]", listed=True)
LLAMA3 = ToolSyntax("llama3", '{"name"', at_start=True, arguments_key="parameters", parallel=False)
FAMILIES = {s.family: s for s in (HERMES, SMOLLM2, MISTRAL, LLAMA3)}


@dataclass(frozen=True)
class TemplateTools:
    """How a model's chat template takes tools: its syntax, and whether the template renders the
    tools itself (`native`) or they go into the system prompt in the syntax's own words."""

    syntax: ToolSyntax
    native: bool


def template_tools(template: str | None, family: str = "") -> TemplateTools:
    """The syntax a chat template teaches: its own markers first, then the model's `family` (the
    manifest's, else the GGUF's `general.basename`: SmolLM2's template renders no tools, but the
    SmolLM2 models were taught its `<tool_call>` list)."""
    text = template or ""
    native = "tools" in text
    if "[TOOL_CALLS]" in text:
        return TemplateTools(MISTRAL, native)
    if "<tool_call>" in text:
        return TemplateTools(HERMES, native)
    if "<|python_tag|>" in text or ("ipython" in text and native):
        return TemplateTools(LLAMA3, native)
    if family.lower().startswith("smollm"):
        return TemplateTools(SMOLLM2, False)
    return TemplateTools(HERMES, False)


def system_prompt(syntax: ToolSyntax, tools: tuple[ToolSpec, ...], required: bool) -> str:
    """The tools in words, for a template that renders none (SmolLM2's own wording for its list
    form, Hermes' for the rest): the schemas one per line inside `<tools>`, then the syntax."""
    listed = "\n".join(json.dumps(_tool_json(t), ensure_ascii=False) for t in tools)
    example = f'{{"name": "function_name", "{syntax.arguments_key}": {{"argument": "value"}}}}'
    calls = f"[{example}, ...]" if syntax.listed else example
    must = "You must call one of them." if required else "Call one only when it is needed; otherwise answer in text."
    return (
        "You are given a set of functions, as JSON schemas inside <tools></tools>:\n"
        f"<tools>\n{listed}\n</tools>\n"
        f"{must} To call functions, answer with only {syntax.trigger}{calls}{syntax.close}"
    )


def calls_text(syntax: ToolSyntax, calls: list[tuple[str, str]]) -> str:
    """An earlier assistant turn's calls (name, JSON arguments) in the syntax, for a template
    that cannot render `tool_calls` itself."""
    key = syntax.arguments_key
    objects = [f'{{"name": {json.dumps(name)}, "{key}": {arguments or "{}"}}}' for name, arguments in calls]
    if syntax.listed:
        return f"{syntax.trigger}[{', '.join(objects)}]{syntax.close}"
    return "".join(f"{syntax.trigger if not syntax.at_start else ''}{o}{syntax.close}" for o in objects)


def example_turns(syntax: ToolSyntax, *, answered: bool) -> tuple[tuple[str, str], ...]:
    """Worked turns for a template that renders no tools, put before the conversation: a question
    answered in text, then one answered with a call (of `get_time`, which is never among the
    tools: the grammar allows only the given names) and, when the conversation already holds a
    tool's result (`answered`), that call's result put into words. Without them SmolLM2-135M
    answers every question in text; with them it called the tool in 7 of 8 trials here (5 that
    need it, 3 that do not) and answers from a tool's result. The result turn is left out of a
    first question: there it made the model answer in text (5 of 8)."""
    call = calls_text(syntax, [("get_time", '{"city": "Oslo"}')])
    asked = (
        ("user", "Say hello in French."),
        ("assistant", "Bonjour!"),
        ("user", "What time is it in Oslo?"),
        ("assistant", call),
    )
    return (*asked, ("tool", '{"time": "14:05"}'), ("assistant", "It is 14:05 in Oslo.")) if answered else asked


def _tool_json(tool: ToolSpec) -> dict[str, object]:
    parameters = tool.parameters if tool.parameters is not None else {"type": "string"}
    return {"name": tool.name, "description": tool.description, "parameters": parameters}


class ToolCallReader:
    """Content until the trigger, then calls. `feed(text)` returns (content, deltas).
    `required`: the answer is calls from its first token (the grammar starts with the trigger)."""

    def __init__(self, syntax: ToolSyntax, call_ids: Iterator[str], *, required: bool = False) -> None:
        self.syntax = syntax
        self._ids = call_ids
        self._pending = ""  # content held back: it could still become the trigger
        self._started = False  # the answer's first non-blank text was seen (for at_start)
        self._calls = _CallScanner(syntax, call_ids) if required else None

    @property
    def calling(self) -> bool:
        return self._calls is not None

    @property
    def calls(self) -> int:
        return self._calls.count if self._calls is not None else 0

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        if self._calls is not None:
            return "", self._calls.feed(text)
        self._pending += text
        trigger = self.syntax.trigger
        if self.syntax.at_start:
            if self._started:
                return self._flush(), []
            head = self._pending.lstrip()
            if len(head) < len(trigger) and trigger.startswith(head):
                return "", []  # still undecided
            if not head.startswith(trigger):
                self._started = True
                return self._flush(), []
            return "", self._begin(head)
        cut = self._pending.find(trigger)
        if cut >= 0:
            content, rest = self._pending[:cut], self._pending[cut:]
            self._pending = ""
            return content, self._begin(rest)
        keep = overlap(self._pending, trigger)
        content = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(content) :]
        return content, []

    def flush(self) -> tuple[str, list[ToolCallDelta]]:
        """At the end: held-back content, and the last call's buffered name or arguments."""
        if self._calls is not None:
            return "", self._calls.finish()
        return self._flush(), []

    def _flush(self) -> str:
        out, self._pending = self._pending, ""
        return out

    def _begin(self, text: str) -> list[ToolCallDelta]:
        self._calls = _CallScanner(self.syntax, self._ids)
        body = text[len(self.syntax.trigger) :]
        if self.syntax.at_start:  # the trigger is the call's own first text
            body = text
        return self._calls.feed(body)


_NAME_KEY = "name"


class _CallScanner:
    """Reads call objects out of the calls' text, character by character: each top-level `{…}` is
    a call; its `name` string and its arguments value (`arguments` or `parameters`) are picked
    out, everything else (markers, commas, brackets, other keys such as Mistral's `id`) skipped.
    The name comes before the arguments in every family's grammar; if a model wrote them the other
    way round, the arguments wait for the name."""

    def __init__(self, syntax: ToolSyntax, call_ids: Iterator[str]) -> None:
        self._syntax = syntax
        self._ids = call_ids
        self.count = 0
        self._depth = 0  # JSON nesting depth, 0 outside any call
        self._in_string = False
        self._escaped = False
        self._token = ""  # the text of the current key or value at depth 1
        self._key: str | None = None  # the key whose value is being read at depth 1
        self._expect = "key"  # at depth 1: "key" | "colon" | "value" | "comma"
        self._value_depth = 0
        self._name: str | None = None
        self._arguments: list[str] = []
        self._announced = False
        self._string_arguments = False

    def feed(self, text: str) -> list[ToolCallDelta]:
        out: list[ToolCallDelta] = []
        for char in text:
            self._char(char, out)
        self._stream_arguments(out)
        return out

    def finish(self) -> list[ToolCallDelta]:
        out: list[ToolCallDelta] = []
        if self._depth > 0:  # cut short: say what there is
            self._end_call(out)
        return out

    def _char(self, char: str, out: list[ToolCallDelta]) -> None:
        if self._depth == 0:
            if char == "{":
                self._depth, self._expect, self._key = 1, "key", None
            return
        if self._reading_arguments():
            self._argument_char(char, out)
            return
        if self._in_string:
            self._string_char(char)
            return
        if char == '"':
            self._in_string, self._token = True, ""
        elif self._expect == "value" and char in "{[":
            self._depth += 1  # another key's object or list: skipped
        elif char in "}]" and self._depth > 1:
            self._depth -= 1
        elif char == ":" and self._depth == 1:
            self._expect = "value"
            if self._key == self._syntax.arguments_key or self._key == "arguments":
                self._expect = "arguments"
        elif char == "," and self._depth == 1:
            self._expect, self._key = "key", None
        elif char == "}" and self._depth == 1:
            self._end_call(out)

    def _string_char(self, char: str) -> None:
        if self._escaped:
            self._escaped = False
            self._token += "\\" + char
        elif char == "\\":
            self._escaped = True
        elif char == '"':
            self._in_string = False
            if self._depth == 1 and self._expect == "key":
                self._key, self._expect = json.loads(f'"{self._token}"'), "colon"
            elif self._depth == 1 and self._expect == "value" and self._key == _NAME_KEY:
                self._name = json.loads(f'"{self._token}"')
        else:
            self._token += char

    def _reading_arguments(self) -> bool:
        return self._expect == "arguments" or self._expect == "in-arguments"

    def _argument_char(self, char: str, out: list[ToolCallDelta]) -> None:
        if self._expect == "arguments":  # before the value
            if char.isspace():
                return
            self._expect, self._value_depth = "in-arguments", 0
            self._string_arguments = char == '"'
        self._arguments.append(char)
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif char == "\\":
                self._escaped = True
            elif char == '"':
                self._in_string = False
                if self._value_depth == 0:
                    self._arguments_done(out)
            return
        if self._value_depth == 0 and (char in ",}" or char.isspace()):  # after a number, true, false or null
            self._arguments.pop()
            self._arguments_done(out)
            self._char(char, out)
        elif char == '"':
            self._in_string = True
        elif char in "{[":
            self._value_depth += 1
        elif char in "}]":
            self._value_depth -= 1
            if self._value_depth == 0:
                self._arguments_done(out)

    def _arguments_done(self, out: list[ToolCallDelta]) -> None:
        self._expect = "comma"
        self._stream_arguments(out, done=True)

    def _stream_arguments(self, out: list[ToolCallDelta], done: bool = False) -> None:
        if self._name is None or self._depth == 0:
            return
        if not self._announced:
            out.append(ToolCallDelta(index=self.count, id=next(self._ids), name=self._name, arguments=""))
            self._announced = True
        if self._string_arguments:  # a free-text tool: the string's content, once it is whole
            if done:
                out.append(ToolCallDelta(index=self.count, arguments=_decoded("".join(self._arguments))))
                self._arguments = []
            return
        if self._arguments:
            out.append(ToolCallDelta(index=self.count, arguments="".join(self._arguments)))
            self._arguments = []

    def _end_call(self, out: list[ToolCallDelta]) -> None:
        if self._name is not None:
            if self._string_arguments and self._arguments:  # cut short inside the string
                out.append(ToolCallDelta(index=self.count, arguments="".join(self._arguments)))
                self._arguments = []
            self._stream_arguments(out)
            if not self._announced:
                out.append(ToolCallDelta(index=self.count, id=next(self._ids), name=self._name, arguments=""))
            self.count += 1
        self._depth, self._name, self._announced, self._arguments = 0, None, False, []
        self._in_string = self._escaped = self._string_arguments = False
        self._expect, self._key = "key", None


def _decoded(text: str) -> str:
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str) else text
