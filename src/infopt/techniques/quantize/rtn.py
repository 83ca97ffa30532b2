"""Round-to-nearest (RTN) weight quantization: the baseline every calibrated method is judged by.

Each weight is rounded to the nearest point of a uniform grid (per tensor, per output channel, or
per group of input columns), as in the zero-shot baselines of Dettmers et al. 2022 (LLM.int8())
and Frantar et al. 2022 (GPTQ, "RTN" rows). No calibration data.
"""

from __future__ import annotations

import torch
from torch import nn

from infopt.models.surgery import get_weight, set_weight
from infopt.techniques.quantize.core import QuantizedWeight, QuantSpec, rtn_quantize


@torch.no_grad()
def quantize_rtn(layers: dict[str, tuple[nn.Module, QuantSpec]]) -> dict[str, QuantizedWeight]:
    """Quantize each layer in place (weights become their de-quantized values); returns the codes."""
    out = {}
    for name, (module, spec) in layers.items():
        qw = rtn_quantize(get_weight(module), spec)
        set_weight(module, qw.dequantize())
        out[name] = qw
    return out
