"""Accumulators of a layer's (N, in) calibration inputs, one ``add(x)`` per batch.

``make(in_features, device)`` is the constructor shape ``calibration.collect`` calls.
"""

from __future__ import annotations

import math

import torch


class HessianAccumulator:
    """Running H = 2/n sum x x^T over the inputs (GPTQ, SparseGPT: the layer-wise least-squares Hessian)."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        self.H = torch.zeros(in_features, in_features, device=device)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.float()  # (N, in)
        n = x.shape[0]
        self.H *= self.n / (self.n + n)
        self.n += n
        x = math.sqrt(2 / self.n) * x
        self.H += x.t() @ x


class ColumnNorms:
    """Running sum of squares of each input column (Wanda's ||X_j||^2)."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        self.sq = torch.zeros(in_features, device=device)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        self.sq += x.float().pow(2).sum(0)
        self.n += x.shape[0]

    @property
    def norm(self) -> torch.Tensor:
        return self.sq.sqrt()


class AbsMax:
    """max |x_j| over the inputs, per column (SmoothQuant's activation range)."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        self.value = torch.zeros(in_features, device=device)

    def add(self, x: torch.Tensor) -> None:
        self.value = torch.maximum(self.value, x.abs().amax(dim=0).float())


class TokenSample:
    """The first ``max_tokens`` input rows (AWQ searches its scales on them)."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.rows: list[torch.Tensor] = []

    @classmethod
    def of(cls, max_tokens: int):
        """A ``make(in_features, device)`` for ``collect``."""
        return lambda _in_features, _device: cls(max_tokens)

    def add(self, x: torch.Tensor) -> None:
        have = sum(t.shape[0] for t in self.rows)
        if have < self.max_tokens:
            self.rows.append(x[: self.max_tokens - have].float().clone())

    @property
    def value(self) -> torch.Tensor:
        return torch.cat(self.rows)  # (<= max_tokens, in)


def without_dead_inputs(w: torch.Tensor, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float copies of an (out, in) weight and its Hessian where inputs that were never non-zero
    (diag(H) = 0) get weight 0 and a unit diagonal, so H stays invertible (GPTQ, SparseGPT)."""
    W = w.detach().float().contiguous().clone()  # Conv1D hands a transposed view
    H = H.clone().float()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    return W, H


def inverse_hessian_cholesky(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1: row i holds what column i's error
    does to the columns after it (GPTQ Sec. 3, Step 3; SparseGPT Alg. 1)."""
    H = H + damp * torch.mean(torch.diag(H)) * torch.eye(H.shape[0], device=H.device)
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
