"""k8s/rehearsal.py without a cluster: rayStartParams -> `ray start` flags as KubeRay's operator
builds them (pod.go: setMissingRayStartParams, generateRayStartCommand, convertParamMap), env
resolution, the localisation of a pod's paths and ports; and GCS fault tolerance in the manifests."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from k8s_plans import TINY_MODEL, cpu_plan, render_docs

from k8s.rehearsal import (
    HEAD,
    WORKER,
    Localiser,
    Objects,
    RehearsalFailed,
    add_resource_params,
    complete_start_params,
    convert_param_map,
    operator_env,
    quantity,
    ray_start_command,
    resolve_env,
)
from k8s.render import render
from k8s.settings import Settings
from k8s.validate import validate_documents


def test_flags_are_sorted_true_is_a_switch_and_false_is_left_out():
    params = {"num-cpus": "0", "block": "true", "include-dashboard": "false", "log-color": "true",
              "disable-usage-stats": "false", "dashboard-host": "0.0.0.0"}
    assert convert_param_map(params) == ["--block", "--dashboard-host=0.0.0.0", "--include-dashboard=false",
                                         "--log-color=true", "--num-cpus=0"]


def test_head_params_are_completed_as_the_operator_does():
    params = complete_start_params({"num-cpus": "0"}, HEAD, autoscaling=True, redis_password=True)
    assert params == {"num-cpus": "0", "dashboard-host": "0.0.0.0", "no-monitor": "true",
                      "redis-password": "$REDIS_PASSWORD", "metrics-export-port": "8080", "block": "true",
                      "dashboard-agent-listen-port": "52365"}
    assert ray_start_command(HEAD, params).startswith("ulimit -n 65536; ray start --head --block ")


def test_worker_params_get_the_head_address_and_keep_their_own():
    params = complete_start_params({"metrics-export-port": "9000"}, WORKER, head_address="svc.ns.svc.cluster.local:6379")
    assert params["address"] == "svc.ns.svc.cluster.local:6379"
    assert params["metrics-export-port"] == "9000" and "dashboard-host" not in params
    assert ray_start_command(WORKER, params).startswith("ulimit -n 65536; ray start --address=")


def test_resources_come_from_limits_rounded_up_and_params_win():
    resources = {"limits": {"cpu": "1500m", "memory": "8Gi", "nvidia.com/gpu": "2"}, "requests": {"cpu": "1"}}
    assert add_resource_params({}, resources) == {"num-cpus": "2", "memory": str(8 * 2**30), "num-gpus": "2"}
    assert add_resource_params({"num-cpus": "0", "num-gpus": "0"}, resources)["num-cpus"] == "0"
    assert add_resource_params({}, {"requests": {"cpu": "3"}}) == {"num-cpus": "3"}  # no limit: the request


@pytest.mark.parametrize("text,value", [("2", 2), ("500m", 1), ("1Gi", 2**30), ("1.5G", 1_500_000_000)])
def test_quantities(text, value):
    assert quantity(text) == value


def test_a_bad_quantity_is_named():
    with pytest.raises(ValueError, match="'2 cores'"):
        quantity("2 cores")


def test_operator_env_for_gcs_fault_tolerance():
    ft = {"redisAddress": "redis:6379", "redisPassword": {"valueFrom": {"secretKeyRef": {"name": "s", "key": "password"}}}}
    head = {e["name"]: e for e in operator_env(HEAD, "c", "headgroup", "c-head", "c-head-svc", "6379", "ray start", "tok", ft)}
    assert head["RAY_REDIS_ADDRESS"]["value"] == "redis:6379" and head["REDIS_PASSWORD"]["valueFrom"]
    assert head["RAY_ADDRESS"]["value"] == "127.0.0.1:6379" and head["RAY_AUTH_TOKEN"]["value"] == "tok"
    worker = {e["name"]: e for e in operator_env(WORKER, "c", "cpu", "c-w", "c-head-svc", "6379", "ray start", None, ft)}
    assert worker["RAY_gcs_rpc_server_reconnect_timeout_s"]["value"] == "600"
    assert "RAY_REDIS_ADDRESS" not in worker and "RAY_AUTH_MODE" not in worker


def test_env_resolution_reads_fields_secrets_and_configmaps():
    objects = Objects()
    objects.add({"kind": "Secret", "metadata": {"name": "s"}, "data": {"k": base64.b64encode(b"secret").decode()}})
    objects.add({"kind": "ConfigMap", "metadata": {"name": "m"}, "data": {"k": "config"}})
    entries = [{"name": "A", "value": "1"}, {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
               {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
               {"name": "M", "valueFrom": {"configMapKeyRef": {"name": "m", "key": "k"}}},
               {"name": "GONE", "valueFrom": {"secretKeyRef": {"name": "x", "key": "k", "optional": True}}}]
    assert resolve_env(entries, objects, {"status.podIP": "10.0.0.7"}) == {"A": "1", "IP": "10.0.0.7", "S": "secret", "M": "config"}
    with pytest.raises(RehearsalFailed, match="secretKeyRef x/k"):
        resolve_env([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "x", "key": "k"}}}], objects, {})


def test_localised_params_use_this_hosts_ports_loopback_and_the_pods_directory(tmp_path):
    ports = iter(range(31000, 31100))
    local = Localiser(tmp_path, lambda: next(ports))
    params = complete_start_params({"num-cpus": "0"}, HEAD)
    out, mapped = local.start_params(params, HEAD, tmp_path / "pod", None)
    assert out["dashboard-host"] == "127.0.0.1" and out["node-ip-address"] == "127.0.0.1"
    assert {6379, 8265, 8080, 52365, 10001} <= set(mapped) and all(31000 <= p < 31100 for p in mapped.values())
    assert out["port"] == str(mapped[6379]) and out["temp-dir"] == str(tmp_path / "pod" / "ray")
    assert local.path("/etc/paliserve") == tmp_path / "etc" / "paliserve"
    assert local.path(str(tmp_path / "models")) == tmp_path / "models"  # already under the root


def test_mounted_secret_and_configmap_become_files(tmp_path):
    docs = render_docs(cpu_plan(), "dev", Settings(tiny_model=TINY_MODEL))
    objects = Objects()
    objects.add(docs["Secret"])
    objects.add(docs["ConfigMap"])
    pod = docs["RayService"]["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    Localiser(tmp_path, lambda: 0).materialise(pod, pod["containers"][0], objects)
    assert (tmp_path / "etc/paliserve/tenants/tenants.yaml").read_text() == docs["ConfigMap"]["data"]["tenants.yaml"]
    assert (tmp_path / "etc/paliserve/tenant-keys/local").read_text().strip()


@pytest.mark.parametrize("settings,store", [
    (Settings(tiny_model=TINY_MODEL, gcs_store=True), True),
    (Settings(tiny_model=TINY_MODEL, gcs_redis_address="redis.example:6379"), False),
])
def test_gcs_fault_tolerance_is_rendered_and_valid(settings, store):
    files = render(cpu_plan(), "dev", settings)
    ft = [t for p, t in files.items() if p.endswith("rayservice.yaml")][0]
    assert "gcsFaultToleranceOptions" in ft and "excludeHeadPodFromServeSvc: true" in ft
    assert any("gcsstore-deployment" in p for p in files) == store
    import yaml

    docs = [yaml.safe_load(t) for p, t in files.items() if "/overlays/" in p and not p.endswith("kustomization.yaml")]
    assert validate_documents(docs, "dev") == []


def test_without_gcs_fault_tolerance_nothing_is_rendered():
    files = render(cpu_plan(), "dev", Settings(tiny_model=TINY_MODEL))
    assert not any("gcsFaultToleranceOptions" in t or "excludeHeadPodFromServeSvc" in t or "gcsstore" in p
                   for p, t in files.items())
