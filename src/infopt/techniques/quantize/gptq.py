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

import torch
from torch import nn

from infopt.calibration import HessianAccumulator, LayerwiseRunner, collect, sequential
from infopt.models.surgery import get_weight, set_weight
from infopt.techniques.quantize.core import QuantizedWeight, QuantSpec, qparams, quantize


@torch.no_grad()
def gptq_quantize(
    w: torch.Tensor,
    H: torch.Tensor,
    spec: QuantSpec,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = True,
) -> tuple[QuantizedWeight, float]:
    """Quantize an (out, in) weight given its (in, in) Hessian; returns codes and the loss sum."""
    W = w.clone().float()
    out_f, in_f = W.shape
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(in_f)
    W = W[:, perm]
    H = H[perm][:, perm]
    H += damp * torch.mean(torch.diag(H)) * torch.eye(in_f, device=H.device)
    # Upper Cholesky factor of H^-1: row i holds what column i's error does to the columns after it.
    L = torch.linalg.cholesky(H)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)

    Q = torch.zeros_like(W)
    codes = torch.zeros_like(W)
    if spec.group_size > 0:
        n_groups = in_f // spec.group_size
    else:
        n_groups = 1
    scales = torch.zeros(out_f, n_groups, device=W.device)
    zeros = torch.zeros(out_f, n_groups, device=W.device)
    g_perm = torch.zeros(in_f, dtype=torch.long)  # group of each permuted column
    if spec.group_size <= 0:
        if spec.group_size == 0:
            s, z = qparams(W.reshape(1, -1), spec)
            s, z = s.expand(out_f, 1), z.expand(out_f, 1)
        else:
            s, z = qparams(W, spec)
        scales[:, :1], zeros[:, :1] = s, z
    loss = torch.zeros(out_f, device=W.device)

    for i1 in range(0, in_f, block_size):
        i2 = min(i1 + block_size, in_f)
        W1 = W[:, i1:i2].clone()  # (out, b)
        Q1 = torch.zeros_like(W1)
        C1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if spec.group_size > 0:
                g = col // spec.group_size
                if col % spec.group_size == 0:
                    # Group scale from the current (error-updated) columns of this group.
                    cols = torch.cat([W1[:, i:], W[:, i2:]], dim=1)[:, : spec.group_size]
                    s, z = qparams(cols, spec)
                    scales[:, g : g + 1], zeros[:, g : g + 1] = s, z
                g_perm[col] = g
            s, z = scales[:, g_perm[col] : g_perm[col] + 1], zeros[:, g_perm[col] : g_perm[col] + 1]
            wcol = W1[:, i : i + 1]  # (out, 1)
            qc = quantize(wcol, s, z, spec.maxq)
            q = s * (qc - z)
            C1[:, i : i + 1] = qc
            Q1[:, i : i + 1] = q
            d = Hinv1[i, i]
            err = (wcol - q) / d  # (out, 1)
            loss += ((wcol - q) ** 2).squeeze(1) / d**2 / 2
            W1[:, i:] -= err @ Hinv1[i : i + 1, i:]
            Err1[:, i : i + 1] = err
        Q[:, i1:i2] = Q1
        codes[:, i1:i2] = C1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    inv = torch.argsort(perm)
    codes = codes[:, inv]
    g_idx = g_perm[inv.cpu()] if spec.group_size > 0 else torch.zeros(in_f, dtype=torch.long)
    qw = QuantizedWeight(codes.to(torch.uint8), scales.cpu(), zeros.cpu(), g_idx, spec)
    return qw, float(loss.sum())


@torch.no_grad()
def quantize_gptq(
    runner: LayerwiseRunner,
    layers: dict[str, tuple[nn.Module, QuantSpec]],
    damp: float,
    block_size: int,
    act_order: bool,
    log=None,
) -> tuple[dict[str, QuantizedWeight], dict[str, float]]:
    """GPTQ on every targeted layer inside the decoder blocks, block by block; others get RTN."""
    from infopt.techniques.quantize.rtn import quantize_rtn

    result: dict[str, QuantizedWeight] = {}
    losses: dict[str, float] = {}

    def process(_idx: int, block: nn.Module, mine: dict[str, nn.Module]) -> None:
        hessians = collect(runner, block, mine, HessianAccumulator)
        for n, m in mine.items():
            qw, loss = gptq_quantize(get_weight(m), hessians[n].H, layers[n][1], damp, block_size, act_order)
            set_weight(m, qw.dequantize())
            result[n], losses[n] = qw, loss

    done = sequential(runner, process, targets=set(layers), label="gptq", log=log)
    rest = {n: v for n, v in layers.items() if n not in done}
    result.update(quantize_rtn(rest))  # layers outside the blocks (e.g. lm_head if not ignored)
    return result, losses
