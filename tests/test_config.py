from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from konsilium.config import (
    DEFAULT_EMBEDDING_MODEL_ID,
    DEFAULT_MODEL_ID,
    config_json_schema,
    default_config,
    load_config,
    manifest_json_schema,
)
from konsilium.errors import ConfigError
from tests.servers import ROOT, SMOLLM2

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "konsilium.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


def test_default_config_serves_the_packaged_smollm2() -> None:
    config = default_config()
    assert (config.host, config.port) == ("127.0.0.1", 8400)
    model, embedder = config.models
    assert (model.id, model.backend_name, model.load, model.role) == (DEFAULT_MODEL_ID, "llama_cpp", "eager", "primary")
    assert model.path is not None
    assert Path(model.path) == SMOLLM2
    # the same file as an embedding model, loaded by the first embeddings request only
    assert (embedder.id, embedder.path, embedder.embedding, embedder.load) == (
        DEFAULT_EMBEDDING_MODEL_ID, model.path, True, "on_demand"
    )  # fmt: skip
    assert (model.embedding, embedder.matryoshka, embedder.pooling) == (False, False, None)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path: Path) -> None:
    assert load_config(path).models


def test_shipped_default_file_serves_the_builtin_default() -> None:
    assert load_config(ROOT / "configs" / "konsilium.yaml").models == default_config().models


@pytest.mark.parametrize(
    ("name", "generate"),
    [("konsilium.schema.json", config_json_schema), ("manifest.schema.json", manifest_json_schema)],
)
def test_checked_in_schemas_are_generated_from_the_code(name: str, generate: Callable[[], object]) -> None:
    checked_in = json.loads((ROOT / "configs" / name).read_text(encoding="utf-8"))
    assert checked_in == generate()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("port: 8400\nmodel: x\n", "konsilium.yaml: Object contains unknown field `model`"),
        ("models:\n  - {id: a, path: x.gguf, n_ctx: 10}\n", "konsilium.yaml: models[0].n_ctx: Expected `int` >= 128"),
        ("models:\n  - {id: a, backend: onnx, path: x}\n", "models[0].backend: Invalid enum value 'onnx'"),
        ("models:\n  - {id: a, path: missing.gguf}\n", "konsilium.yaml: models[0]: path: no such file"),
        (
            "models:\n  - {id: a, format: remote, url: 'http://127.0.0.1:1/v1'}\n"
            "  - {id: a, format: remote, url: 'http://127.0.0.1:2/v1'}\n",
            "konsilium.yaml: models[1]: id: duplicate model id 'a'",
        ),
        (
            "models:\n  - {id: a, format: remote, url: 'https://api.openai.com/v1'}\n",
            "models[0]: url: api.openai.com is outside loopback; set allow_external_api: true",
        ),
        (
            "models:\n  - {id: a, format: remote, url: 'ftp://127.0.0.1/v1'}\n",
            "models[0]: url: expected an http(s) URL",
        ),
        ("models:\n  - {id: a, format: remote, url: 'http://x/v1', api_key: sk-1}\n", "unknown field `api_key`"),
        ("models:\n  - {id: a, format: remote}\n", "models[0]: url: is required for an openai model"),
    ],
)
def test_config_errors_name_the_file_and_the_field(tmp_path: Path, text: str, message: str) -> None:
    found = problems(write(tmp_path, text))
    assert any(message in problem for problem in found), found


def test_external_api_is_allowed_only_when_switched_on(tmp_path: Path) -> None:
    text = "allow_external_api: true\nmodels:\n  - {id: d, format: remote, url: 'https://api.openai.com/v1'}\n"
    [model] = load_config(write(tmp_path, text)).models
    assert (model.url, model.backend_name) == ("https://api.openai.com/v1", "openai")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "localhost", "[::1]"])
