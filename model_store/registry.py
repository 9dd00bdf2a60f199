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


# Each backend's module is imported when a manifest names it: a proxy-only gateway never loads
# llama.cpp's bindings, a llama.cpp-only one never loads aiohttp (0.12 s of start-up each).
def _llama_cpp(manifest: Manifest) -> Backend:
    from model_store.llama_cpp.backend import LlamaCppBackend

    return LlamaCppBackend(manifest)


def _vllm(manifest: Manifest) -> Backend:
    from model_store.vllm.backend import VllmBackend

    return VllmBackend(manifest)


def _openai(manifest: Manifest) -> Backend:
    from model_store.openai.backend import OpenAIBackend

    return OpenAIBackend(manifest)


BACKENDS: Mapping[BackendName, Callable[[Manifest], Backend]] = {
    "llama_cpp": _llama_cpp,
    "vllm": _vllm,
    "openai": _openai,
}


def build_backend(manifest: Manifest) -> Backend:
    return BACKENDS[manifest.backend_name](manifest)
