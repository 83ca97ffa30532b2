"""Rotations before quantization: QuaRot, Ashkboos, Mohtashami, Croci, Li, Cameron, Jaggi, Alistarh,
Hoefler, Hensman 2024, "QuaRot: Outlier-Free 4-Bit Inference in Rotated LLMs" (arXiv:2404.00456).

A Llama-family decoder is invariant to an orthogonal change of basis of its residual stream once
the RMSNorm scales are folded into the linears that read the norms' outputs (RMSNorm(x Q) =
RMSNorm(x) Q, since ||x Q|| = ||x||). With Q orthogonal:

- fuse: each RMSNorm weight g goes into the columns of its readers (q/k/v after ``input_layernorm``,
  gate/up after ``post_attention_layernorm``, ``lm_head`` after the final norm), g <- 1;
- rotate: ``embed_tokens`` W_e <- W_e Q; every linear reading the residual (q, k, v, gate, up,
  lm_head) W <- W Q; every linear writing it (o_proj, down_proj) W <- Q^T W, bias <- Q^T b.

The float function is unchanged and the result is a plain model of the same architecture, so every
quantizer and exporter sees ordinary weights. What the rotation buys: a weight row with a few large
input columns (the outlier channels of the residual stream) becomes spread out, so its max (the
RTN/GPTQ scale) sits closer to its typical entry (incoherence, as in QuIP; Chee et al. 2023).

Q is a randomised Hadamard matrix, diag(random signs) H / sqrt(n), in two constructions:
``hadamard``: one Hadamard of the full width; Sylvester for a power of two, otherwise
H_m (x) H_2^k with H_m from Paley's constructions (orders 12, 20, 28, 36, ...: SmolLM2's
576 = 36 x 16, as QuaRot does for such widths); ``block_hadamard``: block-diagonal Sylvester
blocks of the largest power of two dividing the width (576 -> 9 blocks of 64). The online Hadamard
QuaRot applies before ``down_proj`` (activation quantization) is not built: only the residual-stream
rotation, which folds entirely into the weights.

Tied embedding and head (SmolLM2, the tiny Llama): one matrix W serves as W_e and as the head. The
embedding needs W Q, the head needs diag-fused W diag(g) Q. When the final norm's g is all ones the
two coincide and the shared matrix is rotated exactly once (the tie kept); otherwise they differ and
the head is untied (its own copy, ``config.tie_word_embeddings=False``): there is no way to keep one
matrix, since a per-channel norm weight cannot express Q^T diag(g) Q in the rotated basis.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from infopt.errors import ConfigError
from infopt.models.surgery import decoder_layers, get_weight, input_groups, set_weight
from infopt.techniques.quantize.config import ROTATIONS

# Llama-style decoders whose norms are plain RMSNorm (weight * x / rms(x)) with the layout
# ``input_groups`` knows. Gemma's (1 + w) norm and scaled embedding, and GPT-2's LayerNorm (mean
# subtraction and bias; QuaRot converts it to RMSNorm first, not built here), are refused.
ARCHITECTURES = ("llama", "mistral", "qwen2")


# --- Hadamard matrices ----------------------------------------------------------------------------


def sylvester(n: int) -> torch.Tensor:
    """The +-1 Hadamard matrix of order n (a power of two): H_2n = [[H, H], [H, -H]]."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Sylvester's construction needs a power of two, got {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def _is_prime(q: int) -> bool:
    return q > 1 and all(q % d for d in range(2, int(q**0.5) + 1))


def _jacobsthal(q: int) -> torch.Tensor:
    """Q_ij = chi(j - i) over GF(q), q prime; chi the quadratic character (chi(0) = 0)."""
    squares = {(x * x) % q for x in range(1, q)}
    chi = torch.tensor([0.0] + [1.0 if a in squares else -1.0 for a in range(1, q)], dtype=torch.float64)
    idx = (torch.arange(q).view(1, -1) - torch.arange(q).view(-1, 1)) % q  # (q, q): j - i
    return chi[idx]


