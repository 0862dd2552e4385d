"""The Helm chart renders valid Kubernetes objects that match the gateway.

Rendering and lint use Helm's own Go library (``helm-python-sdk`` binds
``libhelm_c`` via ctypes), so no ``helm`` binary is needed; objects are checked
against the Kubernetes 1.30 OpenAPI schemas shipped by ``kubernetes-validate``.
"""

from __future__ import annotations

import copy
import importlib
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

from gateway.settings import Settings  # noqa: E402

CHART = Path(__file__).resolve().parents[1] / "charts" / "parrot-gateway"
KUBE_VERSION = "1.30.0"
RELEASE, NAMESPACE = "pg", "llm"
SPEC_ROUTES = ["/health", "/ready", "/metrics"]
SECRET_KEY = "sk-test-do-not-leak-8f3a1c"

EXTERNAL_REDIS: dict[str, Any] = {
    "redis": {
        "enabled": False,
        "external": {
            "url": "rediss://redis.example.internal:6380/2",
            "existingSecret": "redis-auth",
            "passwordKey": "pw",
        },
    },
    "sglang": {"enabled": False},
    "engines": {"external": ["http://engine-a:30000", "http://engine-b:30000"]},
}
SGLANG_TP2: dict[str, Any] = {
    "sglang": {
        "enabled": True,
        "replicas": 2,
        "tensorParallelSize": 2,
        "model": "Qwen/Qwen2.5-14B-Instruct",
        "extraArgs": ["--mem-fraction-static", "0.85"],
    },
    "redis": {"persistence": {"enabled": False}},
}
PRODUCTION: dict[str, Any] = {
    "autoscaling": {
        "enabled": True,
        "minReplicas": 3,
        "maxReplicas": 12,
        "customMetric": {"name": "parrot_queued_requests", "targetAverageValue": "20"},
    },
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "hosts": [{"host": "llm.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}],
        "tls": [{"secretName": "llm-tls", "hosts": ["llm.example.com"]}],
    },
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "podDisruptionBudget": {"enabled": True, "minAvailable": 2},
    "apiKeys": {"keys": {SECRET_KEY: {"tenant": "team-a", "rpm": 600, "models": ["*"]}}},
    "gateway": {"drain_timeout_s": 90.5, "max_body_bytes": 1048576, "log_level": "warning"},
}
MONITORING: dict[str, Any] = {
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "grafana": {"dashboard": {"enabled": True}},
    "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
}
VALUE_SETS: dict[str, dict[str, Any] | None] = {
    "default": None,
    "external-redis": EXTERNAL_REDIS,
    "sglang-tp2": SGLANG_TP2,
    "production": PRODUCTION,
    "monitoring": MONITORING,
}


@pytest.fixture(scope="module")
def chart() -> Any:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: Any, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """All rendered objects (NOTES.txt excluded), in template order."""
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    objects: list[dict[str, Any]] = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def only(objects: list[dict[str, Any]], kind: str, component: str | None = None) -> dict[str, Any]:
    found = [
        o
        for o in objects
        if o["kind"] == kind
        and (
            component is None
            or o["metadata"]["labels"].get("app.kubernetes.io/component") == component
        )
    ]
    assert len(found) == 1, f"expected one {kind}/{component}, got {len(found)}"
    return found[0]


def gateway_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = only(objects, "Deployment", "gateway")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container.get("env", [])}


def settings_file(objects: list[dict[str, Any]]) -> dict[str, Any]:
    data = only(objects, "ConfigMap", "gateway")["data"]["config.yaml"]
    parsed = yaml.safe_load(data)
    assert isinstance(parsed, dict)
    return parsed


def merge(base: dict[str, Any] | None, extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base or {})
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------- lint, schema


