"""Model manifests: one YAML file per model in `configs/models/` (or inline in the config).

A manifest says what a model is (family, tier role, format, quant, context, capabilities,
revision, checksum), how it runs (backend and its options) and how the store treats it (load
policy, idle unload, concurrency and queue, memory override). Unknown keys are errors, and
`check_manifests` reports every problem at once, each naming the file and the field:
`models/qwen.yaml: load: must be eager when role=primary`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from konsilium.net import is_outside, is_private

ModelId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")]
Sha256 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
EnvName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
TierRole = Literal["primary", "secondary", "lightweight", "micro", "optional_moe"]
BackendName = Literal["llama_cpp", "vllm", "openai"]
ModelFormat = Literal["gguf", "hf", "remote"]
LoadPolicy = Literal["eager", "on_demand"]
Pooling = Literal["mean", "cls", "last"]  # one vector from a text's token vectors
FimMode = Literal["emulate", "refuse"]

BACKEND_OF_FORMAT: dict[str, BackendName] = {"gguf": "llama_cpp", "hf": "vllm", "remote": "openai"}
IMPLEMENTED_BACKENDS = ("llama_cpp", "vllm", "openai")
# `max_concurrency` when a manifest leaves it out. llama.cpp: up to four slots decode together,
# each with the model's whole context, as many as fit in LLAMA_CPP_DEFAULT_KV_TOKENS of KV cache
# in all (4 x 4096, 2 x 8192, 1 from 16384): a long-context model does not quadruple its memory
# unasked. llama.cpp itself takes at most LLAMA_CPP_MAX_SLOTS sequences. A server that batches
# (vLLM, a remote llama-server, a cloud API) is sent 64 at once: one at a time would serialize
# every client behind the slowest stream. vLLM's own default batch (`max_num_seqs`) is 256; 64
# keeps a gateway's queue (and its 429s) in front of a server that would only queue them itself,
# and a Konsilium-managed vLLM is started with `--max-num-seqs` equal to it.
DEFAULT_CONCURRENCY: dict[BackendName, int] = {"llama_cpp": 4, "vllm": 64, "openai": 64}
LLAMA_CPP_DEFAULT_KV_TOKENS = 16_384
LLAMA_CPP_MAX_SLOTS = 256


class Adapter(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """A LoRA adapter on a vLLM base model, addressed as a model of its own (`"model": name`)."""

    name: ModelId
    path: str  # a PEFT adapter directory (relative to the manifest's directory)
    roles: list[str] = msgspec.field(default_factory=list)  # agent roles it serves when none are configured
    tenants: list[str] = msgspec.field(default_factory=list)  # only their keys see it; none: shared by all


class Revision(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """One revision of a model's weights: the file (or vLLM directory), its name and checksum."""

    path: str  # relative to the manifest's directory, or `pkg:PACKAGE/FILE`
    revision: str = ""
    checksum_sha256: Sha256 | None = None


