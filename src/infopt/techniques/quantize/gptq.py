"""GPTQ: Frantar, Ashkboos, Hoefler, Alistarh 2022, "GPTQ: Accurate Post-Training Quantization
for Generative Pre-trained Transformers" (arXiv:2210.17323).

Per layer, minimise ||W X - Q X||^2 over the calibration inputs X: quantize one input column at a
time and spread its rounding error over the not-yet-quantized columns with the inverse Hessian
H^-1 (H = 2 X X^T), using its Cholesky factor (Sec. 3, Step 3), lazy batch updates of
``block_size`` columns (Step 2), and optionally act-order (columns by decreasing diag(H)), with
group scales computed when their first column is reached (so groups follow the permuted order and
a ``g_idx`` maps each column to its group). Blocks are done in sequence: each block's calibration
inputs are the outputs of the already-quantized blocks before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from infopt.calibration import HessianAccumulator, LayerwiseRunner, collect, sequential
from infopt.calibration.stats import inverse_hessian_cholesky, without_dead_inputs
from infopt.models.surgery import get_weight, set_weight
from infopt.techniques.quantize.core import QuantizedWeight, QuantSpec, group_params, qparams, quantize


@torch.no_grad()
def gptq_quantize(
    w: torch.Tensor,
    H: torch.Tensor,
    spec: QuantSpec,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = True,
    static_groups: bool = False,
) -> tuple[QuantizedWeight, float]:
    """Quantize an (out, in) weight given its (in, in) Hessian; returns codes and the loss sum.

    ``static_groups`` (with act-order and groups): each group's scale is fixed from the original
    contiguous columns before any error is spread (AutoGPTQ's static groups), so the codes keep a
    contiguous column -> group map that GGUF and compressed-tensors can store. Otherwise a group's
    scale comes from its current, error-updated columns in quantization order.
    """
    W, H = without_dead_inputs(w, H)
    in_f = W.shape[1]
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(in_f, device=W.device)
    fixed = static_groups and spec.group_size > 0
    grid = _grid(W, spec, perm if fixed else None)
    W, H = W[:, perm], H[perm][:, perm]
    codes, loss = _sweep(W, inverse_hessian_cholesky(H, damp), spec, block_size, grid, fixed)
    inv = torch.argsort(perm)
    g_idx = grid.g_perm[inv.cpu()] if spec.group_size > 0 else torch.zeros(in_f, dtype=torch.long)
    return QuantizedWeight(codes[:, inv].to(torch.uint8), grid.scales.cpu(), grid.zeros.cpu(), g_idx, spec), loss


@dataclass
class _Grid:
    scales: torch.Tensor  # (out, n_groups)
    zeros: torch.Tensor  # (out, n_groups)
    g_perm: torch.Tensor  # (in,) group of each column in quantization order


def _grid(W: torch.Tensor, spec: QuantSpec, perm: torch.Tensor | None) -> _Grid:
    """Scales known before the sweep: per tensor / per row, or every group when ``perm`` is given
    (static groups: group of the column at position p is perm[p] // group_size)."""
    out_f, in_f = W.shape
    n_groups = in_f // spec.group_size if spec.group_size > 0 else 1
    grid = _Grid(torch.zeros(out_f, n_groups, device=W.device), torch.zeros(out_f, n_groups, device=W.device),
                 torch.zeros(in_f, dtype=torch.long))  # fmt: skip
    if spec.group_size <= 0 or perm is not None:
        grid.scales, grid.zeros = group_params(W, spec)
    if perm is not None:
        grid.g_perm = (perm // spec.group_size).cpu()
    return grid


def _sweep(W, Hinv, spec: QuantSpec, block_size: int, grid: _Grid, fixed: bool) -> tuple[torch.Tensor, float]:
    """Columns in order, each rounded and its error spread over the later ones (Alg. 1, lazy batches)."""
    out_f, in_f = W.shape
    codes = torch.zeros_like(W)
    loss = torch.zeros(out_f, device=W.device)
    for i1 in range(0, in_f, block_size):
        i2 = min(i1 + block_size, in_f)
        W1 = W[:, i1:i2].clone()  # (out, b)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if spec.group_size > 0 and not fixed:
                g = col // spec.group_size
                if col % spec.group_size == 0:
                    # Group scale from the current (error-updated) columns of this group.
                    cols = torch.cat([W1[:, i:], W[:, i2:]], dim=1)[:, : spec.group_size]
                    grid.scales[:, g : g + 1], grid.zeros[:, g : g + 1] = qparams(cols, spec)
                grid.g_perm[col] = g
            g = int(grid.g_perm[col])
            s, z = grid.scales[:, g : g + 1], grid.zeros[:, g : g + 1]
            wcol = W1[:, i : i + 1]  # (out, 1)
            codes[:, col : col + 1] = qc = quantize(wcol, s, z, spec.maxq)
            q = s * (qc - z)
            d = Hinv1[i, i]
            err = (wcol - q) / d  # (out, 1)
            loss += ((wcol - q) ** 2).squeeze(1) / d**2 / 2
            W1[:, i:] -= err @ Hinv1[i : i + 1, i:]
            Err1[:, i : i + 1] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return codes, float(loss.sum())


@torch.no_grad()
def quantize_gptq(
    runner: LayerwiseRunner,
    layers: dict[str, tuple[nn.Module, QuantSpec]],
    damp: float,
    block_size: int,
    act_order: bool,
    log=None,
    static_groups: bool = False,
) -> tuple[dict[str, QuantizedWeight], dict[str, float]]:
    """GPTQ on every targeted layer inside the decoder blocks, block by block; others get RTN."""
    from infopt.techniques.quantize.rtn import quantize_rtn

    result: dict[str, QuantizedWeight] = {}
    losses: dict[str, float] = {}

    def process(_idx: int, block: nn.Module, mine: dict[str, nn.Module]) -> None:
        hessians = collect(runner, block, mine, HessianAccumulator)
        for n, m in mine.items():
            qw, loss = gptq_quantize(get_weight(m), hessians[n].H, layers[n][1], damp, block_size, act_order, static_groups)
            set_weight(m, qw.dequantize())
            result[n], losses[n] = qw, loss

    done = sequential(runner, process, targets=set(layers), label="gptq", log=log)
    rest = {n: v for n, v in layers.items() if n not in done}
    result.update(quantize_rtn(rest))  # layers outside the blocks (e.g. lm_head if not ignored)
    return result, losses
