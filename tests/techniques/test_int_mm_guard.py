"""The int8 GEMM guard: the shapes Int8Linear sends to torch._int_mm keep CUDA's limits.

No GPU here, so CUDA's rules are forced on CPU tensors and ``torch._int_mm`` is replaced by a
recorder that applies the same checks as ``_int_mm_out_cuda`` (ATen cuda/Blas.cpp) before calling
the CPU kernel. Without the guard a decode step (1 or 8 rows) would fail those checks on a GPU.
"""

from __future__ import annotations

import pytest
import torch

from infopt.techniques.quantize import modules as M
from infopt.techniques.quantize.modules import Int8Linear, int_mm_plan

CPU_INT_MM = torch._int_mm


class CudaIntMM:
    """torch._int_mm with CUDA's argument checks; records (rows, K, N) of every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        assert a.dim() == 2 and b.dim() == 2 and a.dtype == b.dtype == torch.int8
        assert a.shape[0] > 16, f"self.size(0) needs to be greater than 16, but got {a.shape[0]}"
        assert a.shape[1] > 0 and a.shape[1] % 8 == 0, f"self.size(1) must be a multiple of 8: {a.shape[1]}"
        assert b.shape[1] > 0 and b.shape[1] % 8 == 0, f"mat2.size(1) must be a multiple of 8: {b.shape[1]}"
        self.calls.append((a.shape[0], a.shape[1], b.shape[1]))
        return CPU_INT_MM(a, b)


@pytest.fixture
def cuda_rules(monkeypatch) -> CudaIntMM:
    recorder = CudaIntMM()
    monkeypatch.setattr(M, "follows_cuda_rules", lambda t: True)
    monkeypatch.setattr(torch, "_int_mm", recorder)
    return recorder


def test_the_recorder_rejects_what_cuda_rejects():
    """The checker is the test's teeth: a 1-row matmul, as decode sends, must fail it."""
    a = torch.ones(1, 64, dtype=torch.int8)
    b = torch.ones(64, 32, dtype=torch.int8)
    with pytest.raises(AssertionError, match="greater than 16"):
        CudaIntMM()(a, b)


@pytest.mark.parametrize(
    "rows,k,n,cuda,expected",
    [
        (1, 64, 32, False, ("int_mm", 1)),  # the CPU kernel takes any shape (with int8 dot products)
        (1, 64, 32, True, ("int_mm", 17)),
        (8, 64, 32, True, ("int_mm", 17)),
        (16, 64, 32, True, ("int_mm", 17)),
        (17, 64, 32, True, ("int_mm", 17)),
        (128, 64, 32, True, ("int_mm", 128)),
        (128, 60, 32, True, ("float", 128)),  # K not a multiple of 8
        (128, 64, 36, True, ("float", 128)),  # N not a multiple of 8
    ],
)
def test_plan(rows, k, n, cuda, expected, monkeypatch):
    monkeypatch.setattr(M, "cpu_has_int8_dot", lambda: True)
    assert int_mm_plan(rows, k, n, cuda) == expected


def test_a_cpu_without_int8_dot_products_multiplies_the_codes_in_float_and_says_so(monkeypatch, tiny_llama):
    from infopt.techniques.quantize.config import QuantizeConfig
    from infopt.techniques.quantize.core import find_layers
    from infopt.techniques.quantize.technique import int8_kernel_notes, to_int8

    monkeypatch.setattr(M, "cpu_has_int8_dot", lambda: False)
    assert int_mm_plan(64, 64, 32, cuda=False) == ("float", 64)
    assert int_mm_plan(64, 64, 32, cuda=True) == ("int_mm", 64)  # CUDA's rules do not depend on the CPU
    calls = []
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: calls.append(a.shape) or CPU_INT_MM(a, b))
    torch.manual_seed(3)
    w, x = torch.randn(48, 64), torch.randn(20, 64)
    real = Int8Linear(w, None, kernel="int_mm")
    torch.testing.assert_close(real(x), Int8Linear(w, None, kernel="reference")(x), rtol=0, atol=0)
    assert calls == []
    to_int8(tiny_llama, list(find_layers(tiny_llama, QuantizeConfig(method="dynamic_int8"))), "per_token",
            outliers=None, real=True)  # fmt: skip
    assert "no int8 dot-product instructions" in " ".join(int8_kernel_notes(tiny_llama, "cpu"))
    monkeypatch.setattr(M, "cpu_has_int8_dot", lambda: True)
    assert int8_kernel_notes(tiny_llama, "cpu") == []


