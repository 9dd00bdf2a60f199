"""What agents need from generation, on the real SmolLM2 through a real Konsilium: tool calls in
auto mode (streamed, read by the official SDK's helpers, answered after a tool's result), JSON
that parses whenever it says `stop`, fill-in-the-middle on a model without FIM tokens (emulated,
or refused by its manifest) and on one with them (a copy of SmolLM2 whose GGUF names FIM tokens),
and the missing-field errors.

SmolLM2's template renders no tools: they go into its system prompt in SmolLM2's own
`<tool_call>[…]</tool_call>` syntax (model_store/llama_cpp/tool_calls.py), and a lazy grammar holds
the call to the given tools once the model opens one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from model_store.types import GenerationRequest
from tests.openapi import assert_valid
from tests.servers import MODEL_ID, SMOLLM2, Server, llama_model, run_server
from tests.test_e2e_chat import only_tool_call, sse_events

pytestmark = pytest.mark.e2e

WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
WEATHER_ASK: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
NO_FIM = "this model has no fill-in-the-middle tokens"
HAIKU_ASK: Any = [{"role": "user", "content": "Write a haiku about the sea."}]


def text_answer(reply: Any) -> str:
    """The text of an answer that ended by itself and called no tool."""
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.tool_calls is None
    text: str = choice.message.content
    assert text
    assert "<tool_call>" not in text
    return text


def test_auto_mode_calls_the_tool_a_question_needs(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL_ID, messages=WEATHER_ASK, tools=[WEATHER_TOOL], temperature=0, max_tokens=60
    )
    call = only_tool_call(raw)
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})


def test_auto_mode_answers_in_text_when_no_tool_is_needed(client: openai.OpenAI) -> None:
    """No call is forced: the answer is text. (Whether SmolLM2 ends its haiku within 60 tokens
    depends on the CPU's arithmetic: on AVX-512 machines it writes on to the limit.)"""
    reply = client.chat.completions.create(
        model=MODEL_ID, messages=HAIKU_ASK, tools=[WEATHER_TOOL], temperature=0, max_tokens=60
    )
    choice = reply.choices[0]
    assert (choice.finish_reason in ("stop", "length"), choice.message.tool_calls) == (True, None)
    assert "sea" in (choice.message.content or "")


def test_streamed_auto_call_deltas_follow_the_spec(server: Server) -> None:
    body = {"model": MODEL_ID, "messages": WEATHER_ASK, "tools": [WEATHER_TOOL], "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server.v1}/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    calls = [call for d in deltas for call in d.get("tool_calls", [])]
    first, rest = calls[0], calls[1:]
    assert first["index"] == 0
    assert first["type"] == "function"
    assert first["id"].startswith("call_")
    assert first["function"] == {"name": "get_weather", "arguments": ""}
    assert rest
    assert all(set(c) == {"index", "function"} and set(c["function"]) == {"arguments"} for c in rest)
    assert json.loads("".join(c["function"]["arguments"] for c in rest)) == {"city": "Paris"}
    assert not any(d.get("content") for d in deltas)  # the call's own syntax never leaks as text
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_the_sdk_stream_helper_reads_an_auto_call(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model=MODEL_ID, messages=WEATHER_ASK, tools=[WEATHER_TOOL], temperature=0
    ) as stream:
        done = [e for e in stream if e.type == "tool_calls.function.arguments.done"]
        final = stream.get_final_completion()
    assert [(e.name, json.loads(e.arguments)) for e in done] == [("get_weather", {"city": "Paris"})]
    [call] = final.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"
    assert final.choices[0].finish_reason == "tool_calls"


def test_a_tools_result_is_answered_in_text(client: openai.OpenAI) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages: Any = [
        *WEATHER_ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"},
    ]  # fmt: skip
    reply = client.chat.completions.create(
        model=MODEL_ID, messages=messages, tools=[WEATHER_TOOL], temperature=0, max_tokens=40
    )
    assert "21" in text_answer(reply)


def test_required_with_several_tools_makes_a_call_of_one_of_them(client: openai.OpenAI) -> None:
    time_tool = {**WEATHER_TOOL, "function": {**WEATHER_TOOL["function"], "name": "get_time"}}
    reply = client.chat.completions.create(
        model=MODEL_ID, messages=WEATHER_ASK, tools=[WEATHER_TOOL, time_tool], tool_choice="required",
        parallel_tool_calls=False, temperature=0, max_tokens=60,
    )  # fmt: skip
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.function.name in ("get_weather", "get_time")  # type: ignore[union-attr]
    assert set(json.loads(call.function.arguments)) == {"city"}  # type: ignore[union-attr]


JSON_SUBJECTS = ["a cat", "the city of Paris", "a book", "a user profile", "a car", "the weather today",
                 "a recipe for pancakes", "a planet", "a laptop", "a song"]  # fmt: skip


def test_json_object_answers_parse_whenever_they_stop(client: openai.OpenAI) -> None:
    """50 prompts at temperature 0 and 0.8, max_tokens 60: every `stop` parses as a JSON object;
    every other answer says `length` (never a broken `stop`). SmolLM2 at temperature 0 repeats
    keys until the length runs out; at 0.8 many close their object."""
    asks = [
        (f"Describe {s} as a JSON object.", t, seed) for t in (0.0, 0.8) for seed in range(5) for s in JSON_SUBJECTS
    ]

    def ask(prompt: str, temperature: float, seed: int) -> tuple[str, str]:
        reply = client.chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": prompt}], response_format={"type": "json_object"},
            max_tokens=60, temperature=temperature, seed=seed,
        )  # fmt: skip
        choice = reply.choices[0]
        return choice.finish_reason, choice.message.content or ""

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda a: ask(*a), asks))
    assert len(answers) == 100
    stopped = [text for reason, text in answers if reason == "stop"]
    assert all(isinstance(json.loads(text), dict) for text in stopped)
    assert {reason for reason, _ in answers} <= {"stop", "length"}
    assert stopped, "not one answer closed its object: the test would prove nothing"
    assert all("\n" not in text and "  " not in text for _, text in answers), "whitespace is bounded"


