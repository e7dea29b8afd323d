"""Refuse a plan the manifests cannot carry, before anything is rendered.

Every problem is collected and named by its field, e.g.
`deployments[0] (pg-mix-448).accelerator: unknown GPU type 'X100'`.
"""

from __future__ import annotations

import math
import re
from typing import Any

from pydantic import ValidationError

from paliserve.spec import SHA256_HEX, Plan

from .settings import RESERVED_PORTS, Settings


class PlanRefused(ValueError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("plan refused, nothing rendered:\n  " + "\n  ".join(problems))


def load_plan_data(data: Any) -> Plan:
    """A Plan from parsed YAML, or PlanRefused naming each invalid field."""
    try:
        return Plan.model_validate(data)
    except ValidationError as error:
        raise PlanRefused([_describe(problem) for problem in error.errors()]) from None


def check_plan(plan: Plan, settings: Settings) -> Plan:
    """The plan, revalidated (it may have been edited in memory) and checked for Kubernetes."""
    plan = load_plan_data(plan.model_dump(mode="json"))
    problems = []
    for i, d in enumerate(plan.deployments):
        where = f"deployments[{i}] ({d.name})"
        share = d.gpus_per_replica
        if d.device == "cpu":
            if share or d.ray_actor_options.num_gpus:
                problems.append(f"{where}.gpus_per_replica: a CPU deployment takes no GPUs, got {share}")
            continue
        if d.accelerator not in settings.gpu_products:
            problems.append(f"{where}.accelerator: unknown GPU type {d.accelerator!r}; known: "
                            f"{', '.join(settings.gpu_products)} (map others with --gpu-product TYPE=LABEL)")
        if share <= 0:
            problems.append(f"{where}.gpus_per_replica: a GPU deployment needs a share above 0, got {share}")
        elif share > 1 and share != math.floor(share):
            problems.append(f"{where}.gpus_per_replica: {share} is above one GPU but not whole; "
                            f"a replica takes a fraction of one GPU or whole GPUs, within one worker pod")
        if d.ray_actor_options.num_gpus > share:
            problems.append(f"{where}.ray_actor_options.num_gpus: {d.ray_actor_options.num_gpus} is more "
                            f"than gpus_per_replica ({share}) that the worker pods are sized for")
    problems += _whole_gpu_sizes(plan)
    if plan.http.port in RESERVED_PORTS:
        problems.append(f"http.port: {plan.http.port} is Ray's {RESERVED_PORTS[plan.http.port]} port")
    for i, tenant in enumerate(plan.tenants):
        for j, digest in enumerate(tenant.api_key_sha256):
            if not re.match(SHA256_HEX, digest):
                problems.append(f"tenants[{i}] ({tenant.name}).api_key_sha256[{j}]: not a SHA-256 hex "
                                f"digest; the Secret holds hashes only, never keys")
    if problems:
        raise PlanRefused(problems)
    return plan


def _whole_gpu_sizes(plan: Plan) -> list[str]:
    """Multi-GPU replicas on one GPU type must nest (1, 2, 4...) so they pack into equal pods."""
    sizes: dict[str, set[int]] = {}
    for d in plan.deployments:
        if d.device == "gpu" and d.gpus_per_replica >= 1 and d.gpus_per_replica == math.floor(d.gpus_per_replica):
            sizes.setdefault(str(d.accelerator), set()).add(int(d.gpus_per_replica))
    problems = []
    for accelerator, found in sizes.items():
        ordered = sorted(found)
        if any(b % a for a, b in zip(ordered, ordered[1:])):
            problems.append(f"deployments: {accelerator} replicas of {ordered} GPUs do not divide each other, "
                            f"so they cannot share worker pods of one size")
    return problems


def _describe(problem: dict) -> str:
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in problem["loc"]).lstrip(".")
    return f"{where or '(top level)'}: {problem['msg'].removeprefix('Value error, ')}"
