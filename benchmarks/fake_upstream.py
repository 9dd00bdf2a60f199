"""Test double standing in for a remote OpenAI-compatible server, for benchmarks only.

The real remote (OpenAI, a cloud "Director") cannot be reached from here, and a real local
server would spend far more CPU than the gateway we want to measure. This fake answers
``POST /v1/chat/completions`` (streaming and not) and ``GET /v1/models`` with canned replies,
written on raw ``asyncio`` streams (HTTP/1.1, keep-alive, no framework) so that its own cost
is a small, stable baseline: "latency through Konsilium minus latency straight to this fake"
is then the gateway's overhead.

Every reply carries ``--chunks`` tokens, each the text ``"tok "``. Streams use
``Transfer-Encoding: chunked`` so the connection stays open for the next request.

Run: ``python -m benchmarks.fake_upstream --host 127.0.0.1 --port P --chunks N``; it prints
``ready`` on stdout once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from typing import Any

import msgspec

DEFAULT_CHUNKS = 16
TOKEN_TEXT = "tok "
MODEL_NAME = "fake"
MAX_REQUESTS_PER_CONNECTION = 1_000_000
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


class BadRequestError(Exception):
    """A request we cannot parse; the connection is answered 400 and closed."""


class _Request(msgspec.Struct, frozen=True):
    """One parsed HTTP/1.1 request: only what the fake needs to answer it."""

    method: str
    path: str
    keep_alive: bool
    body: bytes


def _chunk_obj(model: str, created: int, delta: dict[str, str], finish: str | None) -> bytes:
    """Encode one ``chat.completion.chunk`` as an SSE frame (``data: ...\\n\\n``)."""
    obj = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + _encoder.encode(obj) + b"\n\n"


def _usage(chunks: int) -> dict[str, int]:
    """Usage numbers for a canned reply; the prompt is counted as a fixed 8 tokens."""
    return {"prompt_tokens": 8, "completion_tokens": chunks, "total_tokens": 8 + chunks}


def build_stream_frames(model: str, chunks: int, include_usage: bool) -> list[bytes]:
    """All SSE frames of one streamed reply, in order, ending with ``data: [DONE]``.

    The first frame carries ``role: assistant``; every frame carries one ``"tok "``; the last
    token frame carries ``finish_reason: "stop"``. Built per request (cheap) so the model name
    echoes what the client asked for, as a real server does.
    """
    created = int(time.time())
    frames: list[bytes] = []
    for index in range(chunks):
        delta = {"content": TOKEN_TEXT}
        if index == 0:
            delta = {"role": "assistant", "content": TOKEN_TEXT}
        finish = "stop" if index == chunks - 1 else None
        frames.append(_chunk_obj(model, created, delta, finish))
    if include_usage:
        usage_obj = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": _usage(chunks),
        }
        frames.append(b"data: " + _encoder.encode(usage_obj) + b"\n\n")
    frames.append(b"data: [DONE]\n\n")
    return frames


def build_completion(model: str, chunks: int) -> bytes:
    """The non-streaming ``chat.completion`` body: the same tokens, joined."""
    obj = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": TOKEN_TEXT * chunks},
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(chunks),
    }
    return _encoder.encode(obj)


def build_models() -> bytes:
    """The ``GET /v1/models`` body: one model, so a gateway's discovery call succeeds."""
    obj = {
        "object": "list",
        "data": [{"id": MODEL_NAME, "object": "model", "created": 0, "owned_by": "benchmarks"}],
    }
    return _encoder.encode(obj)


def _head(status: str, keep_alive: bool, extra: list[tuple[str, str]]) -> bytes:
    """Status line and headers; ``Connection`` mirrors whether we keep the socket open."""
    lines = [f"HTTP/1.1 {status}", f"Connection: {'keep-alive' if keep_alive else 'close'}"]
    lines.extend(f"{name}: {value}" for name, value in extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def _json_response(status: str, body: bytes, keep_alive: bool) -> bytes:
    """A complete response with a ``Content-Length`` body."""
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    return _head(status, keep_alive, headers) + body


def _error_body(message: str) -> bytes:
    """An OpenAI-shaped error body, so clients surface the message rather than a parse error."""
    return _encoder.encode({"error": {"message": message, "type": "invalid_request_error"}})


async def read_request(reader: asyncio.StreamReader) -> _Request | None:
    """Read one request; ``None`` when the client closed the connection between requests.

    Only ``Content-Length`` bodies are supported: the clients we benchmark (httpx, the
    gateway's own upstream client) always send one for JSON.
    """
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise BadRequestError("truncated request head") from exc
        return None
    except asyncio.LimitOverrunError as exc:
        raise BadRequestError("request head too large") from exc
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise BadRequestError(f"bad request line: {lines[0]!r}")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or "0")
    if length < 0 or length > MAX_BODY_BYTES:
        raise BadRequestError("bad content-length")
    body = await reader.readexactly(length) if length else b""
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    return _Request(method, target.split("?", 1)[0], keep_alive, body)


class Pace(msgspec.Struct, frozen=True):
    """How replies are made: ``chunks`` tokens each, or as many as the request's ``max_tokens``
    when ``chunks_from_max_tokens``; ``interval_s`` between a stream's frames (a model's pace)."""

    chunks: int = DEFAULT_CHUNKS
    interval_s: float = 0.0
    chunks_from_max_tokens: bool = False

    def chunks_for(self, payload: dict[str, Any]) -> int:
        asked = payload.get("max_tokens")
        if self.chunks_from_max_tokens and isinstance(asked, int) and asked >= 1:
            return asked
        return self.chunks


