"""What the rendered documents say: the plan's numbers, auth, secrets, network exposure."""

from __future__ import annotations

import re

import pytest
import yaml
from k8s_plans import TINY_MODEL, cpu_plan, example_plan, render_docs

from k8s import metrics
from k8s.render import render
from k8s.settings import CLIENT_PORT, DASHBOARD_PORT, GCS_PORT, METRICS_PORT, Settings
from paliserve.spec import SHA256_HEX, AutoscalingPolicyRef, TenantLimits
from serve.tenancy.quotas import ACQUIRE


@pytest.fixture(scope="module")
def plan():
    return example_plan()


@pytest.fixture(scope="module")
def prod(plan):
    return render_docs(plan)


@pytest.fixture(scope="module")
def dev():
    return render_docs(cpu_plan(), "dev", Settings(tiny_model=TINY_MODEL))


def ray_containers(rayservice):
    cluster = rayservice["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
    return [c for pod in pods for c in pod["template"]["spec"]["containers"]]


def test_serve_config_is_the_plans(plan, prod):
    config = yaml.safe_load(prod["RayService"]["spec"]["serveConfigV2"])
    expected = plan.serve_config()
    expected["http_options"]["host"] = "0.0.0.0"  # the proxy must listen on the pod address
    expected["applications"][0]["args"]["plan"]["http"]["host"] = "0.0.0.0"
    assert config == expected
    assert config["applications"][0]["import_path"] == "serve.app:app_builder"


def test_autoscaling_policy_travels_in_the_serve_config(plan):
    with_policy = plan.model_copy(deep=True)
    with_policy.deployments[0].autoscaling.policy = AutoscalingPolicyRef(
        policy_function="autoscale.policy:PrometheusPolicy", policy_kwargs={"window_s": 30})
    config = yaml.safe_load(render_docs(with_policy)["RayService"]["spec"]["serveConfigV2"])
    autoscaling = config["applications"][0]["deployments"][0]["autoscaling_config"]
    assert autoscaling["policy"]["policy_function"] == "autoscale.policy:PrometheusPolicy"


def test_cluster_settings(prod):
    cluster = prod["RayService"]["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["authOptions"] == {"mode": "token"}
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]
    for container in ray_containers(prod["RayService"]):
        env = {e["name"]: e for e in container["env"]}
        assert env["VLLM_HOST_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        assert env["RAY_PROMETHEUS_HOST"]["value"].startswith("http://")
        assert {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"} in container["ports"]


def test_gpu_workers_are_scheduled_on_gpus(prod):
    (group,) = prod["RayService"]["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    pod = group["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"  # the TP=2 replica


def test_dev_has_no_gpu_resources(dev):
    text = yaml.safe_dump(dev["RayService"])
    assert "nvidia.com/gpu" not in text
    (group,) = dev["RayService"]["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert group["groupName"] == "cpu"
    assert group["template"]["spec"]["initContainers"][0]["command"] == ["paliserve", "tiny-model", TINY_MODEL]


def test_secret_holds_only_the_plans_hashes(plan, prod):
    data = prod["Secret"]["stringData"]
    assert set(data) == {t.name for t in plan.tenants if t.api_key_sha256}
    for tenant in plan.tenants:
        lines = data[tenant.name].splitlines()
        assert lines == tenant.api_key_sha256
        assert all(re.fullmatch(SHA256_HEX, line) for line in lines)
    assert "data" not in prod["Secret"]


def test_network_policy_exposes_only_the_serve_port(plan, prod):
    rules = prod["NetworkPolicy"]["spec"]["ingress"]
    open_rules = [r for r in rules if "from" not in r]
    assert [p["port"] for r in open_rules for p in r["ports"]] == [plan.http.port]
    ray_ports = {GCS_PORT, DASHBOARD_PORT, CLIENT_PORT}
    same_cluster = {"podSelector": {"matchLabels": prod["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"]}}
    for rule in rules:
        ports = {p["port"] for p in rule.get("ports", [])}
        if not rule.get("ports") or ports & ray_ports:
            assert rule.get("from"), "Ray's ports must not be open to everyone"
    unrestricted = [r for r in rules if "ports" not in r]
    assert [r["from"] for r in unrestricted] == [[same_cluster]]
    operator = [r for r in rules if {p["port"] for p in r.get("ports", [])} == {DASHBOARD_PORT}]
    assert operator[0]["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}


def test_the_serve_service_is_the_rayservices_and_exposes_only_the_serve_port(plan, prod):
    """No standalone Service for serving: KubeRay creates it from RayService.spec.serveService
    (the one Service rendered is the quota store's, k8s/quotastore.py)."""
    services = [doc["metadata"]["name"] for doc in (yaml.safe_load(text) for path, text in render(plan, "prod").items()
                if not path.endswith("kustomization.yaml")) if doc["kind"] == "Service"]
    assert services == ["paliserve-quota-store"]
    service = prod["RayService"]["spec"]["serveService"]
    assert service["metadata"]["name"] == "paliserve-serve"
    assert service["spec"] == {"type": "ClusterIP", "ports": [
        {"name": "serve", "port": plan.http.port, "targetPort": plan.http.port, "protocol": "TCP"}]}


def test_one_ttft_rule_per_tenant_with_its_own_threshold(plan, prod):
    rules = [r for g in prod["PrometheusRule"]["spec"]["groups"] for r in g["rules"]]
    ttft = {r["labels"]["tenant"]: r["expr"] for r in rules if r["alert"] == "PaliserveTenantTTFTAboveSLO"}
    assert set(ttft) == {t.name for t in plan.tenants}
    for tenant in plan.tenants:
        assert f'tenant="{tenant.name}"' in ttft[tenant.name]
        assert ttft[tenant.name].endswith(f"> {tenant.slo.ttft_p95_ms / 1000:g}")
    assert {"PaliserveKVCacheHigh", "PaliserveErrorRateHigh", "PaliserveQuotaRejections"} <= {r["alert"] for r in rules}


def quota_reasons() -> set[str]:
    """The `reason` of every refusal a quota makes: the limits the store's script refuses with
    (tests/tenancy/test_quotas.py refuses each one against a real store)."""
    limits = set(TenantLimits.model_fields)
    assert all(f"return {{'{limit}'" in ACQUIRE for limit in limits)
    return limits


def test_quota_alert_counts_only_quota_refusals_over_a_threshold(prod):
    rules = {r["alert"]: r for g in prod["PrometheusRule"]["spec"]["groups"] for r in g["rules"]}
    expr = rules["PaliserveQuotaRejections"]["expr"]
    (selected,) = re.findall(r'reason=~"([^"]+)"', expr)
    assert set(selected.split("|")) == quota_reasons() == set(metrics.QUOTA_REASONS)
    assert float(expr.rsplit(">", 1)[1]) > 0
    description = rules["PaliserveQuotaRejections"]["annotations"]["description"]
    assert "429" in description and "not counted" in description


def test_the_quota_store_is_rendered_and_reachable_from_the_ray_pods_only(prod):
    """Without an address: a one-replica Redis, its Service, and a NetworkPolicy letting only this
    cluster's Ray pods reach it; every Ray container is given its address."""
    store, service, policy = (prod[f"quotastore/{kind}"] for kind in ("Deployment", "Service", "NetworkPolicy"))
    assert store["spec"]["replicas"] == 1
    (container,) = store["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("redis:") and "--save" in container["args"]
    name = service["metadata"]["name"]
    assert service["spec"]["selector"] == store["spec"]["selector"]["matchLabels"] == policy["spec"]["podSelector"]["matchLabels"]
    ray_labels = prod["RayService"]["metadata"]["labels"]
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": ray_labels}}],
                                          "ports": [{"protocol": "TCP", "port": 6379}]}]
    # the Ray pods' own policy and PodMonitor must not select the store
    assert store["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] != ray_labels["app.kubernetes.io/name"]
    for container in ray_containers(prod["RayService"]):
        env = {e["name"]: e for e in container["env"]}
        assert env["PALISERVE_QUOTA_STORE_URL"]["value"] == f"redis://{name}:6379/0"
        assert env["PALISERVE_QUOTA_STORE_PASSWORD"]["valueFrom"]["secretKeyRef"]["optional"] is True


def test_an_external_quota_store_is_used_as_given(plan):
    docs = render_docs(plan, "prod", Settings(quota_store_url="rediss://redis.internal:6380/2"))
    assert not [key for key in docs if key.startswith("quotastore/")]
    for container in ray_containers(docs["RayService"]):
        env = {e["name"]: e for e in container["env"]}
        assert env["PALISERVE_QUOTA_STORE_URL"]["value"] == "rediss://redis.internal:6380/2"
    with pytest.raises(ValueError, match="quota-store-url"):
        Settings(quota_store_url="redis.internal:6379")
