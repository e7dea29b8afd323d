"""`paliserve plan` and `paliserve profile`; `register(app)` adds them to the main typer app.

Exit codes: 0 planned, 2 invalid spec or arguments, 3 infeasible (the message names the limit,
the numbers and the nearest feasible change).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml
from rich.console import Console

from paliserve.spec import ClusterSpec, GpuSpec, Plan, Slo, TenantSpec, Workload

from .catalog import HostFigures, find_gpu, model_from_id
from .errors import InfeasiblePlan
from .loading import dump_plan, load_spec
from .planner import SpecError, plan
from .profile import load_profile, save_profile
from .report import render

EXIT_INVALID = 2
EXIT_INFEASIBLE = 3
ONE_TENANT_POOL = 64  # GPUs assumed available when planning from flags


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_command)
    app.command("profile")(profile_command)


def plan_command(
    spec: Annotated[Optional[Path], typer.Argument(help="Cluster spec YAML (omit to plan one tenant from flags).")] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Write the plan here (YAML; .json for JSON).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON instead of tables.")] = False,
    serve_config: Annotated[Optional[Path], typer.Option(help="Also write the Ray Serve config (serve deploy) here.")] = None,
    profile: Annotated[Optional[list[Path]], typer.Option("--profile", help="Measured profile(s) from `paliserve profile`.")] = None,
    model: Annotated[Optional[str], typer.Option(help="One-tenant form: catalog model, e.g. paligemma-3b-mix-448.")] = None,
    gpu: Annotated[Optional[str], typer.Option(help="One-tenant form: accelerator type, e.g. L4, H100-SXM, cpu.")] = None,
    gpu_count: Annotated[int, typer.Option(help="One-tenant form: accelerators available.")] = ONE_TENANT_POOL,
    concurrency: Annotated[Optional[int], typer.Option(help="One-tenant form: target requests in flight.")] = None,
    peak_concurrency: Annotated[Optional[int], typer.Option(help="One-tenant form: peak requests in flight.")] = None,
    prompt_tokens: Annotated[float, typer.Option(help="One-tenant form: prompt tokens (mean = p95).")] = 20,
    output_tokens: Annotated[float, typer.Option(help="One-tenant form: output tokens (mean = p95).")] = 64,
    ttft_ms: Annotated[Optional[float], typer.Option(help="One-tenant form: TTFT p95 SLO in ms.")] = None,
    tpot_ms: Annotated[Optional[float], typer.Option(help="One-tenant form: TPOT p95 SLO in ms.")] = None,
    host_probe: Annotated[bool, typer.Option(
        help="Measure this machine (cached) for `cpu` pool entries that give no bandwidth/tflops.")] = True,
) -> None:
    """Plan replicas, GPU shares, KV cache and engine arguments from a cluster spec, with reasons."""
    console = Console(stderr=True)
    try:
        if spec is not None:
            cluster = load_spec(spec)
        else:
            cluster = _one_tenant_spec(model, gpu, gpu_count, concurrency, peak_concurrency,
                                       prompt_tokens, output_tokens, ttft_ms, tpot_ms)
        profiles = [(load_profile(p), f"profile {p}") for p in profile or []]
        result = plan(cluster, profiles, _host_figures(cluster, console) if host_probe else None)
    except (SpecError, ValueError, FileNotFoundError) as error:
        console.print(f"[red]error:[/red] {error}", markup=True, highlight=False)
        raise typer.Exit(EXIT_INVALID) from None
    except InfeasiblePlan as error:
        console.print(f"[red]{error}[/red]", markup=True, highlight=False)
        raise typer.Exit(EXIT_INFEASIBLE) from None
    _write_outputs(result, output, serve_config)
    if as_json:
        typer.echo(json.dumps(result.model_dump(mode="json"), indent=2))
    else:
        Console(width=None if sys.stdout.isatty() else 160).print(render(result))


def _one_tenant_spec(model, gpu, gpu_count, concurrency, peak, prompt, output, ttft, tpot) -> ClusterSpec:
    missing = [flag for flag, value in (("--model", model), ("--gpu", gpu), ("--concurrency", concurrency),
                                        ("--ttft-ms", ttft), ("--tpot-ms", tpot)) if value is None]
    if missing:
        raise SpecError(f"give a cluster spec file, or all of {', '.join(missing)}")
    spec_model = model_from_id(model)
    tenant = TenantSpec(
        name="default",
        models=[spec_model.name],
        workload=Workload(concurrency=concurrency, peak_concurrency=peak,
                          prompt_tokens=prompt, output_tokens=output),
        slo=Slo(ttft_p95_ms=ttft, tpot_p95_ms=tpot),
    )
    return ClusterSpec(models=[spec_model], gpus=[GpuSpec(type=gpu, count=gpu_count)], tenants=[tenant])


def _host_figures(cluster: ClusterSpec, console: Console) -> HostFigures | None:
    """This machine's measured speed (autoscale/host_probe.py, cached per machine) when a pool
    entry is the catalog `cpu` without figures of its own; None (catalog figures) otherwise, or
    when torch is missing or the probe fails."""
    if not any(_takes_host_figures(gpu) for gpu in cluster.gpus):
        return None
    from .host_probe import cached_speed

    try:
        speed, where = cached_speed()
    except (ImportError, RuntimeError, OSError) as error:
        console.print(f"cpu figures: the host probe failed ({error}); using the catalog's", markup=False,
                      highlight=False, soft_wrap=True)  # fmt: skip
        return None
    console.print(f"cpu figures: {speed.describe()} ({where})", markup=False, highlight=False, soft_wrap=True)
    return HostFigures(speed.bandwidth_bytes_s, tuple(speed.flops.items()), f"{where}: {speed.describe()}")


def _takes_host_figures(gpu: GpuSpec) -> bool:
    base = find_gpu(gpu.type)
    return (base is not None and base.name == "cpu" and gpu.device in (None, "cpu")
            and gpu.bandwidth_tb_s is None and gpu.tflops is None)  # fmt: skip


def _write_outputs(result: Plan, output: Path | None, serve_config: Path | None) -> None:
    if output is not None:
        if output.suffix == ".json":
            output.write_text(json.dumps(result.model_dump(mode="json"), indent=2) + "\n")
        else:
            output.write_text(dump_plan(result))
    if serve_config is not None:
        serve_config.write_text(yaml.safe_dump(result.serve_config(), sort_keys=False, width=100))


def profile_command(
    checkpoint: Annotated[str, typer.Option(help="Checkpoint path or hub id to load into the engine.")],
    model: Annotated[str, typer.Option(help="Spec model name the profile applies to.")],
    accelerator: Annotated[str, typer.Option(help="Accelerator kind it runs on (catalog name).")] = "cpu",
    out: Annotated[Path, typer.Option("-o", "--out", help="Profile file to write.")] = Path("profile.yaml"),
    prompt_tokens: Annotated[str, typer.Option(help="Comma-separated prompt lengths for prefill points.")] = "4,32,128,512",
    batches: Annotated[str, typer.Option(help="Comma-separated batch sizes for decode points.")] = "1,2,4,8,16",
    decode_tokens: Annotated[int, typer.Option(help="Tokens generated per request in decode points.")] = 32,
    repeats: Annotated[int, typer.Option(help="Measurements per point (the median is kept).")] = 3,
    dtype: Annotated[Optional[str], typer.Option(help="Engine dtype (default: float32 on CPU, auto on GPU).")] = None,
    gpu_memory_utilization: Annotated[Optional[float], typer.Option(help="Default: 0.3 on CPU, 0.9 on GPU.")] = None,
    tensor_parallel_size: Annotated[int, typer.Option(min=1, help="GPUs the engine spans; the planner uses the profile only for deployments of this size.")] = 1,
) -> None:
    """Measure prefill time vs tokens and decode step vs batch on this machine; write a profile."""
    from .profiler import ProfileSettings, measure_profile  # imports vLLM

    settings = ProfileSettings(
        checkpoint=checkpoint,
        model=model,
        accelerator=accelerator,
        prompt_tokens=tuple(int(x) for x in prompt_tokens.split(",") if x),
        batches=tuple(int(x) for x in batches.split(",") if x),
        decode_tokens=decode_tokens,
        repeats=repeats,
        dtype=dtype,
        gpu_memory_utilization=gpu_memory_utilization,
        tensor_parallel_size=tensor_parallel_size,
    )
    result = measure_profile(settings)
    save_profile(result, out)
    Console(stderr=True).print(
        f"wrote {out}: {len(result.prefill)} prefill and {len(result.decode)} decode points for "
        f"{model} on {accelerator}", highlight=False,
    )
