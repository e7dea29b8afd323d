"""The GPU performance model's efficiencies against a real GPU, at kernel level, without vLLM.

The planner prices a decode step as the weights (and KV) read at `memory` x the datasheet
bandwidth and a prefill as its FLOPs at `compute` x the datasheet peak (autoscale/performance.py,
`Efficiency.datasheet("gpu")`), plus a fixed step overhead for the engine's own work. This script
times the same work with torch on a GPU, with random bf16 weights of a catalog architecture's exact
shapes: the SigLIP tower and projector over the image tokens, the decoder's prefill over the
prompt, and one decode step (replayed as a CUDA graph, as vLLM runs decode) at batch 1 and 4, with
a KV cache of the prompt's length. What it cannot see: vLLM's scheduler, sampling and Python per
step (the model's `step_overhead_s`), and vLLM's own kernels (FlashAttention, fused norms), so its
figures are the floor a good engine approaches. It prints the model's kernel-level prediction (the
step overhead left out) beside the measured time, and the efficiencies the measurement implies.

Two halves, so that the measuring half runs where only torch is installed (the lent GPU machine):

    .venv/bin/python benchmarks/gpu_kernels.py predict paligemma-3b-pt-224 --gpu H200 --out arch.json
    python benchmarks/gpu_kernels.py measure arch.json > measured.json          # on the GPU machine
    .venv/bin/python benchmarks/gpu_kernels.py compare arch.json measured.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

BATCHES = (1, 4)
TEXT_TOKENS = 10  # the prompt's text besides the image tokens and PaliGemma's framing


def predict(model_id: str, gpu: str) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from autoscale.catalog import architecture_of, find_gpu, model_from_id
    from autoscale.memory import PROMPT_FRAMING_TOKENS
    from autoscale.performance import Efficiency, ReplicaPerformance

    arch = architecture_of(model_from_id(model_id))
    accelerator = find_gpu(gpu)
    if accelerator is None:
        raise SystemExit(f"{gpu!r} is not a catalog GPU")
    datasheet = Efficiency.datasheet("gpu")
    kernels_only = Efficiency(memory=datasheet.memory, compute=datasheet.compute, step_overhead_s=0.0)
    perf = ReplicaPerformance(arch=arch, dtype="bfloat16", dtype_bytes=2, quantization="none", accelerator=accelerator,
                              share=1.0, tp=1, efficiency=kernels_only, block_size=16)  # fmt: skip
    prompt = arch.vision.image_tokens + PROMPT_FRAMING_TOKENS + TEXT_TOKENS
    return {
        "model": model_id,
        "gpu": accelerator.name,
        "datasheet": {"bandwidth_bytes_s": accelerator.bandwidth_bytes_s, "bf16_flops": accelerator.flops_for("bfloat16"),
                      "memory_efficiency": datasheet.memory, "compute_efficiency": datasheet.compute,
                      "step_overhead_s": datasheet.step_overhead_s},  # fmt: skip
        "arch": arch.model_dump(mode="json") | {"image_tokens": arch.vision.image_tokens},
        "prompt_tokens": prompt,
        "predicted": {
            "vision_s": perf.vision_s(),
            "prefill_s": perf.prefill_s(TEXT_TOKENS),
            **{f"decode_step_s_batch{b}": perf.step_s(b, prompt) for b in BATCHES},
        },
        "work": {
            "vision_flops": perf.vision_flops(),
            "prefill_flops": perf.vision_flops() + perf.text_prefill_flops(TEXT_TOKENS),
            "weight_bytes": perf.weights,
            "decode_read_bytes": perf.decode_reads,
        },
    }


# ---- the measuring half: torch only ---------------------------------------------------------


def measure(spec: dict, dev: str = "cuda") -> dict:
    """`dev` "cpu": a check of this code on a small architecture (no CUDA graph), not a figure."""
    import torch
    import torch.nn.functional as F

    assert dev == "cpu" or torch.cuda.is_available(), "measure needs a CUDA GPU"
    dt = torch.bfloat16
    torch.manual_seed(0)
    t, v = spec["arch"]["text"], spec["arch"]["vision"]
    n_img, prompt = spec["arch"]["image_tokens"], spec["prompt_tokens"]

    def w(*shape):
        return torch.randn(*shape, device=dev, dtype=dt) * 0.02

    h, heads, kvh, hd, inter = t["hidden_size"], t["num_heads"], t["num_kv_heads"], t["head_dim"], t["intermediate_size"]
    layers = [dict(q=w(heads * hd, h), k=w(kvh * hd, h), v=w(kvh * hd, h), o=w(h, heads * hd),
                   gate=w(inter, h), up=w(inter, h), down=w(h, inter)) for _ in range(t["num_layers"])]  # fmt: skip
    embed = w(t["vocab_size"], h)  # tied with the LM head
    vh, vi, vheads = v["hidden_size"], v["intermediate_size"], v["num_heads"]
    vlayers = [dict(qkv=w(3 * vh, vh), o=w(vh, vh), fc1=w(vi, vh), fc2=w(vh, vi)) for _ in range(v["num_layers"])]
    patch = w(vh, 3 * v["patch_size"] ** 2)
    projector = w(h, vh)

    def vision(pixels):  # (n_img, 3 p^2) patches -> (n_img, h) image tokens
        x = pixels @ patch.T
        for L in vlayers:
            q, k, vv = (x @ L["qkv"].T).view(1, n_img, 3, vheads, vh // vheads).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, vv).transpose(1, 2).reshape(n_img, vh)
            x = x + a @ L["o"].T
            x = x + F.gelu(x @ L["fc1"].T, approximate="tanh") @ L["fc2"].T
        return x @ projector.T

    def decoder(x, cache_len: int, k_cache, v_cache, causal: bool):  # x: (b, s, h)
        b, s, _ = x.shape
        for i, L in enumerate(layers):
            q = (x @ L["q"].T).view(b, s, heads, hd).transpose(1, 2)
            k = (x @ L["k"].T).view(b, s, kvh, hd).transpose(1, 2)
            vv = (x @ L["v"].T).view(b, s, kvh, hd).transpose(1, 2)
            if k_cache is not None:  # decode: attend over the cache (its last slot is this token)
                k_cache[i][:, :, cache_len - 1 : cache_len] = k
                v_cache[i][:, :, cache_len - 1 : cache_len] = vv
                k, vv = k_cache[i], v_cache[i]
            k = k.repeat_interleave(heads // kvh, dim=1)
            vv = vv.repeat_interleave(heads // kvh, dim=1)
            a = F.scaled_dot_product_attention(q, k, vv, is_causal=causal).transpose(1, 2).reshape(b, s, heads * hd)
            x = x + a @ L["o"].T
            x = x + (F.gelu(x @ L["gate"].T, approximate="tanh") * (x @ L["up"].T)) @ L["down"].T
        return x[:, -1] @ embed.T  # logits of the last position

    def timed(fn, runs: int = 20) -> float:
        for _ in range(3):
            fn()
        if dev == "cpu":
            return min(_seconds(fn) for _ in range(3))
        torch.cuda.synchronize()
        best = float("inf")
        for _ in range(runs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            best = min(best, start.elapsed_time(end) / 1000)
        return best

    pixels = torch.randn(n_img, 3 * v["patch_size"] ** 2, device=dev, dtype=dt)
    text = torch.randn(1, prompt - n_img, h, device=dev, dtype=dt)
    results: dict = {"gpu": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__}
    with torch.inference_mode():
        results["vision_s"] = timed(lambda: vision(pixels))
        results["prefill_s"] = timed(lambda: decoder(torch.cat([vision(pixels)[None], text], 1), 0, None, None, True))
        for b in BATCHES:
            k_cache = [torch.randn(b, kvh, prompt, hd, device=dev, dtype=dt) for _ in layers]
            v_cache = [torch.randn(b, kvh, prompt, hd, device=dev, dtype=dt) for _ in layers]
            x = torch.randn(b, 1, h, device=dev, dtype=dt)
            eager = timed(lambda: decoder(x, prompt, k_cache, v_cache, False))
            results[f"decode_step_eager_s_batch{b}"] = eager
            if dev == "cpu":
                results[f"decode_step_s_batch{b}"] = eager
                continue
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm up off the default stream before capture
                for _ in range(3):
                    decoder(x, prompt, k_cache, v_cache, False)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                decoder(x, prompt, k_cache, v_cache, False)
            results[f"decode_step_s_batch{b}"] = timed(graph.replay, runs=50)
    return results


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(spec: dict, measured: dict) -> None:
    d, work = spec["datasheet"], spec["work"]
    print(f"{spec['model']} bf16 on {measured['gpu']} (torch {measured['torch']}); planner catalog entry "
          f"{spec['gpu']}: {d['bandwidth_bytes_s'] / 1e12:.2f} TB/s, {d['bf16_flops'] / 1e12:.0f} TFLOP/s bf16, "
          f"datasheet efficiencies {d['memory_efficiency']:.0%} memory, {d['compute_efficiency']:.0%} compute; "
          f"prompt {spec['prompt_tokens']} tokens ({spec['arch']['image_tokens']} image)")  # fmt: skip
    print(f"\n{'kernel time (no step overhead)':34} {'planner ms':>11} {'measured ms':>12} {'error':>8}  implied efficiency")
    for name in ["vision_s", "prefill_s", *[f"decode_step_s_batch{b}" for b in BATCHES]]:
        p, m = spec["predicted"][name], measured[name]
        if name.startswith("decode"):
            implied = f"{work['decode_read_bytes'] / m / d['bandwidth_bytes_s']:.0%} of bandwidth (weights read once)"
        else:
            flops = work["vision_flops"] if name == "vision_s" else work["prefill_flops"]
            implied = f"{flops / m / d['bf16_flops']:.0%} of peak FLOP/s"
        print(f"{name:34} {p * 1e3:11.3f} {m * 1e3:12.3f} {p / m - 1:+8.0%}  {implied}")
    for b in BATCHES:
        print(f"decode batch {b} without a CUDA graph: {measured[f'decode_step_eager_s_batch{b}'] * 1e3:.3f} ms")
    print(f"\nThe engine's step overhead (planner: {d['step_overhead_s'] * 1e3:g} ms) comes on top of every figure; "
          "it is vLLM's and is not measured here.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict")
    p.add_argument("model", help="catalog id, e.g. paligemma-3b-pt-224")
    p.add_argument("--gpu", default="H200")
    p.add_argument("--out", type=Path, required=True)
    m = sub.add_parser("measure")
    m.add_argument("spec", type=Path)
    m.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    c = sub.add_parser("compare")
    c.add_argument("spec", type=Path)
    c.add_argument("measured", type=Path)
    args = parser.parse_args()
    if args.command == "predict":
        args.out.write_text(json.dumps(predict(args.model, args.gpu), indent=1))
    elif args.command == "measure":
        started = time.perf_counter()
        result = measure(json.loads(args.spec.read_text()), args.device)
        print(json.dumps(result | {"seconds": time.perf_counter() - started}, indent=1))
    else:
        compare(json.loads(args.spec.read_text()), json.loads(args.measured.read_text()))


if __name__ == "__main__":
    main()
