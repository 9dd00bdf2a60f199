"""LoRA adapters on one vLLM server: loaded on first use, at most `max_loras` resident.

vLLM loads an adapter at run time through `POST /v1/load_lora_adapter` (with
`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`) and drops it with `/v1/unload_lora_adapter`. Here:
- concurrent first requests for one adapter share one load (one task per name);
- loads and unloads of one server go one at a time (a lock), so the count never overshoots;
- when `max_loras` are resident, the least recently used adapter with no request in flight is
  unloaded first (`choose_victim`, pure); if every one is in use the request gets a 429;
- a path that does not exist is a 404, an adapter the server refuses (rank above
  `max_lora_rank`, another architecture) a 400 — never a 500.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
from opentelemetry import trace

from konsilium.errors import (
    AdapterNotFoundError,
    AdapterRefusedError,
    BackendError,
    GatewayError,
    ModelNotFoundError,
    RateLimitError,
)
from konsilium.manifest import Adapter
from model_store.openai.errors import parse_error_body, translate_transport_error

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("konsilium.model_store")


def choose_victim(resident: Mapping[str, float], in_use: Mapping[str, int]) -> str | None:
    """The least recently used resident adapter that no request is using; None if all are."""
    idle = [(last_used, name) for name, last_used in resident.items() if not in_use.get(name)]
    return min(idle)[1] if idle else None


class AdapterSlots:
    def __init__(
        self, adapters: list[Adapter], limit: int, *, local: bool, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._adapters = {a.name: a for a in adapters}
        self._local = local  # the server reads our file system: a missing path is caught before any unload
        self._limit = limit
        self._clock = clock
        self.resident: dict[str, float] = {}  # name -> last used
        self.in_use: Counter[str] = Counter()
        self.loads: Counter[str] = Counter()  # load calls made, per adapter
        self._loading: dict[str, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()
        self._http: aiohttp.ClientSession | None = None
        self._url = ""

    def attach(self, url: str, http: aiohttp.ClientSession) -> None:
        """A (re)started server: nothing is resident on it yet."""
        self._url, self._http = url, http
        self.resident.clear()
        self._loading.clear()

    def detach(self) -> None:
        self._http = None
        self.resident.clear()

    @asynccontextmanager
    async def using(self, name: str) -> AsyncIterator[None]:
        """Hold `name` resident (loading it if needed) while the body runs."""
        self.in_use[name] += 1
        try:
            await self._ensure(name)
            yield
        finally:
            self.in_use[name] -= 1
            if name in self.resident:
                self.resident[name] = self._clock()

    async def _ensure(self, name: str) -> None:
        if name in self.resident:
            self.resident[name] = self._clock()
            return
        task = self._loading.get(name)
        if task is None or task.done():
            task = asyncio.create_task(self._load(name), name=f"lora-load-{name}")
            self._loading[name] = task
            task.add_done_callback(lambda done: _forget(self._loading, name, done))
        await asyncio.shield(task)

    async def _load(self, name: str) -> None:
        with _tracer.start_as_current_span("adapter load", attributes={"gen_ai.request.model": name}):
            await self._unload_and_load(name)

    async def _unload_and_load(self, name: str) -> None:
        adapter = self._adapters[name]
        if self._local and not (Path(adapter.path) / "adapter_config.json").is_file():
            raise AdapterNotFoundError(
                f"LoRA adapter {name!r}: no adapter at {adapter.path} (no adapter_config.json)", param="model"
            )
        async with self._lock:
            while len(self.resident) >= self._limit:
                victim = choose_victim(self.resident, self.in_use)
                if victim is None:
                    raise RateLimitError(
                        f"all {self._limit} LoRA slots (max_loras) are serving requests; {name!r} must wait",
                        retry_after=1,
                    )
                del self.resident[victim]
                log.info("unloading LoRA adapter %s (least recently used) for %s", victim, name)
                try:
                    await self._post("/v1/unload_lora_adapter", {"lora_name": victim}, victim)
                except GatewayError as exc:  # gone already (404) or the server is failing: the load says which
                    log.warning("unloading LoRA adapter %s: %s", victim, exc.message)
            self.loads[name] += 1
            await self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": adapter.path}, name)
            self.resident[name] = self._clock()
            log.info("loaded LoRA adapter %s from %s", name, adapter.path)

    async def _post(self, path: str, body: dict[str, str], name: str) -> None:
        if self._http is None:
            raise ModelNotFoundError(f"the server for adapter {name!r} is not running", param="model")
        try:
            async with self._http.post(self._url + path, json=body) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise translate_transport_error(exc, self._url) from exc
        if status >= 400:
            message = parse_error_body(raw).message
            if path.endswith("/load_lora_adapter") and status == 400 and "already been loaded" in message:
                return  # another gateway in front of the same server (a replica) loaded it: resident
            raise _refusal(name, self._adapters[name].path, status, message, path)


def _refusal(name: str, where: str, status: int, message: str, path: str) -> GatewayError:
    if path.endswith("/unload_lora_adapter"):
        return BackendError(f"vLLM could not unload adapter {name!r}: {message}")
    if status == 404:
        return AdapterNotFoundError(f"LoRA adapter {name!r}: no adapter at {where} ({message})", param="model")
    return AdapterRefusedError(
        f"LoRA adapter {name!r} at {where} does not fit the base model: {message}", param="model"
    )


def _forget(loading: dict[str, asyncio.Task[None]], name: str, done: asyncio.Task[None]) -> None:
    if loading.get(name) is done:
        del loading[name]
    if not done.cancelled():
        done.exception()  # retrieved: every waiter may have left
