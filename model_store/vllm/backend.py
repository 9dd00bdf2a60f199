"""`VllmBackend`: one base model on a vLLM server, and its LoRA adapters addressed as models.

Managed (`path`): `load()` starts `PYTHON -m vllm.entrypoints.openai.api_server` with LoRA on,
`unload()` stops it; a server that dies is noticed (`health()` says unloaded, and the store
loads it again on the next request). Remote (`url`): a server someone else runs; load and unload
only open and close the connection pool. Either way generation is relayed by the `openai`
backend — chunk by chunk, vLLM's errors translated — with the adapter's name as the model.

Memory: vLLM takes its memory at start-up, LoRA slots included (`max_loras` x `max_lora_rank`
buffers), so the base's need counts the adapters too: weights + KV cache + `max_loras` times the
largest declared adapter + the runtime. The store replaces the estimate with what the process
tree holds once loaded (NVML on a GPU, else RSS).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from pathlib import Path

import aiohttp
import msgspec

from konsilium.errors import BackendUnavailableError, GatewayError
from konsilium.manifest import Manifest
from model_store.backend import Health, State, fixed_info
from model_store.openai.backend import OpenAIBackend
from model_store.types import EmbeddingRequest, Embeddings, Event, GenerationRequest
from model_store.vllm.adapters import AdapterSlots
from model_store.vllm.process import VllmProcess

log = logging.getLogger(__name__)

MIB = 1024 * 1024
RUNTIME_MB = 1024  # the interpreter, torch and vLLM themselves
DEFAULT_KV_GB = 4.0  # vLLM's CPU KV cache when VLLM_CPU_KVCACHE_SPACE is not set
WEIGHT_FILES = ("*.safetensors", "*.bin")


class VllmBackend:
    def __init__(self, manifest: Manifest) -> None:
        self._config = manifest
        self._process: VllmProcess | None = None
        self._relay: OpenAIBackend | None = None
        self._http: aiohttp.ClientSession | None = None
        self._watch: asyncio.Task[None] | None = None
        self._state: State = "unloaded"
        self._detail = ""
        self._load_lock = asyncio.Lock()
        self.info = fixed_info(manifest, manifest.context_window)
        self.adapters = AdapterSlots(manifest.adapters, manifest.max_loras, local=manifest.path is not None)

    @property
    def managed(self) -> bool:
        return self._config.path is not None

    async def load(self) -> None:
        async with self._load_lock:
            if self._relay is not None and (not self.managed or (self._process and self._process.alive)):
                return
            await self._close()  # a server that died: reap it and start another
            self._state = "loading"
            try:
                url = await self._start() if self.managed else (self._config.url or "").rstrip("/").removesuffix("/v1")
            except GatewayError as exc:
                self._state, self._detail = "failed", exc.message
                raise
            relay = msgspec.structs.replace(
                self._config,
                backend="openai",
                url=f"{url}/v1",
                upstream_model=self._config.upstream_model or self._config.id,
            )
            self._relay = OpenAIBackend(relay)
            await self._relay.load()
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._config.load_timeout_s))
            self.adapters.attach(url, self._http)
            self._state, self._detail = "ready", ""

    async def _start(self) -> str:
        self._process = await VllmProcess.start(self._config.id, self._argv(), self._env(), self._config.load_timeout_s)
        self._watch = asyncio.create_task(self._notice_exit(self._process), name=f"vllm-watch-{self._config.id}")
        return self._process.url

    async def unload(self) -> None:
        async with self._load_lock:
            await self._close()
            self._state = "unloaded"

    async def _close(self) -> None:
        self.adapters.detach()
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._relay is not None:
            await self._relay.unload()
            self._relay = None
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._process is not None:
            await self._process.stop(self._config.stop_grace_s)
            self._process = None

    async def _notice_exit(self, process: VllmProcess) -> None:
        code = await process.wait()
        log.error("vLLM for %s exited (%d); the next request starts it again", self._config.id, code)
        self.adapters.detach()

    async def stream(self, request: GenerationRequest, adapter: str | None = None) -> AsyncGenerator[Event, None]:
        relay = self._relay  # the store loads it (through its memory plan) before any request
        if relay is None:
            raise BackendUnavailableError(f"model {self._config.id!r} is not running")
        if adapter is None:
            async for event in relay.stream(request):
                yield event
            return
        async with self.adapters.using(adapter):
            async for event in relay.stream(request, adapter):
                yield event

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        """A pooling model's vectors (the store asks only a manifest with `embedding: true`,
        started with `--runner pooling`), relayed from its `/v1/embeddings`."""
        relay = self._relay
        if relay is None:
            raise BackendUnavailableError(f"model {self._config.id!r} is not running")
        return await relay.embed(request)

    def health(self) -> Health:
        crashed = self._state == "ready" and self.managed and not (self._process and self._process.alive)
        return Health(
            state="unloaded" if crashed else self._state,
            ready=self._state == "ready" and not crashed,
            detail="vLLM exited; it starts again on the next request" if crashed else self._detail,
            pid=self._process.pid if self._process and self._process.alive else None,
            adapters=tuple(self.adapters.resident),
        )

    def count_prompt_tokens(self, request: GenerationRequest) -> int | None:
        return None  # vLLM counts (and refuses a prompt too long with a 400); routing estimates

    def memory_need_mb(self) -> int:
        if not self.managed:
            return 0
        weights = sum(f.stat().st_size for p in WEIGHT_FILES for f in Path(self._config.path or "").glob(p))
        adapter_sizes = [_dir_size(Path(a.path)) for a in self._config.adapters]
        loras = self._config.max_loras * max(adapter_sizes, default=0)
        kv_gb = float(self._config.vllm_env.get("VLLM_CPU_KVCACHE_SPACE") or DEFAULT_KV_GB)
        return (weights + loras) // MIB + int(kv_gb * 1024) + RUNTIME_MB

    def _argv(self) -> list[str]:
        c = self._config
        return [
            c.python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", c.path or "", "--served-model-name", c.id,
            "--max-model-len", str(c.context_window),
            "--gpu-memory-utilization", str(c.gpu_memory_utilization),
            *(["--enable-lora", "--max-loras", str(c.max_loras), "--max-lora-rank", str(c.max_lora_rank)]
              if c.adapters else []),
            *(["--runner", "pooling"] if c.embedding else []),  # a generative model's hidden states pooled
            *self._batch_args(),
            *c.vllm_args,
        ]  # fmt: skip

    def _batch_args(self) -> list[str]:
        """vLLM batches as many as the gateway lets through at once (unless vllm_args say otherwise)."""
        if any(arg.startswith("--max-num-seqs") for arg in self._config.vllm_args):
            return []
        return ["--max-num-seqs", str(self._config.concurrency)]

    def _env(self) -> dict[str, str]:
        env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        return {**env, **self._config.vllm_env}


def _dir_size(path: Path) -> int:
    try:
        return sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    except OSError:
        return 0  # a missing adapter is reported when it is asked for
