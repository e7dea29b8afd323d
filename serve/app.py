"""Build the Serve application from a plan: one engine deployment per model, one gateway."""

from __future__ import annotations

from typing import Any

from paliserve.spec import Plan
from serve.engine import engine_deployment
from serve.gateway import Gateway


GATEWAY_MIN_ONGOING = 64


def build_app(plan: Plan, gateway_settings: dict | None = None):
    engines = {d.model_name: engine_deployment(d).bind(d.model_dump(mode="json")) for d in plan.deployments}
    max_model_lens = {d.model_name: d.engine_args.max_model_len for d in plan.deployments}
    # The gateway only validates and forwards: it must admit every request the engines can hold
    # (Serve's default of 5 ongoing requests would queue the rest at the proxy).
    ongoing = max(GATEWAY_MIN_ONGOING, sum(d.max_ongoing_requests * d.replicas.max for d in plan.deployments))
    gateway = Gateway.options(max_ongoing_requests=ongoing, ray_actor_options={"num_cpus": 0.25})
    return gateway.bind(engines, max_model_lens, gateway_settings)


def app_builder(args: dict[str, Any]):
    """Entry point for Serve config files (`import_path: serve.app:app_builder`)."""
    plan = Plan.model_validate(args["plan"])
    return build_app(plan, args.get("gateway"))
