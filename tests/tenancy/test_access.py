"""Which base models and adapters a tenant may name; what `/v1/models` shows it."""

import pytest

from paliserve.spec import AdapterPlan, TenantPlan
from serve.errors import InvalidRequest, ModelNotFound, PermissionDenied
from serve.tenancy.access import Catalog, Target

CATALOG = Catalog(
    ["base", "other"],
    {"base": [AdapterPlan(name="a-style", path="/a", tenant="a"), AdapterPlan(name="b-style", path="/b", tenant="b")]},
)
A = TenantPlan(name="a", models=["base"], adapters=["a-style"])
B = TenantPlan(name="b", models=["base", "other"], adapters=["b-style"])
ADAPTER_ONLY = TenantPlan(name="c", models=[], adapters=[])


def test_models_list_only_what_the_tenant_may_use():
    assert [t.name for t in CATALOG.visible_to(A)] == ["base", "base:a-style"]
    assert [t.name for t in CATALOG.visible_to(B)] == ["base", "other", "base:b-style"]
    assert CATALOG.visible_to(ADAPTER_ONLY) == []
    assert len(CATALOG.visible_to(None)) == 4  # no tenants: everything


@pytest.mark.parametrize(
    "tenant, requested, expected",
    [
        (A, "base", Target("base")),
        (A, "base:a-style", Target("base", "a-style")),
        (B, "other", Target("other")),
        (B, "base:b-style", Target("base", "b-style")),
    ],
)
def test_allowed(tenant, requested, expected):
    assert CATALOG.resolve(requested, tenant) == expected


@pytest.mark.parametrize(
    "tenant, requested",
    [(A, "other"), (A, "base:b-style"), (B, "base:a-style"), (ADAPTER_ONLY, "base")],
)
def test_refused_with_403(tenant, requested):
    with pytest.raises(PermissionDenied) as err:
        CATALOG.resolve(requested, tenant)
    assert err.value.status_code == 403 and err.value.param == "model"


def test_another_tenants_adapter_is_refused_even_if_listed_in_its_own_plan_entry():
    sneaky = TenantPlan(name="a", models=["base"], adapters=["a-style", "b-style"])
    with pytest.raises(PermissionDenied):
        CATALOG.resolve("base:b-style", sneaky)


@pytest.mark.parametrize("requested", ["nope", "base:nope", "other:a-style"])
def test_unknown_names_are_404_and_list_only_the_callers_models(requested):
    with pytest.raises(ModelNotFound) as err:
        CATALOG.resolve(requested, A)
    assert "b-style" not in err.value.message and "other" not in err.value.message.split("Available models:")[1]


def test_model_is_required_with_several_models():
    with pytest.raises(InvalidRequest):
        CATALOG.resolve(None, B)
    single = Catalog(["base"], {})
    assert single.resolve(None, A) == Target("base")
