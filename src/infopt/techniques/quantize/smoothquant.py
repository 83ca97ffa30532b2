"""SmoothQuant: Xiao, Lin, Seznec, Wu, Demouth, Han 2022, "SmoothQuant: Accurate and Efficient
Post-Training Quantization for Large Language Models" (arXiv:2211.10438).

Activation outliers sit in a few input channels; per input channel j, divide the activation by
s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) and multiply the weight column by s_j (Eq. 4). The
product is unchanged; both factors become easy to quantize to int8 (W8A8). The division is folded
into the op before the linears (RMSNorm/LayerNorm weight and bias; for Llama's down_proj, the rows
of up_proj, since down_proj reads act(gate) * up). alpha is the migration strength.
"""

from __future__ import annotations

import torch
from torch import nn

from infopt.calibration import AbsMax, LayerwiseRunner, collect, sequential
from infopt.models.surgery import get_weight, input_groups, set_weight


def fold_scale(prev: nn.Module, kind: str, linears: list[nn.Module], s: torch.Tensor) -> None:
    """Divide prev's output channels by s and multiply the linears' input columns by s."""
    with torch.no_grad():
        if kind == "norm":
            prev.weight.div_(s.to(prev.weight.dtype))
            if getattr(prev, "bias", None) is not None:
                prev.bias.div_(s.to(prev.bias.dtype))
        else:  # a Linear/Conv1D whose output rows feed the linears
            w = get_weight(prev).float()  # (out, in)
            set_weight(prev, w / s.unsqueeze(1))
            if getattr(prev, "bias", None) is not None:
                prev.bias.div_(s.to(prev.bias.dtype))
        for lin in linears:
            w = get_weight(lin).float()  # (out, in)
            set_weight(lin, w * s.unsqueeze(0))


def smoothing_scales(act_max: torch.Tensor, linears: list[nn.Module], alpha: float) -> torch.Tensor:
    w_max = torch.stack([get_weight(m).abs().amax(dim=0).float() for m in linears]).amax(
        dim=0
    )  # (in,)
    s = act_max.clamp(min=1e-5).pow(alpha) / w_max.clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(min=1e-5)


@torch.no_grad()
def smooth_model(runner: LayerwiseRunner, alpha: float, log=None) -> int:
    """Smooth every block's foldable groups from calibration max |x|; returns groups smoothed."""
    count = 0

    def process(_idx: int, block: nn.Module, _mine: dict[str, nn.Module]) -> None:
        nonlocal count
        names = dict(block.named_modules())
        groups = input_groups(block)
        act_max = collect(runner, block, {lins[0]: names[lins[0]] for _, lins, _ in groups}, AbsMax)
        for prev, lins, kind in groups:
            mods = [names[n] for n in lins]
            fold_scale(prev, kind, mods, smoothing_scales(act_max[lins[0]].value, mods, alpha))
            count += 1

    sequential(runner, process, label="smoothquant", log=log)
    return count
