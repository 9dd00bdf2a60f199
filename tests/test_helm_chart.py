"""The Helm chart (helm/konsilium), rendered offline by Helm itself (`helm-python-sdk`: Helm's Go
SDK as a shared library) with the values files in helm/konsilium/ci/, linted, and every object
validated against the Kubernetes schemas (`kubernetes-validate`, strict: unknown fields fail).
What matters is asserted: the rendered ConfigMap loads with Konsilium's own config loader, the
probes point at endpoints the gateway serves, secrets are referenced and never inlined, and more
than one replica is refused without Redis."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from entrypoints.app import create_app
from konsilium.config import load_config
from konsilium.errors import ConfigError
from tests.servers import ROOT

CHART = ROOT / "helm" / "konsilium"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
KUBERNETES = "1.33.0"
CRDS = {"ServiceMonitor"}  # Prometheus Operator's: not in the Kubernetes schemas, checked by hand below


@pytest.fixture(scope="module")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART) as loaded:
        yield loaded


def values_of(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    return loaded if isinstance(loaded, dict) else {}


def render(chart: helm_python.Chart, values: dict[str, Any]) -> list[dict[str, Any]]:
    files = chart.render(values, name="konsilium", namespace="ai", is_install=True)
    return [
        doc for name, text in sorted(files.items()) if name.endswith(".yaml") for doc in yaml.safe_load_all(text) if doc
    ]


def one(objects: list[dict[str, Any]], kind: str, name: str = "konsilium") -> dict[str, Any]:
    [found] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def gateway_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return container


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.stem)
def test_every_values_file_renders_lints_and_validates(chart: helm_python.Chart, values_file: Path) -> None:
    objects = render(chart, values_of(values_file))
    lint = helm_python.lint(CHART, values_of(values_file), strict=True)
    assert lint["errors"] == []
    assert [m for m in lint["messages"] if m["severity"] >= 2] == []
    for obj in objects:
        if obj["kind"] in CRDS:
            continue
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)
    assert {o["kind"] for o in objects} >= {"ConfigMap", "Deployment", "Service"}


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.stem)
def test_the_rendered_config_loads_with_konsiliums_own_loader(
    chart: helm_python.Chart, values_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ConfigMap's files laid out as the pod mounts them (the volume's items), the models
    volume stood in by a directory with the files the manifests name, the Secrets' variables set."""
    objects = render(chart, values_of(values_file))
    data = one(objects, "ConfigMap")["data"]
    volumes = one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]
    [config_volume] = [v for v in volumes if v["name"] == "config"]
    models = tmp_path / "models-volume"
    for item in config_volume["configMap"]["items"]:
        target = tmp_path / "etc" / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        text = data[item["key"]].replace("/models/", f"{models}/")
        target.write_text(text, encoding="utf-8")
        for path in re.findall(rf"path: ({re.escape(str(models))}/\S+)", text):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).touch()
    for env in gateway_container(objects).get("env", []):
        monkeypatch.setenv(env["name"], "redis://:pw@redis:6379/0" if "REDIS" in env["name"] else "k" * 40)
    config = load_config(tmp_path / "etc" / "konsilium.yaml")
    assert (config.host, config.port) == ("0.0.0.0", 8400)
    container_port = gateway_container(objects)["ports"][0]["containerPort"]
    assert container_port == config.port
    replicas = (
        one(objects, "Deployment")["spec"].get("replicas")
        or one(objects, "HorizontalPodAutoscaler")["spec"]["maxReplicas"]
    )
    assert config.tenancy.replicas == replicas
    assert (config.redis_url is not None) == (replicas > 1)
    if values_of(values_file).get("builtinModel", True):  # the built-in pair, however it is written
        by_id = {m.id: m for m in config.models}
        assert by_id["smollm2-135m-embed"].embedding
        assert by_id["smollm2-135m-instruct"].control_prompts == str(
            Path(__file__).resolve().parents[1] / "model_store" / "control_prompts" / "smollm2-135m-instruct.yaml"
        )


