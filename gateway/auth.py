"""API keys at the front door: who is calling (`KeyAuth`), and whether their limits admit this
request (`admit`).

`KeyAuth` is pure ASGI middleware inside the observing one, so a refusal is logged and counted
like any answer. For `/v1/*`, `/admin/*` and `/metrics`, once any key exists (or always, with
`tenancy.require_keys`): the key comes from `Authorization: Bearer <key>` or `x-api-key`
(Anthropic's clients); none, an unknown or a revoked one is a 401 `invalid_api_key`, and
`/admin/*` and `/metrics` want an admin key (403 otherwise; the admin API's loopback guard stays
on top). The key is never logged: the access log names it by its name.

`admit` runs in the handler, once the body is parsed: the request's tokens are reserved up front
(the prompt's estimate plus `max_tokens`), in the same limiter call that counts the request and
takes a parallel slot. When the last byte has gone, the middleware hands back what the answer
did not use, and puts OpenAI's `x-ratelimit-*` headers on the answer (a 429 included).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass

import msgspec
from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPResponseBodyEvent, HTTPResponseStartEvent, Message, Receive, Scope, Send

from gateway import observe
from gateway.errors import error_body, error_headers
from konsilium.errors import (
    AuthenticationError,
    GatewayError,
    KeyStoreUnavailableError,
    PermissionDeniedError,
    RateLimitError,
)
from konsilium.observability.metrics import Metrics
from konsilium.tenancy.keys import ApiKey
from konsilium.tenancy.limiter import Lease
from konsilium.tenancy.service import Tenancy
from konsilium.tenancy.window import Decision
from model_store.types import GenerationRequest
from routing.requests import Access, estimated_tokens

GUARDED = ("/v1/", "/admin/", "/metrics")  # /metrics names keys, tenants and their adapters: an admin's
ADMIN_ONLY = ("/admin/", "/metrics")
PARALLEL_RETRY_MS = 1000
NO_KEY = "Missing API key: pass a Konsilium key as `Authorization: Bearer <key>` (or `x-api-key: <key>`)."
BAD_KEY = "Invalid API key: the key given is unknown or revoked."
LIMITS = {"requests": "requests per minute (RPM)", "tokens": "tokens per minute (TPM)",
          "parallel": "parallel requests", "tokens_too_large": "tokens per minute (TPM)"}  # fmt: skip


@dataclass
class Caller:
    key: ApiKey
    lease: Lease | None = None  # once `admit` has asked the limiter


CALLER: ContextVar[Caller | None] = ContextVar("konsilium_caller", default=None)


def access() -> Access | None:
    """What the calling key may use (None: keys are off)."""
    caller = CALLER.get()
    if caller is None:
        return None
    key = caller.key
    return Access(key=key.name, tenant=key.tenant, models=frozenset(key.models))


def presented(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, secret = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and secret.strip():
                return secret.strip()
        elif name == b"x-api-key" and value.strip():
            return value.decode("latin-1").strip()
    return None


class KeyAuth:
    def __init__(self, app: ASGIApp, tenancy: Tenancy | None, metrics: Metrics | None) -> None:
        self.app = app
        self.tenancy = tenancy
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tenancy = self.tenancy
        if tenancy is None or scope["type"] != ScopeType.HTTP or not scope["path"].startswith(GUARDED):
            await self.app(scope, receive, send)
            return
        ring = tenancy.ring
        if not ring.loaded:
            await send_error(scope, send, KeyStoreUnavailableError("The API keys cannot be read yet.", retry_after=1))
            return
        if not ring.enabled and not tenancy.required:
            await self.app(scope, receive, send)
            return
        secret = presented(scope["headers"])
        key = ring.authenticate(secret) if secret is not None else None
        if key is None:
            await send_error(scope, send, AuthenticationError(BAD_KEY if secret is not None else NO_KEY))
            return
        if scope["path"].startswith(ADMIN_ONLY) and not key.admin:
            await send_error(
                scope, send, PermissionDeniedError(f"{scope['path']} needs an admin key (keys create --admin).")
            )
            return
        await self._serve(tenancy, key, scope, receive, send)

    async def _serve(self, tenancy: Tenancy, key: ApiKey, scope: Scope, receive: Receive, send: Send) -> None:
        caller, record = Caller(key), observe.current()
        record.key, record.tenant = key.name, key.tenant or ""

        token = CALLER.set(caller)
        try:
            await self.app(scope, receive, functools.partial(send_with_limits, send, caller))
        finally:
            CALLER.reset(token)
            if record.inference:  # the observing middleware outside has seen the status go
                await self._ended(tenancy, caller, record)

    async def _ended(self, tenancy: Tenancy, caller: Caller, record: observe.RequestRecord) -> None:
        """An answer that ended before its usage was known (the client left, the stream broke)
        after a model took it (`record.role` is set once dispatched) is charged its whole
        reservation: leaving early must not make the tokens free."""
        key, prompt, completion, status = caller.key, record.prompt_tokens, record.completion_tokens, record.status
        charged = prompt + completion
        if not charged and record.role and caller.lease is not None:
            charged = caller.lease.reserved
        await tenancy.finished(key, caller.lease, prompt, completion, charged, error=status >= 400)
        if self.metrics is not None:
            self.metrics.key_used(key.name, key.tenant or "", status, prompt, completion)


async def send_with_limits(send: Send, caller: Caller, message: Message) -> None:
    """The answer's head gets the `x-ratelimit-*` headers of the caller's admission."""
    if message["type"] == "http.response.start" and caller.lease is not None:
        message["headers"] = [*message.get("headers", ()), *rate_headers(caller.lease.decision)]
    await send(message)


async def send_error(scope: Scope, send: Send, error: GatewayError) -> None:
    body = error_body(scope["path"], error)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in error_headers(error).items()]
    start: HTTPResponseStartEvent = {"type": "http.response.start", "status": error.status, "headers": headers}
    await send(start)
    whole: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(whole)


async def admit(tenancy: Tenancy | None, generation: GenerationRequest, metrics: Metrics | None) -> GenerationRequest:
    """Take the request's place in its key's limits, or refuse it with a 429. A key with a token
    limit gets no answer longer than what was reserved for it: without `max_tokens`, the reserve
    (`tenancy.completion_reserve_tokens`) becomes its `max_tokens`."""
    caller = CALLER.get()
    if tenancy is None or caller is None or not caller.key.limited:
        return generation
    reserve = generation.max_tokens or tenancy.completion_reserve_tokens
    await _reserve(tenancy, caller, estimated_tokens(generation) + reserve, metrics)
    if caller.key.tpm is not None and generation.max_tokens is None:
        return msgspec.structs.replace(generation, max_tokens=reserve)
    return generation


async def admit_tokens(tenancy: Tenancy | None, tokens: int, metrics: Metrics | None) -> None:
    """An embedding's place in its key's limits: its inputs' tokens, nothing generated."""
    caller = CALLER.get()
    if tenancy is not None and caller is not None and caller.key.limited:
        await _reserve(tenancy, caller, tokens, metrics)


