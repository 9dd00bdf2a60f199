"""Realistic chat traffic for Konsilium: a council of agents asking in Russian and English,
streaming and not, routed by role (`"model": "auto"`).

Besides Locust's own request statistics, two custom entries per streamed request:
`TTFT <name>` (time to the first content chunk) and `ITL <name>` (the mean gap between content
chunks after it), both in milliseconds. `KONSILIUM_LOAD_MAX_REQUESTS` bounds a run by its number
of chat requests (the CI smoke run); otherwise `run-time` in locust.conf does.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from typing import Any, cast

from locust import HttpUser, between, events, task
from locust.env import Environment

PROMPTS = [  # (name in the report, prompt): one per role, both languages
    ("security ru", 'Проверь этот код на SQL-инъекции и XSS: query = f"SELECT * FROM users WHERE id={uid}"'),
    ("security en", "Review this login handler for security vulnerabilities and CSRF."),
    ("qa ru", "Покрой тестами функцию parse_date: напиши pytest-тесты для граничных случаев."),
    ("qa en", "Write unit tests for a function that merges two sorted lists."),
    ("architect ru", "Спроектируй архитектуру сервиса уведомлений: очереди, ретраи, хранение."),
    ("ux en", "Improve the UX of a signup form with five fields; what would you change?"),
    ("seo ru", "Как улучшить SEO страницы каталога: title, meta description, canonical?"),
    ("dev en", "Refactor this loop into a list comprehension: for x in xs: if x > 0: out.append(x * 2)"),
    ("dev ru", "Почему этот код на Python падает с KeyError и как это исправить?"),
]
MAX_TOKENS = int(os.environ.get("KONSILIUM_LOAD_MAX_TOKENS", "24"))
MAX_REQUESTS = int(os.environ.get("KONSILIUM_LOAD_MAX_REQUESTS", "0"))  # 0: no bound
_sent = 0


def _body(prompt: str, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "auto", "messages": [{"role": "user", "content": prompt}],
                            "max_tokens": MAX_TOKENS, "temperature": 0.7, "stream": stream}  # fmt: skip
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def _record(environment: Environment, kind: str, name: str, milliseconds: float) -> None:
    fire = cast(Callable[..., None], environment.events.request.fire)  # Locust's hooks are untyped
    fire(request_type=kind, name=name, response_time=milliseconds, response_length=0, exception=None, context={})


def _count_and_maybe_stop(environment: Environment) -> None:
    global _sent
    _sent += 1
    if MAX_REQUESTS and _sent >= MAX_REQUESTS and environment.runner is not None:
        environment.runner.quit()


class CouncilAgent(HttpUser):
    wait_time = between(0.1, 0.5)

    @task(3)
    def streamed(self) -> None:
        name, prompt = random.choice(PROMPTS)
        started = time.perf_counter()
        arrivals: list[float] = []
        with self.client.post(
            "/v1/chat/completions", json=_body(prompt, True), stream=True, catch_response=True, name="chat stream"
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            else:
                error = _read_stream(response.iter_lines(), arrivals)
                if error:
                    response.failure(error)
                else:
                    response.success()
        if arrivals:
            _record(self.environment, "TTFT", name, (arrivals[0] - started) * 1000)
            if len(arrivals) > 1:
                _record(self.environment, "ITL", name, (arrivals[-1] - arrivals[0]) * 1000 / (len(arrivals) - 1))
        _count_and_maybe_stop(self.environment)

    @task(1)
    def whole(self) -> None:
        _, prompt = random.choice(PROMPTS)
        with self.client.post(
            "/v1/chat/completions", json=_body(prompt, False), catch_response=True, name="chat"
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif not response.json()["choices"][0]["message"]["content"]:
                response.failure("empty answer")
            else:
                response.success()
        _count_and_maybe_stop(self.environment)


def _read_stream(lines: Any, arrivals: list[float]) -> str:
    """Read SSE to `[DONE]`; note when each content chunk came. Returns an error, or ""."""
    done = False
    for raw in lines:
        line = raw.decode() if isinstance(raw, bytes) else raw
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            done = True
            continue
        chunk = json.loads(line[6:])
        if "error" in chunk:
            return f"error frame: {chunk['error'].get('message', '')[:200]}"
        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            arrivals.append(time.perf_counter())
    return "" if done else "the stream ended without [DONE]"


def _fail_on_errors(environment: Environment, **_: Any) -> None:
    """Exit non-zero if any request failed (Locust's default too; said here so it is not lost)."""
    if environment.stats.total.num_failures:
        environment.process_exit_code = 1


cast(Callable[..., None], events.quitting.add_listener)(_fail_on_errors)
