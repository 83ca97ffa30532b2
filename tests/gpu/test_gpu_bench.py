"""GPU: the CUDA branches of memory measurement, and vLLM timing (skipped where vLLM is absent)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from infopt.bench.measure import PeakMemory, measure
from infopt.config.schema import BenchConfig
from support.gpu import CUDA, DEVICE, needs_cuda, tiny

pytestmark = pytest.mark.gpu
MB = 2**20


def test_peak_memory_sees_a_known_allocation():
    needs_cuda("the CUDA branch of PeakMemory (max_memory_allocated)")
    keep = torch.ones(64 * MB // 4, device=DEVICE)  # allocated before: part of start, not of the peak's rise
    with PeakMemory(DEVICE) as mem:
        tmp = torch.empty(256 * MB, dtype=torch.uint8, device=DEVICE)
        tmp.fill_(1)
        del tmp
    rise = (mem.peak - mem.start) / MB
    assert 256 <= rise < 256 + 8, rise
    assert mem.start >= keep.numel() * 4


def test_measure_reports_device_peak_memory_above_the_weights(tokenizer):
    model = tiny(tokenizer, hidden=256, heads=4, inter=512)
    if CUDA:
        model = model.to(torch.bfloat16)
    model.to(DEVICE)
    cfg = BenchConfig(prompt_tokens=32, new_tokens=4, batch_sizes=[1, 8], warmup=0, repeats=1, probe_hardware=CUDA)
    out, _ = measure(model, cfg, pad_token_id=tokenizer.pad_token_id)
    if CUDA:
        assert "peak_rss_mb" not in out
        assert out["peak_memory_mb"] >= out["stored_mb"]
        assert out["working_memory_mb"] > 0
        assert out["machine_matmul_gflops"] > 1e4  # bf16 tensor cores, not a CPU
    else:
        assert out["peak_rss_mb"] > 0
    assert out["decode_tokens_per_s_b8"] > 0


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (it is not on the GPU machine, and too large to carry as wheels)")
def test_vllm_times_an_exported_model(tmp_path):
    needs_cuda("vLLM")
    from conftest import run_main
    from support.gpu import HW, RUN

    record = run_main(["model=tiny_llama", "technique=baseline", "technique.export=hf", "bench.backend=vllm",
                       *RUN, *HW], tmp_path)  # fmt: skip
    assert record["result"]["bench"]["vllm_tokens_per_s_b1"] > 0
