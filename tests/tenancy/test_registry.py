"""Live tenant changes without a cluster: validation, diffing (never a key in what is printed),
the tenants directory (written the way kubelet writes a mounted Secret and ConfigMap, read the way
the gateway reads it), and a replica's Tenancy updated in place."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from k8s.render import render
from k8s.settings import Settings
from k8s.sources import load_plan_or_spec
from paliserve.spec import AdapterPlan, Slo, TenantLimits, TenantPlan
from paliserve.tenants import TenantsRefused, tenants_from_file, wait_until_served
from serve.app import tenancy_config, tenant_user_config
from serve.errors import Unauthorized
from serve.tenancy.access import Target
from serve.tenancy.admission import Tenancy, TenancyConfig
from serve.tenancy.identity import key_digest
from serve.tenancy.registry import (CONFIG_DIR, CONFIG_FILE, KEYS_DIR, ServedCatalog, TenantFeed, TenantSetInvalid, catalog_of,
                                    diff_tenants, read_tenant_dir, runtime_tenants, summary, tenant_set_version,
                                    validate_tenants, write_tenant_dir)

MODEL = "tiny-paligemma"
REPO = Path(__file__).resolve().parents[2]
CATALOG = ServedCatalog((MODEL,), {"alice-style": "alice"})
TINY_MODEL = "/models/tiny-paligemma"


def cpu_plan():
    """The dev overlay's plan: local-cpu.yaml planned (one tenant, `local`, key sk-local-dev)."""
    return load_plan_or_spec(REPO / "paliserve" / "defaults" / "local-cpu.yaml", tiny_model=TINY_MODEL)


def render_docs(plan, overlay: str) -> dict[str, dict]:
    """kind -> document of the overlay's own files, as `paliserve k8s` renders them."""
    files = render(plan, overlay, Settings(tiny_model=TINY_MODEL))
    docs = [yaml.safe_load(t) for p, t in files.items() if p.startswith(f"overlays/{overlay}/") and not p.endswith("kustomization.yaml")]
    return {doc["kind"]: doc for doc in docs}


def tenant(name, *keys, **fields) -> TenantPlan:
    fields.setdefault("models", [MODEL])
    return TenantPlan(name=name, api_key_sha256=[key_digest(k) for k in keys], **fields)


def digests(*tenants: TenantPlan) -> list[str]:
    return [d for t in tenants for d in t.api_key_sha256]


# ---- validation and diffs ---------------------------------------------------------------------


def test_valid_set_passes_and_problems_name_tenant_and_field_never_the_key():
    good = [tenant("alice", "sk-a", adapters=["alice-style"]), tenant("bob", "sk-b")]
    assert validate_tenants(good, CATALOG) == []
    bad = [
        tenant("alice", "sk-a", models=["other-model"], adapters=["ghost"]),
        tenant("bob", "sk-a", adapters=["alice-style"]),  # alice's key, alice's adapter
        TenantPlan(name="carol", api_key_sha256=["sk-plain-key"], models=[MODEL]),
        tenant("bob", "sk-b2"),
        tenant("bad name!", "sk-x"),
    ]
    problems = validate_tenants(bad, CATALOG)
    text = "\n".join(problems)
    for expected in ["tenant 'bob' appears more than once", "model 'other-model' is not served here",
                     "adapter 'ghost' is not served here", "adapter 'alice-style' belongs to tenant 'alice'",
                     "tenant bob: api_key_sha256[0] is also a key of tenant alice",
                     "tenant carol: api_key_sha256[0] is not 64 lowercase hex digits", "name must match"]:
        assert expected in text, text
    assert not any(d in text for d in digests(*bad)) and "sk-plain-key" not in text


def test_limits_are_refused_where_no_quota_store_enforces_them():
    limited = [tenant("alice", "sk-a", limits=TenantLimits(requests_per_min=10))]
    assert validate_tenants(limited, CATALOG) == []
    (problem,) = validate_tenants(limited, ServedCatalog((MODEL,), quotas=False))
    assert problem.startswith("tenant alice: has limits, and this cluster has no quota store")
    assert not catalog_of(Tenancy(TenancyConfig(capacity={MODEL: 4}), None)).quotas


