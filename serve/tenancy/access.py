"""What a tenant may call: base models it is granted and the LoRA adapters it owns.

Clients name an adapter as `<base model>:<adapter>`; `/v1/models` lists both kinds per tenant.
"""

from __future__ import annotations

from dataclasses import dataclass

from paliserve.spec import AdapterPlan, TenantPlan
from serve.errors import InvalidRequest, ModelNotFound, PermissionDenied

ADAPTER_SEPARATOR = ":"


@dataclass(frozen=True)
class Target:
    """Where a request goes: the base model's engines, optionally with one adapter."""

    model: str
    adapter: str | None = None

    @property
    def name(self) -> str:
        return f"{self.model}{ADAPTER_SEPARATOR}{self.adapter}" if self.adapter else self.model


class Catalog:
    """Served base models and their adapters (from the plan)."""

    def __init__(self, models: list[str], adapters: dict[str, list[AdapterPlan]]):
        self.models = sorted(models)
        self.adapters = {m: {a.name: a for a in adapters.get(m, [])} for m in self.models}

    def all_targets(self) -> list[Target]:
        return [Target(m) for m in self.models] + [
            Target(m, a) for m in self.models for a in sorted(self.adapters[m])
        ]

    def visible_to(self, tenant: TenantPlan | None) -> list[Target]:
        return [t for t in self.all_targets() if allowed(tenant, t, self)]

    def resolve(self, requested: str | None, tenant: TenantPlan | None) -> Target:
        """The target a `model` field names, or 400/403/404. A tenant is told only about what it may use."""
        visible = [t.name for t in self.visible_to(tenant)]
        if requested is None:
            bases = [t for t in self.visible_to(tenant) if t.adapter is None]
            if len(self.models) == 1 and bases:
                return bases[0]
            raise InvalidRequest("`model` is required when several models are served.", param="model")
        model, _, adapter = requested.partition(ADAPTER_SEPARATOR)
        target = Target(model, adapter or None)
        if model not in self.adapters or (target.adapter and target.adapter not in self.adapters[model]):
            raise ModelNotFound(requested, visible)
        if not allowed(tenant, target, self):
            raise PermissionDenied(
                f"Your API key does not grant access to the model '{requested}'. "
                f"Available to you: {', '.join(visible) or 'none'}",
                param="model",
                code="model_not_allowed",
            )
        return target


def allowed(tenant: TenantPlan | None, target: Target, catalog: Catalog) -> bool:
    if tenant is None:  # open mode (no tenants in the plan)
        return True
    if target.adapter is None:
        return target.model in tenant.models
    adapter = catalog.adapters[target.model][target.adapter]
    return adapter.tenant == tenant.name and target.adapter in tenant.adapters
