"""AWQ: Lin, Tang, Tang, Yang, Dang, Gan, Han 2023, "AWQ: Activation-aware Weight Quantization
for LLM Compression and Acceleration" (arXiv:2306.00978).

A few input channels carry large activations; scaling their weight columns up before rounding
(and the activations down, folded into the previous op) protects them. Per group of linears that
read the same input, the scale is s = mean|X|^a (normalised), with a searched on a grid in [0, 1)
to minimise the output error ||X W^T - (X / s) Q(W diag(s))^T||^2 on calibration tokens (Sec. 3.2).
Then the weights are rounded to nearest (the paper's weight-clipping search is not done here).
"""

from __future__ import annotations

import torch
from torch import nn

from infopt.calibration import LayerwiseRunner, TokenSample, collect, sequential
from infopt.models.surgery import get_weight, input_groups
from infopt.techniques.quantize.core import QuantizedWeight, QuantSpec, rtn_quantize
from infopt.techniques.quantize.smoothquant import fold_scale


def search_scale(
    x: torch.Tensor, mods: list[tuple[nn.Module, QuantSpec]], grid: int
) -> tuple[torch.Tensor, float, float]:
    """Best per-channel scale for (N, in) inputs x; returns (s, best alpha, error at alpha=0 / best)."""
    x = x.float()
    x_mean = x.abs().mean(dim=0)  # (in,)
    refs = [x @ get_weight(m).float().t() for m, _ in mods]  # (N, out) each
    best = (float("inf"), 0.0, torch.ones_like(x_mean))
    err0 = None
    for k in range(grid):
        a = k / grid
        s = x_mean.clamp(min=1e-4).pow(a)
        s = s / (s.max() * s.min()).sqrt()
        err = 0.0
        for (m, spec), ref in zip(mods, refs, strict=True):
            w = get_weight(m).float() * s.unsqueeze(0)  # (out, in)
            wq = rtn_quantize(w, spec).dequantize() / s.unsqueeze(0)
            err += float(((x @ wq.t() - ref) ** 2).mean())
        if err0 is None:
            err0 = err
        if err < best[0]:
            best = (err, a, s)
    return best[2], best[1], (err0 / best[0]) if best[0] > 0 else 1.0


@torch.no_grad()
def quantize_awq(
    runner: LayerwiseRunner, layers: dict[str, tuple[nn.Module, QuantSpec]], grid: int, max_tokens: int, log=None
) -> tuple[dict[str, QuantizedWeight], dict[str, float]]:
    """Per block: search and fold each input group's scale, then round the block's layers (RTN)."""
    from infopt.techniques.quantize.rtn import quantize_rtn

    result: dict[str, QuantizedWeight] = {}
    alphas: list[float] = []
    gains: list[float] = []

    def process(idx: int, block: nn.Module, mine: dict[str, nn.Module]) -> None:
        prefix = f"{runner.prefix}{idx}."
        names = dict(block.named_modules())
        groups = [(p, [n for n in lins if prefix + n in layers], k) for p, lins, k in input_groups(block)]
        groups = [g for g in groups if g[1]]
        samples = collect(runner, block, {lins[0]: names[lins[0]] for _, lins, _ in groups}, TokenSample.of(max_tokens))
        for prev, lins, kind in groups:
            mods = [(names[n], layers[prefix + n][1]) for n in lins]
            s, a, gain = search_scale(samples[lins[0]].value, mods, grid)
            fold_scale(prev, kind, [m for m, _ in mods], s)
            alphas.append(a)
            gains.append(gain)
        result.update(quantize_rtn({n: layers[n] for n in mine}))

    done = sequential(runner, process, targets=set(layers), label="awq", log=log)
    result.update(quantize_rtn({n: v for n, v in layers.items() if n not in done}))
    stats = {
        "awq_mean_alpha": sum(alphas) / max(len(alphas), 1),
        "awq_mean_error_reduction": sum(gains) / max(len(gains), 1),
    }
    return result, stats
