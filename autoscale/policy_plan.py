"""The plan's reference to the Prometheus-driven policy: import path and `policy_kwargs`.

Pure (no Ray import): the planner writes it, Serve's controller imports the class by path.
"""

from __future__ import annotations

from paliserve.spec import AutoscalingPolicyRef, PrometheusPolicyOptions, ReplicaBounds

POLICY_IMPORT_PATH = "autoscale.policy:PrometheusPolicy"


def prometheus_policy(
    deployment: str,
    model_name: str,
    replicas: ReplicaBounds,
    target_ongoing_requests: float,
    ttft_slo_ms: float | None,
    options: PrometheusPolicyOptions | None = None,
    **overrides,
) -> AutoscalingPolicyRef:
    """`ttft_slo_ms`: the tightest TTFT p95 SLO of the tenants on the deployment (None: none)."""
    kwargs = {
        "deployment": deployment,
        "model_name": model_name,
        "min_replicas": replicas.min,
        "max_replicas": replicas.max,
        "target_ongoing_requests": target_ongoing_requests,
        "ttft_slo_ms": ttft_slo_ms,
        **(options or PrometheusPolicyOptions()).model_dump(exclude_none=True),
        **overrides,
    }
    return AutoscalingPolicyRef(policy_function=POLICY_IMPORT_PATH, policy_kwargs=kwargs)
