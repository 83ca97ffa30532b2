"""GPU: int8 GEMMs (SmoothQuant W8A8, dynamic int8) on torch._int_mm, LLM.int8 on bitsandbytes,
int4 weight-only on torchao's tinygemm layout; each against a CPU reference."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from conftest import run_main
from support.gpu import CUDA, DEVICE, HW, RUN, logits, needs_cuda, rel_err, text_data, tiny, tokens

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("rows", [1, 8, 16, 17, 64])
@pytest.mark.parametrize("k,n", [(64, 48), (576, 192), (1536, 576), (60, 36)])
def test_int8_linear_on_the_device_equals_the_cpu_reference(rows, k, n):
    """Decode-sized inputs (1 and 8 rows) go through the padded int8 GEMM; widths that are not
    multiples of 8 through the float fallback. Same codes and scales: the int32 sums are exact."""
    from infopt.techniques.quantize.modules import Int8Linear

    torch.manual_seed(rows * 7 + k)
    w, b, x = torch.randn(n, k), torch.randn(n), torch.randn(rows, k)
    ref = Int8Linear(w, b, kernel="reference")(x)  # CPU, float arithmetic
    real = Int8Linear(w, b, kernel="int_mm").to(DEVICE)
    out = real(x.to(DEVICE)).cpu()
    assert out.shape == (rows, n)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)


def test_int_mm_accepts_transposed_weight_views_on_the_device():
    """Int8Linear hands torch._int_mm the (K, N) transposed view of its (N, K) weight."""
    from infopt.techniques.quantize.modules import int8_mm

    torch.manual_seed(0)
    a = torch.randint(-127, 128, (32, 576), dtype=torch.int8)
    w = torch.randint(-127, 128, (192, 576), dtype=torch.int8)
    ref = a.double() @ w.double().t()
    out = int8_mm(a.to(DEVICE), w.to(DEVICE).t()).double().cpu()
    assert torch.equal(out, ref)


@pytest.mark.parametrize("method", ["smoothquant", "dynamic_int8"])
def test_w8a8_model_logits_match_the_cpu_reference_kernel(tokenizer, method):
    """Same model quantized twice: int8 kernels on the device vs the float reference on the CPU."""
    from infopt.techniques.quantize.config import QuantizeConfig
    from infopt.techniques.quantize.core import find_layers
    from infopt.techniques.quantize.technique import to_int8

    data = text_data(tokenizer)
    ids = tokens(data)
    model = tiny(tokenizer, hidden=128, heads=4, inter=256)
    if method == "smoothquant":
        from infopt.calibration import LayerwiseRunner
        from infopt.techniques.quantize.smoothquant import smooth_model

        smooth_model(LayerwiseRunner(model, data.calibration_blocks(4, 64), 4), 0.5)
    cfg = QuantizeConfig(method=method, execution="real", ignore=[])
    names = list(find_layers(model, cfg))
    ref_model = copy.deepcopy(model)
    to_int8(ref_model, names, cfg.act_granularity, outliers=None, real=False)
    to_int8(model, names, cfg.act_granularity, outliers=None, real=True)
    model.to(DEVICE)
    # fp32 activations on both sides; a rounding flip of one int8 code moves a logit by ~1e-3 relative.
    assert rel_err(logits(model, ids), logits(ref_model, ids)) < 1e-2
    out = model.generate(input_ids=ids[:1, :16].to(DEVICE), max_new_tokens=4, do_sample=False)  # 1-row decode
    assert out.shape == (1, 20)


def test_smoothquant_w8a8_run_decodes_and_says_how(tokenizer, tmp_path):
    """The default technique end to end on the device: decode at batch 1 and 2 through int8 GEMMs."""
    record = run_main(["model=tiny_llama", "model.tiny.hidden_size=128", "model.tiny.intermediate_size=256",
                       "technique=smoothquant_w8a8", *RUN, *HW], tmp_path)  # fmt: skip
    bench = record["result"]["bench"]
    assert bench["decode_tokens_per_s_b1"] > 0 and bench["decode_tokens_per_s_b2"] > 0
    ppl = "heldout/token_perplexity_w128"
    assert record["ratios"][f"eval/{ppl}/recovery"] > 0.95  # W8A8 keeps a random model's perplexity
    notes = " ".join(record["technique"]["notes"])
    if CUDA:
        assert "zero-padded to 17 rows" in notes
        assert "peak_memory_mb" in bench


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed")
def test_llm_int8_on_bitsandbytes_matches_the_cpu_reference(tokenizer):
    needs_cuda("bitsandbytes' LLM.int8 kernels")
    from infopt.techniques.quantize.config import QuantizeConfig
    from infopt.techniques.quantize.core import find_layers
    from infopt.techniques.quantize.llm_int8 import to_bitsandbytes
    from infopt.techniques.quantize.technique import to_int8

    data = text_data(tokenizer)
    ids = tokens(data)
    model = tiny(tokenizer, hidden=128, heads=4, inter=256)
    float_logits = logits(model, ids)
    cfg = QuantizeConfig(method="llm_int8", execution="real")
    names = list(find_layers(model, cfg))
    ref_model = copy.deepcopy(model)
    to_int8(ref_model, names, "per_token", outliers=6.0, real=False)
    model = model.half().to(DEVICE)
    to_bitsandbytes(model, names, 6.0)
    out = logits(model, ids)
    assert rel_err(out, logits(ref_model, ids)) < 3e-2  # fp16 activations vs fp32 reference
    assert rel_err(out, float_logits) < 5e-2


def int4_minmax_reference(w: torch.Tensor, group: int) -> torch.Tensor:
    """(out, in) float weight rounded to 16 levels between each group's min and max."""
    g = w.reshape(w.shape[0], -1, group)  # (out, in / group, group)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    scale = (hi - lo).clamp(min=1e-8) / 15
    return (lo + torch.round((g - lo) / scale).clamp(0, 15) * scale).reshape_as(w)


