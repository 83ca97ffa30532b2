"""GPU: 2:4 pruned weights on PyTorch's semi-structured sparse kernels, against masked dense."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import run_main
from support.gpu import DEVICE, HW, RUN, logits, needs_cuda, rel_err, text_data, tiny, tokens

pytestmark = pytest.mark.gpu


def _two_four(w: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest |w| of every 4 consecutive inputs: (out, in) -> same shape, half zeros."""
    g = w.reshape(w.shape[0], -1, 4)
    keep = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, g.abs().topk(2, dim=-1).indices, True)
    return (g * keep).reshape_as(w)


@pytest.mark.parametrize("rows", [1, 8, 64, 256])
def test_semi_structured_linear_equals_masked_dense(rows):
    needs_cuda("torch.sparse.to_sparse_semi_structured")
    from torch.sparse import to_sparse_semi_structured

    torch.manual_seed(rows)
    w = _two_four(torch.randn(1536, 576)).to(torch.bfloat16).to(DEVICE)
    x = torch.randn(rows, 576, dtype=torch.bfloat16, device=DEVICE)
    dense = torch.nn.functional.linear(x, w)
    sparse = torch.nn.functional.linear(x, to_sparse_semi_structured(w))
    assert rel_err(sparse, dense) < 1e-2


def test_pruned_model_on_sparse_kernels_matches_masked_dense(tokenizer, run_context):
    """Magnitude 2:4 masks are deterministic: one copy runs masked dense, the other on the kernels."""
    needs_cuda("2:4 sparse kernels")
    from infopt.techniques.prune.technique import Prune

    data = text_data(tokenizer)
    ids = tokens(data)
    model = tiny(tokenizer, hidden=256, heads=4, inter=512).to(torch.bfloat16).to(DEVICE)
    outputs = {}
    for execution in ("masked_dense", "sparse_kernel"):
        ctx = run_context(["technique=prune", "technique.method=magnitude", "technique.nm=2:4",
                           f"technique.execution={execution}"])  # fmt: skip
        ctx.device = DEVICE
        applied = Prune(ctx.cfg.technique).apply(copy.deepcopy(model), ctx)
        assert applied.execution == execution, applied.notes
        outputs[execution] = logits(applied.model, ids)
    assert rel_err(outputs["sparse_kernel"], outputs["masked_dense"]) < 2e-2


def test_two_four_run_on_sparse_kernels_is_smaller_than_dense(tmp_path):
    """Dense baseline and 2:4 result at the same shapes and dtype; the sparse weights store half
    the values plus metadata."""
    needs_cuda("2:4 sparse kernels")
    record = run_main(["model=tiny_llama", "model.tiny.hidden_size=256", "model.tiny.intermediate_size=512",
                       "technique=prune", "technique.method=magnitude", "technique.nm=2:4",
                       "technique.execution=sparse_kernel", *RUN, *HW], tmp_path)  # fmt: skip
    assert record["technique"]["execution"] == "sparse_kernel"
    assert record["result"]["bench"]["stored_mb"] < record["baseline"]["bench"]["stored_mb"]
    assert record["result"]["bench"]["decode_tokens_per_s_b1"] > 0


def test_float32_model_runs_masked_dense_and_says_why(tmp_path):
    """execution=auto on a float32 model: the kernels take bf16/fp16, so masked dense, said in a note."""
    hw = ["hardware=gpu"] if DEVICE.type == "cuda" else ["hardware=cpu"]
    record = run_main(["model=tiny_llama", "technique=prune", "technique.method=magnitude", "technique.nm=2:4",
                       "technique.execution=auto", *RUN, *hw], tmp_path)  # fmt: skip
    assert record["technique"]["execution"] == "masked_dense"
    if DEVICE.type == "cuda":
        assert any("this model is float32" in n for n in record["technique"]["notes"])
