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
def token_nll(model: nn.Module, blocks: torch.Tensor, batch_size: int = 8) -> tuple[float, torch.Tensor]:
    """(sum of next-token NLL over all windows, the NLL of every predicted token (N, T - 1) on CPU).

    The sum is accumulated batch by batch from float32 sums, the protocol every recorded token
    perplexity used; the per-token values feed the bootstrap over documents.
    """
    device = next(model.parameters()).device
    total, per_token = 0.0, []
    for i in range(0, blocks.shape[0], batch_size):
        batch = blocks[i : i + batch_size].to(device)  # (B, T)
        logits = model(input_ids=batch).logits.float()  # (B, T, V)
        flat, targets = logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
        total += F.cross_entropy(flat, targets, reduction="sum").item()
        per_token.append(F.cross_entropy(flat, targets, reduction="none").view(batch.shape[0], -1).double().cpu())
    return total, torch.cat(per_token)


def window_nll(model: nn.Module, blocks: torch.Tensor, batch_size: int = 8) -> tuple[float, int]:
    """Sum of next-token NLL over all windows, and the number of predicted tokens."""
    total, per_token = token_nll(model, blocks, batch_size)
    return total, per_token.numel()


def token_perplexity(model: nn.Module, blocks: torch.Tensor, batch_size: int = 8) -> float:
    total, count = window_nll(model, blocks, batch_size)
    return math.exp(total / count)


def per_document_units(nll: torch.Tensor, owners: torch.Tensor) -> dict:
    """Bootstrap units of a token perplexity: each document's summed NLL and predicted-token count.

    ``nll`` (N, T - 1) scores windows cut from the held-out stream; ``owners`` (N, T) is the document of
    each window token, and a predicted token belongs to the document of the token it predicts.
    """
    target_owner = owners[:, 1:].reshape(-1)  # (N * (T - 1),)
    n_docs = int(target_owner.max()) + 1
    sums = torch.zeros(n_docs, dtype=torch.float64).index_add_(0, target_owner, nll.reshape(-1))
    counts = torch.bincount(target_owner, minlength=n_docs).double()
    seen = counts > 0
    return {"num": sums[seen].tolist(), "den": counts[seen].tolist(), "transform": "exp"}
