"""Real size through the real path: a random-weight checkpoint with PaliGemma-1 3B-224's exact
architecture (2.9 B parameters, 5.85 GB in bfloat16), served by `paliserve up --model DIR
--detach` in a cluster of its own, one chat request with an image through the official openai
client, 256 image tokens counted in `usage`. Skipped, naming the numbers, where the machine has
too little RAM available (or no bfloat16) to run it with room to spare."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import time

import psutil
import pytest
from conftest import PALISERVE

pytestmark = [pytest.mark.engine, pytest.mark.own_cluster]

GIB = 2**30
MODEL_ID = "paligemma-3b-pt-224"
KV_GIB = 1
MAX_MODEL_LEN = 1024
HEADROOM = 3 * GIB  # beyond the memory model's estimate of the whole stack
MIN_AVAILABLE = 18 * GIB  # never start a real-size engine with less available
DISK_BYTES = 8 * 10**9  # the checkpoint (5.85 GB) and the cluster's temp files


def _required():
    from autoscale.memory import cpu_serving_memory
    from paliserve.random_checkpoint import catalog_architecture

    need = cpu_serving_memory(catalog_architecture(MODEL_ID), "bfloat16", KV_GIB * GIB, 2048, 64)
    return need, max(MIN_AVAILABLE, need.total + HEADROOM)


def test_a_real_size_checkpoint_serves_end_to_end_with_256_image_tokens(tmp_path):
    from openai import OpenAI
    from PIL import Image

    from paliserve.local import cpu_supports_bf16
    from serve.cluster import free_port

    if not cpu_supports_bf16():
        pytest.skip("this CPU has no bfloat16: 3B-224 in float32 needs ~23.3 GiB of RAM, more than this test allows")
    need, required = _required()
    vm = psutil.virtual_memory()
    if vm.available < required:
        pytest.skip(
            f"real-size end to end needs {required / GIB:.1f} GiB of RAM available (the stack's estimate "
            f"{need.total / GIB:.1f} GiB: {need.describe()}, plus headroom); this machine has "
            f"{vm.available / GIB:.1f} GiB available of {vm.total / GIB:.1f} GiB"
        )
    free_disk = shutil.disk_usage(tmp_path).free
    if free_disk < DISK_BYTES:
        pytest.skip(f"the checkpoint needs {DISK_BYTES / 1e9:.0f} GB of disk; {free_disk / 1e9:.1f} GB free under {tmp_path}")

    env = {**os.environ, "PALISERVE_CACHE": str(tmp_path / "cache")}
    checkpoint = tmp_path / "paligemma-3b-pt-224-random"
    timings = {}
    started = time.monotonic()
    built = subprocess.run([PALISERVE, "random-checkpoint", MODEL_ID, str(checkpoint)], env=env,
                           capture_output=True, text=True, timeout=900)  # fmt: skip
    assert built.returncode == 0, built.stderr
    timings["checkpoint"] = time.monotonic() - started
    index = json.loads((checkpoint / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_parameters"] == 2_923_466_480

    port = free_port()
    started = time.monotonic()
    up = None
    try:
        up = subprocess.run(
            [PALISERVE, "up", "--model", str(checkpoint), "--device", "cpu", "--detach", "--port", str(port),
             "--max-model-len", str(MAX_MODEL_LEN), "--no-prometheus"],
            env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert up.returncode == 0, up.stderr + up.stdout
        assert "dtype bfloat16" in up.stderr, up.stderr
        timings["up"] = time.monotonic() - started

        buf = io.BytesIO()
        Image.new("RGB", (224, 224), (30, 120, 200)).save(buf, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=300)
        started = time.monotonic()
        reply = client.chat.completions.create(
            model=checkpoint.name, max_tokens=8, temperature=0,
            messages=[{"role": "user", "content": [{"type": "text", "text": "caption en"},
                                                   {"type": "image_url", "image_url": {"url": url}}]}],
        )  # fmt: skip
        timings["request"] = time.monotonic() - started
        from transformers import AutoTokenizer

        text_tokens = len(AutoTokenizer.from_pretrained(checkpoint)("caption en", add_special_tokens=False).input_ids)
        # 256 image tokens, <bos>, the text, "\n" (vLLM's PaliGemma prompt)
        assert reply.usage.prompt_tokens == 256 + 1 + text_tokens + 1, reply.usage
        assert reply.usage.prompt_tokens >= 256 + text_tokens
        assert 1 <= reply.usage.completion_tokens <= 8
        print(f"\nreal size: {json.dumps({k: round(v, 1) for k, v in timings.items()})} s; usage {reply.usage}")
    finally:
        state = tmp_path / "cache" / "cluster.json"
        pids = []
        if state.exists():
            head = json.loads(state.read_text())["pid"]
            try:
                pids = [psutil.Process(head), *psutil.Process(head).children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        down = subprocess.run([PALISERVE, "down"], env=env, capture_output=True, text=True, timeout=180)
        gone, alive = psutil.wait_procs(pids, timeout=30)
    assert down.returncode == 0, down.stderr
    assert not alive, f"processes left behind: {[p.pid for p in alive]}"