class Manifest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    # what the model is
    id: ModelId
    family: str = ""
    role: TierRole = "secondary"
    format: ModelFormat = "gguf"
    path: str | None = None
    quant: str = ""
    context_length: Annotated[int, msgspec.Meta(ge=1)] | None = None
    capabilities: list[str] = msgspec.field(default_factory=lambda: ["chat"])
    revision: str = ""
    checksum_sha256: Sha256 | None = None
    skip_checksum: bool = False
    reasoning_modes: list[str] = msgspec.field(default_factory=list)
    tokenizer: str | None = None
    embedding: bool = False  # an embedding model: it answers POST /v1/embeddings, and nothing else
    # an embedding model trained for shorter vectors (Matryoshka: nomic-embed-text-v1.5,
    # text-embedding-3): requests may ask for `dimensions`, the first N components re-normalised
    matryoshka: bool = False
    pooling: Pooling | None = None  # a llama_cpp embedding model's; default: the GGUF's own, else mean
    # a `suffix` for a model whose vocabulary has no fill-in-the-middle tokens: written as a chat
    # request to fill the gap (the answer says `x-konsilium-fim: emulated`), or refused with a 400
    fim: FimMode = "emulate"
    description: str = ""
    license: str = ""
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    owned_by: str = "konsilium"
    avg_latency_tokens_per_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    # how the store treats it
    load: LoadPolicy = "on_demand"
    idle_unload_seconds: Annotated[float, msgspec.Meta(gt=0)] | None = None
    memory_mb: Annotated[int, msgspec.Meta(ge=0)] | None = None
    # requests served at once; unset: the backend's default (`concurrency`). A llama.cpp model
    # decodes this many slots together, each with its whole context
    max_concurrency: Annotated[int, msgspec.Meta(ge=1, le=1024)] | None = None
    max_queue: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 64
    load_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 120.0
    # how it runs
    backend: BackendName | None = None
    n_ctx: Annotated[int, msgspec.Meta(ge=128, le=1_048_576)] | None = None
    n_threads: Annotated[int, msgspec.Meta(ge=0, le=512)] = 0  # 0: every core
    # each decode takes n_threads less the cores other processes keep busy (model_store/llama_cpp/threads.py)
    adaptive_threads: bool = True
    n_batch: Annotated[int, msgspec.Meta(ge=8, le=65_536)] = 512
    n_gpu_layers: Annotated[int, msgspec.Meta(ge=-1, le=100_000)] = 0
    logits_all: bool = False  # ignored: accepted for old manifests, logprobs work on every model
    url: str | None = None
    # a cloud target (consent, the privacy filter, `allow_external_api`) whatever its url says: a
    # tunnel or a relay on loopback to a hosted API. Default: any url outside loopback is one;
    # false: a private network's own server (a vLLM pod in the cluster), never a public host
    cloud: bool | None = None
    upstream_model: str | None = None
    api_key_env: EnvName | None = None
    connect_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=600)] = 5.0
    read_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 600.0
    # vllm: managed (`path`: a Hugging Face model directory, a server Konsilium starts) or remote (`url`)
    python: str = "python3"  # the interpreter that has vLLM (its own virtualenv, e.g. .venv-vllm/bin/python)
    vllm_args: list[str] = msgspec.field(default_factory=list)  # e.g. ["--dtype", "bfloat16"]
    vllm_env: dict[str, str] = msgspec.field(default_factory=dict)  # e.g. {"VLLM_CPU_KVCACHE_SPACE": "1"}
    max_loras: Annotated[int, msgspec.Meta(ge=1, le=256)] = 4
    max_lora_rank: Annotated[int, msgspec.Meta(ge=1, le=512)] = 16
    gpu_memory_utilization: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.9
    stop_grace_s: Annotated[float, msgspec.Meta(gt=0, le=600)] = 10.0
    adapters: list[Adapter] = msgspec.field(default_factory=list)
    # staged updates (model_store/staging.py): the revision `konsilium models stage` tries next,
    # the one `rollback` returns to (written by `promote`), and the prompts both are checked on
    candidate: Revision | None = None
    previous: Revision | None = None
    control_prompts: str | None = None  # a YAML file of prompts with expectations (model_store/control.py)

    @property
    def backend_name(self) -> BackendName:
        return self.backend or BACKEND_OF_FORMAT[self.format]

    @property
    def is_cloud(self) -> bool:
        """Outside this machine: any backend whose `url` is not loopback (whatever relays to it),
        or one the manifest says is (`cloud: true`) — except one on a private network that the
        manifest declares `cloud: false` (a vLLM pod in the same cluster; rule_problems refuses it
        for a public host)."""
        if self.cloud is not None:
            return self.cloud
        return self.url is not None and is_outside(self.url)

    @property
    def concurrency(self) -> int:
        """How many requests run at once; the rest wait in the model's FIFO queue."""
        if self.max_concurrency is not None:
            return self.max_concurrency
        default = DEFAULT_CONCURRENCY[self.backend_name]
        if self.backend_name == "llama_cpp":
            return max(1, min(default, LLAMA_CPP_DEFAULT_KV_TOKENS // self.context_window))
        return default

    @property
    def context_window(self) -> int:
        """The context a llama.cpp worker is started with."""
        return self.n_ctx or min(self.context_length or 4096, 32_768)


def decode_manifest(raw: object) -> Manifest:
    return msgspec.convert(raw, Manifest, strict=True)


def rule_problems(manifest: Manifest) -> list[tuple[str, str]]:
    """Cross-field rules of one manifest, as (field, problem) pairs."""
    m = manifest
    problems: list[tuple[str, str]] = []
    if m.role == "primary" and m.load == "on_demand":
        problems.append(("load", "must be eager when role=primary"))
    if m.idle_unload_seconds is not None and m.load != "on_demand":
        problems.append(("idle_unload_seconds", "requires load: on_demand"))
    if m.reasoning_modes and m.role != "optional_moe" and not {"plan", "judge"} & set(m.capabilities):
        problems.append(("reasoning_modes", "only for role=optional_moe or capabilities with plan or judge"))
    if m.backend_name not in IMPLEMENTED_BACKENDS:
        problems.append(("backend", f"{m.backend_name} is not available in this version"))
    if m.backend_name == "llama_cpp" and m.path is None:
        problems.append(("path", "is required for a llama_cpp model"))
    if m.backend_name == "llama_cpp" and m.concurrency > LLAMA_CPP_MAX_SLOTS:
        problems.append(("max_concurrency", f"a llama.cpp worker decodes at most {LLAMA_CPP_MAX_SLOTS} slots"))
    if m.cloud is not None and m.url is None:
        problems.append(("cloud", "only a model with a url can be a cloud target"))
    if m.cloud is False and m.url is not None and is_outside(m.url) and not is_private(m.url):
        problems.append(("cloud", "only a loopback or private-network url can be declared cloud: false"))
    if m.backend_name == "openai" and m.url is None:
        problems.append(("url", "is required for an openai model"))
    if m.backend_name == "vllm" and (m.path is None) == (m.url is None):
        problems.append(("path", "a vllm model takes either path (a server Konsilium starts) or url (a running one)"))
    problems += embedding_problems(m)
    if m.adapters and m.backend_name != "vllm":
        problems.append(("adapters", "LoRA adapters are served by the vllm backend only"))
    names = [a.name for a in m.adapters]
    if len(set(names)) != len(names) or m.id in names:
        problems.append(("adapters", "adapter names must be unique and differ from the model id"))
    return problems


def embedding_problems(m: Manifest) -> list[tuple[str, str]]:
    problems = []
    for field in ("matryoshka", "pooling"):
        if getattr(m, field) and not m.embedding:
            problems.append((field, "only for an embedding model (embedding: true)"))
    if m.pooling is not None and m.backend_name != "llama_cpp":
        problems.append(("pooling", "only for a llama_cpp model (a server pools its own vectors)"))
    if m.embedding and m.adapters:
        problems.append(("adapters", "LoRA adapters serve generation, not embeddings"))
    return problems


def duplicate_problems(sources: Sequence[tuple[str, Manifest]]) -> Iterable[str]:
    """Model ids and adapter names share one namespace: each addresses a model."""
    first: dict[str, str] = {}
    for source, manifest in sources:
        for name in (manifest.id, *(a.name for a in manifest.adapters)):
            if name in first and first[name] != source:
                yield f"{source}: id: duplicate model id {name!r} (first in {first[name]})"
            first.setdefault(name, source)


def manifest_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
