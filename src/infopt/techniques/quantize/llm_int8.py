"""LLM.int8(): Dettmers, Lewis, Belkada, Zettlemoyer 2022, "LLM.int8(): 8-bit Matrix
Multiplication for Transformers at Scale" (arXiv:2208.07339).

Vector-wise quantization (one int8 scale per row of X and per output channel of W) plus the
mixed-precision decomposition: input columns holding any |x| above ``threshold`` (6.0 in the paper)
are multiplied in float, the rest in int8 (Sec. 3). On a GPU the bitsandbytes kernels run it
(``Linear8bitLt``); elsewhere this project's ``Int8Linear`` (int8 GEMM via ``torch._int_mm``, or its
float reference) does the same arithmetic.
"""

from __future__ import annotations

import torch
from torch import nn


def to_bitsandbytes(model: nn.Module, names: list[str], threshold: float) -> nn.Module:
    """Replace the named Linear layers with bitsandbytes' Linear8bitLt (CUDA only; not verified on a GPU here)."""
    import bitsandbytes as bnb

    from infopt.models.surgery import get_weight, replace_module

    device = next(model.parameters()).device
    if device.type != "cuda":
        raise RuntimeError("bitsandbytes LLM.int8 needs the model on a CUDA device")
    for name in names:
        mod = model.get_submodule(name)
        w = get_weight(mod).detach()  # (out, in)
        new = bnb.nn.Linear8bitLt(
            w.shape[1],
            w.shape[0],
            bias=mod.bias is not None,
            has_fp16_weights=False,
            threshold=threshold,
        )
        new.weight = bnb.nn.Int8Params(
            w.to(torch.float16).cpu(), requires_grad=False, has_fp16_weights=False
        )
        if mod.bias is not None:
            new.bias = nn.Parameter(mod.bias.detach().to(torch.float16).cpu())
        replace_module(model, name, new.to(device))
    return model