def test_loopback_upstreams_need_no_permission(tmp_path: Path, host: str) -> None:
    text = f"models:\n  - {{id: d, format: remote, url: 'http://{host}:8080/v1'}}\n"
    assert load_config(write(tmp_path, text)).models[0].id == "d"


@pytest.mark.parametrize(
    "host", ["konsilium-vllm", "vllm.ml.svc", "vllm.ml.svc.cluster.local", "gpu-box.internal", "10.0.3.7", "[fd00::7]"]
)
def test_a_private_network_server_can_be_declared_no_cloud_target(tmp_path: Path, host: str) -> None:
    """A vLLM pod beside the gateway: no allow_external_api, no consent, never a cloud target."""
    text = f"models:\n  - {{id: v, format: remote, cloud: false, url: 'http://{host}:8000/v1'}}\n"
    [model] = load_config(write(tmp_path, text)).models
    assert (model.id, model.is_cloud) == ("v", False)


@pytest.mark.parametrize("host", ["api.openai.com", "8.8.8.8", "vllm.example.com"])
def test_a_public_host_is_a_cloud_target_whatever_the_manifest_says(tmp_path: Path, host: str) -> None:
    text = f"allow_external_api: true\nmodels:\n  - {{id: v, format: remote, cloud: false, url: 'http://{host}/v1'}}\n"
    assert any("only a loopback or private-network url can be declared cloud: false" in p for p in problems(
        write(tmp_path, text)
    ))  # fmt: skip
    without = "models:\n  - {id: v, format: remote, url: 'http://konsilium-vllm:8000/v1'}\n"
    assert any("outside loopback" in p for p in problems(write(tmp_path, without)))


def test_the_redis_url_can_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "redis_url_env: KONSILIUM_REDIS_URL\n")
    monkeypatch.delenv("KONSILIUM_REDIS_URL", raising=False)
    assert problems(path) == [f"{path}: redis_url_env: environment variable KONSILIUM_REDIS_URL is not set"]
    monkeypatch.setenv("KONSILIUM_REDIS_URL", "redis://:s3cret@redis:6379/0")
    assert load_config(path).redis_url == "redis://:s3cret@redis:6379/0"
    both = write(tmp_path, "redis_url: redis://a\nredis_url_env: KONSILIUM_REDIS_URL\n")
    assert problems(both) == [f"{both}: redis_url_env: give redis_url or redis_url_env, not both"]