def test_the_int8_dot_check_reads_the_cpu_flags():
    from pathlib import Path

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    M.cpu_has_int8_dot.cache_clear()
    expected = any(f in flags.split() for f in M.INT8_DOT_FLAGS) if flags else True
    assert M.cpu_has_int8_dot() == expected


@pytest.mark.parametrize("rows", [1, 8, 16, 17, 40])
@pytest.mark.parametrize("granularity", ["per_token", "per_tensor"])
def test_layer_sends_only_shapes_cuda_accepts_and_matches_the_reference(cuda_rules, rows, granularity):
    torch.manual_seed(0)
    w, b, x = torch.randn(48, 64), torch.randn(48), torch.randn(rows, 64)
    real = Int8Linear(w, b, act_granularity=granularity, kernel="int_mm")
    ref = Int8Linear(w, b, act_granularity=granularity, kernel="reference")
    y = real(x)
    assert cuda_rules.calls == [(max(rows, 17), 64, 48)]
    # Same int8 codes and scales; int32 vs float accumulation of |sum| < 2^24 is exact.
    torch.testing.assert_close(y, ref(x), rtol=0, atol=0)
    assert y.shape == (rows, 48)


def test_outlier_path_and_3d_input_keep_the_limits(cuda_rules):
    torch.manual_seed(1)
    w = torch.randn(32, 64)
    x = torch.randn(2, 3, 64)
    x[..., 5] *= 40  # an outlier column for LLM.int8()'s float path
    real = Int8Linear(w, None, outlier_threshold=6.0, kernel="int_mm")
    ref = Int8Linear(w, None, outlier_threshold=6.0, kernel="reference")
    torch.testing.assert_close(real(x), ref(x), rtol=0, atol=0)
    assert cuda_rules.calls == [(17, 64, 32)]  # 6 rows padded


def test_widths_cuda_rejects_fall_back_to_float_without_calling_int_mm(cuda_rules):
    torch.manual_seed(2)
    w, x = torch.randn(36, 60), torch.randn(20, 60)  # K=60, N=36: not multiples of 8
    real = Int8Linear(w, None, kernel="int_mm")
    assert not real.int_mm_on_cuda()
    torch.testing.assert_close(real(x), Int8Linear(w, None, kernel="reference")(x), rtol=0, atol=0)
    assert cuda_rules.calls == []


def test_empty_input(cuda_rules):
    real = Int8Linear(torch.randn(16, 64), None, kernel="int_mm")
    assert real(torch.randn(0, 64)).shape == (0, 16)
    assert cuda_rules.calls == []


def test_w8a8_model_decodes_at_batch_1_and_8_within_cuda_limits(cuda_rules, tiny_llama):
    """The default technique's layers, decoding as the benchmark does: every matmul stays legal."""
    from infopt.techniques.quantize.config import QuantizeConfig
    from infopt.techniques.quantize.core import find_layers
    from infopt.techniques.quantize.technique import int8_kernel_notes, to_int8

    cfg = QuantizeConfig(method="dynamic_int8", execution="real")
    names = list(find_layers(tiny_llama, cfg))
    to_int8(tiny_llama, names, cfg.act_granularity, outliers=None, real=True)
    assert int8_kernel_notes(tiny_llama, "cuda")  # the padding is said in the run's notes
    for batch in (1, 8):
        prompts = torch.randint(0, 100, (batch, 5))
        out = tiny_llama.generate(
            input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=3, do_sample=False
        )
        assert out.shape == (batch, 8)
    rows = {r for r, _, _ in cuda_rules.calls}
    assert min(rows) == 17  # prefill of 8 x 5 = 40 rows goes unpadded, decode steps padded
    assert 40 in rows
