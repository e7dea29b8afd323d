"""Build the Serve application from a plan: one engine deployment per model behind one gateway
(or, colocated, the gateway inside the one model's engine replicas). Quotas live in the cluster's
quota store (Redis), which the gateway finds through its environment (serve/tenancy/quotas.py)."""

from __future__ import annotations

from typing import Any

from paliserve.spec import DeploymentPlan, Plan
from serve.engine import ENGINE_HEALTH_CHECK, engine_deployment
from serve.gateway import Gateway
from serve.tenancy.registry import runtime_tenants


def admission_capacity(deployment: DeploymentPlan, replicas: int) -> int:
    """Requests a gateway lets through to a model's engines at once; the rest wait in the fair
    queue. The plan's per-replica concurrency that meets every SLO when it predicted one, else
    what a replica accepts (`max_ongoing_requests`), times the engine replicas behind the gateway."""
    per_replica = deployment.predicted.max_concurrency or deployment.max_ongoing_requests
    return max(1, per_replica * replicas)


def tenancy_config(plan: Plan) -> dict:
    """What the gateway's admission is built with: no tenant data (that is `tenant_user_config`).
    Several gateway replicas split the engines' capacity, so together they never send more than
    the engines hold and each one's fair queue, not the engine's FIFO, decides who goes next."""
    gateways = 1 if plan.colocated else plan.gateway.replicas
    return {
        "adapters": {d.model_name: [a.model_dump(mode="json") for a in d.adapters] for d in plan.deployments},
        "capacity": {d.model_name: -(-admission_capacity(d, plan.replicas_behind_ingress(d)) // gateways)
                     for d in plan.deployments},
        "gateways": plan.ingress_replicas(),  # who share the quota store: sizes local credit
    }


def tenant_user_config(plan: Plan) -> dict:
    """The plan's tenants as the ingress deployment's Serve `user_config`: Serve hands it to the
    replica's `reconfigure` at start (and, deployed from a config, whenever only it changes)
    instead of as an init argument. A tenants directory, when the replicas have one, replaces it
    live (serve/tenancy/registry.py)."""
    return {"tenants": [t.model_dump(mode="json") for t in runtime_tenants(plan.tenants)]}


def build_app(plan: Plan):
    # a replica that stops (scale-down, redeploy) drains for as long as a request may run, not
    # Serve's 20 s default, so no accepted request is cut
    drain_s = plan.gateway.request_timeout_s
    max_model_lens = {d.model_name: d.engine_args.max_model_len for d in plan.deployments}
    settings = plan.gateway.model_dump(mode="json")
    if plan.colocated:
        (deployment,) = plan.deployments
        (options,) = plan.serve_deployments()
        gateway = Gateway.options(**options, **ENGINE_HEALTH_CHECK, graceful_shutdown_timeout_s=drain_s,
                                  user_config=tenant_user_config(plan))
        return gateway.bind({}, max_model_lens, settings, tenancy_config(plan), deployment.model_dump(mode="json"))
    engines = {d.model_name: engine_deployment(d, drain_s).bind(d.model_dump(mode="json")) for d in plan.deployments}
    gateway = Gateway.options(
        num_replicas=plan.gateway.replicas,
        max_ongoing_requests=plan.ingress_max_ongoing_requests(),
        ray_actor_options={"num_cpus": 0.25},
        graceful_shutdown_timeout_s=drain_s,
        user_config=tenant_user_config(plan),
    )
    return gateway.bind(engines, max_model_lens, settings, tenancy_config(plan))


def app_builder(args: dict[str, Any]):
    """Entry point for Serve config files (`import_path: serve.app:app_builder`)."""
    plan = Plan.model_validate(args["plan"])
    return build_app(plan)
