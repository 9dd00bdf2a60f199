"""An upstream's SSE body becomes the same events however its reads cut it (the `openai`
backend reads what is buffered and splits the lines itself)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from konsilium.errors import BackendError
from model_store.openai.backend import LineSplitter, _events
from model_store.types import Event, Finish, TextDelta, ToolCallDelta, Usage

UPSTREAM = "http://127.0.0.1:9/v1"

BODY = (
    b": a comment, then an event line\r\n"
    b"event: message\r\n"
    b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":"\xd0\x9f\xd1\x80\xd0\xb8"}}]}\r\n'
    b"\r\n"
    b'data: {"choices":[{"index":0,"delta":{"content":"vet"}}]}\n\n'
    b'data:{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","function":'
    b'{"name":"look","arguments":"{\\"q\\":"}}]}}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}\n\n'
    b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}\n\n'
    b"data: [DONE]\n\n"
    b"data: not JSON, after [DONE]: ignored"  # and no newline at the very end
)

EXPECTED: list[Event] = [
    TextDelta(text="При"),
    TextDelta(text="vet"),
    ToolCallDelta(index=0, arguments='{"q":', id="call_1", name="look"),
    Finish(reason="tool_calls", usage=Usage(prompt_tokens=7, completion_tokens=3)),
]


async def _reads(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


def _relay(*pieces: bytes) -> list[Event]:
    async def run() -> list[Event]:
        return [event async for event in _events(_reads(*pieces), UPSTREAM)]

    return asyncio.run(run())


def test_one_read_holding_the_whole_body() -> None:
    assert _relay(BODY) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_reads_cut_anywhere_give_the_same_events(size: int) -> None:
    pieces = [BODY[i : i + size] for i in range(0, len(BODY), size)]
    assert _relay(*pieces) == EXPECTED


def test_the_last_line_counts_without_a_newline() -> None:
    finish = b'data: {"choices":[{"index":0,"delta":{"content":"ok"},"finish_reason":"stop"}]}'
    assert _relay(finish[:20], finish[20:]) == [
        TextDelta(text="ok"),
        Finish(reason="stop", usage=Usage(prompt_tokens=0, completion_tokens=0)),
    ]


def test_a_body_without_a_finish_is_an_error() -> None:
    with pytest.raises(BackendError, match="ended the stream before a finish_reason"):
        _relay(b'data: {"choices":[{"index":0,"delta":{"content":"cut"}}]}\n\n')


def test_splitter_keeps_a_cut_line_until_it_ends() -> None:
    splitter = LineSplitter(UPSTREAM)
    assert splitter.feed(b"ab") == []
    assert splitter.feed(b"c\nde") == [b"abc"]
    assert splitter.feed(b"\n\nf") == [b"de", b""]
    assert splitter.end() == [b"f"]
    assert splitter.end() == []


def test_a_line_over_the_limit_is_refused_even_across_reads() -> None:
    splitter = LineSplitter(UPSTREAM, max_line=10)
    assert splitter.feed(b"0123456789\n") == [b"0123456789"]  # at the limit: a line
    assert splitter.feed(b"012345") == []
    with pytest.raises(BackendError, match="a line over 10 bytes"):
        splitter.feed(b"67890")


def test_a_long_line_in_one_read_is_refused() -> None:
    with pytest.raises(BackendError, match=f"{UPSTREAM} sent an unreadable response"):
        LineSplitter(UPSTREAM, max_line=10).feed(b"ok\n" + b"x" * 11)