def paley(m: int) -> torch.Tensor | None:
    """A +-1 Hadamard matrix of order m from Paley's constructions with a prime q (None: neither applies).

    Paley I, q = m - 1 = 3 mod 4: H = I + [[0, 1^T], [-1, Q]]. Paley II, q = m / 2 - 1 = 1 mod 4:
    C = [[0, 1^T], [1, Q]] (a symmetric conference matrix), H = C (x) [[1, 1], [1, -1]] + I (x) [[1, -1], [-1, -1]].
    """
    if m % 4:
        return None
    q = m - 1
    if _is_prime(q) and q % 4 == 3:
        s = torch.zeros(m, m, dtype=torch.float64)
        s[0, 1:], s[1:, 0], s[1:, 1:] = 1.0, -1.0, _jacobsthal(q)
        return torch.eye(m, dtype=torch.float64) + s
    q = m // 2 - 1
    if _is_prime(q) and q % 4 == 1:
        c = torch.zeros(m // 2, m // 2, dtype=torch.float64)
        c[0, 1:], c[1:, 0], c[1:, 1:] = 1.0, 1.0, _jacobsthal(q)
        a = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
        b = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
        return torch.kron(c, a) + torch.kron(torch.eye(m // 2, dtype=torch.float64), b)
    return None


def hadamard_factors(n: int) -> tuple[int, int] | None:
    """(m, 2^k) with n = m * 2^k and H_m buildable here (m = 1 or a Paley order), the power of two
    as large as possible; None when no such split exists."""
    k = (n & -n).bit_length() - 1
    for j in range(k, -1, -1):
        m = n >> j
        if m == 1 or paley(m) is not None:
            return m, 1 << j
    return None


def hadamard(n: int) -> torch.Tensor:
    """A +-1 Hadamard matrix of order n: H_m (x) H_2^k (float64); ConfigError if none is built here."""
    factors = hadamard_factors(n)
    if factors is None:
        raise ConfigError(
            f"no Hadamard matrix of order {n} is built here (powers of two times a Paley order: 12, 20, 28, 36, ...); "
            "use technique.rotate=block_hadamard"
        )
    m, p = factors
    h = sylvester(p)
    return h if m == 1 else torch.kron(paley(m), h)  # type: ignore[arg-type]


def describe(kind: str, n: int) -> str:
    """How Q of width n is built, in words (for the run's notes)."""
    if kind == "block_hadamard":
        b = n & -n
        return f"block-diagonal: {n // b} Sylvester block(s) of {b}"
    factors = hadamard_factors(n)
    if factors is None:
        return f"no Hadamard of order {n}"
    m, p = factors
    return f"Sylvester of order {n}" if m == 1 else f"Paley order {m} (x) Sylvester order {p}"


def random_hadamard(n: int, kind: str = "hadamard", seed: int = 0) -> torch.Tensor:
    """Q = diag(s) H / sqrt(order) with random signs s (seeded): orthogonal, (n, n) float64.

    ``hadamard``: H of the full width; ``block_hadamard``: blocks of the largest power of two dividing n.
    """
    if kind == "hadamard":
        h = hadamard(n) / n**0.5
    elif kind == "block_hadamard":
        b = n & -n
        h = torch.block_diag(*[sylvester(b) / b**0.5] * (n // b))
    else:
        raise ConfigError(f"technique.rotate={kind!r} is not valid; choose one of: {', '.join(ROTATIONS)}")
    gen = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (n,), generator=gen, dtype=torch.float64) * 2 - 1  # (n,)
    return signs.unsqueeze(1) * h  # diag(s) @ H


# --- folding into a model ----------------------------------------------------------------------------


@dataclass
class Rotation:
    """What ``rotate_model`` did, for the run's metrics and notes."""

    kind: str
    width: int
    construction: str
    seed: int
    tied: bool  # the model had a tied embedding/head
    untied: bool  # the head had to be untied (final norm weight not all ones)

    def note(self) -> str:
        tie = ""
        if self.tied:
            tie = (
                "; tied head untied (final norm weight is not all ones, so embedding and head need different matrices)"
                if self.untied
                else "; tied embedding/head rotated once (final norm weight all ones)"
            )
        return (
            f"rotated (QuaRot, arXiv:2404.00456): RMSNorm scales fused into the next linears, residual stream of width "
            f"{self.width} rotated by a randomised Hadamard ({self.construction}, seed {self.seed}) folded into the "
            f"weights before quantization{tie}"
        )


def check_rotatable(config) -> None:
    """ConfigError naming the architecture and what is supported, before anything is touched."""
    arch = getattr(config, "model_type", None)
    if arch not in ARCHITECTURES:
        raise ConfigError(
            f"technique.rotate is built for RMSNorm decoders ({', '.join(ARCHITECTURES)}); model_type={arch!r} is not "
            "supported (GPT-2's LayerNorm subtracts the mean and has a bias: QuaRot's LayerNorm -> RMSNorm "
            "conversion is not built); set technique.rotate=none"
        )


def _tied(model: nn.Module) -> bool:
    head = model.get_output_embeddings()
    return head is not None and head.weight is model.get_input_embeddings().weight


@torch.no_grad()
def fuse_norms(model: nn.Module) -> bool:
    """Fold every RMSNorm weight into the linears reading it (g <- 1); returns True if the head was
    untied to take the final norm's weight (see the module docstring)."""
    from infopt.techniques.quantize.smoothquant import fold_scale

    for block in decoder_layers(model):
        names = dict(block.named_modules())
        for norm, lins, kind in input_groups(block):
            if kind == "norm":
                fold_scale(norm, kind, [names[n] for n in lins], norm.weight.detach().float().clone())
                norm.weight.fill_(1.0)  # g / g is 1 already; exact also where g has zeros (0 / 0)
    final, head = model.get_decoder().norm, model.get_output_embeddings()
    if torch.all(final.weight == 1):
        return False
    untie = _tied(model)
    if untie:  # the embedding keeps W, the head becomes W diag(g): two matrices from now on
        head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=head.weight.requires_grad)
        model.config.tie_word_embeddings = False
    fold_scale(final, "norm", [head], final.weight.detach().float().clone())
    final.weight.fill_(1.0)
    return untie


@torch.no_grad()
def rotate_model(model: nn.Module, kind: str = "hadamard", seed: int = 0) -> Rotation:
    """Fuse the norms, then rotate the residual stream by a randomised Hadamard Q (see the module docstring)."""
    check_rotatable(model.config)
    emb = model.get_input_embeddings()
    width = emb.weight.shape[1]
    q = random_hadamard(width, kind, seed).to(emb.weight.device)  # (d, d), float64
    tied = _tied(model)
    untied = fuse_norms(model)

    def read(module: nn.Module) -> None:  # W (out, d) <- W Q; a bias is unchanged
        set_weight(module, get_weight(module).double() @ q)

    def write(module: nn.Module) -> None:  # W (d, in) <- Q^T W; b <- Q^T b
        set_weight(module, q.T @ get_weight(module).double())
        if getattr(module, "bias", None) is not None:
            module.bias.copy_((q.T @ module.bias.double()).to(module.bias.dtype))

    emb.weight.copy_((emb.weight.double() @ q).to(emb.weight.dtype))  # (V, d): token rows x -> x Q
    for block in decoder_layers(model):
        attn, mlp = block.self_attn, block.mlp
        for m in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
            read(m)
        write(attn.o_proj)
        write(mlp.down_proj)
    if not _tied(model):  # a tied head is the embedding matrix, already W Q: rotating it again would be W Q Q
        read(model.get_output_embeddings())
    return Rotation(kind, width, describe(kind, width), seed, tied, untied)
