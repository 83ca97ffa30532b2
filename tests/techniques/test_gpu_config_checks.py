"""Checks that guard GPU-only paths, run on CPU: a config a GPU would reject fails before any work.

``hardware=gpu`` does not validate without CUDA, so each config is validated as cpu and then
pointed at the GPU, as a GPU machine would see it; only the technique's ``check`` runs.
"""

from __future__ import annotations

import pytest

from conftest import compose_config
from infopt.composition.validate import validate_config
from infopt.errors import ConfigError
from infopt.techniques.registry import build


def _gpu_check(overrides: list[str]) -> None:
    obj = validate_config(compose_config(["hardware=cpu", *overrides]), check_technique=False)
    obj.hardware.accelerator = "gpu"
    build(obj.technique).check(obj)


INT4 = ["technique=quantize", "technique.method=dynamic_int8", "technique.dynamic_backend=torchao_int4",
        "technique.execution=real"]  # fmt: skip


def test_torchao_int4_needs_bfloat16_weights():
    with pytest.raises(ConfigError, match="model.dtype=float32: set model.dtype=bfloat16"):
        _gpu_check(["model=tiny_llama", *INT4])


def test_torchao_int4_group_size_must_be_one_the_kernel_takes():
    with pytest.raises(ConfigError, match=r"group sizes \[32, 64, 128, 256\]"):
        _gpu_check(["model=tiny_llama", "model.dtype=bfloat16", *INT4, "technique.group_size=48"])


def test_torchao_int4_group_size_must_divide_every_width():
    """SmolLM2's 576-wide layers do not split into groups of 128 (torchao would skip them silently)."""
    with pytest.raises(ConfigError, match="does not divide the input width 576"):
        _gpu_check(["model=smollm2_shape", "model.dtype=bfloat16", *INT4, "technique.group_size=128"])
    _gpu_check(["model=smollm2_shape", "model.dtype=bfloat16", *INT4, "technique.group_size=64"])


def test_sparse_kernel_needs_half_precision_weights():
    prune = ["technique=prune", "technique.method=magnitude", "technique.nm=2:4"]
    with pytest.raises(ConfigError, match="PyTorch's 2:4 kernels take bfloat16 or float16"):
        _gpu_check(["model=tiny_llama", *prune, "technique.execution=sparse_kernel"])
    _gpu_check(["model=tiny_llama", "model.dtype=bfloat16", *prune, "technique.execution=sparse_kernel"])
    _gpu_check(["model=tiny_llama", *prune, "technique.execution=auto"])  # auto: masked dense, with a note


@pytest.mark.parametrize("shape,params", [("smollm2_shape", 134.5e6), ("llama_1b_shape", 1.07e9)])
def test_random_shapes_have_the_parameter_counts_docs_quote(shape, params, tokenizer):
    """Counted on the meta device: no memory, no weights."""
    import torch
    from transformers import LlamaForCausalLM

    from infopt.models.tiny import tiny_config

    obj = validate_config(compose_config([f"model={shape}"]), check_technique=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(tiny_config(obj.model.tiny, vocab_size=len(tokenizer)))
    count = sum(p.numel() for p in model.parameters())
    assert count == pytest.approx(params, rel=0.01)


def test_pinned_efficient_sdpa_gets_one_kv_head_per_query_head(monkeypatch, tiny_llama):
    """CUDA's memory-efficient SDPA kernel rejects grouped K/V heads (enable_gqa), which transformers
    passes for a Llama without a mask: the pinned backend must receive K/V expanded to every query
    head. The kernel itself is CUDA-only, so SDPA is replaced by a recorder around the math kernel."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from infopt.techniques.architecture.attention import set_attention

    real, seen = F.scaled_dot_product_attention, []

    def recorder(q, k, v, *args, **kwargs):
        seen.append((q.shape[1], k.shape[1]))  # (B, H, T, D): query heads, K/V heads
        with sdpa_kernel(SDPBackend.MATH):
            return real(q, k, v, *args, **kwargs)

    ids = torch.randint(0, 1000, (1, 24))
    set_attention(tiny_llama, "eager")
    with torch.no_grad():
        eager = tiny_llama(input_ids=ids).logits
    monkeypatch.setattr(F, "scaled_dot_product_attention", recorder)
    set_attention(tiny_llama, "sdpa:efficient")
    with torch.no_grad():
        out = tiny_llama(input_ids=ids).logits
    assert seen and all(q_heads == kv_heads == 4 for q_heads, kv_heads in seen), seen
    assert tiny_llama.model.layers[0].self_attn.num_key_value_groups == 2  # restored after the call
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-4)
