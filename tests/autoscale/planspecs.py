"""Small cluster specs for the planner tests."""

from pathlib import Path

from autoscale.catalog import model_from_id
from paliserve.spec import ClusterSpec, GpuSpec, Slo, TenantSpec, Workload

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "cluster.yaml"
LOCAL_CPU = ROOT / "paliserve" / "defaults" / "local-cpu.yaml"


def one_tenant(model_id="paligemma-3b-mix-224", gpu="L4", count=64, concurrency=8, ttft=2000.0,
               tpot=100.0, prompt=20, output=64, per_node=8, peak=None, **gpu_fields) -> ClusterSpec:
    model = model_from_id(model_id)
    return ClusterSpec(
        models=[model],
        gpus=[GpuSpec(type=gpu, count=count, per_node=per_node, **gpu_fields)],
        tenants=[TenantSpec(name="t", models=[model.name],
                            workload=Workload(concurrency=concurrency, peak_concurrency=peak,
                                              prompt_tokens=prompt, output_tokens=output),
                            slo=Slo(ttft_p95_ms=ttft, tpot_p95_ms=tpot))],
    )