def test_removing_every_tenant_from_an_authenticating_cluster_is_refused():
    (problem,) = validate_tenants([], CATALOG, current=[tenant("alice", "sk-a")])
    assert "turn authentication off" in problem
    assert validate_tenants([], CATALOG, current=[]) == []


def test_diff_names_tenants_and_fields_and_counts_keys():
    old = [tenant("alice", "sk-a"), tenant("bob", "sk-b"), tenant("carol", "sk-c", weight=1.0)]
    new = [tenant("alice", "sk-a", "sk-a2"),  # rotation: the new key beside the old one
           tenant("carol", "sk-c3", weight=3.0, limits=TenantLimits(requests_per_min=60),
                  slo=Slo(ttft_p95_ms=500, tpot_p95_ms=50)),
           tenant("dave", "sk-d1", "sk-d2")]
    lines = [c.describe() for c in diff_tenants(old, new)]
    assert lines == ["changed alice: keys (+1 -0)", "removed bob",
                     "changed carol: keys (+1 -1), weight, limits, slo", "added dave (2 keys)"]
    text = "\n".join(lines)
    assert not any(d in text for d in digests(*old, *new)) and "sk-" not in text
    assert diff_tenants(new, new) == []


def test_version_is_the_enforced_content_only():
    a = [tenant("a", "k1", "k2"), tenant("b", "k3")]
    reordered = [tenant("b", "k3"), tenant("a", "k2", "k1")]
    assert tenant_set_version(a) == tenant_set_version(reordered)
    planned = [t.model_copy(update={"predicted_ttft_p95_ms": 12.0, "deployment": "x"}) for t in a]
    assert tenant_set_version(planned) == tenant_set_version(a)
    assert tenant_set_version([tenant("a", "k1"), tenant("b", "k3")]) != tenant_set_version(a)


def test_summary_counts_keys_and_holds_no_digest():
    t = tenant("alice", "sk-a", "sk-b", limits=TenantLimits(tokens_per_min=100))
    s = summary(t)
    assert s["keys"] == 2 and s["limits"] == {"tokens_per_min": 100}
    assert not any(d in json.dumps(s) for d in t.api_key_sha256)


# ---- the directory ----------------------------------------------------------------------------


def test_write_then_read_round_trips_through_one_atomic_link(tmp_path):
    tenants = [tenant("alice", "sk-a", adapters=["alice-style"], weight=2.0), tenant("nokeys")]
    write_tenant_dir(tmp_path, tenants)
    assert tenant_set_version(read_tenant_dir(tmp_path)) == tenant_set_version(tenants)
    assert os.path.islink(tmp_path / "..data") and os.path.islink(tmp_path / KEYS_DIR)
    first = os.readlink(tmp_path / "..data")
    write_tenant_dir(tmp_path, tenants[:1])
    assert [t.name for t in read_tenant_dir(tmp_path)] == ["alice"]
    assert not (tmp_path / first).exists(), "the previous generation is removed"
    assert (tmp_path / CONFIG_DIR / CONFIG_FILE).read_text().count("sk-") == 0
    assert key_digest("sk-a") not in (tmp_path / CONFIG_DIR / CONFIG_FILE).read_text()


def test_no_config_file_means_no_set(tmp_path):
    assert read_tenant_dir(tmp_path) is None


@pytest.mark.parametrize(("text", "expected"), [
    ("tenants: [{name: a, models: [m], api_key_sha256: [x]}]", "keys belong in the tenant-keys Secret"),
    ("tenants: [{name: a, models: [m], weight: -1}]", "tenant a: weight must be greater than 0"),
    ("tenants: [{name: a, models: [m], colour: red}]", "unknown field(s) colour"),
    ("tenants: {a: 1}", "expected a mapping with a `tenants` list"),
    ("tenants: [a", "not valid YAML"),
])
def test_invalid_config_is_refused_naming_the_field(tmp_path, text, expected):
    (tmp_path / CONFIG_DIR).mkdir()
    (tmp_path / CONFIG_DIR / CONFIG_FILE).write_text(text)
    with pytest.raises(TenantSetInvalid) as err:
        read_tenant_dir(tmp_path)
    assert expected in str(err.value)