def test_fill_in_the_middle_is_emulated_on_a_model_without_fim_tokens(client: openai.OpenAI) -> None:
    raw = client.completions.with_raw_response.create(
        model=MODEL_ID,
        prompt="def add(a, b):\n    return ",
        suffix="\n\nprint(add(1, 2))\n",
        max_tokens=16,
        temperature=0,
    )
    assert raw.headers["x-konsilium-fim"] == "emulated"
    body = json.loads(raw.content)
    assert_valid("CreateCompletionResponse", body)
    assert body["choices"][0]["text"]
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    plain = client.completions.with_raw_response.create(model=MODEL_ID, prompt="def add(a, b):", max_tokens=2)
    assert "x-konsilium-fim" not in plain.headers


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/chat/completions", {"model": MODEL_ID}, "messages"),
        ("/chat/completions", {"messages": WEATHER_ASK}, "model"),
        ("/completions", {"model": MODEL_ID}, "prompt"),
        ("/completions", {"prompt": "Hi"}, "model"),
    ],
)
def test_a_missing_required_field_is_named(server: Server, path: str, body: dict[str, Any], param: str) -> None:
    response = httpx.post(f"{server.v1}{path}", json=body, timeout=30)
    assert response.status_code == 400
    assert response.json() == {
        "error": {"message": f"Missing required parameter: '{param}'.", "type": "invalid_request_error",
                  "param": param, "code": "invalid_request"}
    }  # fmt: skip


