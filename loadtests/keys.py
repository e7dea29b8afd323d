"""API keys for the tenants: a plan holds only their SHA-256, so the operator supplies the keys.

Sources, first match wins: `--keys FILE` (YAML or JSON mapping tenant -> key), the environment
variable PALISERVE_LOADTEST_KEYS (a JSON mapping), then the local development key
`sk-local-dev` for tenants whose hashes include it. A supplied key must hash to one of the
tenant's hashes; a tenant with no hashes is sent no key.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from .traffic import PlanError

if TYPE_CHECKING:
    from paliserve.spec import Plan

ENV_KEYS = "PALISERVE_LOADTEST_KEYS"
DEV_KEYS = ("sk-local-dev",)


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def supplied_keys(path: Path | None, env: Mapping[str, str] = os.environ) -> dict[str, str]:
    keys: dict[str, str] = {}
    if env.get(ENV_KEYS):
        keys.update(_mapping(json.loads(env[ENV_KEYS]), ENV_KEYS))
    if path is not None:
        keys.update(_mapping(yaml.safe_load(Path(path).read_text()), str(path)))
    return keys


def _mapping(raw, where: str) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise PlanError(f"{where}: expected a mapping of tenant name to API key")
    return {str(k): v for k, v in raw.items()}


def tenant_keys(plan: Plan, supplied: Mapping[str, str]) -> dict[str, str | None]:
    """The key each tenant with a workload sends (None: the tenant has no key hashes)."""
    result: dict[str, str | None] = {}
    for tenant in plan.tenants:
        if tenant.workload is None:
            continue
        hashes = set(tenant.api_key_sha256)
        key = supplied.get(tenant.name)
        if key is not None:
            if hashes and sha256(key) not in hashes:
                raise PlanError(f"tenant {tenant.name}: the supplied key does not match the plan's api_key_sha256")
            result[tenant.name] = key
        elif not hashes:
            result[tenant.name] = None
        else:
            dev = next((k for k in DEV_KEYS if sha256(k) in hashes), None)
            if dev is None:
                raise PlanError(
                    f"tenant {tenant.name} needs its API key: give --keys FILE ({tenant.name}: <key>) "
                    f"or {ENV_KEYS}='{{\"{tenant.name}\": \"<key>\"}}'"
                )
            result[tenant.name] = dev
    return result