def kubelet_write(volume: Path, files: dict[str, str]) -> None:
    """What kubelet's atomic writer does for a Secret or ConfigMap volume: the files in a new
    timestamped directory, `..data` swapped to it by a rename, each key a link through `..data`."""
    volume.mkdir(parents=True, exist_ok=True)
    generation = volume / f"..{time.time_ns()}"
    generation.mkdir()
    for name, text in files.items():
        (generation / name).write_text(text)
    old = os.readlink(volume / "..data") if (volume / "..data").is_symlink() else None
    os.symlink(generation.name, volume / "..data_tmp")
    os.replace(volume / "..data_tmp", volume / "..data")
    for name in files:
        if not (volume / name).is_symlink():
            os.symlink(f"..data/{name}", volume / name)
    for entry in os.listdir(volume):  # keys no longer in the object
        if not entry.startswith(".") and entry not in files:
            os.unlink(volume / entry)
    if old:
        shutil.rmtree(volume / old)


def mount(root: Path, secret: dict, configmap: dict) -> None:
    """The rendered Secret and ConfigMap as the RayService mounts them under the tenants root."""
    kubelet_write(root / KEYS_DIR, dict(secret["stringData"]))
    kubelet_write(root / CONFIG_DIR, dict(configmap["data"]))


class NoQuotaCalls:
    """A quota store these tests never call: its presence allows tenants with limits."""


def tenancy_for(plan, quotas=NoQuotaCalls()) -> Tenancy:
    return Tenancy(TenancyConfig(**tenancy_config(plan)), quotas)


def test_the_gateway_reads_the_mounted_secret_and_configmap_and_follows_their_changes(tmp_path):
    """The manifests' own Secret and ConfigMap, mounted the way kubelet mounts them, are what a
    replica serves; a kubectl apply of the Secret (kubelet's symlink swap) rotates a key."""
    plan = cpu_plan()
    docs = render_docs(plan, "dev")
    secret, configmap = docs["Secret"], docs["ConfigMap"]
    rayservice = yaml.safe_dump(docs["RayService"])
    assert "PALISERVE_TENANTS_DIR" in rayservice and "/etc/paliserve/tenants" in rayservice
    root = tmp_path / "etc-paliserve"
    mount(root, secret, configmap)

    tenancy = tenancy_for(plan)
    feed = TenantFeed(tenancy, root=str(root))
    asyncio.run(feed.configure({"tenants": []}))  # the files win over the user_config
    assert feed.source == "files" and feed.version == tenant_set_version(plan.tenants)
    assert tenancy.authenticate("Bearer sk-local-dev", "10.0.0.1").name == "local"

    # rotate: a new key beside the old one, then the old one revoked
    new_digest = key_digest("sk-rotated")
    secret["stringData"]["local"] += f"{new_digest}\n"
    kubelet_write(root / KEYS_DIR, dict(secret["stringData"]))
    assert feed.poll()
    assert tenancy.authenticate("Bearer sk-rotated", None).name == "local"
    assert tenancy.authenticate("Bearer sk-local-dev", None).name == "local"
    secret["stringData"]["local"] = f"{new_digest}\n"
    kubelet_write(root / KEYS_DIR, dict(secret["stringData"]))
    assert feed.poll()
    with pytest.raises(Unauthorized):
        tenancy.authenticate("Bearer sk-local-dev", None)
    assert not feed.poll(), "nothing changed: nothing re-read or applied"

    # the ConfigMap: a weight and a limit change reach the tenant objects
    entries = yaml.safe_load(configmap["data"][CONFIG_FILE])
    entries["tenants"][0].update(weight=5.0, limits={"requests_per_min": 7})
    kubelet_write(root / CONFIG_DIR, {CONFIG_FILE: yaml.safe_dump(entries)})
    assert feed.poll()
    local = tenancy.authenticate("Bearer sk-rotated", None)
    assert local.weight == 5.0 and local.limits.requests_per_min == 7

    # a broken Secret (not a digest) is refused as a whole: the last good set stays
    kubelet_write(root / KEYS_DIR, {"local": "sk-plain-text-key\n"})
    assert not feed.poll()
    assert feed.refused and "api_key_sha256[0]" in feed.refused[0]
    assert tenancy.authenticate("Bearer sk-rotated", None).name == "local"
    assert "sk-plain-text-key" not in json.dumps(feed.status())