async def _reserve(tenancy: Tenancy, caller: Caller, tokens: int, metrics: Metrics | None) -> None:
    """One limiter call counts the request, reserves `tokens` and takes a parallel slot; a 429 if not."""
    key = caller.key
    caller.lease = lease = await tenancy.limiter.acquire(key, tokens)
    decision = lease.decision
    if decision.admitted:
        return
    if metrics is not None:
        metrics.rate_limited.inc((key.name, decision.refused_by.removesuffix("_too_large")))
    raise refusal(key, lease.reserved, decision)


def refusal(key: ApiKey, requested: int, decision: Decision) -> RateLimitError:
    limit = LIMITS.get(decision.refused_by, decision.refused_by)
    if decision.retry_after_ms is None:
        return RateLimitError(
            f"Request too large for key {key.name!r} on {limit}: limit {key.tpm}, requested {requested} "
            "(the prompt's estimate plus max_tokens). Lower max_tokens or shorten the prompt."
        )
    wait_ms = decision.retry_after_ms
    if decision.refused_by == "parallel":  # a slot frees when a request ends, mostly long before its lease would
        wait_ms = min(wait_ms, PARALLEL_RETRY_MS)
    return RateLimitError(
        f"Rate limit reached for key {key.name!r} on {limit}. Please try again in {duration(wait_ms)}.",
        retry_after=max(1, math.ceil(wait_ms / 1000)),
    )


def rate_headers(decision: Decision) -> list[tuple[bytes, bytes]]:
    """OpenAI's `x-ratelimit-*` (the SDKs read them), and `retry-after-ms` on a refusal."""
    out: list[tuple[bytes, bytes]] = []
    for kind, limit, remaining, reset in (
        ("requests", decision.limit_requests, decision.remaining_requests, decision.reset_requests_ms),
        ("tokens", decision.limit_tokens, decision.remaining_tokens, decision.reset_tokens_ms),
    ):
        if limit is not None:
            out += [
                (b"x-ratelimit-limit-" + kind.encode(), str(limit).encode()),
                (b"x-ratelimit-remaining-" + kind.encode(), str(remaining or 0).encode()),
                (b"x-ratelimit-reset-" + kind.encode(), duration(reset or 0).encode()),
            ]
    if not decision.admitted and decision.retry_after_ms is not None:
        out.append((b"retry-after-ms", str(decision.retry_after_ms).encode()))
    return out


def duration(ms: int) -> str:
    """As OpenAI writes a reset time: `20ms`, `1.5s`, `6m0s`."""
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest_ms = divmod(ms, 60_000)
    seconds = f"{rest_ms / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"
