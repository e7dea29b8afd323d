"""Real-size serving without a real-size engine: the pre-flight checks that refuse a checkpoint
vLLM would not serve for generation, the CPU's dtype choice, and the refusal of a model the
machine's memory cannot hold (RAM figures passed in, never the machine's own)."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import save_file

from serve.preflight import CheckpointError, check_checkpoint


def _checkpoint(tmp_path, config):
    import torch

    path = tmp_path / "ckpt"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    save_file({"w": torch.zeros(2)}, str(path / "model.safetensors"))
    return path


@pytest.mark.parametrize(
    "architectures, cause",
    [
        (None, "config.json has no `architectures`: vLLM would load it as a pooling model"),
        ([], "config.json has no `architectures`"),
        (["PaliGemmaModel"], "architectures ['PaliGemmaModel'] are not generative"),
        (["PaliGemmaForSequenceClassification"], "are not generative"),
        ([3], "`architectures` is not a list of names"),
    ],
)
def test_preflight_refuses_a_config_without_a_generative_architecture(tmp_path, architectures, cause):
    config = {"model_type": "paligemma"}
    if architectures is not None:
        config["architectures"] = architectures
    path = _checkpoint(tmp_path, config)
    with pytest.raises(CheckpointError) as raised:
        check_checkpoint(str(path))
    message = str(raised.value)
    assert message.startswith(f"checkpoint {path}: ") and cause in message, message
    if architectures != [3]:
        assert 'add "architectures": ["PaliGemmaForConditionalGeneration"] to config.json' in message


@pytest.mark.parametrize("architectures", [["PaliGemmaForConditionalGeneration"], ["GemmaForCausalLM"], "LlamaForCausalLM"])
def test_preflight_passes_generative_architectures(tmp_path, architectures):
    check_checkpoint(str(_checkpoint(tmp_path, {"model_type": "x", "architectures": architectures})))


def test_up_refuses_a_config_without_architectures_before_starting_anything(tmp_path):
    import os
    import subprocess

    from conftest import PALISERVE

    path = _checkpoint(tmp_path, {"model_type": "paligemma"})
    env = {**os.environ, "PALISERVE_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([PALISERVE, "up", "--detach", "--port", "1", "--device", "cpu", "--model", str(path)],
                            env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"checkpoint {path}: config.json has no `architectures`" in result.stderr
    assert "starting Ray" not in result.stderr


XEON_FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n"
OLD_FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n"
ARM_FEATURES = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


@pytest.mark.parametrize("cpuinfo, dtype", [(XEON_FLAGS, "bfloat16"), (OLD_FLAGS, "float32"), (ARM_FEATURES, "bfloat16"), ("", "float32")])
def test_cpu_dtype_is_bfloat16_where_the_cpu_has_it(cpuinfo, dtype):
    from paliserve.local import cpu_dtype

    chosen, why = cpu_dtype(cpuinfo)
    assert chosen == dtype and why


def test_model_plan_on_a_cpu_takes_the_cpus_dtype_unless_told(monkeypatch):
    from paliserve import local

    monkeypatch.setattr(local, "cpu_dtype", lambda cpuinfo=None: ("bfloat16", "test"))
    assert local.single_model_plan("m", "m", "cpu").deployments[0].engine_args.dtype == "bfloat16"
    assert local.single_model_plan("m", "m", "cpu", dtype="float32").deployments[0].engine_args.dtype == "float32"
    assert local.tiny_plan("/tmp/tiny").deployments[0].engine_args.dtype == "float32"  # the parity test's dtype
    assert local.single_model_plan("m", "m", "gpu").deployments[0].engine_args.dtype == "auto"


GIB = 2**30


def _plan(model="paligemma-3b-pt-224", device="cpu", dtype="float32", **kw):
    from paliserve.local import single_model_plan

    return single_model_plan(model, "m", device, dtype=dtype, **kw)


def test_memory_check_passes_a_plan_the_machine_holds(tiny_model_dir):
    from paliserve.local import tiny_plan
    from serve.preflight import Machine, check_memory

    roomy = Machine(ram_total=64 * GIB, ram_available=60 * GIB, cpu_bf16=True)
    assert check_memory(_plan(), roomy) == []
    assert check_memory(_plan(dtype="bfloat16"), Machine(20 * GIB, 14 * GIB)) == []
    # the tiny model needs its 1 GiB KV cache and little else: a crowded machine still serves it
    assert check_memory(tiny_plan(tiny_model_dir), Machine(8 * GIB, 2 * GIB)) == []
    assert check_memory(_plan("some-org/unknown-model"), Machine(1 * GIB, 1 * GIB)) == []  # left to the engine


def test_float32_3b_on_an_18_gib_machine_is_refused_naming_bfloat16():
    from serve.preflight import Machine, check_memory

    [problem] = check_memory(_plan(), Machine(ram_total=18 * GIB, ram_available=14 * GIB, cpu_bf16=True))
    assert problem.startswith("RAM: serving needs 21.4 GiB (m: weights 10.9 GiB, KV cache 1.0 GiB, activations 0.5 GiB, "
                              "engine overhead 4.7 GiB, front end 2.9 GiB, Ray 1.5 GiB)"), problem
    assert "this machine has 18.0 GiB" in problem
    assert "in bfloat16 (--dtype bfloat16; this CPU has it) it needs 10.4 GiB for the engine and fits" in problem

    [problem] = check_memory(_plan(), Machine(ram_total=18 * GIB, ram_available=14 * GIB, cpu_bf16=False))
    assert "bfloat16 would fit (10.4 GiB for the engine) but this CPU has no bfloat16 instructions" in problem


def test_what_is_available_now_counts_and_a_smaller_kv_cache_is_offered():
    from serve.preflight import Machine, check_memory

    # fits the machine, not what its other processes leave
    [problem] = check_memory(_plan(dtype="bfloat16", cpu_kv_cache_gib=4), Machine(24 * GIB, 11 * GIB))
    assert "RAM: the engine needs 13.4 GiB" in problem and "11.0 GiB is available now (of 24.0 GiB)" in problem
    assert "VLLM_CPU_KVCACHE_SPACE=1 in the deployment's env (GiB, now 4) needs 10.4 GiB for the engine" in problem
    [problem] = check_memory(_plan(dtype="bfloat16"), Machine(8 * GIB, 7 * GIB, cpu_bf16=True))
    assert "use a machine with more RAM, or a smaller model" in problem


def test_gpu_memory_refusal_names_the_shorter_context_or_bfloat16():
    from serve.preflight import Machine, check_memory

    on_16gb = Machine(64 * GIB, 60 * GIB, gpu_memory=16 * 10**9)
    [problem] = check_memory(_plan("paligemma-3b-pt-896", "gpu", "float32", max_model_len=8192), on_16gb)
    assert "per GPU" in problem and "gpu_memory_utilization 0.9 of this GPU's 14.9 GiB is 13.4 GiB" in problem
    assert "in bfloat16 (--dtype bfloat16) it needs" in problem
    [problem] = check_memory(_plan("paligemma2-10b-pt-896", "gpu", "bfloat16", max_model_len=8192),
                             Machine(64 * GIB, 60 * GIB, gpu_memory=24 * 10**9))  # fmt: skip
    assert "use a GPU with more memory, tensor parallelism, or quantization" in problem or "--max-model-len" in problem
    assert check_memory(_plan("paligemma-3b-pt-224", "gpu", "bfloat16"), Machine(64 * GIB, 60 * GIB, gpu_memory=80 * 10**9)) == []


def test_up_refuses_a_plan_the_machine_cannot_hold_before_starting_anything(tmp_path):
    """A 28B model on this machine's CPU: refused from the catalog's architecture, before any load."""
    import os
    import subprocess

    import psutil

    from conftest import PALISERVE

    if psutil.virtual_memory().total > 80 * GIB:
        pytest.skip(f"this machine has {psutil.virtual_memory().total / GIB:.0f} GiB of RAM: 28B would not be refused")
    env = {**os.environ, "PALISERVE_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([PALISERVE, "up", "--detach", "--port", "1", "--device", "cpu", "--dtype", "bfloat16",
                             "--model", "google/paligemma2-28b-pt-896"],
                            env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "paliserve cannot start: RAM: " in result.stderr and "weights 51.5 GiB" in result.stderr, result.stderr
    assert "starting Ray" not in result.stderr
    assert not (tmp_path / "cache" / "cluster.json").exists()


def _on_nodes(plan, nodes: int, per_node: int):
    """`plan` with its deployment's replicas laid out `per_node` on each of `nodes` (a logical GPU each)."""
    from paliserve.spec import GpuLayout, GpuSlot

    (deployment,) = plan.deployments
    deployment.replicas.min = deployment.replicas.initial = deployment.replicas.max = nodes * per_node
    plan.gpu_layout = [GpuLayout(index=i, type="logical", node=i // per_node, slots=[
        GpuSlot(deployment=deployment.name, replica=i, share=1.0, memory_utilization=0.3)]) for i in range(nodes * per_node)]  # fmt: skip
    return plan


def test_across_machines_each_holds_its_nodes_replicas():
    from serve.preflight import Machine, check_memory

    one_replica = Machine(ram_total=20 * GIB, ram_available=14 * GIB, cpu_bf16=True)  # holds one bf16 3B replica
    assert check_memory(_plan(dtype="bfloat16"), one_replica) == []
    # two replicas, one on each of two machines: this machine holds its one
    assert check_memory(_on_nodes(_plan(dtype="bfloat16"), nodes=2, per_node=1), one_replica) == []
    # two on each machine: refused, naming the node and its share
    [problem] = check_memory(_on_nodes(_plan(dtype="bfloat16"), nodes=2, per_node=2), one_replica)
    assert "on the plan's node 0 (of 2; each machine holds its node's replicas)" in problem, problem
    assert "x2 replicas" in problem or "engines need" in problem, problem
