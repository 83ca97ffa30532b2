"""Token perplexity over fixed non-overlapping windows (the GPTQ papers' protocol).

Not lm-eval's word perplexity: text is the held-out documents joined with EOS, cut into windows
of ``window`` tokens (the ragged tail dropped), and ppl = exp(mean token NLL) over every predicted
token. The metric name carries the window so numbers with different windows are never compared.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


@torch.no_grad()
def window_nll(model: nn.Module, blocks: torch.Tensor, batch_size: int = 8) -> tuple[float, int]:
    """Sum of next-token NLL over all windows, and the number of predicted tokens."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, blocks.shape[0], batch_size):
        batch = blocks[i : i + batch_size].to(device)  # (B, T)
        logits = model(input_ids=batch).logits.float()  # (B, T, V)
        nll = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total += nll.item()
        count += batch[:, 1:].numel()
    return total, count


def token_perplexity(model: nn.Module, blocks: torch.Tensor, batch_size: int = 8) -> float:
    total, count = window_nll(model, blocks, batch_size)
    return math.exp(total / count)