@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao is not installed")
def test_torchao_int4_layers_match_a_cpu_int4_reference(tokenizer):
    """tinygemm's int4 GEMM against F.linear on the CPU with the same weights rounded the same way."""
    needs_cuda("torchao int4 (tinygemm) kernels")
    from infopt.techniques.quantize.dynamic import converted_layers, torchao_quantize

    data = text_data(tokenizer)
    ids = tokens(data)
    model = tiny(tokenizer, hidden=256, heads=4, inter=512).to(torch.bfloat16).to(DEVICE)
    float_logits = logits(model, ids)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n]
    originals = {n: model.get_submodule(n).weight.detach().float().cpu() for n in names}
    torchao_quantize(model, names, "torchao_int4", 64)
    assert converted_layers(model, names) == names
    for name in names[:3]:
        layer = model.get_submodule(name)
        x = torch.randn(5, layer.in_features, dtype=torch.bfloat16, device=DEVICE)
        out = layer(x).float().cpu()
        w = originals[name]
        # tinygemm's grid: per group of 64, min-max asymmetric, 16 levels, zero point in the float domain.
        assert rel_err(out, x.float().cpu() @ int4_minmax_reference(w, 64).t()) < 3e-2
        assert 0.02 < rel_err(out, x.float().cpu() @ w.t()) < 0.2  # int4 error: present, and bounded
    assert rel_err(logits(model, ids), float_logits) < 0.3


@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao is not installed")
def test_torchao_int4_run_records_every_layer_quantized(tmp_path):
    needs_cuda("torchao int4 (tinygemm) kernels")
    # K = 1024: tinygemm's layout pads K to a multiple of 1024, which would make narrower layers larger.
    record = run_main(["model=tiny_llama", "model.tiny.hidden_size=1024", "model.tiny.intermediate_size=2048",
                       "model.tiny.num_heads=8", "technique=quantize", "technique.method=dynamic_int8",
                       "technique.dynamic_backend=torchao_int4", "technique.execution=real", "technique.group_size=32",
                       *RUN, *HW], tmp_path)  # fmt: skip
    metrics = record["technique"]["metrics"]
    assert metrics["layers_quantized"] == 2 * 7  # q k v o gate up down per layer; lm_head ignored
    assert record["result"]["bench"]["stored_mb"] < record["baseline"]["bench"]["stored_mb"]
