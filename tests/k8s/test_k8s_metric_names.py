"""Every metric the alert rules and the dashboard query exists: `ray_paliserve_*` as the code
defines it, `ray_vllm_*` (and any other Ray metric) as README's metrics table lists it."""

from __future__ import annotations

import importlib
import re

from k8s_plans import REPO, example_plan

from k8s.render import render

PACKAGES = ("paliserve", "serve", "autoscale", "k8s", "loadtests")
METRIC_MODULES = {  # module -> builds every Ray metric the module defines
    "serve.tenancy.metrics": lambda module: (module.TenantMetrics(), module.EngineUsageMetrics()),
    "autoscale.decision_record": lambda module: module.DecisionRecorder("deployment"),
}
SERIES = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",), "gauge": ("",)}
METRIC = re.compile(r"\bray_[a-z0-9_]+")


def referenced() -> set[str]:
    """Metric names in the rendered PrometheusRule and the dashboard."""
    files = render(example_plan(), "prod")
    text = files["overlays/prod/prometheusrule.yaml"] + files["base/dashboard.yaml"]
    return set(METRIC.findall(text))


def defined(monkeypatch) -> dict[str, str]:
    """Prometheus name (with Ray's `ray_` prefix) -> kind of every metric the code defines."""
    names: dict[str, str] = {}

    def recorder(kind: str):
        def record(name: str, *args, **kwargs):
            names[f"ray_{name}"] = kind
        return record

    for module_name, build in METRIC_MODULES.items():
        module = importlib.import_module(module_name)
        for kind in SERIES:
            for class_name in (kind.capitalize(), f"Batched{kind.capitalize()}"):  # Ray's or serve.batched_metrics'
                monkeypatch.setattr(module, class_name, recorder(kind), raising=False)
        build(module)
    return names


def exposed(names: dict[str, str]) -> set[str]:
    """The series Prometheus holds for metrics named as `ray.util.metrics` names them."""
    return {name + suffix for name, kind in names.items() for suffix in SERIES[kind]}


def documented() -> dict[str, str]:
    """README's metrics table: name as exposed (counters with `_total`) -> kind."""
    names = {}
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("| `ray_"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            for name in re.findall(r"`(ray_\w+)`", cells[0]):
                names[name] = "histogram" if cells[1] == "histogram" else "gauge"  # no suffix added
    return names


def test_every_module_defining_ray_metrics_is_inspected():
    modules = {str(path.relative_to(REPO).with_suffix("")).replace("/", ".")
               for package in PACKAGES for path in (REPO / package).rglob("*.py")
               if re.search(r"ray\.util\.metrics import|serve\.batched_metrics import Batched", path.read_text())}
    assert modules == set(METRIC_MODULES)


def test_paliserve_metrics_in_rules_and_dashboard_are_defined(monkeypatch):
    wanted = {name for name in referenced() if name.startswith("ray_paliserve_")}
    assert {"ray_paliserve_requests_total", "ray_paliserve_rejections_total"} <= wanted
    undefined = wanted - exposed(defined(monkeypatch))
    assert not undefined, f"no such metric in the code: {sorted(undefined)}"


def test_other_metrics_in_rules_and_dashboard_are_documented():
    wanted = {name for name in referenced() if not name.startswith("ray_paliserve_")}
    assert {"ray_vllm_kv_cache_usage_perc", "ray_vllm_time_to_first_token_seconds_bucket"} <= wanted
    undocumented = wanted - exposed(documented())
    assert not undocumented, f"not in README's metrics table: {sorted(undocumented)}"


def test_readme_names_the_metrics_the_code_defines(monkeypatch):
    in_readme = {name: kind for name, kind in documented().items() if name.startswith("ray_paliserve_")}
    assert exposed(in_readme) == exposed(defined(monkeypatch))
