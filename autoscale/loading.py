"""Reading cluster specs and plans from YAML (the I/O the planner itself never does).

- `${NAME}` and `${NAME:-default}` in string values expand from the environment.
- A model with neither `family` nor `architecture` whose checkpoint is a local directory takes
  its architecture from the checkpoint's config.json.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from paliserve.spec import ClusterSpec, Plan

from .planner import SpecError

ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def load_spec(source: str | Path, env: Mapping[str, str] | None = None) -> ClusterSpec:
    """Parse a cluster spec file; errors name the field (`tenants.0.slo.ttft_p95_ms: ...`)."""
    text = Path(source).read_text()
    return parse_spec(text, env)


def parse_spec(text: str, env: Mapping[str, str] | None = None) -> ClusterSpec:
    raw = yaml.safe_load(text)
    if not isinstance(raw, dict):
        raise SpecError("the cluster spec must be a YAML mapping with models, gpus and tenants")
    raw = expand_env(raw, os.environ if env is None else env, "")
    for i, model in enumerate(raw.get("models") or []):
        if isinstance(model, dict) and not model.get("family") and not model.get("architecture"):
            checkpoint = model.get("checkpoint")
            if checkpoint and (Path(checkpoint) / "config.json").is_file():
                model["architecture"] = architecture_from_config(
                    json.loads((Path(checkpoint) / "config.json").read_text()), f"models[{i}].checkpoint"
                )
    try:
        return ClusterSpec.model_validate(raw)
    except ValidationError as error:
        raise SpecError(describe_validation_error(error)) from None


def expand_env(value: Any, env: Mapping[str, str], path: str) -> Any:
    if isinstance(value, dict):
        return {k: expand_env(v, env, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, env, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str):
        def substitute(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise SpecError(f"{path}: environment variable {name} is not set")

        return ENV_REFERENCE.sub(substitute, value)
    return value


def architecture_from_config(config: dict, field: str) -> dict:
    """The spec's `architecture` block from a Hugging Face PaliGemma config.json."""
    text, vision = config.get("text_config") or {}, config.get("vision_config") or {}

    def need(section: dict, key: str, where: str):
        if key not in section:
            raise SpecError(f"{field}: config.json has no {where}.{key}")
        return section[key]

    gemma2 = text.get("model_type") == "gemma2"
    return {
        "text": {
            "hidden_size": need(text, "hidden_size", "text_config"),
            "intermediate_size": need(text, "intermediate_size", "text_config"),
            "num_layers": need(text, "num_hidden_layers", "text_config"),
            "num_heads": need(text, "num_attention_heads", "text_config"),
            "num_kv_heads": text.get("num_key_value_heads", text.get("num_attention_heads")),
            "head_dim": text.get("head_dim") or need(text, "hidden_size", "text_config") // text["num_attention_heads"],
            "vocab_size": need(text, "vocab_size", "text_config"),
            "max_position_embeddings": text.get("max_position_embeddings", 8192),
            "sliding_window": text.get("sliding_window") if gemma2 else None,
        },
        "vision": {
            "hidden_size": need(vision, "hidden_size", "vision_config"),
            "intermediate_size": need(vision, "intermediate_size", "vision_config"),
            "num_layers": need(vision, "num_hidden_layers", "vision_config"),
            "num_heads": vision.get("num_attention_heads", 16),
            "patch_size": need(vision, "patch_size", "vision_config"),
            "image_size": need(vision, "image_size", "vision_config"),
        },
    }


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem, each starting with the field's path."""
    lines = []
    for problem in error.errors():
        where = ".".join(str(p) for p in problem["loc"]) or "(top level)"
        message = problem["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return "invalid cluster spec:\n  " + "\n  ".join(lines)


def load_plan(path: str | Path) -> Plan:
    return Plan.model_validate(yaml.safe_load(Path(path).read_text()))


def dump_plan(plan: Plan) -> str:
    return yaml.safe_dump(plan.model_dump(mode="json"), sort_keys=False, width=100)
