from __future__ import annotations

import json
from pathlib import Path

import pytest

from konsilium.config import (
    DEFAULT_MODEL_ID,
    LlamaCppModel,
    OpenAIModel,
    config_json_schema,
    default_config,
    load_config,
)
from konsilium.errors import ConfigError
from tests.servers import ROOT, SMOLLM2

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "konsilium.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_default_config_serves_the_packaged_smollm2() -> None:
    config = default_config()
    assert (config.host, config.port) == ("127.0.0.1", 8400)
    [model] = config.models
    assert isinstance(model, LlamaCppModel)
    assert model.id == DEFAULT_MODEL_ID
    assert Path(model.path) == SMOLLM2
    assert model.load == "eager"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path: Path) -> None:
    assert load_config(path).models


def test_shipped_default_file_equals_the_builtin_default() -> None:
    assert load_config(ROOT / "configs" / "konsilium.yaml") == default_config()


def test_checked_in_schema_is_generated_from_the_code() -> None:
    checked_in = json.loads((ROOT / "configs" / "konsilium.schema.json").read_text(encoding="utf-8"))
    assert checked_in == config_json_schema()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("port: 8400\nmodel: x\n", "konsilium.yaml: Object contains unknown field `model`"),
        (
            "models:\n  - {id: a, backend: llama_cpp, path: x.gguf, n_ctx: 10}\n",
            "konsilium.yaml: models[0].n_ctx: Expected `int` >= 128",
        ),
        ("models:\n  - {id: a, backend: onnx, path: x}\n", "models[0].backend: Invalid value 'onnx'"),
        ("models:\n  - {id: a, backend: llama_cpp, path: missing.gguf}\n", "models[0].path: no such file"),
        (
            "models:\n  - {id: a, backend: openai, url: 'http://127.0.0.1:1/v1'}\n"
            "  - {id: a, backend: openai, url: 'http://127.0.0.1:2/v1'}\n",
            "models[1].id: duplicate model id 'a'",
        ),
        (
            "models:\n  - {id: a, backend: openai, url: 'https://api.openai.com/v1'}\n",
            "models[0].url: api.openai.com is outside loopback; set allow_external_api: true",
        ),
        (
            "models:\n  - {id: a, backend: openai, url: 'ftp://127.0.0.1/v1'}\n",
            "models[0].url: expected an http(s) URL",
        ),
        ("models:\n  - {id: a, backend: openai, url: 'http://x/v1', api_key: sk-1}\n", "unknown field `api_key`"),
    ],
)
def test_config_errors_name_the_file_and_the_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert message in str(caught.value)


def test_external_api_is_allowed_only_when_switched_on(tmp_path: Path) -> None:
    text = "allow_external_api: true\nmodels:\n  - {id: d, backend: openai, url: 'https://api.openai.com/v1'}\n"
    [model] = load_config(write(tmp_path, text)).models
    assert isinstance(model, OpenAIModel)
    assert model.url == "https://api.openai.com/v1"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "localhost", "[::1]"])
def test_loopback_upstreams_need_no_permission(tmp_path: Path, host: str) -> None:
    text = f"models:\n  - {{id: d, backend: openai, url: 'http://{host}:8080/v1'}}\n"
    assert load_config(write(tmp_path, text)).models[0].id == "d"


def test_relative_model_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    [model] = load_config(write(tmp_path, "models:\n  - {id: a, backend: llama_cpp, path: m.gguf}\n")).models
    assert isinstance(model, LlamaCppModel)
    assert model.path == str(tmp_path / "m.gguf")
