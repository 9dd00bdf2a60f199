"""`ScriptedBackend`: a test double for a model backend (a llama.cpp worker, a vLLM server, an
upstream), for the in-process tier. Starting a real model process per case would turn these
millisecond tests of the store's lifecycle, the fallback loop, breakers, queueing and SSE
framing into minutes; the real processes are exercised by the `test_e2e_*` files.

Each request takes the next reply from the script: a list of steps, each an event to yield, a
`GatewayError` to raise, or an `asyncio.Event` to wait for (a gate the test opens). An
embeddings request gets `vector` for every input (or waits at `embed_gate` first).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from konsilium.errors import GatewayError
from model_store.backend import Health, ModelInfo, State
from model_store.types import EmbeddingRequest, Embeddings, Event, Finish, GenerationRequest, TextDelta, Usage

Step = Event | GatewayError | asyncio.Event


def answer(text: str = "hello") -> list[Step]:
    return [TextDelta(text=text), Finish(reason="stop", usage=Usage(prompt_tokens=3, completion_tokens=1))]


@dataclass
class ScriptedBackend:
    model_id: str
    replies: list[list[Step]] = field(default_factory=list)
    memory_mb: int = 100
    context_length: int = 2048
    load_error: GatewayError | None = None
    state: State = "unloaded"
    loads: int = 0
    unloads: int = 0
    in_flight: int = 0
    requests: list[GenerationRequest] = field(default_factory=list)
    vector: tuple[float, ...] = (0.6, 0.8)
    embed_gate: asyncio.Event | None = None
    embedded: list[EmbeddingRequest] = field(default_factory=list)

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(id=self.model_id, owned_by="test", created=0, context_length=self.context_length)

    async def load(self) -> None:
        self.loads += 1
        if self.load_error is not None:
            self.state = "failed"
            raise self.load_error
        self.state = "ready"

    async def unload(self) -> None:
        self.unloads += 1
        self.state = "unloaded"

    async def stream(self, request: GenerationRequest, adapter: str | None = None) -> AsyncGenerator[Event, None]:
        self.requests.append(request)
        steps = self.replies.pop(0) if self.replies else answer()
        self.in_flight += 1
        try:
            for step in steps:
                if isinstance(step, asyncio.Event):
                    await step.wait()
                elif isinstance(step, GatewayError):
                    raise step
                else:
                    yield step
        finally:
            self.in_flight -= 1

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        self.embedded.append(request)
        self.in_flight += 1
        try:
            if self.embed_gate is not None:
                await self.embed_gate.wait()
        finally:
            self.in_flight -= 1
        packed = struct.pack(f"<{len(self.vector)}f", *self.vector)
        return Embeddings(vectors=(packed,) * request.count, prompt_tokens=2 * request.count)

    def health(self) -> Health:
        return Health(state=self.state, ready=self.state == "ready", in_flight=self.in_flight)

    def memory_need_mb(self) -> int:
        return self.memory_mb

    def count_prompt_tokens(self, request: GenerationRequest) -> int | None:
        return None