def test_relative_model_paths_are_relative_to_the_file_that_names_them(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.gguf").write_bytes(b"GGUF")
    write(tmp_path, "id: a\npath: m.gguf\n", "models/a.yaml")
    [model] = load_config(write(tmp_path, "models_dir: models\n")).models
    assert model.path == str(tmp_path / "models" / "m.gguf")


def test_manifest_rules_are_all_reported_at_once(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.gguf").write_bytes(b"GGUF")
    write(tmp_path, "id: qwen\nrole: primary\npath: m.gguf\n", "models/qwen.yaml")
    write(tmp_path, "id: small\npath: m.gguf\nload: eager\nidle_unload_seconds: 60\n", "models/small.yaml")
    write(tmp_path, "id: tiny\npath: m.gguf\nreasoning_modes: [deep]\n", "models/tiny.yaml")
    write(tmp_path, "id: qwen\npath: m.gguf\nmax_concurrency: 4\n", "models/twin.yaml")
    write(tmp_path, "id: bad\npath: m.gguf\ncolour: blue\n", "models/typo.yaml")
    write(tmp_path, "id: lora\nformat: hf\npath: m.gguf\n", "models/vllm.yaml")
    assert sorted(problems(write(tmp_path, "models_dir: models\n"))) == [
        "models/qwen.yaml: load: must be eager when role=primary",
        "models/small.yaml: idle_unload_seconds: requires load: on_demand",
        "models/tiny.yaml: reasoning_modes: only for role=optional_moe or capabilities with plan or judge",
        "models/twin.yaml: id: duplicate model id 'qwen' (first in models/qwen.yaml)",
        "models/typo.yaml: Object contains unknown field `colour`",
        f"models/vllm.yaml: path: not a Hugging Face model directory (no config.json): {tmp_path}/models/m.gguf",
    ]


def test_reasoning_modes_are_fine_for_planners_and_judges(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    text = "models:\n  - {id: j, path: m.gguf, capabilities: [chat, judge], reasoning_modes: [deep]}\n"
    assert load_config(write(tmp_path, text)).models[0].reasoning_modes == ["deep"]


def test_vllm_manifest_rules(tmp_path: Path) -> None:
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}", encoding="utf-8")
    path = write(
        tmp_path,
        f"""
models:
  - {{id: both, format: hf, path: hf, url: "http://127.0.0.1:9/v1"}}
  - {{id: neither, format: hf}}
  - {{id: twice, format: hf, path: hf, adapters: [{{name: a, path: x}}, {{name: a, path: y}}]}}
  - {{id: gguf-lora, path: {SMOLLM2}, adapters: [{{name: b, path: x}}]}}
  - {{id: not-hf, format: hf, path: {SMOLLM2}}}
  - {{id: clash, format: hf, path: hf, adapters: [{{name: both, path: x}}]}}
routing:
  roles:
    qa: {{targets: [{{model: clash, adapter: nope}}]}}
""",
    )
    found = problems(path)
    assert (
        f"{path}: models[0]: path: a vllm model takes either path (a server Konsilium starts) or url (a running one)"
        in found
    )
    assert (
        f"{path}: models[1]: path: a vllm model takes either path (a server Konsilium starts) or url (a running one)"
        in found
    )
    assert f"{path}: models[2]: adapters: adapter names must be unique and differ from the model id" in found
    assert f"{path}: models[3]: adapters: LoRA adapters are served by the vllm backend only" in found
    assert any(
        p.startswith(f"{path}: models[4]: path: not a Hugging Face model directory (no config.json)") for p in found
    )
    assert f"{path}: models[5]: id: duplicate model id 'both' (first in {path}: models[0])" in found
    assert f"{path}: routing.roles.qa.targets[0].adapter: 'clash' declares no adapter 'nope'" in found


def test_adapters_are_addressable_as_models_with_paths_relative_to_their_manifest(tmp_path: Path) -> None:
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}", encoding="utf-8")
    path = write(
        tmp_path,
        """
models:
  - {id: base, format: hf, path: hf, adapters: [{name: lora-qa, path: adapters/qa, roles: [qa]}]}
routing:
  roles:
    qa: {targets: [{model: base, adapter: lora-qa}, {model: base}]}
""",
    )
    config = load_config(path)
    targets = config.addressable()
    assert list(targets) == ["base", "lora-qa"]
    base, adapter = targets["lora-qa"]
    assert base.id == "base"
    assert adapter is not None
    assert adapter.path == str(tmp_path / "adapters" / "qa")
    assert [t.target for t in config.routing.roles["qa"].targets] == ["lora-qa", "base"]


def test_embedding_manifest_rules(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
models:
  - {{id: chat, path: {SMOLLM2}, matryoshka: true, pooling: cls}}
  - {{id: relayed, format: remote, url: "http://127.0.0.1:9/v1", embedding: true, pooling: mean}}
  - {{id: vectors, path: {SMOLLM2}, embedding: true, matryoshka: true, pooling: last}}
routing:
  roles:
    dev: {{targets: [{{model: chat}}, {{model: vectors}}]}}
""",
    )
    assert sorted(problems(path)) == [
        f"{path}: models[0]: matryoshka: only for an embedding model (embedding: true)",
        f"{path}: models[0]: pooling: only for an embedding model (embedding: true)",
        f"{path}: models[1]: pooling: only for a llama_cpp model (a server pools its own vectors)",
        f"{path}: routing.roles.dev.targets[1].model: 'vectors' is an embedding model (it answers /v1/embeddings)",
    ]