async def until_accepted(tenancy, bearer: str, since: float, limit_s: float = 5) -> None:
    """Wait until the tenancy accepts `bearer`, at most `limit_s` after `since`."""
    while True:
        try:
            tenancy.authenticate(bearer, None)
            return
        except Unauthorized:
            await asyncio.sleep(0.01)
            assert time.monotonic() - since < limit_s


def test_the_watch_applies_a_change_within_its_interval(tmp_path):
    plan = cpu_plan()
    write_tenant_dir(tmp_path, runtime_tenants(plan.tenants))
    tenancy = tenancy_for(plan)
    status_dir = tmp_path / "served"

    async def scenario() -> float:
        feed = TenantFeed(tenancy, root=str(tmp_path), status_dir=str(status_dir), interval_s=0.05)
        await feed.configure(tenant_user_config(plan))
        written = time.monotonic()
        write_tenant_dir(tmp_path, [tenant("local", "sk-next")])
        await until_accepted(tenancy, "Bearer sk-next", written)
        took = time.monotonic() - written
        while reported()["version"] != expected:  # the report follows the swap (written off the event loop)
            await asyncio.sleep(0.01)
            assert time.monotonic() - written < 5
        feed.stop()
        return took

    def reported() -> dict:
        (status,) = [json.loads(p.read_text()) for p in status_dir.glob("*.json")]
        return status

    expected = tenant_set_version([tenant("local", "sk-next")])
    assert asyncio.run(scenario()) < 2
    status = reported()
    assert status["version"] == expected and status["source"] == "files"
    assert status["tenants"][0]["keys"] == 1 and key_digest("sk-next") not in json.dumps(status)
    assert status["catalog"] == {"models": [MODEL], "adapters": {}, "quotas": True}


def test_a_ticket_admitted_before_a_change_finishes_on_the_state_it_had():
    plan = cpu_plan()
    tenancy = tenancy_for(plan, quotas=None)  # no limits here: nothing for a quota store to do
    tenancy.update_tenants([tenant("alice", "sk-a", weight=1.0)])
    gate = tenancy.gates[MODEL]

    async def scenario():
        alice = tenancy.authenticate("Bearer sk-a", None)
        ticket = await tenancy.admit(alice, Target(MODEL), estimate=10)
        assert gate.running == 1
        tenancy.update_tenants([tenant("bob", "sk-b", weight=3.0)])  # alice removed mid-request
        assert tenancy.gates[MODEL] is gate, "the fair gate (and its counters) survive"
        with pytest.raises(Unauthorized):
            tenancy.authenticate("Bearer sk-a", None)
        ticket.finish(200, 5, 5)
        assert gate.running == 0 and ticket.tenant.name == "alice"

    asyncio.run(scenario())


# ---- what the app and the CLI are given -------------------------------------------------------


def test_no_tenant_data_in_the_gateways_init_arguments():
    plan = cpu_plan()
    assert "tenants" not in tenancy_config(plan)
    assert "api_key_sha256" not in json.dumps(tenancy_config(plan))
    assert tenant_user_config(plan) == {"tenants": [t.model_dump(mode="json") for t in runtime_tenants(plan.tenants)]}
    from serve.app import build_app

    app = build_app(plan)
    deployment = app._bound_deployment
    init = json.dumps([deployment.init_args, deployment.init_kwargs], default=str)
    assert not any(d in init for t in plan.tenants for d in t.api_key_sha256)
    assert deployment._deployment_config.user_config == tenant_user_config(plan)


