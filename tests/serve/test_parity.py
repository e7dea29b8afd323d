"""vLLM's greedy output for the tiny model equals transformers' for the same image and prompt.

vLLM 0.32 runs PaliGemma's decoder with causal attention over the whole prompt, while the
reference (transformers, big_vision) attends bidirectionally within the image+prefix
("prefix-LM"). Token-for-token parity therefore holds against transformers in causal mode;
the second test pins down that the two attention modes differ, so that a vLLM release that
adds prefix-LM attention for PaliGemma is noticed (and README's note updated).
"""

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.engine

PROMPTS = ["caption en", "detect cat ; dog", "answer en what is in the image?"]


def image(seed: int) -> Image.Image:
    pixels = (np.random.default_rng(seed).random((28, 28, 3)) * 255).astype("uint8")
    return Image.fromarray(pixels)


def transformers_greedy(model_dir, prompt, img, max_new_tokens, causal: bool) -> list[int]:
    import torch
    from transformers import AutoConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor

    config = AutoConfig.from_pretrained(model_dir)
    config.text_config.use_bidirectional_attention = not causal
    model = PaliGemmaForConditionalGeneration.from_pretrained(model_dir, config=config).eval()
    processor = PaliGemmaProcessor.from_pretrained(model_dir)
    inputs = processor(text="<image>" + prompt, images=img, return_tensors="pt")
    if causal:
        inputs.pop("token_type_ids", None)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    ids = out[0, inputs["input_ids"].shape[1] :].tolist()
    eos = processor.tokenizer.eos_token_id
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def vllm_greedy(ray_client, tiny_model_dir, prompt, img, max_tokens) -> list[int]:
    import uuid

    from ray import serve

    from serve.protocol import EngineRequest

    handle = serve.get_deployment_handle("tiny-paligemma", app_name="paliserve")
    request = EngineRequest(request_id=uuid.uuid4().hex, prompt=prompt, image=img, max_tokens=max_tokens, temperature=0)
    return handle.complete.remote(request).result(timeout_s=60).token_ids


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("seed", [0, 1])
def test_vllm_greedy_equals_transformers_greedy(ray_client, tiny_model_dir, prompt, seed):
    img = image(seed)
    expected = transformers_greedy(tiny_model_dir, prompt, img, 24, causal=True)
    assert vllm_greedy(ray_client, tiny_model_dir, prompt, img, 24) == expected


def test_vllm_uses_causal_not_prefix_lm_attention(ray_client, tiny_model_dir):
    img = image(0)
    prefix_lm = transformers_greedy(tiny_model_dir, PROMPTS[0], img, 24, causal=False)
    assert vllm_greedy(ray_client, tiny_model_dir, PROMPTS[0], img, 24) != prefix_lm