async def _write_stream(
    writer: asyncio.StreamWriter,
    frames: list[bytes],
    keep_alive: bool,
    interval_s: float = 0.0,
) -> None:
    """Send SSE frames, one HTTP chunk each, draining as we go like a real token stream; with
    ``interval_s``, one frame per interval (a model producing a token at a time)."""
    headers = [
        ("Content-Type", "text/event-stream"),
        ("Cache-Control", "no-cache"),
        ("Transfer-Encoding", "chunked"),
    ]
    writer.write(_head("200 OK", keep_alive, headers))
    for frame in frames:
        writer.write(f"{len(frame):x}\r\n".encode("ascii") + frame + b"\r\n")
        await writer.drain()
        if interval_s:
            await asyncio.sleep(interval_s)
    writer.write(b"0\r\n\r\n")
    await writer.drain()


def _decode_body(body: bytes) -> dict[str, Any]:
    """Decode the JSON request body, rejecting anything but an object."""
    try:
        decoded = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise BadRequestError(f"invalid JSON body: {exc}") from exc
    if not isinstance(decoded, dict):
        raise BadRequestError("body must be a JSON object")
    return decoded


async def _answer_chat(writer: asyncio.StreamWriter, req: _Request, pace: Pace) -> None:
    """Answer a chat completion, streamed or whole, depending on the body's ``stream``."""
    payload = _decode_body(req.body)
    chunks = pace.chunks_for(payload)
    model = payload.get("model")
    model_name = model if isinstance(model, str) and model else MODEL_NAME
    if payload.get("stream") is True:
        options = payload.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        frames = build_stream_frames(model_name, chunks, include_usage)
        await _write_stream(writer, frames, req.keep_alive, pace.interval_s)
        return
    writer.write(_json_response("200 OK", build_completion(model_name, chunks), req.keep_alive))
    await writer.drain()


async def _answer(writer: asyncio.StreamWriter, req: _Request, pace: Pace) -> None:
    """Route one request to its canned answer."""
    if req.path == "/v1/chat/completions" and req.method == "POST":
        await _answer_chat(writer, req, pace)
        return
    if req.path == "/v1/models" and req.method == "GET":
        writer.write(_json_response("200 OK", build_models(), req.keep_alive))
    elif req.path == "/v1/traces" and req.method == "POST":  # an OTLP/HTTP sink: the empty answer means "all taken"
        head = _head("200 OK", req.keep_alive, [("content-type", "application/x-protobuf"), ("content-length", "0")])
        writer.write(head)
    else:
        body = _error_body(f"no route for {req.method} {req.path}")
        writer.write(_json_response("404 Not Found", body, req.keep_alive))
    await writer.drain()


async def _handle_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    pace: Pace,
) -> None:
    """Serve requests on one keep-alive connection until the client closes it."""
    try:
        for _ in range(MAX_REQUESTS_PER_CONNECTION):
            try:
                req = await read_request(reader)
            except BadRequestError as exc:
                writer.write(_json_response("400 Bad Request", _error_body(str(exc)), False))
                await writer.drain()
                return
            if req is None:
                return
            try:
                await _answer(writer, req, pace)
            except BadRequestError as exc:
                body = _error_body(str(exc))
                writer.write(_json_response("400 Bad Request", body, req.keep_alive))
                await writer.drain()
            if not req.keep_alive:
                return
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def serve(host: str, port: int, chunks: int = DEFAULT_CHUNKS, pace: Pace | None = None) -> asyncio.Server:
    """Start listening and return the server; the caller owns closing it.

    For in-process use (tests, benchmarks that want no extra process). ``port=0`` picks a
    free port: read it back from ``server.sockets[0].getsockname()``.
    """
    pace = pace or Pace(chunks=chunks)
    if pace.chunks < 1:
        raise ValueError("chunks must be at least 1")

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A connection task cancelled at shutdown simply ends: on Python 3.11 asyncio's
        # stream callback would otherwise log the CancelledError as an unhandled error.
        with contextlib.suppress(asyncio.CancelledError):
            await _handle_connection(reader, writer, pace)

    return await asyncio.start_server(handler, host, port, limit=MAX_HEADER_BYTES)


async def _run(host: str, port: int, pace: Pace) -> None:
    """Serve until cancelled, announcing ``ready`` once the socket listens."""
    server = await serve(host, port, pace=pace)
    async with server:
        print("ready", flush=True)
        await server.serve_forever()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=DEFAULT_CHUNKS)
    parser.add_argument("--interval-ms", type=float, default=0.0, help="pause between a stream's frames")
    parser.add_argument("--chunks-from-max-tokens", action="store_true", help="a reply has max_tokens chunks")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks.fake_upstream``."""
    args = _parse_args(argv)
    if args.chunks < 1:
        print("--chunks must be at least 1", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        pace = Pace(args.chunks, args.interval_ms / 1000, args.chunks_from_max_tokens)
        asyncio.run(_run(args.host, args.port, pace))
    return 0


if __name__ == "__main__":
    sys.exit(main())
