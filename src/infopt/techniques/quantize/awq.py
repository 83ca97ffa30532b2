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

from infopt.techniques.quantize.core import QuantizedWeight, QuantSpec, get_weight, rtn_quantize
from infopt.techniques.quantize.layerwise import input_hooks, smoothing_groups
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
    runner, layers: dict[str, tuple[nn.Module, QuantSpec]], grid: int, max_tokens: int, log=None
) -> tuple[dict[str, QuantizedWeight], dict[str, float]]:
    from infopt.techniques.quantize.gptq import _block_prefix
    from infopt.techniques.quantize.rtn import quantize_rtn

    prefix = _block_prefix(runner)
    result: dict[str, QuantizedWeight] = {}
    alphas: list[float] = []
    gains: list[float] = []
    done: set[str] = set()
    for idx, block in runner.blocks():
        names = dict(block.named_modules())
        full = {n: f"{prefix}{idx}.{n}" for n in names}
        groups = [
            (p, [n for n in lins if full[n] in layers], k) for p, lins, k in smoothing_groups(block)
        ]
        groups = [g for g in groups if g[1]]
        firsts = {lins[0]: names[lins[0]] for _, lins, _ in groups}
        xs: dict[str, list[torch.Tensor]] = {n: [] for n in firsts}

        def grab(name: str, x: torch.Tensor, xs=xs) -> None:
            have = sum(t.shape[0] for t in xs[name])
            if have < max_tokens:
                xs[name].append(x[: max_tokens - have].float().clone())

        with input_hooks(firsts, grab):
            runner.run(block)
        for prev, lins, kind in groups:
            mods = [(names[n], layers[full[n]][1]) for n in lins]
            s, a, gain = search_scale(torch.cat(xs[lins[0]]), mods, grid)
            fold_scale(prev, kind, [m for m, _ in mods], s)
            alphas.append(a)
            gains.append(gain)
        mine = {full[n]: layers[full[n]] for n in names if full[n] in layers}
        result.update(quantize_rtn(mine))
        done.update(mine)
        runner.run(block, update=True)
        if log is not None:
            log(f"awq: block {idx + 1}/{len(runner.layers)}")
    result.update(quantize_rtn({n: v for n, v in layers.items() if n not in done}))
    stats = {
        "awq_mean_alpha": sum(alphas) / max(len(alphas), 1),
        "awq_mean_error_reduction": sum(gains) / max(len(gains), 1),
    }
    return result, stats
