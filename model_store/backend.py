"""The one `Backend` protocol every model implementation follows (one module per backend)."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import Literal, Protocol

import msgspec

from konsilium.errors import WrongModelKindError
from konsilium.manifest import Manifest
from model_store.types import EmbeddingRequest, Embeddings, Event, GenerationRequest

State = Literal["unloaded", "loading", "ready", "unloading", "failed"]


class ModelInfo(msgspec.Struct, frozen=True):
    """What the gateway may tell clients about a model."""

    id: str
    owned_by: str
    created: int
    context_length: int | None
    supports_fim: bool = False


def fixed_info(manifest: Manifest, context_length: int | None) -> ModelInfo:
    """The info of a model whose facts are known from its manifest (created: when first seen)."""
    return ModelInfo(
        id=manifest.id, owned_by=manifest.owned_by, created=int(time.time()), context_length=context_length
    )


class Health(msgspec.Struct, frozen=True):
    state: State
    ready: bool
    detail: str = ""
    pid: int | None = None
    in_flight: int = 0
    queued: int = 0
    adapters: tuple[str, ...] = ()  # LoRA adapters resident on it now (vllm)


def wrong_kind(model_id: str, *, embedding: bool) -> WrongModelKindError:
    """The 400 for a request of the other kind: `embedding` says what the model is."""
    if embedding:
        message = f"The model {model_id!r} is an embedding model: it answers POST /v1/embeddings only."
    else:
        message = f"The model {model_id!r} does not create embeddings (its manifest has no `embedding: true`)."
    return WrongModelKindError(message, param="model")


class Backend(Protocol):
    """A model that can generate, or embed (a manifest with `embedding: true`).

    `stream()` is an async generator: it waits its turn, yields events, and when it is closed
    early (client gone) it stops the generation and gives the turn away. Errors are
    `GatewayError`s; a failure before the first event lets a caller fall back.
    """

    @property
    def info(self) -> ModelInfo: ...

    async def load(self) -> None: ...

    async def unload(self) -> None: ...

    def stream(self, request: GenerationRequest, adapter: str | None = None) -> AsyncGenerator[Event, None]:
        """`adapter`: a LoRA adapter the manifest declares (only vllm models declare any)."""
        ...

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        """One unit vector per input. It waits its turn as `stream()` does, and a caller that is
        cancelled gives the turn away. The store asks only an embedding model; a backend that
        cannot embed raises `wrong_kind(..., embedding=False)`."""
        ...

    def health(self) -> Health: ...

    def memory_need_mb(self) -> int:
        """Estimated memory the model takes once loaded (0 for remote backends). Blocking I/O
        (a GGUF's metadata is read): call it in a thread. An unreadable model file raises."""
        ...

    def count_prompt_tokens(self, request: GenerationRequest) -> int | None:
        """The request's prompt in this model's own tokens, where its tokenizer is at hand in
        this process (None: routing estimates instead). CPU-bound; callers ask only near the limit."""
        ...
