"""Backends by name: the one place that knows which class serves a manifest's `backend`.

Whether a model leaves this machine is not a backend's to say: any manifest with a `url` outside
loopback is a cloud model (`Manifest.is_cloud`), refused unless `allow_external_api`, whichever
backend relays to it — so a new remote backend cannot bypass the offline default. Only a private
network's backend (a vLLM pod in the gateway's cluster) may be declared `cloud: false`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from konsilium.manifest import BackendName, Manifest
from model_store.backend import Backend
from model_store.llama_cpp.backend import LlamaCppBackend
from model_store.openai.backend import OpenAIBackend
from model_store.vllm.backend import VllmBackend

BACKENDS: Mapping[BackendName, Callable[[Manifest], Backend]] = {
    "llama_cpp": LlamaCppBackend,
    "vllm": VllmBackend,
    "openai": OpenAIBackend,
}


def build_backend(manifest: Manifest) -> Backend:
    return BACKENDS[manifest.backend_name](manifest)
