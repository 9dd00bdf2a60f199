"""`CloudDirectorDouble`: a test double for a hosted cloud model (OpenAI's API, say), which cannot
exist here (no internet, no key). A real HTTP server on a loopback port, speaking the part of the
OpenAI API the `openai` backend uses (a streamed chat completion with usage), that records every
request it receives — so a test can prove what never reached the cloud.

Its answer repeats every privacy placeholder it was sent (`<EMAIL_1>` …), in order, streamed a
few characters a chunk so that placeholders are split across chunks: the gateway must restore
them whole. `fail` makes it answer 500 (the Director falls back to a local model). `together`
holds every answer until that many requests are open at once (a server that batches, as a vLLM
pod or a cloud API does), or answers 503 when they never are.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PLACEHOLDER = re.compile(r"<[A-Z][A-Z_]*_\d+>")
VERDICT = "Director's verdict:"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def text(self) -> str:
        """Everything the cloud could read in this request."""
        return json.dumps(self.body, ensure_ascii=False)


@dataclass
class CloudDirectorDouble:
    url: str = ""
    received: list[Received] = field(default_factory=list)
    fail: bool = False
    chunk_chars: int = 3
    together: threading.Barrier | None = None

    def answer_to(self, body: dict[str, Any]) -> str:
        sent = " ".join(m.get("content") or "" for m in body.get("messages", []))
        return " ".join([VERDICT, *dict.fromkeys(PLACEHOLDER.findall(sent))]) + " ."


def _handler(double: CloudDirectorDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length", "0")))
            body = json.loads(raw or b"{}")
            double.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            if double.together is not None:
                try:
                    double.together.wait()
                except threading.BrokenBarrierError:
                    self._send(503, "application/json", b'{"error": {"message": "not all at once", "type": "x"}}')
                    return
            if double.fail:
                self._send(
                    500,
                    "application/json",
                    b'{"error": {"message": "the cloud double is down", "type": "server_error"}}',
                )
                return
            text = double.answer_to(body)
            pieces = [text[i : i + double.chunk_chars] for i in range(0, len(text), double.chunk_chars)]
            frames = [_chunk({"content": p}, None) for p in pieces] + [_chunk({}, "stop"), _usage(len(pieces))]
            self._send(200, "text/event-stream", b"".join(frames) + b"data: [DONE]\n\n")

        def _send(self, status: int, media_type: str, payload: bytes) -> None:
            self.send_response(status)
            self.send_header("content-type", media_type)
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


def _frame(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _chunk(delta: dict[str, str], finish: str | None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return _frame(
        {"id": "cloud-1", "object": "chat.completion.chunk", "created": 0, "model": "cloud", "choices": [choice]}
    )


def _usage(tokens: int) -> bytes:
    usage = {"prompt_tokens": 100, "completion_tokens": tokens, "total_tokens": 100 + tokens}
    return _frame(
        {
            "id": "cloud-1",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "cloud",
            "choices": [],
            "usage": usage,
        }
    )


@contextmanager
def cloud_director_double() -> Iterator[CloudDirectorDouble]:
    double = CloudDirectorDouble()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(double))
    double.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield double
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
