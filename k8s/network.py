"""Ingress to the Ray pods: clients reach the serve port only; Ray's own ports stay inside."""

from __future__ import annotations

from typing import Any

from paliserve.spec import Plan

from .settings import DASHBOARD_PORT, METRICS_PORT, Settings


def _namespace(name: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}


def network_policy(plan: Plan, settings: Settings) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": settings.name, "labels": settings.labels},
        "spec": {
            "podSelector": {"matchLabels": settings.labels},
            "policyTypes": ["Ingress"],
            "ingress": [
                # Clients, from anywhere: the Serve HTTP port and nothing else.
                {"ports": [{"protocol": "TCP", "port": plan.http.port}]},
                # Pods of this Ray cluster: GCS 6379, dashboard 8265, client 10001, and the
                # raylet, object manager and worker ports Ray picks at run time.
                {"from": [{"podSelector": {"matchLabels": settings.labels}}]},
                # The KubeRay operator submits the Serve config and polls it via the dashboard.
                {"from": [{**_namespace(settings.operator_namespace),
                           "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}}],
                 "ports": [{"protocol": "TCP", "port": DASHBOARD_PORT}]},
                # Prometheus scrapes Ray's metrics export port.
                {"from": [_namespace(settings.monitoring_namespace)],
                 "ports": [{"protocol": "TCP", "port": METRICS_PORT}]},
            ],
        },
    }
