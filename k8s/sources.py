"""Reading what `paliserve k8s` is given: a plan, or a cluster spec that is planned first."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from autoscale.loading import parse_spec
from autoscale.planner import plan as make_plan
from paliserve.spec import Plan

from .checks import PlanRefused, load_plan_data

TINY_MODEL_ENV = "PALISERVE_TINY_MODEL"


def load_plan_or_spec(path: Path, tiny_model: str | None = None) -> Plan:
    """A plan file as it is; a cluster spec (has `models`) through the planner."""
    text = path.read_text()
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise PlanRefused([f"{path}: expected a plan (with `deployments`) or a cluster spec (with `models`)"])
    if "deployments" in data:
        return load_plan_data(data)
    env = dict(os.environ)
    if tiny_model:
        env[TINY_MODEL_ENV] = tiny_model  # the checkpoint must be where the pods build it
    return make_plan(parse_spec(text, env))