def test_gateway_replicas_split_the_engines_capacity_and_share_tenant_state_through_the_store():
    from serve.app import build_app

    plan = cpu_plan()
    assert plan.colocated and plan.ingress_replicas() == plan.deployments[0].replicas.max
    plan.gateway.colocate = False
    (model,) = tenancy_config(plan)["capacity"]
    whole = tenancy_config(plan)["capacity"][model]
    plan.gateway.replicas = 3
    plan = type(plan).model_validate(plan.model_dump())
    assert tenancy_config(plan)["capacity"][model] == -(-whole // 3)
    assert build_app(plan)._bound_deployment._deployment_config.num_replicas == 3
    plan.tenants = [t.model_copy(update={"limits": TenantLimits()}) for t in plan.tenants]
    assert plan.tenants
    assert plan.needs_quota_store(), "two or more gateways share fair-share counters through the store"
    plan.gateway.replicas = 1
    assert not plan.needs_quota_store()
    data = plan.model_dump()
    data["gateway"].update(colocate=True, replicas=2)
    with pytest.raises(ValueError, match="gateway.replicas applies to a separate gateway"):
        type(plan).model_validate(data)


def test_a_spec_is_planned_into_tenant_plans_and_a_plan_gives_its_own(tmp_path, monkeypatch):
    from autoscale.loading import load_spec
    from autoscale.planner import plan as make_plan

    monkeypatch.setenv("PALISERVE_TINY_MODEL", "/models/tiny-paligemma")
    spec_file = REPO / "paliserve" / "defaults" / "local-cpu.yaml"
    from_spec = tenants_from_file(spec_file)
    assert from_spec == runtime_tenants(make_plan(load_spec(spec_file)).tenants)
    plan_file = tmp_path / "plan.yaml"
    plan = cpu_plan()
    plan_file.write_text(yaml.safe_dump(plan.model_dump(mode="json")))
    assert tenants_from_file(plan_file) == runtime_tenants(plan.tenants)
    for text, expected in [("just text", "expected a plan"), ("deployments: 3", "deployments"),
                           ("models: []\ntenants: []", "models")]:
        plan_file.write_text(text)
        with pytest.raises(TenantsRefused, match=expected):
            tenants_from_file(plan_file)


def test_waiting_for_replicas_sees_lagging_refusing_and_new_replicas(tmp_path):
    def report(replica: str, version: str, refused=()):
        (tmp_path / f"{replica.replace(':', '_').replace('#', '_')}.json").write_text(
            json.dumps({"replica": replica, "version": version, "refused": list(refused)}))

    r1, r2, dead = ("SERVE_REPLICA::paliserve#tiny#r1", "SERVE_REPLICA::paliserve#tiny#r2",
                    "SERVE_REPLICA::paliserve#tiny#old")
    report(r1, "v2")
    report(dead, "v1")  # a replica that has gone: its report is ignored
    live = {r1, r2, "SERVE_REPLICA::paliserve#other-deployment#x"}
    replicas, problems = wait_until_served(tmp_path, "v2", lambda: live, timeout_s=0.3)
    assert "SERVE_REPLICA::paliserve#tiny#r2" in problems[0], "a live replica that has not reported is waited for"
    report(r2, "v2")
    assert wait_until_served(tmp_path, "v2", lambda: live, timeout_s=1) == (2, [])
    report(r2, "v1", refused=["tenant x: model 'y' is not served here"])
    assert wait_until_served(tmp_path, "v2", lambda: live, timeout_s=5)[1] == ["tenant x: model 'y' is not served here"]


def test_adapters_of_the_catalog_come_from_the_deployment():
    plan = cpu_plan()
    plan.deployments[0].adapters = [AdapterPlan(name="alice-style", path="/x", tenant="alice")]
    assert catalog_of(tenancy_for(plan)) == ServedCatalog((MODEL,), {"alice-style": "alice"})


def test_the_separate_gateway_gets_the_tenants_as_user_config_too():
    plan = cpu_plan()
    plan.gateway.colocate = False
    from serve.app import build_app

    gateway = build_app(plan)._bound_deployment
    assert gateway._deployment_config.user_config == tenant_user_config(plan)
    init = json.dumps([gateway.init_args[1:], gateway.init_kwargs], default=str)
    assert not any(d in init for t in plan.tenants for d in t.api_key_sha256)


def test_the_cli_refuses_a_bad_file_before_touching_any_cluster(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from paliserve.cli import app

    monkeypatch.setenv("PALISERVE_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("tenants: [1, 2]\n")
    result = CliRunner().invoke(app, ["tenants", "apply", str(bad)])
    assert result.exit_code == 2 and "refused, nothing changed" in result.output
    good = tmp_path / "plan.yaml"
    good.write_text(yaml.safe_dump(cpu_plan().model_dump(mode="json")))
    result = CliRunner().invoke(app, ["tenants", "apply", str(good)])
    assert result.exit_code == 1 and "paliserve is not running" in result.output
    result = CliRunner().invoke(app, ["tenants", "list"])
    assert result.exit_code == 1 and "paliserve is not running" in result.output
