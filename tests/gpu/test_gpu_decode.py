"""GPU: SDPA's flash / memory-efficient / cuDNN backends against eager attention, torch.compile with
CUDA graphs (reduce-overhead), offloaded KV caches; each against the eager, dynamic-cache model."""

from __future__ import annotations

import pytest
import torch

from conftest import run_main
from support.gpu import CUDA, DEVICE, HW, RUN, needs_cuda, text_data, tiny, tokens

pytestmark = pytest.mark.gpu

# bf16 logits of a random 2-layer model reach |z| ~ 5; a bf16 rounding is 2^-8 relative.
BF16_LOGIT_TOL = 0.1
FP32_LOGIT_TOL = 1e-3  # the attention technique's default (fp32)


@pytest.mark.parametrize("backend", ["math", "flash", "efficient", "cudnn"])
def test_sdpa_backend_logits_match_eager(tokenizer, backend):
    from infopt.techniques.architecture.attention import logits_diff, setting_name, unavailable

    if unavailable(setting_name("sdpa", backend), DEVICE):
        needs_cuda(f"SDPA backend {backend}")
    data = text_data(tokenizer, seq_len=256)
    ids = tokens(data, n=1, length=256).to(DEVICE)
    # head_dim 64, grouped-query attention (4 query / 2 KV heads)
    model = tiny(tokenizer, hidden=256, heads=4, kv_heads=2, inter=512)
    if CUDA:
        model = model.to(torch.bfloat16)
    model.to(DEVICE)
    diff = logits_diff(model, f"sdpa:{backend}", "eager", ids)
    assert diff <= (BF16_LOGIT_TOL if CUDA else FP32_LOGIT_TOL), diff


def test_attention_sweep_runs_every_backend_up_to_long_context(tmp_path):
    compare = "[eager,sdpa:math,sdpa:flash,sdpa:efficient]" if CUDA else "[eager,sdpa:math]"
    record = run_main(["model=tiny_llama", "model.tiny.hidden_size=256", "model.tiny.max_positions=4096",
                       "technique=attention", f"technique.compare={compare}", "technique.context_lengths=[512,4096]",
                       f"technique.logit_tolerance={BF16_LOGIT_TOL if CUDA else FP32_LOGIT_TOL}", *RUN, *HW],
                      tmp_path)  # fmt: skip
    metrics = record["technique"]["metrics"]
    assert metrics["logits_match_eager"] == 1.0, record["technique"]["notes"]
    diffs = {k: v for k, v in metrics.items() if k.startswith("max_abs_logit_diff_vs_eager/")}
    assert len(diffs) == (4 if CUDA else 2)
    assert all(v <= (BF16_LOGIT_TOL if CUDA else FP32_LOGIT_TOL) for v in diffs.values()), diffs
    if CUDA:  # flash keeps memory linear in context: less working memory than eager's T x T scores
        table = record["technique"]["tables"]
        assert table, "the sweep's table is recorded"


@pytest.mark.parametrize("implementation", ["offloaded", "offloaded_static"])
def test_offloaded_cache_gives_the_dynamic_cache_outputs(tmp_path, implementation):
    needs_cuda("offloaded caches move layers between GPU and CPU memory")
    record = run_main(["model=tiny_llama", "technique=kv_cache", f"technique.implementation={implementation}",
                       "technique.context_lengths=[256]", "technique.ppl_windows=2", "technique.ppl_window=128",
                       "technique.ppl_chunk=32", "technique.agreement_prompts=2", "technique.agreement_new_tokens=8",
                       *RUN, *HW], tmp_path)  # fmt: skip
    metrics = record["technique"]["metrics"]
    assert metrics["greedy_divergences_not_ties"] == 0
    assert metrics["max_abs_logit_diff_vs_dynamic"] <= BF16_LOGIT_TOL
    assert metrics["perplexity_ratio_vs_dynamic"] == pytest.approx(1.0, abs=1e-2)


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_decode_gives_eager_greedy_tokens(tmp_path, mode):
    """Last in the suite: Inductor's first compile is its slowest test."""
    if mode == "reduce-overhead":
        needs_cuda("reduce-overhead captures CUDA graphs")
    extra = [] if CUDA else ["technique.backend=eager"]  # CPU rehearsal: the plumbing, not Inductor
    record = run_main(["model=tiny_llama", "technique=compile", f"technique.mode={mode}", "technique.repeats=2",
                       "technique.check_new_tokens=16", *extra, *RUN, *HW], tmp_path)  # fmt: skip
    metrics = record["technique"]["metrics"]
    assert metrics["greedy_divergences_not_ties"] == 0, record["technique"]["notes"]
    assert metrics["decode_tokens_per_s/compiled_static"] > 0