def test_the_vllm_pods_are_the_gateways_backends_inside_the_cluster(chart: helm_python.Chart, tmp_path: Path) -> None:
    values = values_of(CHART / "ci" / "vllm-values.yaml")
    objects = render(chart, values)
    service = one(objects, "Service", "konsilium-vllm-qwen-coder")
    manifests = [yaml.safe_load(v) for k, v in one(objects, "ConfigMap")["data"].items() if k.startswith("model-")]
    by_id = {m["id"]: m for m in manifests}
    port = service["spec"]["ports"][0]["port"]
    assert by_id["qwen-coder"]["url"] == f"http://konsilium-vllm-qwen-coder:{port}/v1"
    assert by_id["qwen-coder"]["upstream_model"] == "Qwen/Qwen2.5-Coder-7B-Instruct"
    assert by_id["qwen-coder"]["max_concurrency"] == 128  # not one request at a time
    assert by_id["llama-router"]["cloud"] is False
    vllm = one(objects, "Deployment", "konsilium-vllm-qwen-coder")["spec"]["template"]["spec"]["containers"][0]
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "--served-model-name=Qwen/Qwen2.5-Coder-7B-Instruct" in vllm["args"]
    assert "smollm2-135m-instruct" not in by_id  # builtinModel: false


def default_config_file(chart: helm_python.Chart, directory: Path) -> Path:
    path = directory / "konsilium.yaml"
    path.write_text(one(render(chart, {}), "ConfigMap")["data"]["konsilium.yaml"], encoding="utf-8")
    return path


def test_the_probes_point_at_endpoints_the_gateway_serves(chart: helm_python.Chart, tmp_path: Path) -> None:
    container = gateway_container(render(chart, {}))
    paths = {p: container[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert paths == {"startupProbe": "/ready", "livenessProbe": "/health", "readinessProbe": "/ready"}
    assert all(container[p]["httpGet"]["port"] == container["ports"][0]["name"] for p in paths)
    served = {route.path for route in create_app(load_config(default_config_file(chart, tmp_path))).routes}
    assert set(paths.values()) <= served
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # an eager model's load fits


def test_a_config_value_konsilium_refuses_fails_the_check(chart: helm_python.Chart, tmp_path: Path) -> None:
    """The loader check is no formality: a `config` the chart renders happily, Konsilium refuses."""
    text = one(render(chart, {"config": {"max_body_byte": 10}}), "ConfigMap")["data"]["konsilium.yaml"]
    path = tmp_path / "konsilium.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown field `max_body_byte`"):
        load_config(path)


def test_secrets_are_referenced_never_inlined(chart: helm_python.Chart) -> None:
    values = values_of(CHART / "ci" / "redis-replicas-values.yaml")
    objects = render(chart, values)
    assert [o for o in objects if o["kind"] == "Secret"] == []
    env = {e["name"]: e for e in gateway_container(objects)["env"]}
    assert env["KONSILIUM_ADMIN_KEY"] == {
        "name": "KONSILIUM_ADMIN_KEY", "valueFrom": {"secretKeyRef": {"name": "konsilium-admin", "key": "admin-key"}}
    }  # fmt: skip
    assert env["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "openai", "key": "api-key"}
    assert all("value" not in e for e in env.values())
    monitor = one(objects, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["authorization"]["credentials"] == {
        "name": "konsilium-admin", "key": "admin-key"
    }  # fmt: skip
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    config = one(objects, "ConfigMap")["data"]["konsilium.yaml"]
    assert "admin_key_env: KONSILIUM_ADMIN_KEY" in config


@pytest.mark.parametrize(
    "values",
    [{"replicaCount": 3}, {"autoscaling": {"enabled": True}}],
    ids=["replicas", "autoscaling"],
)
def test_more_than_one_replica_needs_redis(chart: helm_python.Chart, values: dict[str, Any]) -> None:
    with pytest.raises(helm_python.HelmError, match="needs Redis"):
        render(chart, values)
    assert one(render(chart, {**values, "redis": {"url": "redis://redis:6379/0"}}), "ConfigMap")


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"replicaCount": "two"}, "replicaCount"),
        ({"redis": {"url": "http://redis"}}, "url"),
        ({"replica": 2}, "replica"),
    ],
)
def test_the_values_schema_refuses_bad_values(chart: helm_python.Chart, values: dict[str, Any], field: str) -> None:
    with pytest.raises(helm_python.HelmError, match=field):
        render(chart, values)


def test_the_gpu_values_ask_for_a_gpu_and_mount_the_models(chart: helm_python.Chart) -> None:
    objects = render(chart, values_of(CHART / "ci" / "gpu-values.yaml"))
    container = gateway_container(objects)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]
    assert "nvidia.com/gpu" not in gateway_container(render(chart, {}))["resources"].get("limits", {})