def with_fim_tokens(source: Path, target: Path) -> tuple[int, int, int]:
    """A copy of SmolLM2 whose GGUF names three of its tokens as the FIM prefix, suffix and middle
    (the keys llama.cpp reads); the ids are SmolLM2's <filename>, <gh_stars> and <issue_start>,
    chosen so that no one could find them by their text."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    reader = gguf.GGUFReader(source)
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    assert arch is not None
    writer = gguf.GGUFWriter(target, arch=str(arch.contents()), endianess=reader.endianess)
    ids = (6, 7, 8)
    keys = ("tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.fim_mid_token_id")
    new = {key: MetadataDetails(gguf.GGUFValueType.UINT32, token) for key, token in zip(keys, ids, strict=True)}
    copy_with_new_metadata(reader, writer, new, [])
    return ids


@pytest.fixture(scope="module")
def fim_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[int, int, int]]:
    path = tmp_path_factory.mktemp("fim") / "smollm2-fim.gguf"
    return path, with_fim_tokens(SMOLLM2, path)


def test_fim_token_ids_are_the_ggufs_own(fim_gguf: tuple[Path, tuple[int, int, int]]) -> None:
    import llama_cpp
    from llama_cpp._internals import LlamaModel

    from model_store.llama_cpp.prompts import PromptBuilder

    path, ids = fim_gguf
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    for gguf_path, expected in ((path, ids), (SMOLLM2, None)):
        model = LlamaModel(path_model=str(gguf_path), params=params, verbose=False)
        builder = PromptBuilder(model)
        assert builder.fim_ids == expected
        if expected is not None:
            tokens = builder.prompt_tokens(GenerationRequest(kind="completion", prompt="def f(", suffix="\n"))
            assert (tokens[0], tokens[-1]) == (ids[0], ids[2])
            assert ids[1] in tokens
        model.close()


@pytest.fixture(scope="module")
def fim_server(
    tmp_path_factory: pytest.TempPathFactory, fim_gguf: tuple[Path, tuple[int, int, int]]
) -> Iterator[Server]:
    """SmolLM2 first in the dev chain (emulates FIM), the copy with FIM tokens second (its
    manifest says so, so routing knows before it is loaded), and a SmolLM2 that refuses FIM."""
    path, _ = fim_gguf
    models = [
        llama_model(),
        llama_model("smollm2-fim", path=str(path), capabilities=["chat", "fim"], load="on_demand"),
        llama_model("smollm2-no-fim", fim="refuse", load="on_demand"),
    ]
    routing = {"roles": {"dev": {"targets": [{"model": MODEL_ID}, {"model": "smollm2-fim"}]}}}
    with run_server(tmp_path_factory.mktemp("fim-server"), models, routing=routing) as running:
        yield running


def complete(server: Server, model: str, **fields: Any) -> httpx.Response:
    body = {"model": model, "prompt": "def add(a, b):\n    return ", "max_tokens": 8, "temperature": 0, **fields}
    return httpx.post(f"{server.v1}/completions", json=body, headers={"x-konsilium-role": "dev"}, timeout=120)


def test_a_fim_request_prefers_the_chains_model_with_fim_tokens(fim_server: Server) -> None:
    routed = complete(fim_server, "auto", suffix="\n")
    assert routed.status_code == 200, routed.text
    assert (routed.headers["x-konsilium-model"], routed.headers["x-konsilium-route"]) == ("smollm2-fim", "fim")
    assert routed.headers["x-konsilium-fim"] == "native"
    plain = complete(fim_server, "auto")  # no suffix: the chain's order
    assert plain.headers["x-konsilium-model"] == MODEL_ID
    named = complete(fim_server, MODEL_ID, suffix="\n")  # a model asked for by name serves it
    assert (named.headers["x-konsilium-model"], named.headers["x-konsilium-fim"]) == (MODEL_ID, "emulated")


def test_a_manifest_can_refuse_emulated_fim(fim_server: Server) -> None:
    """The model refuses the suffix (a 400 of its own); like any failure before the first token,
    the request then falls back along the chain, to a model that emulates FIM, and says so."""
    answered = complete(fim_server, "smollm2-no-fim", suffix="\n")
    assert answered.status_code == 200, answered.text
    assert (answered.headers["x-konsilium-model"], answered.headers["x-konsilium-fallbacks"]) == (
        MODEL_ID,
        "smollm2-no-fim",
    )
    assert answered.headers["x-konsilium-fim"] == "emulated"
    assert fim_server.log is not None
    refusal = "target smollm2-no-fim failed before answering (unsupported_parameter): " + NO_FIM
    assert refusal in fim_server.log.read_text(encoding="utf-8")
