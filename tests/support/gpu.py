"""What the GPU suite (tests/gpu/test_gpu_*.py, marker ``gpu``) shares.

On a CUDA machine every test runs on the GPU, models in bfloat16 where the path is a half-precision
one, and asserts its result against a CPU reference. Without CUDA the suite is skipped (conftest),
except in the CPU rehearsal (``INFOPT_GPU_SUITE_ON_CPU=1``, scripts/gpu_check.sh --cpu), where each
test runs as far as a CPU can take it and skips its CUDA-only part with the reason.

Data: the GPU machine has no gensim, so runs read the Lee corpus from the text file that
scripts/gpu_prepare.sh writes beside the carried tokenizer (same documents, same split).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from conftest import CACHE_DIR

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
# Overrides that put a run on this device: bf16 on the GPU (its tensor-core dtype), fp32 on CPU.
HW = ["hardware=gpu", "model.dtype=bfloat16"] if CUDA else ["hardware=cpu"]
SAMPLE_TEXT = Path(os.environ.get("INFOPT_SAMPLE_TEXT", str(CACHE_DIR / "data" / "lee_news.txt")))


def needs_cuda(why: str) -> None:
    if not CUDA:
        pytest.skip(f"CUDA only: {why}")


def data_overrides() -> list[str]:
    if SAMPLE_TEXT.is_file():
        return ["data=text_files", f"data.files=[{SAMPLE_TEXT}]", "data.heldout_docs=30", "data.calibration_docs=30"]
    return ["data=lee_news"]


# A quick run: token perplexity only (no lm-eval), short bench at batch 1 and 2, no logger.
RUN = ["eval.tasks=[]", "eval.token_perplexity_window=128", "eval.limit=8", "bench=quick", "logger=none",
       "skip_completed=false", "use_baseline_cache=false", *data_overrides()]  # fmt: skip


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 on the CPU."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    assert torch.isfinite(out).all(), "non-finite output"
    return float((out - ref).norm() / ref.norm())


def text_data(tokenizer, seq_len: int = 64):
    from infopt.config.schema import DataConfig
    from infopt.data.text import TextData

    if SAMPLE_TEXT.is_file():
        cfg = DataConfig(name="lee_news", source="text_files", files=[str(SAMPLE_TEXT)], heldout_docs=30,
                         calibration_docs=30, seq_len=seq_len, calibration_samples=8)  # fmt: skip
    else:
        cfg = DataConfig(name="lee_news", source="lee_news", seq_len=seq_len, calibration_samples=8)
    return TextData(cfg, tokenizer)


def tiny(tokenizer, *, hidden: int = 64, heads: int = 4, kv_heads: int = 2, inter: int = 128, layers: int = 2,
         architecture: str = "llama", seed: int = 0):  # fmt: skip
    """A small random Llama (or GPT-2) on the CPU in float32: the reference's starting point."""
    from infopt.config.schema import TinyArchConfig
    from infopt.models.tiny import build_tiny

    arch = TinyArchConfig(architecture=architecture, num_layers=layers, hidden_size=hidden, num_heads=heads,
                          num_kv_heads=kv_heads, intermediate_size=inter)  # fmt: skip
    return build_tiny(arch, vocab_size=len(tokenizer), seed=seed, eos_token_id=tokenizer.eos_token_id,
                      bos_token_id=tokenizer.bos_token_id)  # fmt: skip


def tokens(data, n: int = 2, length: int = 64) -> torch.Tensor:
    return data.heldout_blocks(length)[:n]  # (n, length)


@torch.no_grad()
def logits(model, ids: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    return model(input_ids=ids.to(device)).logits.float().cpu()
