"""Plan 1,000 tenants over 5 models against the whole GPU catalog; print the time (target < 1 s).

    .venv/bin/python benchmarks/plan_scale.py [--tenants 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoscale.catalog import GPU_CATALOG, model_from_id  # noqa: E402
from autoscale.planner import plan  # noqa: E402
from paliserve.spec import ClusterSpec, GpuSpec, Slo, TenantSpec, Workload  # noqa: E402

MODELS = ["paligemma-3b-mix-224", "paligemma-3b-mix-448", "paligemma2-3b-pt-448",
          "paligemma2-10b-pt-224", "paligemma2-28b-pt-224"]
TARGET_S = 1.0


def big_spec(tenants: int, seed: int = 0) -> ClusterSpec:
    rng = random.Random(seed)
    models = [model_from_id(m) for m in MODELS]
    gpus = [GpuSpec(type=name, count=10_000, per_node=8, cost_per_hour=round(rng.uniform(0.5, 5), 2))
            for name, accel in GPU_CATALOG.items() if accel.device == "gpu"]
    people = []
    for i in range(tenants):
        model = models[i % len(models)].name
        prompt = rng.randint(5, 60)
        output = rng.randint(8, 200)
        people.append(TenantSpec(
            name=f"tenant-{i:04d}",
            api_key_sha256=[f"{i:064x}"],
            models=[model],
            workload=Workload(concurrency=rng.randint(1, 8), prompt_tokens={"mean": prompt, "p95": 2 * prompt},
                              output_tokens={"mean": output, "p95": 2 * output}),
            slo=Slo(ttft_p95_ms=rng.choice([2000, 5000, 10000]), tpot_p95_ms=rng.choice([150, 250, 400])),
        ))
    return ClusterSpec(models=models, gpus=gpus, tenants=people)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    spec = big_spec(args.tenants)
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        result = plan(spec)
        times.append(time.perf_counter() - start)
    best = min(times)
    print(f"planned {len(spec.tenants)} tenants, {len(spec.models)} models, {len(spec.gpus)} GPU kinds: "
          f"{result.gpus} devices, ${result.cost.per_hour_max}/h at peak")
    print(f"time: best {best:.3f} s of {args.repeat} (all: {', '.join(f'{t:.3f}' for t in times)}); "
          f"{best / TARGET_S:.2f}x the {TARGET_S:g} s target")


if __name__ == "__main__":
    main()
