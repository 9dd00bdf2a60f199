"""The registry: every configured model and its backend, built once from the config.

It starts `eager` models at start-up and stops every backend at shutdown. The model-store issue
grows this into the VRAM-aware lifecycle; the interface the gateway uses stays `get` / `models`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from konsilium.config import Config, LlamaCppModel, ModelConfig
from konsilium.errors import ModelNotFoundError
from model_store.backend import Backend
from model_store.llama_cpp.backend import LlamaCppBackend
from model_store.openai.backend import OpenAIBackend

log = logging.getLogger(__name__)


def build_backend(model: ModelConfig) -> Backend:
    if isinstance(model, LlamaCppModel):
        return LlamaCppBackend(model)
    return OpenAIBackend(model)


class ModelRegistry:
    def __init__(self, config: Config, backends: Mapping[str, Backend] | None = None) -> None:
        self._eager = [m.id for m in config.models if m.load == "eager"]
        self._backends: dict[str, Backend] = (
            dict(backends) if backends is not None else {m.id: build_backend(m) for m in config.models}
        )

    def get(self, model_id: str) -> Backend:
        backend = self._backends.get(model_id)
        if backend is None:
            raise ModelNotFoundError(f"The model {model_id!r} does not exist.", param="model")
        return backend

    def models(self) -> Mapping[str, Backend]:
        return self._backends

    async def start(self) -> None:
        """Load eager models; one that fails is logged and retried on its first request."""
        results = await asyncio.gather(
            *(self._backends[m].load() for m in self._eager if m in self._backends), return_exceptions=True
        )
        for model_id, result in zip(self._eager, results, strict=False):
            if isinstance(result, BaseException):
                log.error("model %s failed to load at start-up: %s", model_id, result)

    async def close(self) -> None:
        await asyncio.gather(*(b.unload() for b in self._backends.values()), return_exceptions=True)
