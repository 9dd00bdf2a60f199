"""`konsilium run MODEL [PROMPT]`: a chat in the terminal against a running Konsilium, as
`ollama run` does — one prompt, or a conversation at a `>>> ` prompt — streaming the answer and
then saying which model answered and why (the route headers). `auto`, a role and `konsilium`
(the council) are model names like any other.

With no server at the default address it starts one (`konsilium serve`, on a free loopback port,
with the given `--config` or the built-in SmolLM2) and stops it by its pid on the way out. An
address given with `--url` is never started: it must answer.

The client is the standard library (urllib): the gateway's own dependencies, nothing more.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

DEFAULT_URL = "http://127.0.0.1:8400"
START_TIMEOUT_S = 180.0
BYE = ("/bye", "/exit", "/quit")
HELP = "/bye to leave, /clear to forget the conversation"


class RunError(Exception):
    """What the server said went wrong (its error message), or that it cannot be reached."""


@dataclass
class Reply:
    text: str = ""
    model: str = ""
    role: str = ""
    route: str = ""
    fallbacks: str = ""
    finish: str = ""
    tokens: int | None = None
    seconds: float = 0.0
    calls: list[str] = field(default_factory=list)

    def status(self) -> str:
        """`smollm2-135m-instruct · role dev · route trigger:… · 23 tokens · 1.4 s`"""
        parts = [self.model or "?"]
        if self.role:
            parts.append(f"role {self.role}")
        if self.route:
            parts.append(f"route {self.route}")
        if self.fallbacks:
            parts.append(f"after {self.fallbacks} failed")
        if self.tokens is not None:
            parts.append(f"{self.tokens} tokens")
        if self.finish and self.finish != "stop":
            parts.append(f"finish {self.finish}")
        parts.append(f"{self.seconds:.1f} s")
        return " · ".join(parts)


def stream_chat(url: str, model: str, messages: list[dict[str, str]], key: str | None, out: TextIO) -> Reply:
    """One streamed chat completion: its text written to `out` as it arrives."""
    body = {"model": model, "messages": messages, "stream": True, "stream_options": {"include_usage": True}}
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(
        f"{url}/v1/chat/completions", data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    started = time.monotonic()
    try:
        response = urllib.request.urlopen(request, timeout=600)
    except urllib.error.HTTPError as exc:
        raise RunError(_error_message(exc.read(), exc.code)) from None
    except (urllib.error.URLError, OSError) as exc:
        raise RunError(f"cannot reach {url}: {exc}") from None
    with response:
        h = response.headers
        reply = Reply(
            model=h.get("x-konsilium-model", ""),
            role=h.get("x-konsilium-role", ""),
            route=h.get("x-konsilium-route", ""),
            fallbacks=h.get("x-konsilium-fallbacks", ""),
        )
        for chunk in _events(response):
            _take(chunk, reply, out)
    reply.seconds = time.monotonic() - started
    return reply


def _events(response: Any) -> Iterator[dict[str, Any]]:
    for raw in response:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line.startswith("data: "):
            continue
        data = line.removeprefix("data: ")
        if data == "[DONE]":
            return
        chunk = json.loads(data)
        if "error" in chunk:
            raise RunError(str(chunk["error"].get("message", chunk["error"])))
        yield chunk


def _take(chunk: dict[str, Any], reply: Reply, out: TextIO) -> None:
    if usage := chunk.get("usage"):
        reply.tokens = usage.get("completion_tokens")
    for choice in chunk.get("choices", []):
        delta = choice.get("delta", {})
        if text := delta.get("content"):
            reply.text += text
            out.write(text)
            out.flush()
        for call in delta.get("tool_calls", []):
            function = call.get("function", {})
            if function.get("name"):
                reply.calls.append(function["name"])
                out.write(f"\n[tool call {function['name']}] ")
            out.write(function.get("arguments", ""))
            out.flush()
        reply.finish = choice.get("finish_reason") or reply.finish


def _error_message(body: bytes, status: int) -> str:
    try:
        error = json.loads(body)["error"]
        return f"{status}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{status}: {body[:200].decode('utf-8', errors='replace')}"


def answer(url: str, model: str, messages: list[dict[str, str]], key: str | None, out: TextIO, err: TextIO) -> Reply:
    """Stream one answer, then its status line (on `err`, so that a piped answer is the text alone)."""
    reply = stream_chat(url, model, messages, key, out)
    out.write("\n")
    out.flush()
    err.write(f"\033[2m{reply.status()}\033[0m\n" if err.isatty() else f"[{reply.status()}]\n")
    err.flush()
    return reply


def converse(url: str, model: str, key: str | None, system: str | None) -> int:
    """The interactive chat: one conversation until `/bye` or end of input."""
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and history for input())
    print(f"{model} at {url} — {HELP}", file=sys.stderr)
    messages = _opening(system)
    while True:
        try:
            line = input(">>> ").strip()
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print(file=sys.stderr)
            continue
        if not line:
            continue
        if line in BYE:
            return 0
        if line == "/clear":
            messages = _opening(system)
            continue
        messages.append({"role": "user", "content": line})
        try:
            reply = answer(url, model, messages, key, sys.stdout, sys.stderr)
        except RunError as exc:
            messages.pop()
            print(f"konsilium run: {exc}", file=sys.stderr)
            continue
        except KeyboardInterrupt:  # the answer is dropped: the server sees the client leave
            messages.pop()
            print("\n^C", file=sys.stderr)
            continue
        messages.append({"role": "assistant", "content": reply.text})


def _opening(system: str | None) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}] if system else []


def run(model: str, prompt: str | None, *, url: str | None, config: Path | None, system: str | None) -> int:
    key = os.environ.get("KONSILIUM_API_KEY") or os.environ.get("OPENAI_API_KEY")
    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read()  # `echo "..." | konsilium run auto`
    try:
        with _server(url, config) as base:
            if prompt is None:
                return converse(base, model, key, system)
            answer(base, model, [*_opening(system), {"role": "user", "content": prompt}], key, sys.stdout, sys.stderr)
            return 0
    except RunError as exc:
        print(f"konsilium run: {exc}", file=sys.stderr)
        return 1


@contextlib.contextmanager
def _server(url: str | None, config: Path | None) -> Iterator[str]:
    """The server to talk to: `url` (which must answer), the default address when something
    answers there, else one started here and stopped (by its pid) when the chat ends."""
    if url is not None or _answers(DEFAULT_URL):
        base = (url or DEFAULT_URL).rstrip("/")
        if not _answers(base):
            raise RunError(f"nothing answers at {base}/health")
        yield base
        return
    port = _free_port()
    argv = [sys.executable, "-m", "entrypoints.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--config", str(config)] if config else []
    log = open(os.devnull, "wb")  # noqa: SIM115 (closed below, after the process)
    process = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
    print(f"starting Konsilium (pid {process.pid}) on 127.0.0.1:{port} ...", file=sys.stderr, flush=True)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base, process)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _wait_ready(base: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RunError(f"the server exited with {process.returncode} before it was ready")
        if _answers(base, "/ready"):
            return
        time.sleep(0.2)
    raise RunError(f"the server was not ready after {START_TIMEOUT_S:g} s")


def _answers(base: str, path: str = "/health") -> bool:
    try:
        with urllib.request.urlopen(f"{base.rstrip('/')}{path}", timeout=2) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
