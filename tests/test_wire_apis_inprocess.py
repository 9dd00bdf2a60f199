"""The Responses and Messages doors in process, with scripted backends (tests/scripted.py says
what the double stands in for): failures after the first byte, the council behind both doors,
stored responses per key, Anthropic's error shape at the key check, and the store's bounds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from gateway import protocol as p
from gateway.responses import protocol as r
from gateway.responses.store import ResponseStore
from gateway.responses.wire import ResponsesWire
from konsilium.errors import BackendError, ContextLengthExceededError
from model_store.types import Finish, Message, ToolCallDelta, Usage
from tests.openapi import assert_valid
from tests.scripted import ScriptedBackend, Step, answer
from tests.test_council_inprocess import backends, said, settings
from tests.test_inprocess import Clock, serving
from tests.test_keys import add, bearer, gateway


def events_of(body: str) -> list[tuple[str, dict[str, Any]]]:
    events, name = [], ""
    for line in body.split("\n"):
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((name, json.loads(line.removeprefix("data: "))))
    return events


def cut_short() -> dict[str, ScriptedBackend]:
    return {"a": ScriptedBackend("a", replies=[[*answer("par")[:1], BackendError("worker process exited (-9)")]])}


async def test_a_responses_stream_that_breaks_ends_with_response_failed() -> None:
    async with serving(cut_short()) as (client, _):
        reply = await client.post("/v1/responses", json={"model": "a", "input": "hi", "stream": True})
    events = events_of(reply.text)
    assert [n for n, _ in events][-2:] == ["response.output_text.delta", "response.failed"]
    failed = events[-1][1]
    assert_valid("ResponseStreamEvent", failed)
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {"code": "server_error", "message": "worker process exited (-9)"}
    assert failed["response"]["output"][0]["status"] == "incomplete"
    assert not reply.text.rstrip().endswith("[DONE]")


async def test_a_messages_stream_that_breaks_ends_with_an_error_event() -> None:
    async with serving(cut_short()) as (client, _):
        body = {"model": "a", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        reply = await client.post("/v1/messages", json=body)
    events = events_of(reply.text)
    assert events[-1] == (
        "error",
        {"type": "error", "error": {"type": "api_error", "message": "worker process exited (-9)"}},
    )
    assert "message_stop" not in [n for n, _ in events]


async def test_the_council_answers_behind_both_doors() -> None:
    models = backends()
    for name in ("a", "b", "c"):
        models[name].replies = [said(f"answer of {name}"), said(f"again {name}")]
    models["d"].replies = [said("the verdict"), said("the verdict again")]
    async with serving(models, **{**settings(), "allow_external_api": False}) as (client, _):
        made = (await client.post("/v1/responses", json={"model": "konsilium", "input": "Review it."})).json()
        again = {"model": "konsilium", "max_tokens": 64, "messages": [{"role": "user", "content": "Again."}]}
        message = await client.post("/v1/messages", json=again)
    assert_valid("Response", {k: v for k, v in made.items() if k != "konsilium"})
    reasoning, verdict = made["output"]
    assert reasoning["type"] == "reasoning"
    assert "answer of a" in reasoning["content"][0]["text"]
    assert verdict["content"][0]["text"] == "the verdict"
    assert made["konsilium"]["council"] == "default"
    thinking, text = message.json()["content"]
    assert thinking["type"] == "thinking"
    assert "again b" in thinking["thinking"]
    assert text == {"type": "text", "text": "the verdict again"}


async def test_stored_responses_belong_to_their_key(tmp_path: Path) -> None:
    _, mine = add(tmp_path, "mine")
    _, theirs = add(tmp_path, "theirs")
    async with gateway(tmp_path) as (client, _):
        made = (await client.post("/v1/responses", json={"model": "a", "input": "hi"}, headers=bearer(mine))).json()
        assert (await client.get(f"/v1/responses/{made['id']}", headers=bearer(mine))).json() == made
        other = await client.get(f"/v1/responses/{made['id']}", headers=bearer(theirs))
        assert other.status_code == 404
        more = {"model": "a", "input": "more", "previous_response_id": made["id"]}
        follow = await client.post("/v1/responses", json=more, headers=bearer(theirs))
        assert (follow.status_code, follow.json()["error"]["param"]) == (400, "previous_response_id")
        refused = await client.post("/v1/messages", json={"model": "a", "max_tokens": 4, "messages": []})
    assert (refused.status_code, refused.json()["type"], refused.json()["error"]["type"]) == (
        401, "error", "authentication_error",
    )  # fmt: skip


def stored(response_id: str, text: str = "x") -> r.Response:
    return r.Response(
        id=response_id, created_at=0, status="completed", instructions=None, max_output_tokens=None, model="m",
        output=[r.MessageOutput(id="msg", content=[r.OutputText(text=text)])], parallel_tool_calls=True,
        previous_response_id=None, store=True, temperature=None, text={}, tool_choice="auto", tools=[], top_p=None,
        metadata={},
    )  # fmt: skip


HISTORY = (Message(role="user", content="hi"),)


def test_the_store_evicts_the_least_recently_used_by_count() -> None:
    store = ResponseStore(max_items=2, max_bytes=10**6, ttl_s=60, clock=Clock())
    store.put("", stored("r1"), HISTORY)
    store.put("", stored("r2"), HISTORY)
    assert store.get("", "r1") is not None  # r1 read: r2 is now the least recently used
    store.put("", stored("r3"), HISTORY)
    assert [store.get("", i) is not None for i in ("r1", "r2", "r3")] == [True, False, True]
    assert len(store) == 2


def test_the_store_evicts_by_bytes_and_refuses_what_cannot_fit() -> None:
    one = len(p.encoder.encode(stored("r1", "y" * 1000))) + len(p.encoder.encode(HISTORY[0]))
    store = ResponseStore(max_items=100, max_bytes=2 * one + 10, ttl_s=60, clock=Clock())
    for i in (1, 2, 3):
        store.put("", stored(f"r{i}", "y" * 1000), HISTORY)
    assert [store.get("", f"r{i}") is not None for i in (1, 2, 3)] == [False, True, True]
    assert store.bytes == 2 * one
    store.put("", stored("huge", "y" * 5000), HISTORY)
    assert store.get("", "huge") is None
    assert len(store) == 2


def test_the_store_forgets_after_its_ttl_and_per_owner() -> None:
    clock = Clock()
    store = ResponseStore(max_items=10, max_bytes=10**6, ttl_s=60, clock=clock)
    store.put("alice", stored("r1"), HISTORY)
    assert store.get("bob", "r1") is None
    clock.now += 59.9
    kept = store.get("alice", "r1")
    assert kept is not None
    assert kept.conversation == HISTORY
    clock.now += 0.2
    assert store.get("alice", "r1") is None
    assert (len(store), store.bytes) == (0, 0)
    store.put("alice", stored("r2"), HISTORY)
    assert store.delete("alice", "r2")
    assert not store.delete("alice", "r2")


def calls_without_ids() -> list[Step]:
    """Two calls whose backend sent no ids (a remote upstream may not): the wire names them."""
    return [
        ToolCallDelta(index=0, arguments='{"city": ', name="weather"),
        ToolCallDelta(index=0, arguments='"Oslo"}'),
        ToolCallDelta(index=1, arguments="{}", name="time"),
        Finish(reason="tool_calls", usage=Usage(prompt_tokens=5, completion_tokens=9)),
    ]


TOOLS = [{"type": "function", "name": n, "parameters": {"type": "object"}} for n in ("weather", "time")]


async def test_calls_without_backend_ids_are_kept_with_the_ids_they_were_sent_with() -> None:
    models = {"a": ScriptedBackend("a", replies=[calls_without_ids(), answer("done"), calls_without_ids()])}
    async with serving(models) as (client, _):
        body = {"model": "a", "input": "weather and time?", "tools": TOOLS, "stream": True}
        events = events_of((await client.post("/v1/responses", json=body)).text)
        response = events[-1][1]["response"]
        calls = response["output"]
        outputs = [{"type": "function_call_output", "call_id": o["call_id"], "output": "ok"} for o in calls]
        follow = {"model": "a", "input": outputs, "tools": TOOLS, "previous_response_id": response["id"]}
        assert (await client.post("/v1/responses", json=follow)).status_code == 200
        anthropic = {"model": "a", "max_tokens": 8, "messages": [{"role": "user", "content": "?"}], "stream": True}
        streamed = events_of((await client.post("/v1/messages", json=anthropic)).text)
    blocks = [event for name, event in streamed if name == "content_block_start"]
    assert [(o["type"], o["name"], o["arguments"]) for o in response["output"]] == [
        ("function_call", "weather", '{"city": "Oslo"}'), ("function_call", "time", "{}"),
    ]  # fmt: skip
    ids = [o["call_id"] for o in response["output"]]
    assert all(i.startswith("call_") for i in ids)
    assert ids[0] != ids[1]
    assert [n for n, _ in events].count("response.output_item.added") == 2
    sent = models["a"].requests[1].messages
    assert [c.id for c in sent[1].tool_calls] == ids  # the stored reply has the ids the client saw
    assert [(m.role, m.tool_call_id) for m in sent[2:]] == [("tool", ids[0]), ("tool", ids[1])]
    assert [(b["index"], b["content_block"]["name"]) for b in blocks] == [(0, "weather"), (1, "time")]
    assert blocks[0]["content_block"]["id"] != blocks[1]["content_block"]["id"]


def test_a_response_that_fails_before_anything_came_was_created_first() -> None:
    """A model that fails while it loads: the stream has begun (loading comments), nothing came."""
    request = msgspec.json.decode(b'{"model": "a", "input": "hi"}', type=r.CreateResponse)
    frames = ResponsesWire("a", request).failure(ContextLengthExceededError("too long"))
    names = [n for n, _ in events_of(frames.decode())]
    assert names == ["response.created", "response.in_progress", "response.failed"]
    failed = events_of(frames.decode())[-1][1]
    assert (failed["sequence_number"], failed["response"]["error"]["code"]) == (2, "context_length_exceeded")


async def test_a_type_that_is_no_string_is_a_clear_400() -> None:
    async with serving({"a": ScriptedBackend("a")}) as (client, _):
        item = await client.post("/v1/responses", json={"model": "a", "input": [{"type": ["message"]}]})
        tool = await client.post("/v1/responses", json={"model": "a", "input": "hi", "tools": [{"type": 1}]})
        block = {"model": "a", "max_tokens": 4, "messages": [{"role": "user", "content": [{"type": None}]}]}
        anthropic = await client.post("/v1/messages", json=block)
    assert (item.status_code, item.json()["error"]["param"]) == (400, "input[0].type")
    assert (tool.status_code, tool.json()["error"]["param"]) == (400, "tools[0].type")
    assert (anthropic.status_code, anthropic.json()["error"]["type"]) == (400, "invalid_request_error")