@pytest.mark.parametrize("name", VALUE_SETS)
def test_lint_is_clean(name: str) -> None:
    report = helm.lint(CHART, VALUE_SETS[name], strict=True, kube_version="v" + KUBE_VERSION)
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [], problems


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_object_matches_the_kubernetes_schema(chart: Any, name: str) -> None:
    objects = render(chart, VALUE_SETS[name])
    assert objects
    for obj in objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        if obj["kind"] in ("ServiceMonitor", "PrometheusRule"):
            continue  # CRDs: kubernetes-validate has no schema; shapes checked below
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_schema_validation_is_not_vacuous(chart: Any) -> None:
    deployment = only(render(chart), "Deployment", "gateway")
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


# ---------------------------------------------------------------- gateway pod


def gateway_routes() -> list[str]:
    """Route paths of the real app (gateway.app) when it exists, else SPEC section 3's."""
    try:
        module = importlib.import_module("gateway.app")
    except ModuleNotFoundError as exc:
        if exc.name != "gateway.app":
            raise
        return SPEC_ROUTES
    # Building the app does no I/O: Redis is only contacted in its lifespan.
    app = module.create_app(Settings(redis="redis://127.0.0.1:9/0"), engines=[])
    return [path for route in app.routes if isinstance(path := getattr(route, "path", None), str)]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_probes_hit_real_routes_on_the_gateway_port(chart: Any, name: str) -> None:
    objects = render(chart, VALUE_SETS[name])
    container = gateway_container(objects)
    routes = gateway_routes()
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] in routes
        assert container[probe]["httpGet"]["port"] == "http"
    port = settings_file(objects)["port"]
    assert container["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    assert container["args"][container["args"].index("--port") + 1] == str(port)


def test_gateway_port_value_moves_container_port(chart: Any) -> None:
    objects = render(chart, {"gateway": {"port": 9100}})
    container = gateway_container(objects)
    assert container["ports"][0]["containerPort"] == 9100
    assert settings_file(objects)["port"] == 9100
    service = only(objects, "Service", "gateway")
    assert service["spec"]["ports"][0]["targetPort"] == "http"


@pytest.mark.parametrize("name", VALUE_SETS)
def test_settings_file_holds_only_settings_fields(chart: Any, name: str, tmp_path: Path) -> None:
    objects = render(chart, VALUE_SETS[name])
    settings = settings_file(objects)
    assert set(settings) <= set(Settings.model_fields), set(settings) - set(Settings.model_fields)
    # Load it exactly as the container does: --config file + PARROT_* env.
    container = gateway_container(objects)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(only(objects, "ConfigMap", "gateway")["data"]["config.yaml"])
    env = {k: v["value"] for k, v in env_of(container).items() if "value" in v}
    loaded = Settings.load(overrides={"host": "0.0.0.0", "config": str(config_path)}, env=env)
    assert loaded.backend and all(url.startswith("http") for url in loaded.backend)
    assert loaded.redis and loaded.redis.startswith(("redis://", "rediss://"))
    for key, value in settings.items():
        assert getattr(loaded, key) == value


def test_production_values_reach_the_settings_file(chart: Any) -> None:
    settings = settings_file(render(chart, PRODUCTION))
    assert settings["drain_timeout_s"] == 90.5
    assert settings["max_body_bytes"] == 1048576
    assert settings["log_level"] == "warning"


MANAGED_SETTINGS = {"host", "backend", "redis", "api_keys", "config", "ui_secret", "advertise_url"}


@pytest.mark.parametrize("managed", sorted(MANAGED_SETTINGS))
def test_chart_managed_settings_are_refused(chart: Any, managed: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=managed):
        render(chart, {"gateway": {managed: "x"}})


def test_values_schema_tracks_the_settings_object(chart: Any) -> None:
    """values.schema.json lists every Settings field the chart does not set itself."""
    gateway_schema = chart.schema["properties"]["gateway"]
    assert gateway_schema["additionalProperties"] is False
    assert set(gateway_schema["properties"]) == set(Settings.model_fields) - MANAGED_SETTINGS
    with pytest.raises(helm.HelmValuesError, match="prot"):
        render(chart, {"gateway": {"prot": 8000}})  # a typo is an install-time error
    with pytest.raises(helm.HelmValuesError, match="port"):
        render(chart, {"gateway": {"port": 70000}})
    render(chart, {"gateway": {"max_inflight_per_engine": 64, "sim_engines": 3}})


@pytest.mark.parametrize("drain", [None, 0, 30, 90.5, 600])
def test_grace_period_exceeds_drain_timeout(chart: Any, drain: float | None) -> None:
    values = None if drain is None else {"gateway": {"drain_timeout_s": drain}}
    objects = render(chart, values)
    pod = only(objects, "Deployment", "gateway")["spec"]["template"]["spec"]
    drain_s = settings_file(objects)["drain_timeout_s"]
    prestop = int(gateway_container(objects)["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > math.ceil(drain_s) + prestop


def test_checksum_rolls_pods_on_gateway_change_only(chart: Any) -> None:
    def checksum(values: dict[str, Any] | None) -> str:
        deployment = only(render(chart, values), "Deployment", "gateway")
        return deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    base = checksum(None)
    assert re.fullmatch(r"[0-9a-f]{64}", base)
    assert checksum({"gateway": {"session_ttl_s": 7200}}) != base
    assert checksum({"gateway": {"max_body_bytes": 1 << 20}}) != base
    assert checksum({"replicaCount": 5}) == base


def test_api_keys_live_in_a_secret_never_a_configmap(chart: Any) -> None:
    objects = render(chart, PRODUCTION)
    for obj in objects:
        if obj["kind"] == "ConfigMap":
            assert SECRET_KEY not in yaml.safe_dump(obj)
        if obj["kind"] == "Deployment":
            assert SECRET_KEY not in yaml.safe_dump(obj)
    secret = only(objects, "Secret", "gateway")
    keys = yaml.safe_load(secret["stringData"]["keys.yaml"])
    assert keys == {"keys": {SECRET_KEY: {"tenant": "team-a", "rpm": 600, "models": ["*"]}}}
    container = gateway_container(objects)
    mount = next(m for m in container["volumeMounts"] if m["name"] == "api-keys")
    assert env_of(container)["PARROT_API_KEYS"]["value"] == mount["mountPath"] + "/keys.yaml"
    pod = only(objects, "Deployment", "gateway")["spec"]["template"]
    assert "checksum/api-keys" in pod["metadata"]["annotations"]
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "api-keys")
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]


def test_existing_api_keys_secret_is_mounted_not_created(chart: Any) -> None:
    objects = render(chart, {"apiKeys": {"existingSecret": "my-keys", "existingSecretKey": "k.json"}})
    assert not [o for o in objects if o["kind"] == "Secret"]
    container = gateway_container(objects)
    assert env_of(container)["PARROT_API_KEYS"]["value"].endswith("/k.json")
    pod = only(objects, "Deployment", "gateway")["spec"]["template"]["spec"]
    assert {"name": "api-keys", "secret": {"secretName": "my-keys"}} in pod["volumes"]


def test_no_api_keys_means_no_keys_file(chart: Any) -> None:
    container = gateway_container(render(chart))
    assert "PARROT_API_KEYS" not in env_of(container)


def test_gateway_runs_non_root_with_read_only_root(chart: Any) -> None:
    objects = render(chart)
    pod = only(objects, "Deployment", "gateway")["spec"]["template"]["spec"]
    container = gateway_container(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert {"name": tmp["name"], "emptyDir": {}} in pod["volumes"]
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["labelSelector"]["matchLabels"] == (
        only(objects, "Deployment", "gateway")["spec"]["selector"]["matchLabels"]
    )


# ---------------------------------------------------------------- Redis


def test_default_in_chart_redis_with_aof_on_a_pvc(chart: Any) -> None:
    objects = render(chart)
    sts = only(objects, "StatefulSet", "redis")
    service = only(objects, "Service", "redis")
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "8Gi"
    redis_url = env_of(gateway_container(objects))["PARROT_REDIS"]["value"]
    assert redis_url == f"redis://{service['metadata']['name']}:6379/0"


def test_redis_without_persistence_turns_aof_off(chart: Any) -> None:
    objects = render(chart, {"redis": {"persistence": {"enabled": False}}})
    sts = only(objects, "StatefulSet", "redis")
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "no"
    assert "volumeClaimTemplates" not in sts["spec"]
    assert {"name": "data", "emptyDir": {}} in sts["spec"]["template"]["spec"]["volumes"]


def test_redis_persistence_storage_class(chart: Any) -> None:
    values = {"redis": {"persistence": {"size": "20Gi", "storageClass": "fast-ssd"}}}
    (claim,) = only(render(chart, values), "StatefulSet", "redis")["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"


def test_external_redis_password_comes_from_the_secret(chart: Any) -> None:
    objects = render(chart, EXTERNAL_REDIS)
    assert not [o for o in objects if o["kind"] == "StatefulSet"]
    env = gateway_container(objects)["env"]
    names = [e["name"] for e in env]
    # $(REDIS_PASSWORD) only expands when the variable is defined earlier.
    assert names.index("REDIS_PASSWORD") < names.index("PARROT_REDIS")
    password = env[names.index("REDIS_PASSWORD")]
    assert password["valueFrom"]["secretKeyRef"] == {"name": "redis-auth", "key": "pw"}
    url = env[names.index("PARROT_REDIS")]["value"]
    assert url == "rediss://:$(REDIS_PASSWORD)@redis.example.internal:6380/2"
    backend = env[names.index("PARROT_BACKEND")]["value"]
    assert backend.split() == ["http://engine-a:30000", "http://engine-b:30000"]


def test_external_redis_without_secret_is_passed_through(chart: Any) -> None:
    values = merge(EXTERNAL_REDIS, {"redis": {"external": {"existingSecret": ""}}})
    env = env_of(gateway_container(render(chart, values)))
    assert "REDIS_PASSWORD" not in env
    assert env["PARROT_REDIS"]["value"] == "rediss://redis.example.internal:6380/2"


def test_some_redis_is_required(chart: Any) -> None:
    with pytest.raises(helm.HelmRenderError, match="embedded Redis"):
        render(chart, {"redis": {"enabled": False}})
    with pytest.raises(helm.HelmRenderError, match="not both"):
        render(chart, {"redis": {"external": {"url": "redis://r:6379/0"}}})


# ---------------------------------------------------------------- SGLang engines


def test_sglang_engines_with_tensor_parallelism(chart: Any) -> None:
    objects = render(chart, SGLANG_TP2)
    sts = only(objects, "StatefulSet", "sglang")
    headless = only(objects, "Service", "sglang")
    assert sts["spec"]["replicas"] == 2
    assert headless["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    pod = sts["spec"]["template"]["spec"]
    (engine,) = pod["containers"]
    assert engine["image"].startswith("lmsysorg/sglang:")
    command = engine["command"] + engine["args"]
    assert command[:3] == ["python3", "-m", "sglang.launch_server"]
    assert command[command.index("--model-path") + 1] == "Qwen/Qwen2.5-14B-Instruct"
    assert command[command.index("--tp") + 1] == "2"
    assert command[command.index("--port") + 1] == "30000"
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert "--enable-priority-scheduling" in command
    assert "--enable-cache-report" in command
    assert command[-2:] == ["--mem-fraction-static", "0.85"]
    assert engine["resources"]["requests"]["nvidia.com/gpu"] == 2
    assert engine["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert engine["readinessProbe"]["httpGet"]["path"] == "/health"
    shm = next(m for m in engine["volumeMounts"] if m["mountPath"] == "/dev/shm")
    shm_volume = next(v for v in pod["volumes"] if v["name"] == shm["name"])
    assert shm_volume["emptyDir"]["medium"] == "Memory"
    claims = [c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]]
    assert claims == ["model-cache"]
    # The gateway lists every engine pod by its stable DNS name.
    sts_name, svc_name = sts["metadata"]["name"], headless["metadata"]["name"]
    expected = [
        f"http://{sts_name}-{i}.{svc_name}.{NAMESPACE}.svc.cluster.local:30000" for i in range(2)
    ]
    backend = env_of(gateway_container(objects))["PARROT_BACKEND"]["value"]
    assert backend.split() == expected


def test_explicit_gpu_resources_win(chart: Any) -> None:
    values = {
        "sglang": {
            "tensorParallelSize": 4,
            "resources": {"limits": {"nvidia.com/gpu": 8}, "requests": {"nvidia.com/gpu": 8}},
        }
    }
    engine = only(render(chart, values), "StatefulSet", "sglang")["spec"]["template"]["spec"]
    assert engine["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 8


def test_in_chart_and_external_engines_combine(chart: Any) -> None:
    objects = render(chart, {"engines": {"external": ["http://extra:30000"]}})
    backend = env_of(gateway_container(objects))["PARROT_BACKEND"]["value"].split()
    assert len(backend) == 2 and backend[-1] == "http://extra:30000"


def test_some_engine_is_required(chart: Any) -> None:
    with pytest.raises(helm.HelmRenderError, match="simulated engines"):
        render(chart, {"sglang": {"enabled": False}})


# ---------------------------------------------------------------- optional objects


def test_default_render_has_no_optional_objects(chart: Any) -> None:
    objects = render(chart)
    kinds = {o["kind"] for o in objects}
    assert kinds.isdisjoint(
        {"HorizontalPodAutoscaler", "Ingress", "ServiceMonitor", "PodDisruptionBudget", "PrometheusRule"}
    )
    components = {o["metadata"]["labels"]["app.kubernetes.io/component"] for o in objects}
    assert "monitoring" not in components  # no dashboard ConfigMap either
    assert only(render(chart), "Deployment", "gateway")["spec"]["replicas"] == 2


def test_production_objects(chart: Any) -> None:
    objects = render(chart, PRODUCTION)
    deployment = only(objects, "Deployment", "gateway")
    service = only(objects, "Service", "gateway")
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert "replicas" not in deployment["spec"]  # the HPA owns it

    hpa = only(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    metric_types = [m["type"] for m in hpa["spec"]["metrics"]]
    assert metric_types == ["Resource", "Pods"]
    assert hpa["spec"]["metrics"][1]["pods"]["metric"]["name"] == "parrot_queued_requests"

    ingress = only(objects, "Ingress")
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "llm.example.com"
    assert rule["http"]["paths"][0]["backend"]["service"]["name"] == service["metadata"]["name"]

    pdb = only(objects, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 2
    assert pdb["spec"]["selector"]["matchLabels"] == selector

    monitor = only(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics" and "/metrics" in gateway_routes()


def test_values_have_the_spec_keys(chart: Any) -> None:
    values = chart.values
    for dotted in [
        "replicaCount",
        "image.repository",
        "image.tag",
        "gateway.port",
        "gateway.drain_timeout_s",
        "apiKeys.existingSecret",
        "redis.enabled",
        "redis.external.url",
        "redis.persistence.enabled",
        "redis.persistence.size",
        "redis.persistence.storageClass",
        "sglang.enabled",
        "sglang.replicas",
        "sglang.model",
        "sglang.tensorParallelSize",
        "sglang.resources",
        "engines.external",
        "autoscaling.enabled",
        "ingress.enabled",
        "serviceMonitor.enabled",
        "podDisruptionBudget.enabled",
    ]:
        node: Any = values
        for part in dotted.split("."):
            assert isinstance(node, dict) and part in node, dotted
            node = node[part]
    assert set(values["gateway"]) <= set(Settings.model_fields)
    assert chart.metadata["apiVersion"] == "v2"
    assert chart.metadata["appVersion"] == "0.1.0"


def test_each_pod_advertises_its_own_address_to_its_peers(chart: Any) -> None:
    """Peers relay a session's requests pod to pod: the URL is the pod's IP, resolved by
    Kubernetes from an env var defined before it."""
    env = gateway_container(render(chart, None))["env"]
    names = [e["name"] for e in env]
    pod_ip = env[names.index("POD_IP")]
    assert pod_ip["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    url = env[names.index("PARROT_ADVERTISE_URL")]["value"]
    assert names.index("POD_IP") < names.index("PARROT_ADVERTISE_URL")
    assert url == "http://$(POD_IP):8000"
